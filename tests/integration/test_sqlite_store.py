"""The SQLite job store on real files: round trips, claims, per-key order, leases, retries, and several processes.

Time is a FakeClock except where a real process has to die or race: those tests use the real clock and a real
(short) lease, never a sleep for backoff.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import random
import sqlite3
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from jobs.model import Attempt, Job, JobRequest, JobStatus, Operation, Target, TargetKind
from jobs.store import JobNotFound, LeaseLost, NotAllowed
from jobs.store.sqlite import CLAIM, EXPIRED_LEASES, SqliteJobStore

LEASE = 30.0


def req(op: str = "add_tag", tags: Any = "Webinar", score: object = None, kind: str | None = "contact",
        target: str | None = "C-1") -> JobRequest:
    return JobRequest.from_input(operation=op, tags=tags, score=score, target_kind=kind, target_id=target)


@pytest.fixture
def add(store: SqliteJobStore, clock: Any) -> Callable[..., Job]:
    """Queue one job, one second after the previous one, so creation order is also time order."""

    def make(*args: Any, **kwargs: Any) -> Job:
        clock.advance(1)
        return store.add([req(*args, **kwargs)])[0]

    return make


@pytest.fixture
def open_store(tmp_path: Path) -> Iterator[Callable[..., SqliteJobStore]]:
    """Extra stores (a second opening of a file, or one on the real clock), closed after the test."""
    opened: list[SqliteJobStore] = []

    def make(path: Path | None = None, **kwargs: Any) -> SqliteJobStore:
        s = SqliteJobStore(path or tmp_path / "jobs.db", **kwargs)
        opened.append(s)
        return s

    yield make
    for s in opened:
        s.close()


def ids(jobs: list[Job]) -> list[str]:
    return [j.id for j in jobs]


def claim_ids(store: SqliteJobStore, owner: str = "runner-a", limit: int = 10) -> list[str]:
    return ids(store.claim(owner, limit, LEASE))


def succeed(store: SqliteJobStore, owner: str, job_id: str) -> None:
    store.finish(owner, job_id, status=JobStatus.SUCCEEDED, result_code=None, message="Done.")


def query(path: Path, sql: str, args: Any = ()) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


# --- round trips ----------------------------------------------------------------------------------------------


def test_every_field_of_a_job_and_its_attempts_survives_reopening(store, clock, open_store, tmp_path) -> None:
    t0 = clock.now
    job = store.add([req("Set Score", " Lead ", "-5", "lead", "L-9")])[0]
    clock.advance(10)
    (claimed,) = store.claim("runner-a", 5, LEASE)
    t_claim = clock.now

    reopened = open_store(tmp_path / "jobs.db", clock=clock)
    running = reopened.get(job.id)
    assert running.status is JobStatus.RUNNING
    assert running.lease_owner == "runner-a"
    assert running.lease_expires_at == t_claim + LEASE
    assert running == claimed

    clock.advance(1.25)
    t_progress = clock.now
    store.save_progress("runner-a", job.id, score_before=42, applied=True, posted=True)
    clock.advance(0.5)
    attempt = Attempt(job_id=job.id, started_at=t_claim, ended_at=clock.now, outcome="retrying",
                      result_code="HTTP_503", http_status=503, message="Spotler answered 503; retrying.")
    store.record_attempt("runner-a", attempt)
    clock.advance(0.25)
    t_finish = clock.now
    store.finish("runner-a", job.id, status=JobStatus.PENDING, result_code="HTTP_503",
                 message="Spotler is unavailable; retrying.", http_status=503, next_attempt_at=t_finish + 60)

    reopened.close()
    reopened = open_store(tmp_path / "jobs.db", clock=clock)
    again = reopened.get(job.id)
    assert again.model_dump() == {
        "id": job.id,
        "request": {"operation": Operation.SET_SCORE, "target": {"kind": TargetKind.LEAD, "id": "L-9"},
                    "tags": ["Lead"], "score": -5},
        "raw": {"operation": "set_score", "target_kind": "lead", "target_id": "L-9", "tags": "Lead", "score": -5},
        "status": JobStatus.PENDING,
        "created_at": t0,
        "updated_at": t_finish,
        "next_attempt_at": t_finish + 60,
        "attempts": 1,
        "result_code": "HTTP_503",
        "message": "Spotler is unavailable; retrying.",
        "http_status": 503,
        "lease_owner": None,
        "lease_expires_at": None,
        "applied_at": t_progress,
        "posted_at": t_progress,
        "score_before": 42,
    }
    assert again.request == JobRequest(operation=Operation.SET_SCORE, target=Target(kind=TargetKind.LEAD, id="L-9"),
                                       tags=["Lead"], score=-5)
    assert again == store.get(job.id)
    (stored_attempt,) = reopened.attempts(job.id)
    assert stored_attempt.model_dump() == {**attempt.model_dump(), "number": 1}


def test_progress_timestamps_are_kept_from_the_first_time(store, clock, add) -> None:
    job = add("increase_score", "Lead", 3)
    store.claim("runner-a", 1, LEASE)
    store.save_progress("runner-a", job.id, score_before=7, applied=True)
    first = clock.now
    clock.advance(5)
    store.save_progress("runner-a", job.id, applied=True, posted=True)
    again = store.get(job.id)
    assert (again.applied_at, again.posted_at, again.score_before) == (first, clock.now, 7)


def test_a_tag_only_job_with_several_tags_round_trips(store, open_store, tmp_path, clock) -> None:
    job = store.add([req("Add Tag", "Newsletter; Webinar", kind=None, target=None)])[0]
    again = open_store(tmp_path / "jobs.db", clock=clock).get(job.id)
    assert again.request is not None
    assert again.request.target is None
    assert again.request.tags == ["Newsletter", "Webinar"]
    assert again.raw == {"operation": "add_tag", "target_kind": None, "target_id": None,
                         "tags": "Newsletter, Webinar", "score": None}
    assert again == job


def test_get_of_an_unknown_id_raises_job_not_found(store) -> None:
    with pytest.raises(JobNotFound, match="nope"):
        store.get("nope")


# --- claiming -------------------------------------------------------------------------------------------------


def test_claim_gives_oldest_first_at_most_limit_and_marks_them_running(store, clock, add) -> None:
    jobs = [add(target=f"C-{i}") for i in range(5)]
    claimed = store.claim("runner-a", 3, LEASE)
    assert ids(claimed) == ids(jobs[:3])
    for job in claimed:
        stored = store.get(job.id)
        assert stored.status is JobStatus.RUNNING
        assert stored.lease_owner == "runner-a"
        assert stored.lease_expires_at == clock.now + LEASE
    assert store.get(jobs[3].id).status is JobStatus.PENDING

    assert claim_ids(store, "runner-b") == ids(jobs[3:])
    assert claim_ids(store, "runner-c") == []
    assert store.counts() == {"running": 5}


def test_within_one_batch_the_limit_takes_the_first_created(store) -> None:
    jobs = store.add([req(target=f"C-{i}") for i in range(6)])  # one instant: creation order is the order given
    assert set(claim_ids(store, limit=2)) == set(ids(jobs[:2]))
    assert set(claim_ids(store, limit=2)) == set(ids(jobs[2:4]))


def test_claim_with_nothing_due_returns_nothing(store) -> None:
    assert store.claim("runner-a", 10, LEASE) == []
    assert store.next_due() is None


# --- per-key order --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("final", [JobStatus.SUCCEEDED, JobStatus.FAILED])
def test_a_job_waits_while_an_earlier_one_for_its_key_runs(store, add, final) -> None:
    first = add("set_score", "Lead", 50)
    second = add("increase_score", "Lead", 10)
    assert claim_ids(store) == [first.id]
    assert claim_ids(store, "runner-b") == []
    store.finish("runner-a", first.id, status=final, result_code=None, message="Over.")
    assert claim_ids(store, "runner-b") == [second.id]


def test_cancelling_the_earlier_job_unblocks_the_later_one(store, add) -> None:
    first = add("set_score", "Lead", 50)
    second = add("increase_score", "Lead", 10)
    store.cancel(first.id)
    assert claim_ids(store) == [second.id]


def test_an_earlier_job_waiting_for_a_retry_keeps_blocking_its_key(store, clock, add) -> None:
    first = add("set_score", "Lead", 50)
    second = add("increase_score", "Lead", 10)
    store.claim("runner-a", 10, LEASE)
    store.record_attempt("runner-a", Attempt(job_id=first.id, started_at=clock.now, outcome="retrying"))
    store.finish("runner-a", first.id, status=JobStatus.PENDING, result_code="HTTP_503", message="Retrying.",
                 next_attempt_at=clock.now + 60)
    assert claim_ids(store) == []
    clock.advance(60)
    assert claim_ids(store) == [first.id]
    assert claim_ids(store) == []
    succeed(store, "runner-a", first.id)
    assert claim_ids(store) == [second.id]


def test_different_keys_are_claimed_together(store, add) -> None:
    jobs = [
        add("add_tag", "Webinar", target="C-1"),
        add("add_tag", "Lead", target="C-1"),  # same contact, other tag
        add("add_tag", "Webinar", target="C-2"),  # same tag, other contact
        add("add_tag", "Webinar", kind="lead", target="C-1"),  # same id, but a lead
        add("add_tag", "Webinar", kind=None, target=None),  # tag-only
    ]
    assert claim_ids(store) == ids(jobs)


def test_a_multi_tag_job_blocks_the_jobs_for_each_of_its_tags(store, add) -> None:
    both = add("remove_tag", "A; B")
    on_a = add("set_score", "A", 1)
    on_b = add("set_score", "B", 2)
    on_c = add("set_score", "C", 3)
    assert claim_ids(store) == [both.id, on_c.id]
    succeed(store, "runner-a", both.id)
    assert claim_ids(store) == [on_a.id, on_b.id]


def test_a_job_waits_for_a_multi_tag_job_that_waits_itself(store, add) -> None:
    on_a = add("set_score", "A", 1)
    both = add("remove_tag", "A, B")
    on_b = add("set_score", "B", 2)  # B is free, but the earlier job on B waits for A
    assert claim_ids(store) == [on_a.id]
    succeed(store, "runner-a", on_a.id)
    assert claim_ids(store) == [both.id]
    succeed(store, "runner-a", both.id)
    assert claim_ids(store) == [on_b.id]


def test_keys_are_case_insensitive_on_the_tag(store, add) -> None:
    first = add("add_tag", "Webinar")
    second = add("remove_tag", "WEBINAR")
    assert claim_ids(store) == [first.id]
    succeed(store, "runner-a", first.id)
    assert claim_ids(store) == [second.id]


# --- leases ---------------------------------------------------------------------------------------------------


def test_an_expired_lease_makes_the_job_claimable_by_another_runner(store, clock, add) -> None:
    job = add("increase_score", "Lead", 5)
    store.claim("runner-a", 10, LEASE)
    clock.advance(LEASE - 0.1)
    assert claim_ids(store, "runner-b") == []

    clock.advance(0.2)
    (taken,) = store.claim("runner-b", 10, LEASE)
    assert taken.id == job.id
    assert taken.lease_owner == "runner-b"
    assert taken.lease_expires_at == clock.now + LEASE
    assert taken.attempts == 1
    (expired,) = store.attempts(job.id)
    assert (expired.number, expired.outcome, expired.result_code) == (1, "lease_expired", "LEASE_EXPIRED")
    assert "runner-a" in expired.message
    assert expired.started_at == expired.ended_at == clock.now


def test_the_first_owner_can_no_longer_write_once_its_lease_is_taken(store, clock, add) -> None:
    job = add("increase_score", "Lead", 5)
    store.claim("runner-a", 10, LEASE)
    clock.advance(LEASE + 1)
    store.claim("runner-b", 10, LEASE)

    with pytest.raises(LeaseLost):
        succeed(store, "runner-a", job.id)
    with pytest.raises(LeaseLost):
        store.record_attempt("runner-a", Attempt(job_id=job.id, started_at=clock.now, outcome="succeeded"))
    with pytest.raises(LeaseLost):
        store.save_progress("runner-a", job.id, score_before=1, applied=True)
    assert store.renew("runner-a", [job.id], LEASE) == [job.id]

    held = store.get(job.id)
    assert (held.status, held.lease_owner, held.attempts) == (JobStatus.RUNNING, "runner-b", 1)
    assert (held.applied_at, held.score_before) == (None, None)
    assert [a.outcome for a in store.attempts(job.id)] == ["lease_expired"]
    succeed(store, "runner-b", job.id)
    assert store.get(job.id).status is JobStatus.SUCCEEDED


def test_renew_extends_held_leases_and_reports_lost_ones(store, clock, add) -> None:
    mine = add(target="C-1")
    other = add(target="C-2")
    done = add(target="C-3")
    store.claim("runner-a", 1, LEASE)
    store.claim("runner-b", 1, LEASE)
    store.claim("runner-a", 1, LEASE)
    succeed(store, "runner-a", done.id)

    clock.advance(LEASE - 1)
    assert store.renew("runner-a", [mine.id, other.id, done.id, "missing"], LEASE) == [other.id, done.id, "missing"]
    assert store.get(mine.id).lease_expires_at == clock.now + LEASE
    clock.advance(LEASE - 1)  # past the first lease, within the renewed one
    assert claim_ids(store, "runner-c") == [other.id]  # runner-b did not renew
    assert store.get(mine.id).lease_owner == "runner-a"
    assert store.attempts(mine.id) == []


def test_release_gives_a_job_back_without_counting_an_attempt(store, add) -> None:
    job = add()
    store.claim("runner-a", 1, LEASE)
    store.release("runner-a", job.id)
    back = store.get(job.id)
    assert (back.status, back.attempts, back.lease_owner) == (JobStatus.PENDING, 0, None)
    assert claim_ids(store, "runner-b") == [job.id]


# --- retrying, counts, next_due -------------------------------------------------------------------------------


def test_a_job_back_to_pending_waits_for_its_next_attempt_and_shows_as_retrying(store, clock, add) -> None:
    job = add("set_score", "Lead", 1)
    fresh = add(target="C-2")
    store.claim("runner-a", 1, LEASE)
    store.record_attempt("runner-a", Attempt(job_id=job.id, started_at=clock.now, outcome="retrying",
                                             result_code="RATE_LIMITED", http_status=429))
    due = clock.now + 120
    store.finish("runner-a", job.id, status=JobStatus.PENDING, result_code="RATE_LIMITED",
                 message="Too many requests; retrying.", http_status=429, next_attempt_at=due)

    assert store.counts() == {"retrying": 1, "pending": 1}
    assert ids(store.list(status="retrying")) == [job.id]
    assert ids(store.list(status=JobStatus.PENDING)) == [fresh.id, job.id]
    assert store.get(job.id).display_status == "retrying"
    assert store.next_due() == fresh.next_attempt_at

    assert claim_ids(store) == [fresh.id]
    succeed(store, "runner-a", fresh.id)
    assert store.next_due() == due
    clock.advance(119.9)
    assert claim_ids(store) == []
    clock.advance(0.1)
    assert claim_ids(store) == [job.id]
    assert store.next_due() is None


def test_counts_has_every_display_status(store, clock, add) -> None:
    pending = add(target="P")
    retrying, running, succeeded, failed = (add(target=name) for name in ("R", "RUN", "S", "F"))
    cancelled = add(target="X")
    store.cancel(cancelled.id)
    store.claim("runner-a", 10, LEASE)
    store.release("runner-a", pending.id)
    store.record_attempt("runner-a", Attempt(job_id=retrying.id, started_at=clock.now, outcome="retrying"))
    store.finish("runner-a", retrying.id, status=JobStatus.PENDING, result_code="TIMEOUT", message="Retrying.",
                 next_attempt_at=clock.now + 5)
    succeed(store, "runner-a", succeeded.id)
    store.finish("runner-a", failed.id, status=JobStatus.FAILED, result_code="NOT_FOUND", message="No contact.")
    assert store.get(running.id).status is JobStatus.RUNNING
    assert store.counts() == {"pending": 1, "retrying": 1, "running": 1, "succeeded": 1, "failed": 1,
                              "cancelled": 1}


# --- manual retry ---------------------------------------------------------------------------------------------


def fail(store: SqliteJobStore, clock: Any, job_id: str, owner: str = "runner-a") -> None:
    store.record_attempt(owner, Attempt(job_id=job_id, started_at=clock.now, ended_at=clock.now, outcome="failed",
                                        result_code="NOT_FOUND", http_status=404, message="No such contact."))
    store.finish(owner, job_id, status=JobStatus.FAILED, result_code="NOT_FOUND", message="No such contact.",
                 http_status=404)


def test_retry_of_a_failed_job_queues_it_again_with_a_fresh_budget(store, clock, add) -> None:
    job = add("set_score", "Lead", 4)
    store.claim("runner-a", 1, LEASE)
    fail(store, clock, job.id)
    assert store.get(job.id).attempts == 1

    clock.advance(3600)
    assert store.retry(job.id) == [job.id]
    queued = store.get(job.id)
    assert queued.status is JobStatus.PENDING
    assert queued.attempts == 0
    assert (queued.result_code, queued.http_status, queued.message) == (None, None, "Retry requested.")
    assert queued.next_attempt_at == clock.now
    assert store.counts() == {"pending": 1}

    store.claim("runner-b", 1, LEASE)
    fail(store, clock, job.id, "runner-b")
    assert store.get(job.id).attempts == 1  # the budget restarted
    assert [a.number for a in store.attempts(job.id)] == [1, 2]  # the history did not


def test_retry_failed_takes_every_failed_job_and_nothing_else(store, clock, add) -> None:
    failed = [add(target=f"F-{i}") for i in range(3)]
    ok, waiting = add(target="S"), add(target="P")
    store.claim("runner-a", 4, LEASE)
    for job in failed:
        fail(store, clock, job.id)
    succeed(store, "runner-a", ok.id)

    assert sorted(store.retry()) == sorted(ids(failed))
    assert [store.get(j.id).status for j in failed] == [JobStatus.PENDING] * 3
    assert store.get(ok.id).status is JobStatus.SUCCEEDED
    assert store.get(waiting.id).status is JobStatus.PENDING
    assert store.retry() == []


def test_a_retried_job_takes_its_place_in_its_key_again(store, clock, add) -> None:
    first = add("set_score", "Lead", 4)
    second = add("increase_score", "Lead", 1)
    store.claim("runner-a", 1, LEASE)
    fail(store, clock, first.id)
    store.retry(first.id)  # before `second` was claimed: creation order holds again
    assert claim_ids(store) == [first.id]
    succeed(store, "runner-a", first.id)
    assert claim_ids(store) == [second.id]


@pytest.mark.parametrize("status", ["pending", "running", "succeeded", "cancelled"])
def test_only_failed_jobs_can_be_retried(store, clock, add, status) -> None:
    job = add()
    if status == "cancelled":
        store.cancel(job.id)
    elif status != "pending":
        store.claim("runner-a", 1, LEASE)
        if status == "succeeded":
            succeed(store, "runner-a", job.id)
    with pytest.raises(NotAllowed, match="only failed jobs can be retried"):
        store.retry(job.id)
    assert store.get(job.id).status == status


def test_retry_of_an_unknown_job_raises_job_not_found(store) -> None:
    with pytest.raises(JobNotFound):
        store.retry("nope")


# --- cancel ---------------------------------------------------------------------------------------------------


def test_cancel_a_pending_job(store, add) -> None:
    job = add()
    cancelled = store.cancel(job.id)
    assert cancelled.status is JobStatus.CANCELLED
    assert cancelled.result_code == "CANCELLED"
    assert store.get(job.id) == cancelled
    assert claim_ids(store) == []


@pytest.mark.parametrize("status", ["running", "succeeded", "failed", "cancelled"])
def test_only_pending_jobs_can_be_cancelled(store, clock, add, status) -> None:
    job = add()
    if status == "cancelled":
        store.cancel(job.id)
    else:
        store.claim("runner-a", 1, LEASE)
        if status == "succeeded":
            succeed(store, "runner-a", job.id)
        elif status == "failed":
            fail(store, clock, job.id)
    before = store.get(job.id)
    with pytest.raises(NotAllowed, match="only pending jobs can be cancelled"):
        store.cancel(job.id)
    assert store.get(job.id) == before


def test_a_retrying_job_can_be_cancelled(store, clock, add) -> None:
    job = add()
    store.claim("runner-a", 1, LEASE)
    store.record_attempt("runner-a", Attempt(job_id=job.id, started_at=clock.now, outcome="retrying"))
    store.finish("runner-a", job.id, status=JobStatus.PENDING, result_code="TIMEOUT", message="Retrying.",
                 next_attempt_at=clock.now + 30)
    assert store.cancel(job.id).status is JobStatus.CANCELLED
    clock.advance(60)
    assert claim_ids(store) == []


# --- add / add_raw --------------------------------------------------------------------------------------------


def test_add_is_all_or_nothing(store, tmp_path) -> None:
    good = req(target="C-1")
    not_a_request: Any = {"operation": "add_tag", "tags": "Webinar", "target_id": "C-2"}
    with pytest.raises(AttributeError):
        store.add([good, not_a_request])
    assert store.list() == []
    assert query(tmp_path / "jobs.db", "SELECT count(*) FROM open_keys") == [(0,)]
    # The store is usable afterwards: the failed transaction was rolled back, not left open.
    (job,) = store.add([good])
    assert claim_ids(store) == [job.id]


def test_add_keeps_the_order_given(store) -> None:
    jobs = store.add([req("set_score", "Lead", n) for n in (1, 2, 3)])
    assert [j.request.score for j in jobs if j.request] == [1, 2, 3]
    for expected in jobs:
        (job,) = store.claim("runner-a", 10, LEASE)
        assert job.id == expected.id
        succeed(store, "runner-a", job.id)


def test_add_raw_stores_invalid_input_as_given_without_blocking_others(store, clock, open_store, tmp_path) -> None:
    raw = {"operation": "Increase Score", "target_kind": "contact", "target_id": "C-1", "tags": "Lead",
           "score": "-5"}
    bad = store.add_raw(raw)
    clock.advance(1)
    good = store.add([req("increase_score", "Lead", 5)])[0]

    again = open_store(tmp_path / "jobs.db", clock=clock).get(bad.id)
    assert again.request is None
    assert again.raw == raw
    assert again.status is JobStatus.PENDING
    assert again.to_json()["operation"] == "Increase Score"
    assert claim_ids(store) == [bad.id, good.id]


# --- list -----------------------------------------------------------------------------------------------------


def test_list_filters_and_is_newest_first(store, clock, add) -> None:
    t0 = clock.now
    j1 = add(target="C-1")
    clock.advance(10)
    j2 = add(target="C-2")
    clock.advance(10)
    j3 = add(target="C-1")
    store.claim("runner-a", 1, LEASE)
    succeed(store, "runner-a", j1.id)

    assert ids(store.list()) == [j3.id, j2.id, j1.id]
    assert ids(store.list(status=JobStatus.SUCCEEDED)) == [j1.id]
    assert ids(store.list(status="pending")) == [j3.id, j2.id]
    assert ids(store.list(status=JobStatus.FAILED)) == []
    assert ids(store.list(target_id="C-1")) == [j3.id, j1.id]
    assert ids(store.list(target_id="C-9")) == []
    assert j2.created_at == t0 + 12
    assert ids(store.list(since=t0 + 12)) == [j3.id, j2.id]
    assert ids(store.list(since=t0 + 12.5)) == [j3.id]
    assert ids(store.list(limit=2)) == [j3.id, j2.id]
    assert ids(store.list(target_id="C-1", status=JobStatus.PENDING)) == [j3.id]
    assert ids(store.list(target_id="C-1", limit=1)) == [j3.id]


# --- the cost of a claim --------------------------------------------------------------------------------------


def plan(path: Path, sql: str, args: dict[str, Any]) -> list[str]:
    return [row[3] for row in query(path, "EXPLAIN QUERY PLAN " + sql, args)]


@pytest.mark.parametrize("analyzed", [False, True], ids=["fresh", "after-analyze"])
def test_a_claim_searches_pending_jobs_by_index_never_the_finished_ones(store, clock, tmp_path, analyzed) -> None:
    path = tmp_path / "jobs.db"
    finished = store.add([req(target=f"C-{i % 50}", tags=f"T{i}") for i in range(2000)])
    store.claim("runner-a", 2000, LEASE)
    for job in finished:
        succeed(store, "runner-a", job.id)
    store.add([req(target=f"C-{i}") for i in range(5)])
    if analyzed:
        query(path, "ANALYZE")

    steps = plan(path, CLAIM, {"owner": "x", "expires": clock.now + LEASE, "now": clock.now, "limit": 8})
    assert any(s.startswith("SEARCH j USING INDEX jobs_due") for s in steps), steps
    assert any(s.startswith("SEARCH mine USING") and "INDEX" in s for s in steps), steps
    assert any(s.startswith("SEARCH other USING PRIMARY KEY") for s in steps), steps
    assert not [s for s in steps if s.startswith("SCAN") or "TEMP B-TREE" in s], steps

    expired = plan(path, EXPIRED_LEASES, {"now": clock.now})
    assert not [s for s in expired if s.startswith("SCAN")], expired


def test_finished_jobs_leave_no_rows_in_open_keys(store, clock, tmp_path, add) -> None:
    path = tmp_path / "jobs.db"
    multi = add("remove_tag", "A, B, C")
    done = add("set_score", "D", 1)
    failed = add("set_score", "E", 1, target="C-2")
    cancelled = add("add_tag", "F", target="C-3")
    waiting = add("set_score", "A", 9)
    assert query(path, "SELECT count(*) FROM open_keys") == [(7,)]

    store.cancel(cancelled.id)
    store.claim("runner-a", 10, LEASE)
    succeed(store, "runner-a", multi.id)
    succeed(store, "runner-a", done.id)
    fail(store, clock, failed.id)
    assert query(path, "SELECT key FROM open_keys") == [("contact:C-1|a",)]
    assert store.get(waiting.id).status is JobStatus.PENDING


# --- several processes ----------------------------------------------------------------------------------------

STATUS_LOG = """
CREATE TABLE status_log (n INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT, old TEXT, new TEXT, owner TEXT);
CREATE TRIGGER log_status AFTER UPDATE OF status ON jobs WHEN OLD.status IS NOT NEW.status BEGIN
    INSERT INTO status_log (job_id, old, new, owner)
    VALUES (NEW.id, OLD.status, NEW.status, coalesce(NEW.lease_owner, OLD.lease_owner));
