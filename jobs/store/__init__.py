"""Job stores: where jobs wait and where their status lives. One contract, three audiences.

Every store gives the same guarantees, so the runner does not know which one it drives; `tests/contract` runs each
guarantee against every store:
- `claim` is atomic across processes and machines: a job is handed to one runner at a time, under a lease;
- a job is only claimable when no earlier unfinished job shares one of its keys, and no later job on one of its
  keys is running (per-key creation order; the rule is `semantics.claimable`);
- a lease that is not renewed expires, and the job becomes claimable again, with an attempt recorded;
- every write made on behalf of a claim checks that the claim still holds (`LeaseLost` otherwise);
- an outcome is one write: the status, the last attempt and the posted mark are kept together or not at all;
- the mark that a job's change is applied, and its `Effects` (the records of durable subscribers, such as score
  history and trigger firings, and the jobs they queue) are one write too: both or neither, in `save_progress`
  or, for a change that is harmless to apply again, with the outcome (`Outcome.applied`);
- a request id is queued once: adding it again returns the job it already names;
- an import is a batch, queued all or none where the store has transactions that large (`atomic_batches`), and
  kept as a record of stream `batch` in the same write.

The protocol is split by who uses it: `RunnerStore` (the runner), `PeopleStore` (people acting on jobs, each act
audited) and `ReaderStore` (whoever reads: the CLI, the console). `JobStore` is all three.
"""

from __future__ import annotations

import builtins
import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from jobs.model import Attempt, Job, JobRequest, JobStatus
from jobs.store.errors import JobNotFound, LeaseLost, NotAllowed, StoreError, StoreUnavailable


@dataclass(frozen=True)
class Record:
    """An entry a durable subscriber keeps with a job's outcome, in the same transaction: score history, a
    trigger firing. `stream` names the subscriber's journal, `key` what the entry is about (a record and tag).
    `unique`, when given, is kept once per stream: a second record with it is dropped, never stored twice."""

    stream: str
    key: str
    data: dict[str, Any]
    unique: str | None = None


@dataclass(frozen=True)
class Entry:
    """A stored `Record`, with the job it came with and when."""

    stream: str
    key: str
    data: dict[str, Any]
    job_id: str
    at: float


@dataclass(frozen=True)
class Effects:
    """What durable subscribers keep when a job's change is applied, in the same write as the applied mark:
    records, and jobs to queue (a request id already stored is not queued again, as with `add`)."""

    records: tuple[Record, ...] = ()
    jobs: tuple[JobRequest, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.records or self.jobs)

    def __add__(self, other: Effects) -> Effects:
        return Effects(self.records + other.records, self.jobs + other.jobs)


@dataclass(frozen=True)
class Outcome:
    """How a claimed job leaves `running`: succeeded, failed, or back to pending (retrying at `next_attempt_at`)."""

    status: JobStatus
    result_code: str | None
    message: str
    http_status: int | None = None
    next_attempt_at: float | None = None
    # The last try, recorded in the same write (a job's final attempt is written once, not twice).
    attempt: Attempt | None = None
    # The timeline post is done: like `save_progress(posted=True)`, in the same write.
    posted: bool = False
    # The change is applied, and these are its effects: like `save_progress(applied=True, effects=...)`, in the same
    # write. Only a change that may be applied again unharmed waits for the outcome to be marked applied.
    applied: bool = False
    effects: Effects | None = None

    def __post_init__(self) -> None:
        if self.status is JobStatus.RUNNING:
            raise ValueError("an outcome leaves running; it cannot be running")


@dataclass(frozen=True)
class Actor:
    """Who acted on a job, and from where: a person's login, and `cli` or `console`."""

    who: str
    via: str


@dataclass(frozen=True)
class AuditEntry:
    job_id: str
    at: float
    action: str  # retry | cancel
    who: str
    via: str


@dataclass(frozen=True)
class JobFilter:
    """Which jobs a reader wants, newest first; the fields set all apply. `status` is a display status
    ("retrying" is a pending job that was tried; "pending" includes them). `after` is the cursor of the previous
    page. The CLI's `jobs list` and the console's jobs page build the same filter, so they never disagree."""

    status: str | None = None
    target_id: str | None = None
    since: float | None = None
    batch: str | None = None  # only the jobs an import queued under this batch id
    request_ids: tuple[str, ...] = ()  # only the jobs queued under these request ids
    tag: str | None = None  # jobs naming this tag (case ignored), also jobs whose input was not valid
    operation: str | None = None  # a kind's name (`add_tag`): callers turn a label into a name first
    result_code: str | None = None
    text: str | None = None  # the message contains it (case ignored), or it is the job's id
    limit: int = 100
    after: str | None = None


@dataclass(frozen=True)
class RunnerSeen:
    """A runner's last sign of life: `connector run` beats at every tick, also when there is nothing to do."""

    owner: str
    seen_at: float


@dataclass(frozen=True)
class Page:
    jobs: list[Job] = field(default_factory=list)
    # Where the next page starts; None when this one is the last.
    next_cursor: str | None = None


@dataclass(frozen=True)
class Batch:
    """One import: the file (its name and SHA-256), when and by whom, and what became of its rows. Kept as a
    record of stream `batch` keyed by the SHA-256, so that a second import of the same file finds the first."""

    STREAM: ClassVar[str] = "batch"

    id: str
    file: str
    sha256: str
    at: float = 0.0
    who: str = ""
    rows: int = 0  # rows read from the file
    queued: int = 0  # jobs queued
    already: int = 0  # rows whose request id was queued before: counted, not queued again
    invalid: int = 0  # bad rows left out (--skip-invalid)

    def record(self) -> Record:
        return Record(self.STREAM, self.sha256, dataclasses.asdict(self), unique=self.id)

    @classmethod
    def from_entry(cls, entry: Entry) -> Batch:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in entry.data.items() if k in known})


