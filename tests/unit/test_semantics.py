"""What every store reads from `jobs.store.semantics`, on its own: the lease rule and the lease-expiry attempt."""

from __future__ import annotations

from jobs.model import Job, JobRequest, JobStatus
from jobs.store import semantics

NOW = 1_800_000_000.0


def job(status: JobStatus, lease_expires_at: float | None) -> Job:
    request = JobRequest.from_input(operation="add_tag", tags="VIP", target_kind="contact", target_id="C-1")
    return Job(id="j1", request=request, raw={}, status=status, created_at=NOW, updated_at=NOW,
               next_attempt_at=NOW, lease_expires_at=lease_expires_at)


def test_a_lease_is_held_by_a_running_job_until_the_moment_it_expires() -> None:
    assert semantics.holds_lease(job(JobStatus.RUNNING, NOW), NOW)  # up to and including its last second
    assert not semantics.holds_lease(job(JobStatus.RUNNING, NOW - 0.001), NOW)
    assert not semantics.holds_lease(job(JobStatus.PENDING, NOW + 30), NOW)  # a lease left on a job given back


def test_an_expired_lease_leaves_an_attempt_that_starts_and_ends_when_it_was_found() -> None:
    attempt = semantics.expired_attempt("j1", "runner-a", NOW)
    assert (attempt.started_at, attempt.ended_at, attempt.outcome, attempt.result_code) == (
        NOW, NOW, "lease_expired", "LEASE_EXPIRED")
    assert attempt.message == "Runner runner-a stopped renewing its lease; the job is retried."
