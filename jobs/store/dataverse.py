"""The job store on Dataverse: jobs are rows of a custom table that CRM users fill in on a form.

Same guarantees as the SQLite store (see `jobs.store`), built from what the Web API offers:

- **Claims** are conditional PATCHes with the row's ETag (`If-Match`), sent together in one `$batch` whose parts
  run independently. A 412 means another runner (or a user) changed the row first: that job is skipped, silently.
- **Per-key order**: a claim reads every unfinished row (pending or running), orders them by creation (`createdon`,
  then the autonumber `sequence` column, because Dataverse keeps `createdon` to the second), and offers a job only
  when no earlier unfinished job shares one of its keys. The keys are computed from the row as the SQLite store
  computes them. A row whose input is invalid has no keys: it neither waits nor blocks, and the executor fails it.
- **Leases** are the `lease_owner` / `lease_expires_at` columns. Every write on behalf of a claim is a PATCH with
  the last ETag this store saw for the row; on a 412 the row is read again and the write is repeated only while
  the row is still running under this owner (a user may have edited another column), else `LeaseLost`.
- **Attempts** are appended, one readable line each, to a multi-line text column (`attempt_log`) on the row
  itself, so support staff see the history on the job form without a related table to configure and one request
  fewer per attempt:  `#2 | 2026-05-04T09:12:03.120Z | 2026-05-04T09:12:04.870Z | retrying | RATE_LIMITED | 429 |
  Too many requests`. The `attempts` column counts tries since the job was queued or last retried (the retry
  budget), as in the SQLite store; the log keeps numbering across manual retries.

Times in DateTime columns are whole seconds (Dataverse's precision), rounded up so that a job is never due early.

A race the SQLite store does not have: a failed job retried by hand after a claim read the table may run after a
later job for the same key that this claim offered. The window is one claim; `retry` is a person's action.
"""

from __future__ import annotations

import builtins
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from config.settings import DataverseTableSettings
from connector import errors
from connector.dataverse.batch import BatchPart
from connector.dataverse.client import DataverseClient, encode_query, is_guid, row_url
from connector.sandbox.dataverse import EntityDef, Lookup
from jobs.model import Attempt, InvalidJob, Job, JobRequest, JobStatus, Operation
from jobs.store import JobNotFound, LeaseLost, NotAllowed, StoreError

log = logging.getLogger(__name__)

Row = dict[str, Any]

# A message column of a few thousand characters is what a CRM form shows comfortably.
MESSAGE_MAX = 4000
# Older lines of the attempt log are dropped past this size; the newest ones are what support reads.
ATTEMPT_LOG_MAX = 20_000
# How often a write is repeated after a 412 while the row is still ours (a user editing the form meanwhile).
WRITE_TRIES = 4
_TARGET_SETS = {"contact": "contacts", "lead": "leads", "account": "accounts"}


