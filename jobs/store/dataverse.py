"""The job store on Dataverse: jobs are rows of a custom table that CRM users fill in on a form.

Same guarantees as the SQLite store (see `jobs.store`), built from what the Web API offers:

- **Claims** are conditional PATCHes with the row's ETag (`If-Match`), sent together in one `$batch` whose parts
  run independently. A 412 means another runner (or a user) changed the row first: that job is skipped, silently.
- **Per-key order**: a claim reads a window of the oldest due pending rows (two windows at most), and beside it
  the running rows and the rows waiting for a retry created up to the window's end, orders them by creation
  (`createdon`, then the autonumber `sequence` column, because Dataverse keeps `createdon` to the second), and offers
  a job only when no earlier unfinished job shares one of its keys (`_offers`). Its cost does not grow with the
  backlog. The keys are computed from the row as the SQLite store
  computes them. A row whose input is invalid has no keys: it neither waits nor blocks, and the executor fails it.
- **Leases** are the `lease_owner` / `lease_expires_at` columns. Every write on behalf of a claim is a PATCH with
  the last ETag this store saw for the row; on a 412 the row is read again and the write is repeated only while
  the row is still running under this owner (a user may have edited another column), else `LeaseLost`.
- **Attempts** are appended, one readable line each, to a multi-line text column (`attempt_log`) on the row
  itself, so support staff see the history on the job form without a related table to configure and one request
  fewer per attempt:  `#2 | 2026-05-04T09:12:03.120Z | 2026-05-04T09:12:04.870Z | retrying | RATE_LIMITED | 429 |
  Too many requests`. The `attempts` column counts tries since the job was queued or last retried (the retry
  budget), as in the SQLite store; the log keeps numbering across manual retries.

**Kinds**: a kind a CRM user creates on the job form (one with a choice value in `operation_values`, or any
form kind when the column is plain text) lives in the form's columns, where users see and edit it. Every other kind
(the connector's own jobs) is kept as JSON in the `payload` column of the same table: so it is claimed, ordered per
key, retried and logged exactly like the jobs users create.

**Request ids** are a column; `add` looks them up before it creates. Two callers adding the same new request id
at the same moment can both create it: the window is one `add`.

**Retries and cancels by hand** append a line to the attempt log, naming who asked and from where
(`@ 2026-05-04T09:15:00.000Z | retry | alice | cli`), in the same PATCH as the change.

**Effects of durable subscribers** (`save_progress(applied=True, effects=...)`) go in one change set with the
PATCH that marks the change applied, both or neither: records to the entries table (`[dataverse.entries]`), jobs
as new rows. A record with a `unique` value gets a row id derived from it, and one already stored is not written
again; a job whose request id is stored already is not created again.

Times in DateTime columns are whole seconds (Dataverse's precision), rounded up so that a job is never due early.

A race the SQLite store does not have: a failed job retried by hand after a claim read the table may run after a
later job for the same key that this claim offered. The window is one claim; `retry` is a person's action.
"""

from __future__ import annotations

import builtins
import dataclasses
import itertools
import json
import logging
import math
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, NoReturn

from config.defaults import DATAVERSE_WRITE_TRIES
from config.settings import DataverseEntriesSettings, DataverseTableSettings
from config.text import shown
from connector import errors
from connector.dataverse.batch import BatchPart, BatchResult
from connector.dataverse.changesets import shared_writes
from connector.dataverse.client import (
    MAX_PAGE_SIZE,
    DataverseClient,
    encode_query,
    is_guid,
    odata_literal,
    row_url,
)
from jobs import kinds
from jobs.kinds.tagging import raw_tags
from jobs.model import Attempt, InvalidJob, Job, JobRequest, JobStatus
from jobs.store import (
    Actor,
    AuditEntry,
    Batch,
    BatchRows,
    Effects,
    Entry,
    JobFilter,
    JobNotFound,
    LeaseLost,
    NotAllowed,
    Outcome,
    Page,
    Record,
    RunnerSeen,
    StoreError,
    StoreUnavailable,
    semantics,
)

log = logging.getLogger(__name__)

Row = dict[str, Any]

# A message column of a few thousand characters is what a CRM form shows comfortably.
MESSAGE_MAX = 4000
# Older lines of the attempt log are dropped past this size; the newest ones are what support reads.
ATTEMPT_LOG_MAX = 20_000
# A claim reads the oldest due rows ten per job it may take (fifty at least), and at most two such pages: room
# for the jobs of keys that wait behind others, at a cost that follows the claim's size, never the backlog's.
CLAIM_WINDOW_PER_JOB = 10
CLAIM_WINDOW_MIN = 50
CLAIM_PAGES = 2
# The entries of runners' heartbeats: one row per runner, written over at each tick.
RUNNER_STREAM = "runner"
# Jobs per change set of an import: Dataverse's limit for one `$batch` change set.
BATCH_CHUNK = 1000
TARGET_SETS = {"contact": "contacts", "lead": "leads", "account": "accounts"}