class BatchRows(Protocol):
    """An import's valid requests as `add_batch` reads them, one at a time (a file is never held whole); `rows`
    and `invalid` count the file's rows as they are read. Raising while read undoes the batch."""

    rows: int
    invalid: int

    def __iter__(self) -> Iterator[JobRequest]: ...


class RunnerStore(Protocol):
    """What the runner needs."""

    name: str

    def claim(self, owner: str, limit: int, lease_seconds: float) -> builtins.list[Job]:
        """Up to `limit` due jobs, oldest first, that the ordering rule lets run; expired leases are taken over."""

    def renew(self, owner: str, job_ids: Sequence[str], lease_seconds: float) -> builtins.list[str]:
        """Extend the leases still held; returns the ids whose lease was lost."""

    def record_attempt(self, owner: str, attempt: Attempt) -> None:
        """Append an attempt and count it on the job."""

    def save_progress(
        self, owner: str, job_id: str, *, score_before: int | None = None, applied: bool = False,
        posted: bool = False, effects: Effects | None = None,
    ) -> None:
        """Remember, durably, what a running job has already observed or done; `effects` go in the same write."""

    def finish(self, owner: str, job_id: str, outcome: Outcome) -> None:
        """Record the outcome of a claimed job, in one transaction (see `Outcome`)."""

    def release(self, owner: str, job_id: str) -> None:
        """Give a claimed job back without counting an attempt (clean shutdown)."""

    def waiting(self) -> tuple[int, float | None]:
        """How many jobs wait for a retry, and (when some do) when the first one the ordering rule lets run is
        due; without reading the finished jobs, so that it costs the same with a long history."""

    def heartbeat(self, owner: str) -> None:
        """Say that the runner `owner` is alive now (the console's runners and `/healthz` read it)."""


class PeopleStore(Protocol):
    """What people do with jobs."""

    def add(self, requests: Sequence[JobRequest]) -> builtins.list[Job]:
        """Queue the jobs, all or none, in the order given. A request whose `request_id` names a job already
        stored is not queued again: that job is returned in its place."""

    def add_batch(self, batch: Batch, requests: BatchRows) -> Batch:
        """Queue an import's requests as `batch`, in the order read, and keep the batch (with its counts) in the
        same write: all or none where `atomic_batches`, else in the store's largest transactions, in order. A
        request id already stored is not queued again, but counted (`Batch.already`)."""

    def cancel_where(self, query: JobFilter, by: Actor) -> builtins.list[str]:
        """Cancel the pending jobs (retrying ones too) that `query` finds, whatever its limit; returns their ids."""

    def add_raw(self, raw: dict[str, Any]) -> Job:
        """Queue input exactly as a user left it, unvalidated, as a CRM row can be; the runner fails it if bad."""

    def retry(self, job_id: str | None, by: Actor) -> builtins.list[str]:
        """Put one failed job (or every failed job when `job_id` is None) back to pending; returns their ids."""

    def cancel(self, job_id: str, by: Actor) -> Job:
        """Cancel a pending job."""

    def retry_where(self, query: JobFilter, by: Actor) -> builtins.list[str]:
        """Retry the failed jobs that `query` finds, whatever its limit, each audited; returns their ids."""

    def keep(self, records: Sequence[Record]) -> None:
        """Keep records that belong to no job's change (the event log), all or none; `unique` as for effects."""


class ReaderStore(Protocol):
    """What readers ask."""

    def get(self, job_id: str) -> Job: ...

    def list(self, query: JobFilter) -> Page: ...

    def attempts(self, job_id: str) -> builtins.list[Attempt]: ...

    def audit(self, job_id: str) -> builtins.list[AuditEntry]:
        """Who retried or cancelled the job, oldest first."""

    def entries(self, stream: str, key: str | None = None) -> builtins.list[Entry]:
        """The records durable subscribers kept in `stream` (about `key` when given), oldest first."""

    def counts(self) -> dict[str, int]:
        """Jobs per display status (pending, retrying, running, succeeded, failed, cancelled)."""

    def oldest_pending(self) -> Job | None:
        """The pending job (retrying ones too) created first: how far behind the queue is."""

    def finished_since(self, since: float) -> dict[str, int]:
        """Jobs that succeeded or failed at `since` or later, per result code."""

    def failed_attempts_since(self, since: float) -> dict[tuple[str, str], int]:
        """Attempts started at `since` or later that did not succeed, per (job kind, result code): where 429s and
        errors come from."""

    def runners(self, since: float) -> builtins.list[RunnerSeen]:
        """The runners whose last heartbeat is at `since` or later, the most recent first."""


class JobStore(RunnerStore, PeopleStore, ReaderStore, Protocol):
    # Whether `add_batch` is one transaction however large the batch: an interrupted import then leaves nothing.
    atomic_batches: bool

    def close(self) -> None: ...


def batches(store: ReaderStore, sha256: str | None = None) -> builtins.list[Batch]:
    """The imports kept, oldest first (only those of the file with this SHA-256, when given)."""
    return [Batch.from_entry(entry) for entry in store.entries(Batch.STREAM, sha256)]


__all__ = [
    "Actor", "AuditEntry", "Batch", "BatchRows", "Effects", "Entry", "JobFilter", "JobNotFound", "JobStore",
    "LeaseLost", "NotAllowed", "Outcome", "Page", "PeopleStore", "ReaderStore", "Record", "RunnerSeen", "RunnerStore",
    "StoreError",
    "StoreUnavailable", "batches",
]
