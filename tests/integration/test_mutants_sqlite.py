"""The SQLite store's imports and bulk acts: what `make mutate` found untested on it (the PostgreSQL store has the
same tests in test_postgres_claim_cost.py and test_postgres_store.py).

An import reads its file a chunk at a time: every row is queued once, in the file's order, and the counts it
reports add up over the chunks. A bulk cancel or retry takes every job its filter finds, whatever page the person
was looking at, and tells a cancelled job's attempts as a single cancel does."""

from __future__ import annotations

from collections.abc import Iterator

from jobs.model import Attempt, JobRequest, JobStatus
from jobs.store import Actor, Batch, JobFilter, Outcome
from jobs.store.sqlite import IMPORT_CHUNK, SqliteJobStore
from tests.conftest import FakeClock

LEASE = 30.0
PERSON = Actor(who="ann", via="cli")


def req(target: str, request_id: str | None = None) -> JobRequest:
    return JobRequest.from_input(operation="add_tag", tags="T", target_kind="contact", target_id=target,
                                 request_id=request_id)


class Rows:
    """An import's rows, read one at a time, as the command reads a file."""

    def __init__(self, requests: list[JobRequest]) -> None:
        self.requests = requests
        self.rows = self.invalid = 0

    def __iter__(self) -> Iterator[JobRequest]:
        for request in self.requests:
            self.rows += 1
            yield request


def test_an_import_over_several_chunks_queues_every_row_once_in_the_file_s_order(store: SqliteJobStore) -> None:
    store.add([req(f"C-{n}", f"r{n}") for n in (1, IMPORT_CHUNK + 1)])  # one stored already in each chunk
    count = 2 * IMPORT_CHUNK + 10
    kept = store.add_batch(Batch(id="b1", file="f.csv", sha256="ab" * 32),
                           Rows([req(f"C-{n}", f"r{n}") for n in range(count)]))
    assert (kept.rows, kept.queued, kept.already) == (count, count - 2, 2)
    assert [entry.job_id for entry in store.entries(Batch.STREAM)] == [""]  # the import's record is of no job
    claimed = store.claim("runner-a", count + 10, LEASE)
    assert [job.request_id for job in claimed] == [
        "r1", f"r{IMPORT_CHUNK + 1}", *(f"r{n}" for n in range(count) if n not in (1, IMPORT_CHUNK + 1))]
    # A job's page and the API show the input as given, for an imported job too.
    assert claimed[-1].to_json()["input"] == {"operation": "add_tag", "target_kind": "contact",
                                              "target_id": f"C-{count - 1}", "tags": "T", "score": None,
                                              "request_id": f"r{count - 1}"}


def cursor_past_the_first(store: SqliteJobStore, status: str) -> str:
    cursor = store.list(JobFilter(status=status, limit=1)).next_cursor
    assert cursor is not None
    return cursor


def test_a_bulk_cancel_of_jobs_waiting_for_a_retry_takes_them_all_and_tells_their_attempts(
    store: SqliteJobStore, clock: FakeClock,
) -> None:
    jobs = store.add([req(f"C-{n}") for n in range(3)])
    store.claim("runner-a", 3, LEASE)
    for job in jobs:
        store.record_attempt("runner-a", Attempt(job_id=job.id, started_at=clock.now, outcome="retrying",
                                                 result_code="UNAVAILABLE", http_status=503))
        store.finish("runner-a", job.id, Outcome(JobStatus.PENDING, "UNAVAILABLE", "Retrying.", http_status=503,
                                                 next_attempt_at=clock.now + 60))
    query = JobFilter(status="retrying", after=cursor_past_the_first(store, "retrying"))
    assert sorted(store.cancel_where(query, PERSON)) == sorted(job.id for job in jobs)
    for job in jobs:
        cancelled = store.get(job.id)
        assert (cancelled.status, cancelled.message) == (JobStatus.CANCELLED,
                                                         "Cancelled after 1 attempt; it is not tried again.")


def test_a_bulk_retry_of_failed_jobs_takes_them_all(store: SqliteJobStore, clock: FakeClock) -> None:
    jobs = store.add([req(f"C-{n}") for n in range(3)])
    store.claim("runner-a", 3, LEASE)
    for job in jobs:
        store.finish("runner-a", job.id, Outcome(JobStatus.FAILED, "NOT_FOUND", "No such contact."))
    query = JobFilter(status="failed", after=cursor_past_the_first(store, "failed"))
    assert sorted(store.retry_where(query, PERSON)) == sorted(job.id for job in jobs)
    assert {store.get(job.id).status for job in jobs} == {JobStatus.PENDING}


def test_a_job_waiting_for_a_retry_behind_a_running_one_is_counted_without_a_time(
    store: SqliteJobStore, clock: FakeClock,
) -> None:
    """A retry by hand puts a failed job back ahead of a later job of its key that waits for its own retry; while
    the earlier one runs, the later one waits with no time of its own yet."""
    first, later = store.add([req("C-1"), req("C-1")])
    store.claim("runner-a", 1, LEASE)
    store.finish("runner-a", first.id, Outcome(JobStatus.FAILED, "NOT_FOUND", "No such contact."))
    assert [job.id for job in store.claim("runner-a", 1, LEASE)] == [later.id]
    store.record_attempt("runner-a", Attempt(job_id=later.id, started_at=clock.now, outcome="retrying",
                                             result_code="UNAVAILABLE", http_status=503))
    store.finish("runner-a", later.id, Outcome(JobStatus.PENDING, "UNAVAILABLE", "Retrying.", http_status=503,
                                               next_attempt_at=clock.now + 60))
    store.retry(first.id, PERSON)
    assert [job.id for job in store.claim("runner-a", 1, LEASE)] == [first.id]
    assert store.waiting() == (1, None)