@dataclasses.dataclass(frozen=True)
class _RowWrite:
    """A PATCH of a job's row under its lease, and the parts that must be written with it: one change set."""

    store: DataverseJobStore
    job_id: str
    parts: tuple[BatchPart, ...]

    def alone(self) -> Row:
        """With nothing else to send: a plain PATCH, or a change set when entries go with it."""
        client = self.store.client
        patch, *also = self.parts
        if not also:
            updated = client.update(self.store.t.entity_set, self.job_id, patch.body, etag=patch.headers["If-Match"],
                                    select=self.store.columns)
            assert updated is not None
            return updated
        return self.answer(client.batch(self.parts, changeset=True))

    def answer(self, results: builtins.list[BatchResult]) -> Row:
        if not all(result.ok for result in results):
            raise self.store.refusal(results, f"Dataverse refused job {self.job_id}'s outcome")
        return dict(results[0].json())


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
    # A change set holds at most 1,000 operations: a larger import is queued in several, in order.
    atomic_batches = False

    def __init__(
        self,
        client: DataverseClient,
        table: DataverseTableSettings,
        *,
        entries: DataverseEntriesSettings | None = None,
        clock: Callable[[], float] = time.time,
        page_size: int = 1000,
        claim_window: int | None = None,
    ) -> None:
        self.client = client
        # A fixed window (tests); None sizes it by each claim's limit.
        self.claim_window = claim_window
        self.t = table
        self.e = entries or DataverseEntriesSettings()
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
            "contact": (table.contact_lookup, value_column(table.contact_lookup)),
            "lead": (table.lead_lookup, value_column(table.lead_lookup)),
            "account": (table.account_lookup, value_column(table.account_lookup)),
        }
        self.columns = self._all_columns()
        # The last version of each row this store holds a lease on: its ETag makes the next write conditional.
        self._held: dict[str, Row] = {}
        self._lock = threading.Lock()
        # Writes of jobs running at once leave together: one `$batch` per round trip, not one request per write.
        self._writes = shared_writes(client)

    def _all_columns(self) -> list[str]:
        t = self.t
        names = [
            t.primary_key, "statecode", "statuscode", t.created_on, t.modified_on, t.operation, t.tags, t.score,
            *(value for _, value in self._lookups.values()), t.result_code, t.message, t.http_status, t.attempts,
            t.last_attempt_at, t.next_attempt_at, t.lease_owner, t.lease_expires_at, t.applied_at, t.posted_at,
            t.score_before, t.attempt_log, t.payload, t.request_id, t.origin,
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
        target_kind, target_id = self._target(row)
        if row.get(t.operation) is None and row.get(t.payload):
            try:
                kept = json.loads(row[t.payload])
            except ValueError:
                kept = {"operation": None, "payload": row[t.payload]}
            return {**kept, "target_kind": target_kind, "target_id": target_id}
        return {
            "operation": self._operation(row),
            "target_kind": target_kind,
            "target_id": target_id,
            "tags": row.get(t.tags),
            "score": row.get(t.score),
        }

    def _operation(self, row: Row) -> Any:
        operation = row.get(self.t.operation)
        if isinstance(operation, int) and not isinstance(operation, bool):
            operation = self._operation_of.get(operation, str(operation))
        return operation

    def _target(self, row: Row) -> tuple[str | None, str | None]:
        targets = [(kind, row.get(column)) for kind, (_, column) in self._lookups.items() if row.get(column)]
        kind = " and ".join(k for k, _ in targets) if targets else None
        target_id = targets[0][1] if len(targets) == 1 else (", ".join(str(v) for _, v in targets) or None)
        return kind, target_id

    def _job(self, row: Row) -> Job:
        t = self.t
        raw = self._raw(row)
        created = _epoch(row.get(t.created_on)) or self._clock()
        request_id = row.get(t.request_id) or None
        origin = _json_or_none(row.get(t.origin))
        request = kinds.try_request({**raw, "request_id": request_id, "origin": origin})
        return Job(
            id=str(row[t.primary_key]),
            request=request,
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
            request_id=request_id,
        )

    @property
    def _creation_order(self) -> str:
        """`$orderby` for creation order, as `_order` sorts."""
        t = self.t
        return ",".join([f"{t.created_on} asc", *([f"{t.sequence} asc"] if t.sequence else []), f"{t.primary_key} asc"])

    def _order(self, row: Row) -> tuple[str, str, str]:
        t = self.t
        return (str(row.get(t.created_on) or ""), str(row.get(t.sequence) or "") if t.sequence else "",
                str(row[t.primary_key]))

    def _status_columns(self, status: JobStatus) -> Row:
        code, state = self._reason[status]
        return {"statuscode": code, "statecode": state}

    # -- creating ------------------------------------------------------------------------------------------

    def on_form(self, kind_name: str) -> bool:
        """Whether a CRM user creates this kind on the job form (else the connector keeps it as JSON)."""
        kind = next((k for k in kinds.all_kinds() if k.name == kind_name), None)
        if kind is None or not kind.on_crm_form:
            return False
        return not self.t.operation_values or kind_name in self.t.operation_values

    def input_columns(self, raw: dict[str, Any]) -> Row:
        """The columns a job row holds for this input (also invalid input, as a user could leave it)."""
        t = self.t
        columns: Row = {}
        try:
            name = kinds.kind_named(raw.get("operation")).name
        except ValueError:
            name = None
        if name is not None and not self.on_form(name):
            # The connector's own kind: its fields as JSON, the target in the lookups all jobs use.
            fields = {k: v for k, v in raw.items() if k not in ("target_kind", "target_id", "request_id", "origin")}
            columns[t.payload] = json.dumps({**fields, "operation": name})
        elif name is not None:
            columns[t.operation] = t.operation_values.get(name, name) if t.operation_values else name
        else:
            columns[t.operation] = raw.get("operation")  # as the user left it; the runner fails it with a reason
        if t.payload not in columns:
            columns[t.tags] = raw.get("tags")
            score = raw.get("score")
            if isinstance(score, str) and re.fullmatch(r"\s*[+-]?\d+\s*", score):
                score = int(score)
            columns[t.score] = score
        if raw.get("request_id"):
            columns[t.request_id] = str(raw["request_id"])
        if raw.get("origin"):
            columns[t.origin] = json.dumps(raw["origin"])
        columns.update(self._target_columns(raw.get("target_kind"), raw.get("target_id")))
        return columns

    def _target_columns(self, kind: Any, target_id: Any) -> Row:
        if target_id in (None, "") or kind not in self._lookups:
            return {}
        if not is_guid(str(target_id)):
            raise InvalidJob([
                f"The {kind} id {target_id!r} is not a Dataverse row id; jobs in Dataverse point at records "
                f"by their GUID."
            ])
        navigation, _ = self._lookups[str(kind)]
        return {f"{navigation}@odata.bind": row_url(TARGET_SETS[str(kind)], str(target_id))}

    def _new_row(self, raw: dict[str, Any]) -> Row:
        row = self.input_columns(raw)
        row.update(self._status_columns(JobStatus.PENDING))
        row[self.t.attempts] = 0
        return row

    def add(self, requests: Sequence[JobRequest]) -> builtins.list[Job]:
        if not requests:
            return []
        known = self._by_request_id([r.request_id for r in requests if r.request_id is not None])
        new: builtins.list[JobRequest] = []
        for request in requests:
            if request.request_id is None or request.request_id not in known:
                new.append(request)
                if request.request_id is not None:
                    known[request.request_id] = None  # a second one in this batch names the first
        parts = [
            BatchPart("POST", f"{self.t.entity_set}?{encode_query({'$select': ','.join(self.columns)})}",
                      body=self._new_row(kinds.raw_of(request)), headers={"Prefer": "return=representation"})
            for request in new
        ]
        # One change set: all the jobs or none, created in the order given.
        created = iter([self._job(result.json()) for result in self._batch(parts, changeset=True)])
        out: builtins.list[Job] = []
        for request in requests:
            existing = known.get(request.request_id) if request.request_id is not None else None
            if existing is None:
                existing = next(created)
                if request.request_id is not None:
                    known[request.request_id] = existing
            out.append(existing)
        return out

    def _by_request_id(self, request_ids: Sequence[str]) -> dict[str, Job | None]:
        found: dict[str, Job | None] = {}
        for start in range(0, len(request_ids), 50):  # a filter of fifty terms stays well inside a URL's length
            terms = " or ".join(f"{self.t.request_id} eq {odata_literal(rid)}" for rid in request_ids[start:start + 50])
            for row in self.client.query(self.t.entity_set, select=self.columns, filter=terms,
                                         page_size=self.page_size):
                job = self._job(row)
                if job.request_id is not None:
                    found[job.request_id] = job
        return found

    def add_batch(self, batch: Batch, requests: BatchRows) -> Batch:
        """Read whole before the first job is created, so that a file refused halfway queues nothing; then queued
        1,000 jobs per change set. The batch's record is kept after its last job."""
        wanted = builtins.list(requests)
        queued = already = 0
        for start in range(0, len(wanted), BATCH_CHUNK):
            chunk = wanted[start:start + BATCH_CHUNK]
            stored = self._by_request_id([r.request_id for r in chunk if r.request_id is not None])
            seen: set[str] = set()
            for job in self.add(chunk):
                if job.id in seen or (job.request_id is not None and job.request_id in stored):
                    already += 1
                else:
                    queued += 1
                seen.add(job.id)
        kept = dataclasses.replace(batch, at=self._clock(), rows=requests.rows, invalid=requests.invalid,
                                   queued=queued, already=already)
        self.keep([kept.record()])
        return kept

    def cancel_where(self, query: JobFilter, by: Actor) -> builtins.list[str]:
        if query.status not in (None, "pending", "retrying"):
            return []  # only pending jobs can be cancelled
        cancelled = []
        for job_id in self._found(dataclasses.replace(query, status=query.status or "pending", after=None)):
            try:
                self.cancel(job_id, by)
            except NotAllowed:  # claimed or cancelled since it was read
                continue
            cancelled.append(job_id)
        return cancelled

    def retry_where(self, query: JobFilter, by: Actor) -> builtins.list[str]:
        if query.status not in (None, "failed"):
            return []  # only failed jobs can be retried
        retried = semantics.retried(self._clock())
        queued = []
        for job_id in self._found(dataclasses.replace(query, status="failed", after=None)):
            try:
                self._act(job_id, "retry", semantics.RETRYABLE, lambda _: retried, by)
            except NotAllowed:  # retried or changed since it was read
                continue
            queued.append(job_id)
        return queued

    def _found(self, query: JobFilter) -> builtins.list[str]:
        """The ids of every row `query` finds, whatever its limit."""
        t = self.t
        rows = self.client.query(t.entity_set, select=[t.primary_key, t.tags, t.operation, t.payload,
                                                       *(value for _, value in self._lookups.values())],
                                 filter=" and ".join(self._clauses(query)) or None, page_size=self.page_size)
        return [str(row[t.primary_key]) for row in self._tagged(rows, query.tag)]

    def _tagged(self, rows: Iterable[Row], tag: str | None) -> Iterator[Row]:
        """The rows naming `tag`: `contains` in the query also finds a tag that is part of another one."""
        for row in rows:
            if tag is None or semantics.tag_among(raw_tags(self._raw(row).get("tags")), tag):
                yield row

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

    def list(self, query: JobFilter) -> Page:
        t = self.t
        tie = t.sequence or t.primary_key
        # With a tag, rows are read until enough of them name it exactly (see `_tagged`).
        found = self._tagged(self.client.query(
            t.entity_set, select=self.columns, filter=" and ".join(self._clauses(query)) or None,
            orderby=f"{t.created_on} desc,{tie} desc", top=query.limit + 1 if query.tag is None else None,
            page_size=self.page_size), query.tag)
        rows = builtins.list(itertools.islice(found, query.limit + 1))
        more = len(rows) > query.limit
        rows = rows[: query.limit]
        cursor = f"{rows[-1][t.created_on]}|{rows[-1][tie]}" if more and rows else None
        return Page([self._job(row) for row in rows], cursor)

    def _clauses(self, query: JobFilter) -> builtins.list[str]:
        t = self.t
        clauses: builtins.list[str] = []
        if query.status == "retrying":
            clauses.append(f"statuscode eq {self._reason[JobStatus.PENDING][0]} and {t.attempts} gt 0")
        elif query.status is not None:
            clauses.append(f"statuscode eq {self._reason[JobStatus(query.status)][0]}")
        if query.target_id is not None:
            if not is_guid(query.target_id):
                # It could match no row: say why, rather than answer "no jobs".
                raise errors.InvalidInput(f"The record id {shown(query.target_id)} is not a Dataverse row id; jobs "
                                          "in Dataverse point at records by their GUID.")
            clauses.append("(" + " or ".join(f"{column} eq {query.target_id.lower()}"
                                             for _, column in self._lookups.values()) + ")")
        if query.since is not None:
            clauses.append(f"{t.created_on} ge {_iso(math.floor(query.since))}")
        if query.batch is not None:
            # The batch is part of the origin's JSON, as `input_columns` writes it.
            clauses.append(f"contains({t.origin},{odata_literal(_batch_mark(query.batch))})")
        if query.request_ids:
            clauses.append("(" + " or ".join(f"{t.request_id} eq {odata_literal(rid)}"
                                             for rid in query.request_ids) + ")")
        if query.tag is not None:
            clauses.append(f"contains({t.tags},{odata_literal(query.tag.strip())})")
        if query.operation is not None:
            clauses.append(self._operation_clause(query.operation))
        if query.result_code is not None:
            clauses.append(f"{t.result_code} eq {odata_literal(query.result_code)}")
        if query.text is not None:
            text = query.text.strip()
            by_id = f" or {t.primary_key} eq {text.lower()}" if is_guid(text) else ""
            clauses.append(f"(contains({t.message},{odata_literal(query.text)}){by_id})")
        if query.after is not None:
            clauses.append(self._before(query.after))
        return clauses

    def _operation_clause(self, name: str) -> str:
        """A kind in the operation column (by its choice value, when the column is a choice), or the connector's
        own kind in the payload's JSON, as `input_columns` writes them."""
        t = self.t
        if not self.on_form(name):
            return f"contains({t.payload},{odata_literal(json.dumps({'operation': name})[1:-1])})"
        value = t.operation_values.get(name, name) if t.operation_values else name
        return f"{t.operation} eq {value if isinstance(value, int) else odata_literal(str(value))}"

    def _before(self, cursor: str) -> str:
        """The rows created before the cursor's, in the order `list` reads them."""
        t = self.t
        created, _, tie_value = cursor.partition("|")
        try:
            _epoch(created)
        except ValueError:
            raise NotAllowed(f"The page cursor {cursor!r} is not one this store gave out.") from None
        tie = t.sequence or t.primary_key
        literal = odata_literal(tie_value) if t.sequence else tie_value
        return f"({t.created_on} lt {created} or ({t.created_on} eq {created} and {tie} lt {literal}))"

    def attempts(self, job_id: str) -> builtins.list[Attempt]:
        row = self._row(job_id, [self.t.primary_key, self.t.attempt_log])
        return parse_attempt_log(job_id, row.get(self.t.attempt_log) or "")

    def _unfinished(self) -> builtins.list[Row]:
        running = self._reason[JobStatus.RUNNING][0]
        return sorted(self._rows(f"{self._pending_clause()} or statuscode eq {running}"), key=self._order)

    def _pending_clause(self) -> str:
        """The rows that count as pending: their status reason, and active rows with a status reason the mapping
        lacks (see `_status`)."""
        pending, running = self._reason[JobStatus.PENDING], self._reason[JobStatus.RUNNING]
        finished_states = {self._reason[s][1] for s in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)}
        if pending[1] in finished_states:
            return f"statuscode eq {pending[0]}"
        return f"(statuscode eq {pending[0]} or (statecode eq {pending[1]} and statuscode ne {running[0]}))"

    def counts(self) -> dict[str, int]:
        """Counted by Dataverse itself; a table past its aggregate limit (50,000 rows) is counted page by page."""
        t = self.t
        columns = ["statecode", "statuscode", t.attempts]
        try:
            groups = [(row, int(row["count"])) for row in self.client.count_by(t.entity_set, columns)]
        except errors.PermanentError as exc:
            log.info("Counting jobs page by page: Dataverse would not aggregate them (%s)", exc.message)
            groups = [(row, 1) for row in self.client.query(t.entity_set, select=[t.primary_key, *columns],
                                                            page_size=self.page_size)]
        counts: dict[str, int] = {}
        for row, n in groups:
            status = self._status(row)
            name = "retrying" if status is JobStatus.PENDING and (row.get(t.attempts) or 0) > 0 else status.value
            counts[name] = counts.get(name, 0) + n
        return counts

    def oldest_pending(self) -> Job | None:
        t = self.t
        tie = t.sequence or t.primary_key
        rows = self.client.query(t.entity_set, select=self.columns, filter=" and ".join(
            self._clauses(JobFilter(status="pending"))), orderby=f"{t.created_on} asc,{tie} asc", top=1)
        row = next(iter(rows), None)
        return self._job(row) if row is not None else None

    def finished_since(self, since: float) -> dict[str, int]:
        """By the rows' last change (`modified_on`): a finished row changes no more until someone acts on it."""
        t = self.t
        done = " or ".join(f"statuscode eq {self._reason[s][0]}" for s in (JobStatus.SUCCEEDED, JobStatus.FAILED))
        rows = self.client.query(t.entity_set, select=[t.primary_key, t.result_code], page_size=self.page_size,
                                 filter=f"({done}) and {t.modified_on} ge {_iso(math.floor(since))}")
        found: dict[str, int] = {}
        for row in rows:
            code = row.get(t.result_code) or ""
            found[code] = found.get(code, 0) + 1
        return found

    def failed_attempts_since(self, since: float) -> dict[tuple[str, str], int]:
        """From the attempt logs of the rows changed since then (an attempt changes its row)."""
        t = self.t
        rows = self.client.query(t.entity_set, select=self.columns, page_size=self.page_size,
                                 filter=f"{t.modified_on} ge {_iso(math.floor(since))}")
        found: dict[tuple[str, str], int] = {}
        for row in rows:
            job = self._job(row)
            kind = str(job.to_json()["operation"] or "")
            for attempt in parse_attempt_log(job.id, row.get(t.attempt_log) or ""):
                if attempt.started_at >= since and attempt.outcome != "succeeded":
                    key = (kind, attempt.result_code or "")
                    found[key] = found.get(key, 0) + 1
        return found

    def heartbeat(self, owner: str) -> None:
        """An upsert of one entry row per runner, its id made from the owner's name."""
        e = self.e
        row_id = str(uuid.uuid5(_ENTRY_NAMESPACE, f"{RUNNER_STREAM}|{owner}"))
        self.client.update(e.entity_set, row_id, {e.stream: RUNNER_STREAM, e.key: owner, e.job_id: "",
                                                  e.data: "{}", e.at: _iso_ms(self._clock())}, etag=None)

    def runners(self, since: float) -> builtins.list[RunnerSeen]:
        seen = [RunnerSeen(entry.key, entry.at) for entry in self.entries(RUNNER_STREAM) if entry.at >= since]
        return sorted(seen, key=lambda runner: runner.seen_at, reverse=True)

    def audit(self, job_id: str) -> builtins.list[AuditEntry]:
        row = self._row(job_id, [self.t.primary_key, self.t.attempt_log])
        return parse_audit_lines(job_id, row.get(self.t.attempt_log) or "")

    def entries(self, stream: str, key: str | None = None) -> builtins.list[Entry]:
        e = self.e
        terms = [f"{e.stream} eq {odata_literal(stream)}"]
        if key is not None:
            terms.append(f"{e.key} eq {odata_literal(key)}")
        rows = self.client.query(e.entity_set, select=[e.primary_key, e.stream, e.key, e.job_id, e.data, e.at],
                                 filter=" and ".join(terms), page_size=self.page_size)
        found = [Entry(stream=row[e.stream], key=row[e.key], data=json.loads(row[e.data] or "{}"),
                       job_id=row[e.job_id], at=_epoch(row[e.at]) or 0.0) for row in rows]
        return sorted(found, key=lambda entry: entry.at)

    def waiting(self) -> tuple[int, float | None]:
        # Unfinished rows only, read once: a table with a million finished jobs costs the same as an empty one.
        jobs = self._unfinished_jobs()
        retrying = sum(1 for job, _ in jobs if job.retrying)
        if not retrying:
            return 0, None
        due = [job.next_attempt_at for job, _ in self._unblocked(self._clock(), jobs)
               if job.status is JobStatus.PENDING]
        return retrying, (min(due) if due else None)

    def _unfinished_jobs(self) -> builtins.list[tuple[Job, Row]]:
        return [(self._job(row), row) for row in self._unfinished()]

    def _unblocked(self, now: float, jobs: builtins.list[tuple[Job, Row]]) -> builtins.list[tuple[Job, Row]]:
        """The unfinished jobs the ordering rule lets run, or that run already (`semantics.claimable`)."""
        rows = {job.id: row for job, row in jobs}
        return [(job, rows[job.id]) for job in semantics.claimable([job for job, _ in jobs], now)]

    # -- claiming ------------------------------------------------------------------------------------------

    def claim(self, owner: str, limit: int, lease_seconds: float) -> builtins.list[Job]:
        now = self._clock()
        offers = self._offers(now, limit)
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

    def _offers(self, now: float, limit: int) -> builtins.list[tuple[Job, Row]]:
        """Up to `limit` jobs a claim may take, due longest ago first, without reading the whole backlog.

        The due pending rows are read oldest first, a window at a time (two at most). What
        could hold one of them back is an earlier unfinished row, or a running row on its key: the earlier due
        rows are in the window, and the running rows and the pending rows not due yet (waiting for a retry)
        that were created up to the window's last row are read beside it, in one more request. Both are few
        however long the backlog: the runners' leases, and the retries of an outage. So a claim costs the same
        with 50,000 rows waiting as with 50; a key whose jobs fill the window holds back the keys behind it for
        that claim only.
        """
        t = self.t
        cutoff = _iso(math.floor(now))
        size = self.claim_window or min(MAX_PAGE_SIZE, max(CLAIM_WINDOW_MIN, CLAIM_WINDOW_PER_JOB * limit))
        # Rows a CRM user created have no next attempt time yet: they are due.
        window = self.client.query(
            t.entity_set, select=self.columns, orderby=self._creation_order, page_size=size,
            filter=f"{self._pending_clause()} and ({t.next_attempt_at} le {cutoff} or {t.next_attempt_at} eq null)")
        running = f"statuscode eq {self._reason[JobStatus.RUNNING][0]}"
        read: builtins.list[Row] = []
        for _ in range(CLAIM_PAGES):
            page = builtins.list(itertools.islice(window, size))
            read += page
            # The running rows, and those waiting for a retry that were created up to the window's last row.
            waiting = f" or ({self._pending_clause()} and {t.next_attempt_at} gt {cutoff} and {t.created_on} le " \
                      f"{read[-1][t.created_on]})" if read else ""
            others = self._rows(running + waiting)
            # A row read twice (it changed between the two reads) counts as its last reading.
            unfinished = sorted({self._key(row): row for row in [*read, *others]}.values(), key=self._order)
            offers: builtins.list[tuple[Job, Row]] = []
            for job, row in self._unblocked(now, [(self._job(row), row) for row in unfinished]):
                due_now = job.status is JobStatus.PENDING and job.next_attempt_at <= now
                expired = job.status is JobStatus.RUNNING and not semantics.holds_lease(job, now)
                if due_now or expired:
                    offers.append((job, row))
            if len(offers) >= limit or len(page) < size:
                break
        offers.sort(key=lambda offer: (offer[0].next_attempt_at if offer[0].status is JobStatus.PENDING else now))
        return offers[:limit]

    def _rows(self, where: str) -> builtins.list[Row]:
        return builtins.list(self.client.query(self.t.entity_set, select=self.columns, filter=where,
                                               page_size=self.page_size))

    def _key(self, row: Row) -> str:
        return str(row[self.t.primary_key])

    def _claim_part(self, job: Job, row: Row, owner: str, now: float, lease_seconds: float) -> BatchPart:
        t = self.t
        changes: Row = {**self._status_columns(JobStatus.RUNNING), t.lease_owner: owner,
                        t.lease_expires_at: _iso(now + lease_seconds)}
        if job.status is JobStatus.RUNNING:
            # The runner holding it stopped renewing: that try counts, as in every store.
            attempt = semantics.expired_attempt(job.id, job.lease_owner, now)
            changes.update(self._attempt_columns(row, attempt))
            changes[t.next_attempt_at] = _iso(now)
        path = f"{t.entity_set}({job.id})?{encode_query({'$select': ','.join(self.columns)})}"
        return BatchPart("PATCH", path, body=changes,
                         headers={"If-Match": row["@odata.etag"], "Prefer": "return=representation"})

    def _batch(self, parts: Sequence[BatchPart], **options: bool) -> builtins.list[Any]:
        results = []
        for start in range(0, len(parts), 1000):
            chunk = self.client.batch(parts[start:start + 1000], **options)
            if options.get("changeset") and not all(r.ok for r in chunk):
                self._refused(chunk, "Dataverse refused the jobs")
            results.extend(chunk)
        return results

    def _refused(self, results: Sequence[BatchResult], what: str) -> NoReturn:
        raise self.refusal(results, what)

    def refusal(self, results: Sequence[BatchResult], what: str) -> Exception:
        """The error for a change set that failed (the client makes sure it names the part that did): a
        throttled or unavailable service is worth asking again later."""
        error = self.client.batch_error(next(r for r in results if not r.ok))
        message = f"{what}: {error.message}"
        if isinstance(error, errors.Conflict):
            return error
        refusal: StoreError
        if isinstance(error, errors.TransientError):
            refusal = StoreUnavailable(message, http_status=error.http_status, retry_after=error.retry_after)
        else:
            refusal = StoreError(message, http_status=error.http_status)
        refusal.__cause__ = error
        return refusal

    def _columns(self, fields: dict[str, Any]) -> Row:
        """Job fields (as `semantics` names them) as the table's columns."""
        t = self.t
        out: Row = {}
        for name, value in fields.items():
            if name == "status":
                out.update(self._status_columns(value))
            elif name == "message":
                out[t.message] = _clip(value)
            elif name in ("next_attempt_at", "lease_expires_at"):
                out[getattr(t, name)] = _iso(value)
            else:
                out[getattr(t, name)] = value
        return out

    # -- writes under a lease ------------------------------------------------------------------------------

    def _write(self, owner: str, job_id: str, changes: Callable[[Row], Row], *, keep: bool = True,
               also: Sequence[BatchPart] = ()) -> Row:
        """PATCH the row while it is running under `owner`, with the last ETag seen; re-read after a 412. Parts
        in `also` go in one change set with the PATCH, after it: all of them are written, or none."""
        with self._lock:
            row = self._held.get(job_id)
        for _ in range(DATAVERSE_WRITE_TRIES):
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
                updated = self._patch(job_id, changes(row), row["@odata.etag"], also)
            except errors.Conflict:
                row = None
                continue
            with self._lock:
                if keep:
                    self._held[job_id] = updated
                else:
                    self._held.pop(job_id, None)
            return updated
        raise LeaseLost(f"Job {job_id} kept changing under {owner}; giving it up.")

    def _patch(self, job_id: str, changes: Row, etag: str, also: Sequence[BatchPart]) -> Row:
        path = f"{self.t.entity_set}({job_id})?{encode_query({'$select': ','.join(self.columns)})}"
        patch = BatchPart("PATCH", path, body=changes, headers={"If-Match": etag, "Prefer": "return=representation"})
        return self._writes(_RowWrite(self, job_id, (patch, *also)))

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
        return {t.attempts: int(row.get(t.attempts) or 0) + 1,
                t.attempt_log: append_to_log(previous, format_attempt(attempt, number)),
                t.last_attempt_at: _iso(attempt.ended_at or attempt.started_at)}

    def record_attempt(self, owner: str, attempt: Attempt) -> None:
        self._write(owner, attempt.job_id, lambda row: self._attempt_columns(row, attempt))

    def save_progress(
        self, owner: str, job_id: str, *, score_before: int | None = None, applied: bool = False,
        posted: bool = False, effects: Effects | None = None,
    ) -> None:
        t = self.t
        moment = self._clock()
        now = _iso(moment)

        def changes(row: Row) -> Row:
            out: Row = {}
            if score_before is not None:
                out[t.score_before] = score_before
            if applied and not row.get(t.applied_at):
                out[t.applied_at] = now
            if posted and not row.get(t.posted_at):
                out[t.posted_at] = now
            return out or {t.lease_owner: owner}

        self._write(owner, job_id, changes, also=self._effect_parts(job_id, effects, moment))

    def _effect_parts(self, job_id: str, effects: Effects | None, now: float) -> builtins.list[BatchPart]:
        if not effects:
            return []
        return self._entry_parts(job_id, effects.records, now) + self._new_job_parts(effects.jobs)

    def _new_job_parts(self, requests: Sequence[JobRequest]) -> builtins.list[BatchPart]:
        """A POST per request whose request id is not stored yet (nor earlier in `requests`)."""
        stored = set(self._by_request_id([r.request_id for r in requests if r.request_id is not None]))
        parts = []
        for request in requests:
            if request.request_id is not None:
                if request.request_id in stored:
                    continue
                stored.add(request.request_id)
            parts.append(BatchPart("POST", self.t.entity_set, body=self._new_row(kinds.raw_of(request))))
        return parts

    def finish(self, owner: str, job_id: str, outcome: Outcome) -> None:
        t = self.t
        now = self._clock()
        changes = self._columns({
            "status": outcome.status, "result_code": outcome.result_code, "message": outcome.message,
            "http_status": outcome.http_status,
            "next_attempt_at": outcome.next_attempt_at if outcome.next_attempt_at is not None else now,
            "lease_owner": None, "lease_expires_at": None,
        })

        def with_attempt(row: Row) -> Row:
            # One PATCH for the last attempt, the marks and the outcome: a request per job saved two or three times.
            out = dict(changes)
            if outcome.attempt is not None:
                out.update(self._attempt_columns(row, outcome.attempt))
            if outcome.posted and not row.get(t.posted_at):
                out[t.posted_at] = _iso(now)
            if outcome.applied and not row.get(t.applied_at):
                out[t.applied_at] = _iso(now)
            return out

        self._write(owner, job_id, with_attempt, keep=False, also=self._effect_parts(job_id, outcome.effects, now))

    def _entry_parts(self, job_id: str, records: Sequence[Record], now: float) -> builtins.list[BatchPart]:
        """An upsert (PATCH without If-Match) per record. A record with a `unique` value has a row id made from
        it, so it can only ever be one row; one stored already is left as it is."""
        e = self.e
        rows = [(_entry_id(record), record) for record in records]
        kept = self._existing_entries([row_id for row_id, record in rows if record.unique])
        parts = []
        for row_id, record in rows:
            if row_id in kept:
                continue
            body = {e.stream: record.stream, e.key: record.key, e.job_id: job_id, e.data: json.dumps(record.data),
                    e.at: _iso_ms(now)}
            parts.append(BatchPart("PATCH", f"{e.entity_set}({row_id})", body=body))
        return parts

    def _existing_entries(self, row_ids: Sequence[str]) -> set[str]:
        if not row_ids:
            return set()
        e = self.e
        terms = " or ".join(f"{e.primary_key} eq {row_id}" for row_id in row_ids)
        rows = self.client.query(e.entity_set, select=[e.primary_key], filter=terms, page_size=self.page_size)
        return {str(row[e.primary_key]).lower() for row in rows}

    def release(self, owner: str, job_id: str) -> None:
        changes = self._columns(semantics.released())
        try:
            self._write(owner, job_id, lambda row: changes, keep=False)
        except LeaseLost:
            log.debug("job %s: released after its lease was lost; nothing to give back", job_id)

    # -- a person's actions --------------------------------------------------------------------------------

    def _act(self, job_id: str, action: str, allowed: frozenset[JobStatus],
             fields: Callable[[Row], dict[str, Any]], by: Actor) -> None:
        """PATCH a row (with the job fields `fields` gives for it) only while it is in an allowed status, with
        If-Match so a concurrent claim wins cleanly; the attempt log gets a line saying who asked."""
        for _ in range(DATAVERSE_WRITE_TRIES):
            row = self._row(job_id)
            job = self._job(row)
            if job.status not in allowed:
                raise NotAllowed(semantics.refusal(action, job))
            line = format_audit(AuditEntry(job_id=job_id, at=self._clock(), action=action, who=by.who, via=by.via))
            log_text = row.get(self.t.attempt_log) or ""
            audited = {**self._columns(fields(row)), self.t.attempt_log: append_to_log(log_text, line)}
            try:
                self.client.update(self.t.entity_set, job_id, audited, etag=row["@odata.etag"])
                return
            except errors.Conflict:
                continue
        raise StoreUnavailable(f"Job {job_id} kept changing; try again.")

    def keep(self, records: Sequence[Record]) -> None:
        parts = self._entry_parts("", records, self._clock())
        self._batch(parts, changeset=True)

    def retry(self, job_id: str | None, by: Actor) -> builtins.list[str]:
        retried = semantics.retried(self._clock())
        if job_id is not None:
            self._act(job_id, "retry", semantics.RETRYABLE, lambda _: retried, by)
            return [job_id]
        t = self.t
        failed = self.client.query(t.entity_set, select=[t.primary_key],
                                   filter=f"statuscode eq {self._reason[JobStatus.FAILED][0]}",
                                   page_size=self.page_size)
        queued = []
        for row in builtins.list(failed):
            try:
                self._act(str(row[t.primary_key]), "retry", semantics.RETRYABLE, lambda _: retried, by)
            except NotAllowed:
                continue
            queued.append(str(row[t.primary_key]))
        return queued

    def cancel(self, job_id: str, by: Actor) -> Job:
        self._act(job_id, "cancel", semantics.CANCELLABLE,
                  lambda row: semantics.cancelled(last_attempt_number(row.get(self.t.attempt_log) or "")), by)
        return self.get(job_id)


