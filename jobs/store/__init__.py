"""Job stores: where jobs wait and where their status lives.

Every store gives the same guarantees, so the runner does not know which one it drives:
- `claim` is atomic across processes and machines: a job is handed to one runner at a time, under a lease;
- a job is only claimable when no earlier unfinished job shares one of its keys (per-key creation order);
- a lease that is not renewed expires, and the job becomes claimable again (with an attempt recorded);
- every write made on behalf of a claim checks that the claim still holds (`LeaseLost` otherwise).
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from typing import Any, Protocol

from connector import errors
from jobs.model import Attempt, Job, JobRequest, JobStatus


class StoreError(Exception):
    """The job store could not do what was asked; the message says why."""


class StoreUnavailable(errors.TransientError):
    """The job store is busy or cannot be reached; the same request may succeed later."""

    result_code = "STORE_UNAVAILABLE"


class JobNotFound(StoreError):
    def __init__(self, job_id: str) -> None:
        super().__init__(f"No job with id {job_id!r}.")
        self.job_id = job_id


class LeaseLost(StoreError):
    """The runner's claim on a job expired and someone else may hold it now; the write was not made."""


class NotAllowed(StoreError):
    """The job is in a status that does not allow this (e.g. cancelling a running job)."""


class JobStore(Protocol):
    name: str

    def add(self, requests: Sequence[JobRequest]) -> builtins.list[Job]:
        """Queue the jobs, all or none, in the order given."""

    def add_raw(self, raw: dict[str, Any]) -> Job:
        """Queue input exactly as a user left it, unvalidated, as a CRM row can be; the runner fails it if bad."""

    def get(self, job_id: str) -> Job: ...

    def list(
        self,
        *,
        status: JobStatus | str | None = None,
        target_id: str | None = None,
        since: float | None = None,
        limit: int | None = None,
    ) -> builtins.list[Job]:
        """Newest first. `status` may also be "retrying" (pending jobs that were tried); "pending" includes them."""

    def attempts(self, job_id: str) -> builtins.list[Attempt]: ...

    def claim(self, owner: str, limit: int, lease_seconds: float) -> builtins.list[Job]:
        """Up to `limit` due jobs, oldest first, none sharing a key with an earlier unfinished job."""

    def renew(self, owner: str, job_ids: Sequence[str], lease_seconds: float) -> builtins.list[str]:
        """Extend the leases still held; returns the ids whose lease was lost."""

    def record_attempt(self, owner: str, attempt: Attempt) -> None:
        """Append an attempt and count it on the job."""

    def save_progress(
        self, owner: str, job_id: str, *, score_before: int | None = None, applied: bool = False,
        posted: bool = False,
    ) -> None:
        """Remember, durably, what a running job has already observed or done."""

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
        """Leave `running`: succeeded, failed, or back to pending (retrying at `next_attempt_at`).

        `attempt`, when given, is recorded in the same write (the last try of a job is written once, not twice);
        `posted` marks the timeline post as done, like `save_progress(posted=True)`.
        """

    def release(self, owner: str, job_id: str) -> None:
        """Give a claimed job back without counting an attempt (clean shutdown)."""

    def retry(self, job_id: str | None = None) -> builtins.list[str]:
        """Put one failed job (or every failed job when `job_id` is None) back to pending; returns their ids."""

    def cancel(self, job_id: str) -> Job:
        """Cancel a pending job."""

    def counts(self) -> dict[str, int]:
        """Jobs per display status (pending, retrying, running, succeeded, failed, cancelled)."""

    def next_due(self) -> float | None:
        """When the earliest pending job becomes due, or None when nothing is pending. A job waiting behind an
        earlier unfinished job on its key does not count: it can only run after that one."""

    def waiting(self) -> tuple[int, float | None]:
        """How many jobs wait for a retry, and (when some do) when the first pending job is due; without reading
        the finished jobs, so that it costs the same with a long history."""

    def close(self) -> None: ...
