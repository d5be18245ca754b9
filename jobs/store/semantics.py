"""What a job store means, written once: every store reads its rules from here.

- `claimable`: the per-key ordering rule. The Dataverse store applies it as it stands; the SQLite store states it
  in SQL (`CLAIM` in `jobs.store.sqlite`) so that a claim reads only due rows, and the contract suite checks both
  against this function.
- The resets: what a manual retry, a cancel, a release and an expired lease change on a job.
- The raw-input round trip lives with the kinds (`jobs.kinds.raw_of` and `request_from_raw`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from jobs.model import Attempt, Job, JobStatus


def holds_lease(job: Job, now: float) -> bool:
    return job.status is JobStatus.RUNNING and (job.lease_expires_at or 0) >= now


def keys_of(job: Job) -> list[str]:
    """A job's ordering keys; none when its input is invalid (it fails without touching anything)."""
    return job.request.keys if job.request is not None else []


def claimable(unfinished: Sequence[Job], now: float) -> list[Job]:
    """The jobs that may run now, or run already, from every unfinished job in creation order.

    A job may run when no earlier unfinished job shares one of its keys, and no other job holding a lease shares
    one (a failed job retried by hand must not run beside a later job of its key that is running). Its own due
    time is not looked at here: a pending job is claimed once it may run and `next_attempt_at` has come.
    """
    running = {key for job in unfinished if holds_lease(job, now) for key in keys_of(job)}
    blocked: set[str] = set()
    free: list[Job] = []
    for job in unfinished:
        keys = keys_of(job)
        if not blocked.intersection(keys) and (holds_lease(job, now) or not running.intersection(keys)):
            free.append(job)
        blocked.update(keys)
    return free


RETRY_MESSAGE = "Retry requested."
CANCEL_MESSAGE = "Cancelled before it ran."
# Who may be acted on: a retry takes a failed job, a cancel a pending one (also one waiting for a retry).
RETRYABLE = frozenset({JobStatus.FAILED})
CANCELLABLE = frozenset({JobStatus.PENDING})


def retried(now: float) -> dict[str, Any]:
    """A job retried by hand starts afresh: a new retry budget, due now. Later jobs on its key may have run since,
    so a score read before its earlier attempts says nothing any more (`score_before`). What it already did
    (`applied_at`, `posted_at`) stays done."""
    return {"status": JobStatus.PENDING, "attempts": 0, "result_code": None, "message": RETRY_MESSAGE,
            "http_status": None, "score_before": None, "next_attempt_at": now}


def cancelled(tried: int) -> dict[str, Any]:
    """A cancel, given how many attempts the job has had in all (its log, across retries by hand)."""
    message = CANCEL_MESSAGE if not tried else \
        f"Cancelled after {tried} attempt{'s' if tried > 1 else ''}; it is not tried again."
    return {"status": JobStatus.CANCELLED, "result_code": "CANCELLED", "message": message}


def released() -> dict[str, Any]:
    """A job given back on a clean shutdown: pending, due when it was, no attempt counted."""
    return {"status": JobStatus.PENDING, "lease_owner": None, "lease_expires_at": None}


def expired_attempt(job_id: str, owner: str | None, now: float) -> Attempt:
    """What a lease that ran out leaves in the job's attempts: the runner holding it died or hung."""
    return Attempt(job_id=job_id, started_at=now, ended_at=now, outcome="lease_expired", result_code="LEASE_EXPIRED",
                   message=f"Runner {owner} stopped renewing its lease; the job is retried.")


def refusal(action: str, job: Job) -> str:
    allowed = "failed jobs can be retried" if action == "retry" else "pending jobs can be cancelled"
    return f"Job {job.id} is {job.display_status}; only {allowed}."


def tag_among(tags: Sequence[object], tag: str) -> bool:
    """Whether `tag` is among `tags`, case and surrounding spaces ignored, as the ordering keys ignore them."""
    wanted = tag.strip().casefold()
    return any(str(name).strip().casefold() == wanted for name in tags)
