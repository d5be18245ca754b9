"""`next_due` says when the queue can next make progress, which is what a drain loop waits for."""

from __future__ import annotations

from collections.abc import Callable

from jobs.model import Job, JobStatus
from jobs.store.sqlite import SqliteJobStore
from tests.conftest import FakeClock


def test_a_job_waiting_behind_a_retrying_job_on_its_key_is_not_due(
    store: SqliteJobStore, job_factory: Callable[..., Job], clock: FakeClock
) -> None:
    first = job_factory(operation="increase_score", tags="Lead", score=1)
    job_factory(operation="increase_score", tags="Lead", score=2)  # same key: waits for the first
    (claimed,) = store.claim("runner-1", 1, 60)
    assert claimed.id == first.id
    store.finish("runner-1", first.id, status=JobStatus.PENDING, result_code="UNAVAILABLE", message="later",
                 next_attempt_at=clock() + 30)
    assert store.next_due() == clock() + 30
    other = job_factory(operation="add_tag", tags="VIP", target_id="C-2")
    assert store.next_due() == other.next_attempt_at == clock()
