"""What only the SQLite store has: its transactions, its query plans, runners in separate processes on one file,
a killed process, and a file locked by someone else. Every guarantee of the store contract is in `tests/contract`.

Time is a FakeClock. Runners in separate processes take their leases on the real clock; the test reads the file
through a FakeClock set on either side of those leases, so no sleep races a lease.
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

from jobs.model import Attempt, Job, JobRequest, JobStatus
from jobs.store import Actor, Outcome
from jobs.store.sqlite import CLAIM, EXPIRED_LEASES, SqliteJobStore
from tests.conftest import FakeClock
from tests.integration.helpers import query

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
    store.finish(owner, job_id, Outcome(JobStatus.SUCCEEDED, None, "Done."))


def fail(store: SqliteJobStore, clock: Any, job_id: str, owner: str = "runner-a") -> None:
    store.record_attempt(owner, Attempt(job_id=job_id, started_at=clock.now, ended_at=clock.now, outcome="failed",
                                        result_code="NOT_FOUND", http_status=404, message="No such contact."))
    store.finish(owner, job_id, Outcome(JobStatus.FAILED, "NOT_FOUND", "No such contact.", http_status=404))


# --- all or nothing ---------------------------------------------------------------------------------------


def test_add_is_all_or_nothing(store, tmp_path) -> None:
    good = req(target="C-1")
    not_a_request: Any = {"operation": "add_tag", "tags": "Webinar", "target_id": "C-2"}
    with pytest.raises(AttributeError):
        store.add([good, not_a_request])
    assert store.counts() == {}
    assert query(tmp_path / "jobs.db", "SELECT count(*) FROM open_keys") == [(0,)]
    # The store is usable afterwards: the failed transaction was rolled back, not left open.
    (job,) = store.add([good])
    assert claim_ids(store) == [job.id]


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
    assert any(s.startswith("SEARCH j USING INDEX jobs_ready") for s in steps), steps
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

    store.cancel(cancelled.id, Actor('ann', 'cli'))
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
                store.finish(owner, job.id, Outcome(JobStatus.SUCCEEDED, None, f"By {owner}."))
    finally:
        store.close()
        Path(out).write_text(json.dumps(claimed))


@pytest.mark.processes
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


@pytest.mark.processes
def test_the_jobs_of_a_killed_runner_come_back_when_its_lease_expires(open_store, tmp_path) -> None:
    path = tmp_path / "jobs.db"
    now = time.time()
    clock = FakeClock(now)  # the survivor's clock; the dying process takes its lease on the real one
    store = open_store(path, clock=clock)
    first, other = store.add([req("set_score", "Lead", 1, target="C-1"), req("set_score", "Lead", 1, target="C-2")])
    (behind,) = store.add([req("increase_score", "Lead", 2, target="C-1")])

    proc = multiprocessing.get_context("spawn").Process(target=_claim_and_die, args=(str(path), "doomed", LEASE))
    proc.start()
    proc.join(timeout=60)
    assert proc.exitcode == 17
    proc.close()

    held = [store.get(j.id) for j in (first, other)]
    assert [(j.status, j.lease_owner) for j in held] == [(JobStatus.RUNNING, "doomed")] * 2
    expires = max(j.lease_expires_at or 0 for j in held)
    assert now < expires <= time.time() + LEASE  # the lease the process took, on the real clock

    clock.now = expires - 0.001
    assert store.claim("survivor", 10, LEASE) == []  # leases still held; `behind` waits for `first`

    clock.now = expires + 0.001
    back = store.claim("survivor", 10, LEASE)
    assert ids(back) == [first.id, other.id]
    for job in back:
        assert (job.lease_owner, job.attempts) == ("survivor", 1)
        assert [a.outcome for a in store.attempts(job.id)] == ["lease_expired"]
        assert "doomed" in store.attempts(job.id)[0].message
    succeed(store, "survivor", first.id)
    assert ids(store.claim("survivor", 10, LEASE)) == [behind.id]


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