END;
"""


def _claim_until_drained(path: str, owner: str, out: str, start: Any) -> None:
    """A runner process: claim, 'work' briefly, finish, until nothing is pending or running."""
    store = SqliteJobStore(path)
    claimed: list[str] = []
    rng = random.Random(owner)
    try:
        start.wait(timeout=30)
        while True:
            jobs = store.claim(owner, 3, 60.0)
            if not jobs:
                counts = store.counts()
                if not counts.get("pending") and not counts.get("running") and not counts.get("retrying"):
                    break
                time.sleep(0.002)  # the rest is blocked behind other runners' jobs: poll again
                continue
            for job in jobs:
                claimed.append(job.id)
                time.sleep(rng.random() / 1000)
                store.finish(owner, job.id, status=JobStatus.SUCCEEDED, result_code=None, message=f"By {owner}.")
    finally:
        store.close()
        Path(out).write_text(json.dumps(claimed))


def test_runners_in_separate_processes_never_share_a_job_nor_break_key_order(open_store, tmp_path) -> None:
    path = tmp_path / "shared.db"
    setup = open_store(path)
    query(path, "SELECT 1")  # the schema exists; now add the observer
    conn = sqlite3.connect(path)
    conn.executescript(STATUS_LOG)
    conn.close()
    keys = [(f"C-{i % 5}", f"Tag{i // 5}") for i in range(20)]
    jobs = setup.add([req("increase_score", keys[n % 20][1], 1 + n, target=keys[n % 20][0]) for n in range(300)])

    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(4)
    outs = [tmp_path / f"runner-{i}.json" for i in range(4)]
    procs = [ctx.Process(target=_claim_until_drained, args=(str(path), f"runner-{i}", str(outs[i]), start))
             for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    for p in procs:
        p.close()

    claimed_by = {f"runner-{i}": json.loads(out.read_text()) for i, out in enumerate(outs)}
    every_claim = [job_id for claimed in claimed_by.values() for job_id in claimed]
    assert [job_id for job_id, n in Counter(every_claim).items() if n > 1] == []
    assert sorted(every_claim) == sorted(ids(jobs))
    assert sum(1 for claimed in claimed_by.values() if claimed) >= 2, "one runner did everything: no race tested"
    assert setup.counts() == {"succeeded": 300}

    # The trigger logged every status change inside the store's own transactions: `n` is the commit order.
    log = query(path, "SELECT n, job_id, old, new, owner FROM status_log ORDER BY n")
    events: dict[str, list[tuple[int, str, str, str]]] = defaultdict(list)
    for n, job_id, old, new, owner in log:
        events[job_id].append((n, old, new, owner))
    for job_id, owner in ((j, o) for o, claimed in claimed_by.items() for j in claimed):
        assert [(old, new, by) for _, old, new, by in events[job_id]] == [
            ("pending", "running", owner), ("running", "succeeded", owner)]

    by_key: dict[str, list[Job]] = defaultdict(list)
    for job in jobs:  # creation order
        assert job.request is not None
        by_key[job.request.keys[0]].append(job)
    assert len(by_key) == 20
    for key, in_order in by_key.items():
        for earlier, later in itertools.pairwise(in_order):
            earlier_finished = events[earlier.id][1][0]
            later_claimed = events[later.id][0][0]
            assert earlier_finished < later_claimed, f"{key}: {later.id} was claimed before {earlier.id} finished"


def _claim_and_die(path: str, owner: str, lease: float) -> None:
    store = SqliteJobStore(path)
    jobs = store.claim(owner, 10, lease)
    os._exit(17 if jobs else 1)  # killed mid-job: no finish, no release, no close


def test_the_jobs_of_a_killed_runner_come_back_when_its_lease_expires(open_store, tmp_path) -> None:
    path = tmp_path / "jobs.db"
    store = open_store(path)  # the real clock, as the dying process has
    first, other = store.add([req("set_score", "Lead", 1, target="C-1"), req("set_score", "Lead", 1, target="C-2")])
    (behind,) = store.add([req("increase_score", "Lead", 2, target="C-1")])

    proc = multiprocessing.get_context("spawn").Process(target=_claim_and_die, args=(str(path), "doomed", 1.0))
    proc.start()
    proc.join(timeout=30)
    assert proc.exitcode == 17
    proc.close()

    held = [store.get(j.id) for j in (first, other)]
    assert [(j.status, j.lease_owner) for j in held] == [(JobStatus.RUNNING, "doomed")] * 2
    assert store.claim("survivor", 10, 30) == []  # leases still held; `behind` waits for `first`

    expires = max(j.lease_expires_at or 0 for j in held)
    pause = max(0.0, expires - time.time()) + 0.05
    assert pause < 1.5
    time.sleep(pause)

    back = store.claim("survivor", 10, 30)
    assert ids(back) == [first.id, other.id]
    for job in back:
        assert (job.lease_owner, job.attempts) == ("survivor", 1)
        assert [a.outcome for a in store.attempts(job.id)] == ["lease_expired"]
        assert "doomed" in store.attempts(job.id)[0].message
    succeed(store, "survivor", first.id)
    assert ids(store.claim("survivor", 10, 30)) == [behind.id]


def test_a_failed_job_retried_by_hand_waits_while_a_later_job_on_its_key_runs(store, add) -> None:
    first = add("set_score", "Lead", 1)
    second = add("set_score", "Lead", 2)
    assert claim_ids(store) == [first.id]
    store.finish("runner-a", first.id, status=JobStatus.FAILED, result_code="UNAVAILABLE", message="down")
    assert claim_ids(store) == [second.id]
    store.retry(first.id)
    assert claim_ids(store, "runner-b") == []  # the second job is running: the first must not run beside it
    succeed(store, "runner-a", second.id)
    assert claim_ids(store, "runner-b") == [first.id]


def test_valid_input_queued_raw_keeps_its_place_in_the_key_order(store, add) -> None:
    raw = store.add_raw({"operation": "Set Score", "target_kind": "contact", "target_id": "C-1", "tags": "Lead",
                         "score": "5"})
    later = add("set_score", "Lead", 6)
    assert raw.request is not None
    assert claim_ids(store) == [raw.id]
    succeed(store, "runner-a", raw.id)
    assert claim_ids(store) == [later.id]


def test_a_file_locked_by_someone_else_is_a_transient_store_error(tmp_path, clock) -> None:
    from connector.errors import TransientError
    from jobs.store import StoreUnavailable

    store = SqliteJobStore(tmp_path / "locked.db", clock=clock, busy_timeout=0.1)
    try:
        [job] = store.add([req()])
        store.claim("runner-a", 1, LEASE)
        other = sqlite3.connect(tmp_path / "locked.db", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # a backup or a sqlite3 shell holding the write lock
        try:
            with pytest.raises(StoreUnavailable) as caught:
                succeed(store, "runner-a", job.id)
            assert isinstance(caught.value, TransientError)
            assert caught.value.result_code == "STORE_UNAVAILABLE"
        finally:
            other.execute("ROLLBACK")
            other.close()
        succeed(store, "runner-a", job.id)  # the same connection works again once the lock is gone
        assert store.get(job.id).status is JobStatus.SUCCEEDED
    finally:
        store.close()
