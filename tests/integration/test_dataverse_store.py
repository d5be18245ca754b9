"""The Dataverse job store against the sandbox: the same guarantees as the SQLite store."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from config.settings import DataverseTableSettings, RetrySettings
from connector.dataverse.client import DataverseClient
from connector.platform import Contact
from jobs.executor import Executor
from jobs.model import Attempt, InvalidJob, JobRequest, JobStatus
from jobs.store import JobNotFound, LeaseLost, NotAllowed, StoreError
from jobs.store.dataverse import DataverseJobStore
from tests.conftest import FakeClock
from tests.integration.dataverse_env import TABLE, client_for, make_record, running_sandbox

ENTITY = TABLE.entity_set


@pytest.fixture
def dv_store(client: DataverseClient, clock: FakeClock) -> DataverseJobStore:
    return DataverseJobStore(client, TABLE, clock=clock)


@pytest.fixture
def contact(client: DataverseClient) -> str:
    return make_record(client, emailaddress1="ann@example.com")


@pytest.fixture
def queue(dv_store: DataverseJobStore, contact: str) -> Callable[..., Any]:
    def make(**fields: Any) -> Any:
        fields = {"operation": "add_tag", "tags": "Webinar", "target_kind": "contact", "target_id": contact,
                  **fields}
        return dv_store.add([JobRequest.from_input(**fields)])[0]

    return make


def test_a_job_round_trips_every_field(dv_store, queue, clock, contact):
    job = queue(operation="increase_score", tags="Lead score", score=10)
    assert job.status is JobStatus.PENDING
    assert job.request is not None and job.request.target is not None
    assert (job.request.target.kind.value, job.request.target.id) == ("contact", contact)

    [claimed] = dv_store.claim("runner-a", 10, 30.0)
    assert claimed.id == job.id
    assert claimed.lease_owner == "runner-a"
    assert claimed.lease_expires_at == clock.now + 30
    started = clock.now
    dv_store.save_progress("runner-a", job.id, score_before=4)
    dv_store.save_progress("runner-a", job.id, applied=True)
    clock.advance(1)
    dv_store.record_attempt("runner-a", Attempt(job_id=job.id, started_at=started, ended_at=clock.now,
                                                outcome="retrying", result_code="RATE_LIMITED", http_status=429,
                                                message="Too many requests"))
    dv_store.finish("runner-a", job.id, status=JobStatus.PENDING, result_code="RATE_LIMITED",
                    message="Too many requests", http_status=429, next_attempt_at=clock.now + 60)

    back = dv_store.get(job.id)
    assert back.request == job.request
    assert back.raw == {"operation": "increase_score", "target_kind": "contact", "target_id": contact,
                        "tags": "Lead score", "score": 10}
    assert back.status is JobStatus.PENDING
    assert back.display_status == "retrying"
    assert back.attempts == 1
    assert (back.result_code, back.message, back.http_status) == ("RATE_LIMITED", "Too many requests", 429)
    assert back.next_attempt_at == clock.now + 60
    assert (back.lease_owner, back.lease_expires_at) == (None, None)
    assert back.applied_at == started
    assert back.posted_at is None
    assert back.score_before == 4
    assert back.created_at == job.created_at
    [attempt] = dv_store.attempts(job.id)
    assert attempt.model_dump() == {"job_id": job.id, "number": 1, "started_at": started, "ended_at": clock.now,
                                    "outcome": "retrying", "result_code": "RATE_LIMITED", "http_status": 429,
                                    "message": "Too many requests"}
    assert dv_store.counts() == {"retrying": 1}
    assert dv_store.next_due() == clock.now + 60


def test_runner_columns_are_readable_on_the_row(dv_store, queue, client):
    job = queue()
    dv_store.claim("runner-a", 1, 30.0)
    dv_store.finish("runner-a", job.id, status=JobStatus.SUCCEEDED, result_code="OK", message="Added tag Webinar")
    row = client.get(ENTITY, job.id)
    assert (row["statuscode"], row["statecode"]) == (2, 1)
    assert row["cr_resultcode"] == "OK"
    assert row["cr_message"] == "Added tag Webinar"


def test_per_key_order_holds_as_in_the_sqlite_store(dv_store, queue, contact, client):
    first = queue(tags="Webinar")
    other = queue(tags="Newsletter")
    second = queue(tags="webinar")  # same key: tags compare case-insensitively
    lead = make_record(client, "lead")
    elsewhere = queue(tags="Webinar", target_kind="lead", target_id=lead)

    claimed = dv_store.claim("runner-a", 10, 30.0)
    assert [j.id for j in claimed] == [first.id, other.id, elsewhere.id]
    assert dv_store.claim("runner-b", 10, 30.0) == []  # second waits while first is running

    dv_store.finish("runner-a", first.id, status=JobStatus.FAILED, result_code="NOT_FOUND", message="gone")
    assert [j.id for j in dv_store.claim("runner-b", 10, 30.0)] == [second.id]


def test_a_pending_retry_still_blocks_later_jobs_of_its_key(dv_store, queue, clock):
    first = queue()
    second = queue()
    dv_store.claim("runner-a", 10, 30.0)
    dv_store.finish("runner-a", first.id, status=JobStatus.PENDING, result_code="UNAVAILABLE", message="503",
                    next_attempt_at=clock.now + 120)
    assert dv_store.claim("runner-a", 10, 30.0) == []
    clock.advance(121)
    assert [j.id for j in dv_store.claim("runner-a", 10, 30.0)] == [first.id]
    assert second.status is JobStatus.PENDING


def test_an_expired_lease_is_taken_over_with_an_attempt_recorded(dv_store, queue, clock, client):
    job = queue()
    dv_store.claim("runner-a", 10, 30.0)
    clock.advance(31)

    other = DataverseJobStore(client, TABLE, clock=clock)
    [taken] = other.claim("runner-b", 10, 30.0)

    assert taken.id == job.id
    assert taken.lease_owner == "runner-b"
    assert taken.attempts == 1
    [attempt] = other.attempts(job.id)
    assert (attempt.outcome, attempt.result_code) == ("lease_expired", "LEASE_EXPIRED")
    assert "runner-a" in attempt.message
    with pytest.raises(LeaseLost):
        dv_store.finish("runner-a", job.id, status=JobStatus.SUCCEEDED, result_code="OK", message="late")
    assert other.renew("runner-b", [job.id], 30.0) == []
    assert dv_store.renew("runner-a", [job.id], 30.0) == [job.id]


def test_a_user_editing_a_running_job_does_not_lose_the_lease(dv_store, queue, client):
    job = queue()
    dv_store.claim("runner-a", 10, 30.0)
    client.update(ENTITY, job.id, {"cr_message": "a user typed here"})
    dv_store.finish("runner-a", job.id, status=JobStatus.SUCCEEDED, result_code="OK", message="done")
    assert dv_store.get(job.id).status is JobStatus.SUCCEEDED


def test_release_gives_the_job_back_without_an_attempt(dv_store, queue):
    job = queue()
    dv_store.claim("runner-a", 10, 30.0)
    dv_store.release("runner-a", job.id)
    back = dv_store.get(job.id)
    assert (back.status, back.attempts, back.lease_owner) == (JobStatus.PENDING, 0, None)
    assert [j.id for j in dv_store.claim("runner-b", 10, 30.0)] == [job.id]


def test_retry_and_cancel_follow_the_status_rules(dv_store, queue):
    failed = queue(tags="A")
    pending = queue(tags="B")
    dv_store.claim("runner-a", 1, 30.0)
    dv_store.record_attempt("runner-a", Attempt(job_id=failed.id, started_at=0, outcome="failed"))
    dv_store.finish("runner-a", failed.id, status=JobStatus.FAILED, result_code="NOT_FOUND", message="no contact")

    with pytest.raises(NotAllowed):
        dv_store.retry(pending.id)
    assert dv_store.retry() == [failed.id]
    back = dv_store.get(failed.id)
    assert (back.status, back.attempts, back.result_code, back.message) == (
        JobStatus.PENDING, 0, None, "Retry requested.")

    cancelled = dv_store.cancel(pending.id)
    assert (cancelled.status, cancelled.result_code) == (JobStatus.CANCELLED, "CANCELLED")
    with pytest.raises(NotAllowed):
        dv_store.cancel(pending.id)
    with pytest.raises(JobNotFound):
        dv_store.get("00000000-0000-4000-8000-0000000000ff")
    with pytest.raises(JobNotFound):
        dv_store.get("not-a-guid")


def test_list_filters_newest_first(dv_store, queue, client, clock):
    lead = make_record(client, "lead")
    a = queue(tags="A")
    b = queue(tags="B", target_kind="lead", target_id=lead)
    c = queue(tags="C")
    assert [j.id for j in dv_store.list()] == [c.id, b.id, a.id]
    assert [j.id for j in dv_store.list(target_id=lead)] == [b.id]
    assert [j.id for j in dv_store.list(limit=2)] == [c.id, b.id]
    assert dv_store.list(status=JobStatus.RUNNING) == []
    assert dv_store.list(target_id="C-1") == []
    assert len(dv_store.list(since=a.created_at)) == 3


def test_add_is_all_or_nothing(dv_store, contact, client):
    good = JobRequest.from_input(operation="add_tag", tags="A", target_kind="contact", target_id=contact)
    missing = JobRequest.from_input(operation="add_tag", tags="B", target_kind="contact",
                                    target_id="00000000-0000-4000-8000-0000000000ff")
    with pytest.raises(StoreError, match="Does Not Exist"):
        dv_store.add([good, missing])
    assert dv_store.list() == []
    # Not a GUID: the user's input, refused with a sentence (the CLI's exit code 2), nothing written.
    with pytest.raises(InvalidJob, match="is not a Dataverse row id; jobs in Dataverse point at records by their"):
        dv_store.add([JobRequest.from_input(operation="add_tag", tags="A", target_kind="contact", target_id="C-1")])
    assert dv_store.list() == []


def test_a_row_edited_into_something_invalid_is_read_not_rejected(dv_store, queue, client, spotler, clock):
    job = queue(operation="increase_score", tags="Lead score", score=5)
    client.update(ENTITY, job.id, {"cr_score": -5})  # a careless user on the job form

    back = dv_store.get(job.id)
    assert back.request is None
    assert back.raw["score"] == -5

    [claimed] = dv_store.claim("runner-a", 10, 30.0)
    executor = Executor(spotler, _NoCrm(), RetrySettings(), clock=clock, sleep=clock.sleep)
    assert executor.execute(claimed, dv_store, "runner-a") is JobStatus.FAILED

    row = client.get(ENTITY, job.id)
    assert row["cr_resultcode"] == "INVALID_INPUT"
    assert "Decrease Score" in row["cr_message"]
    assert row["statuscode"] == TABLE.status_reasons.failed


def test_a_choice_value_the_mapping_lacks_is_invalid_input(dv_store, queue, client):
    job = queue()
    client.update(ENTITY, job.id, {"cr_operation": 100000099})
    back = dv_store.get(job.id)
    assert back.request is None
    assert back.raw["operation"] == "100000099"


def test_a_text_operation_column_works_too(tmp_path, clock):
    table = DataverseTableSettings(operation_values={}, sequence="")
    with running_sandbox(tmp_path, table=table) as sandbox, client_for(sandbox) as client:
        store = DataverseJobStore(client, table, clock=clock)
        contact = make_record(client)
        job = store.add([JobRequest.from_input(operation="Set Score", tags="X", score=3, target_kind="contact",
                                               target_id=contact)])[0]
        assert client.get(table.entity_set, job.id)["cr_operation"] == "set_score"
        assert store.get(job.id).request == job.request


def test_two_runners_never_claim_one_job_twice(sandbox, contact, clock):
    with client_for(sandbox) as one, client_for(sandbox) as two:
        seed = DataverseJobStore(one, TABLE, clock=clock)
        seed.add([JobRequest.from_input(operation="add_tag", tags=f"T{i}", target_kind="contact",
                                        target_id=contact) for i in range(40)])
        claims: dict[str, list[str]] = {"a": [], "b": []}
        errors: list[BaseException] = []

        def run(name: str, client: DataverseClient) -> None:
            store = DataverseJobStore(client, TABLE, clock=clock)
            try:
                while True:
                    jobs = store.claim(name, 5, 300.0)
                    if not jobs and not store.counts().get("pending"):
                        return
                    for job in jobs:
                        claims[name].append(job.id)
                        store.finish(name, job.id, status=JobStatus.SUCCEEDED, result_code="OK", message="")
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=run, args=("a", one)), threading.Thread(target=run, args=("b", two))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not errors
        everything = claims["a"] + claims["b"]
        assert len(everything) == len(set(everything)) == 40
        assert seed.counts() == {"succeeded": 40}


class _NoCrm:
    """A CRM the invalid-input path must never reach."""

    name = "none"

    def identify(self, target_kind: str, target_id: str) -> Contact:
        raise AssertionError("an invalid job must not be looked up")

    def post(self, *, target_kind: str, target_id: str, job_id: str, text: str, may_exist: bool = True) -> None:
        raise AssertionError("an invalid job must not be posted")

    def timeline(self, target_kind: str, target_id: str) -> list[Any]:
        return []


def test_a_failed_job_retried_by_hand_waits_while_a_later_job_on_its_key_runs(dv_store, queue, clock):
    first = queue()
    second = queue()
    [claimed] = dv_store.claim("runner-a", 10, 30.0)
    dv_store.finish("runner-a", first.id, status=JobStatus.FAILED, result_code="UNAVAILABLE", message="503")
    assert [j.id for j in dv_store.claim("runner-a", 10, 30.0)] == [second.id]
    dv_store.retry(first.id)
    assert dv_store.claim("runner-b", 10, 30.0) == []
    assert dv_store.next_due() is None  # nothing is due while it waits
    dv_store.finish("runner-a", second.id, status=JobStatus.SUCCEEDED, result_code="OK", message="Done.")
    assert [j.id for j in dv_store.claim("runner-b", 10, 30.0)] == [first.id]
    assert claimed.id == first.id


def test_next_due_ignores_a_job_waiting_behind_an_earlier_one(dv_store, queue, clock):
    first = queue()
    queue()
    dv_store.claim("runner-a", 10, 30.0)
    dv_store.finish("runner-a", first.id, status=JobStatus.PENDING, result_code="UNAVAILABLE", message="503",
                    next_attempt_at=clock.now + 120)
    assert dv_store.next_due() == clock.now + 120