# -- helpers -----------------------------------------------------------------------------------------------


def _batch_mark(batch_id: str) -> str:
    """How a batch id reads inside the origin column's JSON."""
    return json.dumps({"batch": batch_id})[1:-1]


def _json_or_none(text: object) -> Any:
    try:
        return json.loads(str(text)) if text else None
    except ValueError:
        return None


def _clip(message: str) -> str:
    return message if len(message) <= MESSAGE_MAX else message[: MESSAGE_MAX - 1] + "…"


def append_to_log(log_text: str, line: str) -> str:
    """The log with one more line; past its size the oldest lines go, since the newest are what support reads."""
    text = (log_text + "\n" if log_text else "") + line
    if len(text) > ATTEMPT_LOG_MAX:
        text = text[-ATTEMPT_LOG_MAX:].split("\n", 1)[-1]
    return text


# Entry row ids made from a record's `unique` value: the same value is always the same row.
_ENTRY_NAMESPACE = uuid.UUID("6f1c2d0e-3b1a-4f43-9c1e-2a7f0b6d5e11")


def _entry_id(record: Record) -> str:
    if record.unique is None:
        return str(uuid.uuid4())
    return str(uuid.uuid5(_ENTRY_NAMESPACE, f"{record.stream}|{record.unique}"))