def _iso(ts: float | None) -> str | None:
    """A DateTime column value: whole seconds, rounded up."""
    if ts is None:
        return None
    return datetime.fromtimestamp(math.ceil(ts), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _iso_ms(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _epoch(value: Any) -> float | None:
    if value in (None, "", "-"):
        return None
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()


class DataverseJobStore:
    """Jobs in the custom table described by `table`, through `client`. Thread-safe."""

    name = "dataverse"

    def __init__(
        self,
        client: DataverseClient,
        table: DataverseTableSettings,
        *,
        clock: Callable[[], float] = time.time,
        page_size: int = 1000,
    ) -> None:
        self.client = client
        self.t = table
        self._clock = clock
        self.page_size = page_size
        reasons = table.status_reasons
        self._reason = {
            JobStatus.PENDING: (reasons.pending, reasons.pending_state),
            JobStatus.RUNNING: (reasons.running, reasons.running_state),
            JobStatus.SUCCEEDED: (reasons.succeeded, reasons.succeeded_state),
            JobStatus.FAILED: (reasons.failed, reasons.failed_state),
            JobStatus.CANCELLED: (reasons.cancelled, reasons.cancelled_state),
        }
        self._status_of = {code: status for status, (code, _) in self._reason.items()}
        self._operation_of = {value: name for name, value in table.operation_values.items()}
        self._lookups = {
            "contact": (table.contact_lookup, _value_column(table.contact_lookup)),
            "lead": (table.lead_lookup, _value_column(table.lead_lookup)),
            "account": (table.account_lookup, _value_column(table.account_lookup)),
        }
        self.columns = self._all_columns()
        # The last version of each row this store holds a lease on: its ETag makes the next write conditional.
        self._held: dict[str, Row] = {}
        self._lock = threading.Lock()

    def _all_columns(self) -> list[str]:
        t = self.t
        names = [
            t.primary_key, "statecode", "statuscode", t.created_on, t.modified_on, t.operation, t.tags, t.score,
            *(value for _, value in self._lookups.values()), t.result_code, t.message, t.http_status, t.attempts,
            t.last_attempt_at, t.next_attempt_at, t.lease_owner, t.lease_expires_at, t.applied_at, t.posted_at,
            t.score_before, t.attempt_log,
        ]
        if t.sequence:
            names.append(t.sequence)
        return list(dict.fromkeys(names))

    def close(self) -> None:
        """The client belongs to the composition root, which closes it."""

    # -- rows <-> jobs -------------------------------------------------------------------------------------

    def _status(self, row: Row) -> JobStatus:
        status = self._status_of.get(row.get("statuscode"))  # type: ignore[arg-type]
        if status is not None:
            return status
        # A status reason the mapping does not know: an active row waits, an inactive one was withdrawn.
        return JobStatus.PENDING if row.get("statecode") == 0 else JobStatus.CANCELLED

    def _raw(self, row: Row) -> dict[str, Any]:
        t = self.t
        operation = row.get(t.operation)
        if isinstance(operation, int) and not isinstance(operation, bool):
            operation = self._operation_of.get(operation, str(operation))
        targets = [(kind, row.get(column)) for kind, (_, column) in self._lookups.items() if row.get(column)]
        kind = " and ".join(k for k, _ in targets) if targets else None
        target_id = targets[0][1] if len(targets) == 1 else (", ".join(str(v) for _, v in targets) or None)
        return {
            "operation": operation,
            "target_kind": kind,
            "target_id": target_id,
            "tags": row.get(t.tags),
            "score": row.get(t.score),
        }

    def _job(self, row: Row) -> Job:
        t = self.t
        raw = self._raw(row)
        created = _epoch(row.get(t.created_on)) or self._clock()
        return Job(
            id=str(row[t.primary_key]),
            request=_request(raw),
            raw=raw,
            status=self._status(row),
            created_at=created,
            updated_at=_epoch(row.get(t.modified_on)) or created,
            next_attempt_at=_epoch(row.get(t.next_attempt_at)) or created,
            attempts=int(row.get(t.attempts) or 0),
            result_code=row.get(t.result_code),
            message=row.get(t.message) or "",
            http_status=row.get(t.http_status),
            lease_owner=row.get(t.lease_owner),
            lease_expires_at=_epoch(row.get(t.lease_expires_at)),
            applied_at=_epoch(row.get(t.applied_at)),
            posted_at=_epoch(row.get(t.posted_at)),
            score_before=row.get(t.score_before),
        )

    def _order(self, row: Row) -> tuple[str, str, str]:
        t = self.t
        return (str(row.get(t.created_on) or ""), str(row.get(t.sequence) or "") if t.sequence else "",
                str(row[t.primary_key]))

    def _status_columns(self, status: JobStatus) -> Row:
        code, state = self._reason[status]
        return {"statuscode": code, "statecode": state}

    # -- creating ------------------------------------------------------------------------------------------

    def input_columns(self, raw: dict[str, Any]) -> Row:
        """The columns a job form holds for this input (also invalid input, as a user could leave it)."""
        t = self.t
        columns: Row = {}
        operation = raw.get("operation")
        try:
            parsed = Operation.parse(operation)
            columns[t.operation] = t.operation_values.get(parsed.value, parsed.value) if t.operation_values \
                else parsed.value
        except ValueError:
            columns[t.operation] = operation  # as the user left it; the runner fails it with a readable message
        columns[t.tags] = raw.get("tags")
        score = raw.get("score")
        if isinstance(score, str) and re.fullmatch(r"\s*[+-]?\d+\s*", score):
            score = int(score)
        columns[t.score] = score
        kind, target_id = raw.get("target_kind"), raw.get("target_id")
        if target_id not in (None, "") and kind in self._lookups:
            if not is_guid(str(target_id)):
                raise InvalidJob([
                    f"The {kind} id {target_id!r} is not a Dataverse row id; jobs in Dataverse point at records "
                    f"by their GUID."
                ])
            navigation, _ = self._lookups[str(kind)]
            columns[f"{navigation}@odata.bind"] = row_url(_TARGET_SETS[str(kind)], str(target_id))
        return columns

    def _new_row(self, raw: dict[str, Any]) -> Row:
        row = self.input_columns(raw)
        row.update(self._status_columns(JobStatus.PENDING))
        row[self.t.attempts] = 0
        return row

    def add(self, requests: Sequence[JobRequest]) -> builtins.list[Job]:
        if not requests:
            return []
        parts = [
            BatchPart("POST", f"{self.t.entity_set}?{encode_query({'$select': ','.join(self.columns)})}",
                      body=self._new_row(_raw_of(request)), headers={"Prefer": "return=representation"})
            for request in requests
        ]
        # One change set: all the jobs or none, created in the order given.
        results = self._batch(parts, changeset=True)
        return [self._job(result.json()) for result in results]

    def add_raw(self, raw: dict[str, Any]) -> Job:
        row = self.client.create_returning(self.t.entity_set, self._new_row(raw), select=self.columns)
        return self._job(row)

    # -- reading -------------------------------------------------------------------------------------------

    def _row(self, job_id: str, columns: Sequence[str] | None = None) -> Row:
        if not is_guid(job_id):
            raise JobNotFound(job_id)
        try:
            return self.client.get(self.t.entity_set, job_id, select=columns or self.columns)
        except errors.NotFound:
            raise JobNotFound(job_id) from None

    def get(self, job_id: str) -> Job:
        return self._job(self._row(job_id))

    def list(
        self,
        *,
        status: JobStatus | str | None = None,
        target_id: str | None = None,
        since: float | None = None,
        limit: int | None = None,
    ) -> builtins.list[Job]:
        t = self.t
        clauses: builtins.list[str] = []
        if status == "retrying":
            clauses.append(f"statuscode eq {self._reason[JobStatus.PENDING][0]} and {t.attempts} gt 0")
        elif status is not None:
            clauses.append(f"statuscode eq {self._reason[JobStatus(status)][0]}")
        if target_id is not None:
            if not is_guid(target_id):
                return []
            clauses.append("(" + " or ".join(f"{column} eq {target_id.lower()}"
                                             for _, column in self._lookups.values()) + ")")
        if since is not None:
            clauses.append(f"{t.created_on} ge {_iso(math.floor(since))}")
        orderby = f"{t.created_on} desc" + (f",{t.sequence} desc" if t.sequence else "")
        rows = self.client.query(t.entity_set, select=self.columns, filter=" and ".join(clauses) or None,
                                 orderby=orderby, top=limit or None, page_size=self.page_size)
        return [self._job(row) for row in rows]

    def attempts(self, job_id: str) -> builtins.list[Attempt]:
        row = self._row(job_id, [self.t.primary_key, self.t.attempt_log])
        return parse_attempt_log(job_id, row.get(self.t.attempt_log) or "")

    def _unfinished(self) -> builtins.list[Row]:
        pending, running = self._reason[JobStatus.PENDING], self._reason[JobStatus.RUNNING]
        clauses = [f"statuscode eq {pending[0]}", f"statuscode eq {running[0]}"]
        finished_states = {self._reason[s][1] for s in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)}
        if pending[1] not in finished_states:
            # Active rows with a status reason the mapping lacks count as pending (see `_status`).
            clauses.append(f"statecode eq {pending[1]}")
        rows = builtins.list(self.client.query(self.t.entity_set, select=self.columns, filter=" or ".join(clauses),
                                               page_size=self.page_size))
        return sorted(rows, key=self._order)

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for row in self.client.query(self.t.entity_set, select=[self.t.primary_key, "statuscode", "statecode",
                                                                 self.t.attempts], page_size=self.page_size):
            status = self._status(row)
            name = "retrying" if status is JobStatus.PENDING and (row.get(self.t.attempts) or 0) > 0 else status.value
            counts[name] = counts.get(name, 0) + 1
        return counts

    def waiting(self) -> tuple[int, float | None]:
        # Unfinished rows only, read once: a table with a million finished jobs costs the same as an empty one.
        jobs = [(self._job(row), row) for row in self._unfinished()]
        retrying = sum(1 for job, _ in jobs if job.status is JobStatus.PENDING and job.attempts > 0)
        if not retrying:
            return 0, None
        due = [job.next_attempt_at for job, _ in self._unblocked(self._clock(), jobs)
               if job.status is JobStatus.PENDING]
        return retrying, (min(due) if due else None)

    def next_due(self) -> float | None:
        # A job waiting behind another on its key is not due, whatever its own time says.
        due = [job.next_attempt_at for job, _ in self._unblocked(self._clock()) if job.status is JobStatus.PENDING]
        return min(due) if due else None

    def _unblocked(
        self, now: float, jobs: builtins.list[tuple[Job, Row]] | None = None
    ) -> builtins.list[tuple[Job, Row]]:
        """Unfinished jobs, in creation order, that no earlier unfinished job shares a key with, and that no
        running job shares one with (a failed job retried by hand must not run beside a later job)."""
        if jobs is None:
            jobs = [(self._job(row), row) for row in self._unfinished()]

        def holds_lease(job: Job) -> bool:
            return job.status is JobStatus.RUNNING and (job.lease_expires_at or 0) >= now

        running = {key for job, _ in jobs if holds_lease(job) for key in (job.request.keys if job.request else [])}
        blocked: set[str] = set()
        free: builtins.list[tuple[Job, Row]] = []
        for job, row in jobs:
            keys = job.request.keys if job.request else []
            if not blocked.intersection(keys) and (holds_lease(job) or not running.intersection(keys)):
                free.append((job, row))
            blocked.update(keys)
        return free

    # -- claiming ------------------------------------------------------------------------------------------

    def claim(self, owner: str, limit: int, lease_seconds: float) -> builtins.list[Job]:
        now = self._clock()
        offers: builtins.list[tuple[Job, Row]] = []
        for job, row in self._unblocked(now):
            due = job.status is JobStatus.PENDING and job.next_attempt_at <= now
            expired = job.status is JobStatus.RUNNING and (job.lease_expires_at or 0) < now
            if due or expired:
                offers.append((job, row))
        offers.sort(key=lambda offer: (offer[0].next_attempt_at if offer[0].status is JobStatus.PENDING else now))
        offers = offers[:limit]
        if not offers:
            return []
        parts = [self._claim_part(job, row, owner, now, lease_seconds) for job, row in offers]
        claimed: builtins.list[Job] = []
        for (job, _), result in zip(offers, self._batch(parts, continue_on_error=True), strict=False):
            if result.status == 412:
                log.debug("job %s: claimed by someone else first", job.id)
                continue
            if not result.ok:
                log.warning("job %s: claim refused: %s", job.id, self.client.batch_error(result).message)
                continue
            row = result.json()
            with self._lock:
                self._held[job.id] = row
            claimed.append(self._job(row))
        return sorted(claimed, key=lambda j: j.created_at)

    def _claim_part(self, job: Job, row: Row, owner: str, now: float, lease_seconds: float) -> BatchPart:
        t = self.t
        changes: Row = {**self._status_columns(JobStatus.RUNNING), t.lease_owner: owner,
                        t.lease_expires_at: _iso(now + lease_seconds)}
        if job.status is JobStatus.RUNNING:
            # The runner holding it stopped renewing: that try counts, as in the SQLite store.
            attempt = Attempt(job_id=job.id, started_at=now, ended_at=now, outcome="lease_expired",
                              result_code="LEASE_EXPIRED",
                              message=f"Runner {job.lease_owner} stopped renewing its lease; the job is retried.")
            changes.update(self._attempt_columns(row, attempt))
            changes[t.next_attempt_at] = _iso(now)
        path = f"{t.entity_set}({job.id})?{encode_query({'$select': ','.join(self.columns)})}"
        return BatchPart("PATCH", path, body=changes,
                         headers={"If-Match": row["@odata.etag"], "Prefer": "return=representation"})

    def _batch(self, parts: Sequence[BatchPart], **options: bool) -> builtins.list[Any]:
        results = []
        for start in range(0, len(parts), 1000):
            chunk = self.client.batch(parts[start:start + 1000], **options)
            if options.get("changeset") and (len(chunk) != len(parts[start:start + 1000]) or not chunk[0].ok):
                failed = next((r for r in chunk if not r.ok), None)
                error = self.client.batch_error(failed) if failed else None
                raise StoreError(f"Dataverse refused the jobs: {error.message if error else 'no answer'}")
            results.extend(chunk)
        return results

    # -- writes under a lease ------------------------------------------------------------------------------

    def _write(self, owner: str, job_id: str, changes: Callable[[Row], Row], *, keep: bool = True) -> Row:
        """PATCH the row while it is running under `owner`, with the last ETag seen; re-read after a 412."""
        with self._lock:
            row = self._held.get(job_id)
        for _ in range(WRITE_TRIES):
            if row is None:
                try:
                    row = self._row(job_id)
                except JobNotFound:
                    raise LeaseLost(f"Job {job_id} no longer exists.") from None
            if self._status(row) is not JobStatus.RUNNING or row.get(self.t.lease_owner) != owner:
                with self._lock:
                    self._held.pop(job_id, None)
                raise LeaseLost(f"Job {job_id} is no longer held by {owner}.")
            try:
                updated = self.client.update(self.t.entity_set, job_id, changes(row), etag=row["@odata.etag"],
                                             select=self.columns)
            except errors.Conflict:
                row = None
                continue
            assert updated is not None
            with self._lock:
                if keep:
                    self._held[job_id] = updated
                else:
                    self._held.pop(job_id, None)
            return updated
        raise LeaseLost(f"Job {job_id} kept changing under {owner}; giving it up.")

    def renew(self, owner: str, job_ids: Sequence[str], lease_seconds: float) -> builtins.list[str]:
        expires = _iso(self._clock() + lease_seconds)
        lost = []
        for job_id in job_ids:
            try:
                self._write(owner, job_id, lambda row: {self.t.lease_expires_at: expires})
            except LeaseLost:
                lost.append(job_id)
        return lost

    def _attempt_columns(self, row: Row, attempt: Attempt) -> Row:
        t = self.t
        previous = row.get(t.attempt_log) or ""
        number = last_attempt_number(previous) + 1
        log_text = (previous + "\n" if previous else "") + format_attempt(attempt, number)
        if len(log_text) > ATTEMPT_LOG_MAX:
            log_text = log_text[-ATTEMPT_LOG_MAX:].split("\n", 1)[-1]
        return {t.attempts: int(row.get(t.attempts) or 0) + 1, t.attempt_log: log_text,
                t.last_attempt_at: _iso(attempt.ended_at or attempt.started_at)}

    def record_attempt(self, owner: str, attempt: Attempt) -> None:
        self._write(owner, attempt.job_id, lambda row: self._attempt_columns(row, attempt))

    def save_progress(
        self, owner: str, job_id: str, *, score_before: int | None = None, applied: bool = False,
        posted: bool = False,
    ) -> None:
        t = self.t
        now = _iso(self._clock())

        def changes(row: Row) -> Row:
            out: Row = {}
            if score_before is not None:
                out[t.score_before] = score_before
            if applied and not row.get(t.applied_at):
                out[t.applied_at] = now
            if posted and not row.get(t.posted_at):
                out[t.posted_at] = now
            return out or {t.lease_owner: owner}

        self._write(owner, job_id, changes)

    def finish(
        self,
        owner: str,
        job_id: str,
        *,
        status: JobStatus,
        result_code: str | None,
        message: str,
        http_status: int | None = None,
        next_attempt_at: float | None = None,
        attempt: Attempt | None = None,
        posted: bool = False,
    ) -> None:
        t = self.t
        if status is JobStatus.RUNNING:
            raise ValueError("finish() leaves running; it cannot set running")
        changes: Row = {
            **self._status_columns(status), t.result_code: result_code, t.message: _clip(message),
            t.http_status: http_status, t.next_attempt_at: _iso(next_attempt_at if next_attempt_at is not None
                                                                else self._clock()),
            t.lease_owner: None, t.lease_expires_at: None,
        }
        now = _iso(self._clock())

        def with_attempt(row: Row) -> Row:
            # One PATCH for the last attempt, the posted mark and the outcome: a request per job saved twice over.
            out = dict(changes)
            if attempt is not None:
                out.update(self._attempt_columns(row, attempt))
            if posted and not row.get(t.posted_at):
                out[t.posted_at] = now
            return out

        self._write(owner, job_id, with_attempt, keep=False)

    def release(self, owner: str, job_id: str) -> None:
        t = self.t
        changes = {**self._status_columns(JobStatus.PENDING), t.lease_owner: None, t.lease_expires_at: None}
        try:
            self._write(owner, job_id, lambda row: changes, keep=False)
        except LeaseLost:
            log.debug("job %s: released after its lease was lost; nothing to give back", job_id)

    # -- a person's actions --------------------------------------------------------------------------------

    def _change_if(self, job_id: str, allowed: Callable[[Job], bool], changes: Row, refusal: str) -> None:
        """PATCH a row only while it is in an allowed status, with If-Match so a concurrent claim wins cleanly."""
        for _ in range(WRITE_TRIES):
            row = self._row(job_id)
            job = self._job(row)
            if not allowed(job):
                raise NotAllowed(refusal.format(id=job_id, status=job.display_status))
            try:
                self.client.update(self.t.entity_set, job_id, changes, etag=row["@odata.etag"])
                return
            except errors.Conflict:
                continue
        raise StoreError(f"Job {job_id} kept changing; try again.")

    def retry(self, job_id: str | None = None) -> builtins.list[str]:
        t = self.t
        # Started afresh: later jobs on its key may have run since, so its old score_before means nothing now.
        changes = {**self._status_columns(JobStatus.PENDING), t.attempts: 0, t.result_code: None,
                   t.message: "Retry requested.", t.http_status: None, t.next_attempt_at: _iso(self._clock()),
                   t.score_before: None}
        if job_id is not None:
            self._change_if(job_id, lambda job: job.status is JobStatus.FAILED, changes,
                            "Job {id} is {status}; only failed jobs can be retried.")
            return [job_id]
        failed = self.client.query(t.entity_set, select=[t.primary_key],
                                   filter=f"statuscode eq {self._reason[JobStatus.FAILED][0]}",
                                   page_size=self.page_size)
        retried = []
        for row in builtins.list(failed):
            try:
                self._change_if(str(row[t.primary_key]), lambda job: job.status is JobStatus.FAILED, changes, "")
            except NotAllowed:
                continue
            retried.append(str(row[t.primary_key]))
        return retried

    def cancel(self, job_id: str) -> Job:
        t = self.t
        changes = {**self._status_columns(JobStatus.CANCELLED), t.result_code: "CANCELLED",
                   t.message: "Cancelled before it ran."}
        self._change_if(job_id, lambda job: job.status is JobStatus.PENDING, changes,
                        "Job {id} is {status}; only pending jobs can be cancelled.")
        return self.get(job_id)


# -- helpers -----------------------------------------------------------------------------------------------


def _value_column(navigation: str) -> str:
    return f"_{navigation.lower()}_value"


def _clip(message: str) -> str:
    return message if len(message) <= MESSAGE_MAX else message[: MESSAGE_MAX - 1] + "…"


def _raw_of(request: JobRequest) -> dict[str, Any]:
    target = request.target
    return {
        "operation": request.operation.value,
        "target_kind": target.kind.value if target else None,
        "target_id": target.id if target else None,
        "tags": ", ".join(request.tags),
        "score": request.score,
    }


def _request(raw: dict[str, Any]) -> JobRequest | None:
    try:
        return JobRequest.from_input(operation=raw.get("operation"), tags=raw.get("tags"), score=raw.get("score"),
                                     target_kind=raw.get("target_kind"), target_id=raw.get("target_id"))
    except (InvalidJob, ValueError):
        return None


_LOG_LINE = re.compile(r"^#(\d+) \| (\S+) \| (\S+) \| (\w+) \| (\S+) \| (\S+) \| (.*)$")


def format_attempt(attempt: Attempt, number: int) -> str:
    """One line of the attempt log; the message last, on one line, so the line stays parseable."""
    message = " ".join(attempt.message.split())
    return " | ".join([
        f"#{number}", _iso_ms(attempt.started_at), _iso_ms(attempt.ended_at), attempt.outcome,
        attempt.result_code or "-", str(attempt.http_status) if attempt.http_status is not None else "-", message,
    ])


def last_attempt_number(text: str) -> int:
    for line in reversed(text.splitlines()):
        match = _LOG_LINE.match(line)
        if match:
            return int(match.group(1))
    return 0


def parse_attempt_log(job_id: str, text: str) -> builtins.list[Attempt]:
    """The attempts in a log column; lines a person added by hand are skipped."""
    out = []
    for line in text.splitlines():
        match = _LOG_LINE.match(line)
        if not match:
            continue
        number, started, ended, outcome, code, status, message = match.groups()
        out.append(Attempt(
            job_id=job_id, number=int(number), started_at=_epoch(started) or 0.0, ended_at=_epoch(ended),
            outcome=outcome, result_code=None if code == "-" else code,
            http_status=None if status == "-" else int(status), message=message,
        ))
    return out


def sandbox_table(table: DataverseTableSettings) -> EntityDef:
    """The job table as the Dataverse sandbox should define it, from the same mapping the store uses."""
    reasons = table.status_reasons
    lookups = tuple(
        Lookup(navigation, _TARGET_SETS[kind], _value_column(navigation))
        for kind, navigation in (("contact", table.contact_lookup), ("lead", table.lead_lookup),
                                 ("account", table.account_lookup))
    )
    columns = {
        table.operation, table.tags, table.score, table.result_code, table.message, table.http_status,
        table.attempts, table.last_attempt_at, table.next_attempt_at, table.lease_owner, table.lease_expires_at,
        table.applied_at, table.posted_at, table.score_before, table.attempt_log,
    }
    if table.sequence:
        columns.add(table.sequence)
    return EntityDef(
        entity_set=table.entity_set,
        logical_name=table.entity_set.removesuffix("s"),
        key=table.primary_key,
        columns=frozenset(columns),
        lookups=lookups,
        max_lengths={table.message: MESSAGE_MAX, table.attempt_log: 1_048_576},
        autonumber=table.sequence or None,
        status_reasons={
            reasons.pending: reasons.pending_state, reasons.running: reasons.running_state,
            reasons.succeeded: reasons.succeeded_state, reasons.failed: reasons.failed_state,
            reasons.cancelled: reasons.cancelled_state,
        },
        default_status=reasons.pending,
    )


__all__ = ["DataverseJobStore", "sandbox_table"]