_LOG_LINE = re.compile(r"^#(\d+) \| (\S+) \| (\S+) \| (\w+) \| (\S+) \| (\S+) \| (.*)$")


def format_attempt(attempt: Attempt, number: int) -> str:
    """One line of the attempt log; the message last, on one line and clipped, so the line stays parseable and
    always fits the log whole."""
    message = _clip(" ".join(attempt.message.split()))
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


_AUDIT_LINE = re.compile(r"^@ (\S+) \| (\w+) \| (.*) \| (\S+)$")


def format_audit(entry: AuditEntry) -> str:
    """A line of the attempt log saying who retried or cancelled the job, and from where."""
    who = " ".join(entry.who.replace("|", "/").split()) or "?"
    return f"@ {_iso_ms(entry.at)} | {entry.action} | {who} | {entry.via}"


def parse_audit_lines(job_id: str, text: str) -> builtins.list[AuditEntry]:
    out = []
    for line in text.splitlines():
        match = _AUDIT_LINE.match(line)
        if match:
            at, action, who, via = match.groups()
            out.append(AuditEntry(job_id=job_id, at=_epoch(at) or 0.0, action=action, who=who, via=via))
    return out


def value_column(navigation: str) -> str:
    """The column a lookup is read back as: `_<lowercased navigation>_value`."""
    return f"_{navigation.lower()}_value"

__all__ = ["DataverseJobStore", "format_audit", "parse_attempt_log", "parse_audit_lines"]
