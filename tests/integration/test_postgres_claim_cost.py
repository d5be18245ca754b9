"""What the PostgreSQL claim reads, and the head flags it reads through (`jobs.head`, see `jobs.store.postgres`).

A claim reads the due heads only: the jobs waiting behind an earlier job of their key cost it nothing, which the
plan of the claim statement shows (rows read, from EXPLAIN ANALYZE; never a time). The flags are kept by every write
that changes which job comes first on a key, also when such writes race: an add against the close of the older
job it waits behind, two closes that each free one key of a job with several, runners on several processes with
jobs being added meanwhile. A flag that is wrongly false would leave its job waiting forever, so each test ends
with no pending job that should be a head and is not.
"""

from __future__ import annotations

import functools
import itertools
import json
import multiprocessing
import random
import threading
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from jobs.model import Attempt, Job, JobRequest, JobStatus
from jobs.store import Actor, Batch, Effects, JobFilter, Outcome, semantics
from jobs.store import postgres as pgstore
from jobs.store import postgres_schema as schema
from jobs.store.postgres import CLAIM, PostgresJobStore, upgrade
from tests.conftest import FakeClock
from tests.integration.helpers import wait_until

LEASE = 30.0
PERSON = Actor(who="ann", via="cli")
CLAIM_BY_KEY_ROWS = """
WITH picked AS (
    SELECT j.seq FROM jobs j
    WHERE j.status = 'pending' AND j.next_attempt_at <= %(now)s
      AND NOT EXISTS (
          SELECT 1 FROM open_keys mine
          JOIN open_keys other ON other.key = mine.key AND other.seq <> mine.seq
          JOIN jobs o ON o.seq = other.seq
          WHERE mine.seq = j.seq AND (other.seq < mine.seq OR o.status = 'running')
      )
    ORDER BY j.next_attempt_at, j.seq LIMIT %(limit)s FOR UPDATE OF j SKIP LOCKED
)
UPDATE jobs SET status = 'running', lease_owner = %(owner)s, lease_expires_at = %(expires)s, updated_at = %(now)s
FROM picked WHERE jobs.seq = picked.seq RETURNING jobs.*
"""
# Whether a job is held back, by the rule of `semantics.claimable`: an earlier unfinished job of one of its keys,
# or another running one. Read from the jobs' own statuses, not from the marks the store keeps.
HELD_BACK = """(EXISTS (
    SELECT 1 FROM open_keys mine JOIN open_keys other ON other.key = mine.key AND other.seq <> mine.seq
    JOIN jobs o ON o.seq = other.seq
    WHERE mine.seq = j.seq AND (other.seq < mine.seq OR o.status = 'running')))"""
# Pending jobs whose flag says otherwise than the rule: (id, head).
WRONG_HEADS = f"SELECT j.id, j.head FROM jobs j WHERE j.status = 'pending' AND j.head = {HELD_BACK} ORDER BY j.seq"
WRONG_RUNNING = """
SELECT j.id FROM open_keys o JOIN jobs j ON j.seq = o.seq WHERE o.running <> (j.status = 'running')
"""


def req(tags: str, target: str = "C-1", score: int | None = None, request_id: str | None = None) -> JobRequest:
    several = ";" in tags or score is None
    return JobRequest.from_input(operation="remove_tag" if several else "set_score", tags=tags,
                                 score=None if several else score, target_kind="contact", target_id=target,
                                 request_id=request_id)


def wrong_heads(url: str) -> tuple[list[str], list[str]]:
    """The pending jobs that should be heads and are not, and those that are and should not be."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(WRONG_HEADS).fetchall()
        assert conn.execute(WRONG_RUNNING).fetchall() == []
    return [job_id for job_id, head in rows if not head], [job_id for job_id, head in rows if head]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(postgres_db: str, clock: FakeClock) -> Iterator[PostgresJobStore]:
    s = PostgresJobStore(postgres_db, clock=clock, pool_size=4)
    yield s
    s.close()


def fail_later(store: PostgresJobStore, clock: FakeClock, job_id: str, delay: float) -> None:
    store.record_attempt("runner-a", Attempt(job_id=job_id, started_at=clock.now, outcome="retrying",
                                             result_code="UNAVAILABLE", http_status=503))
    store.finish("runner-a", job_id, Outcome(JobStatus.PENDING, "UNAVAILABLE", "Retrying.", http_status=503,
                                             next_attempt_at=clock.now + delay))


def succeed(store: PostgresJobStore, owner: str, job_id: str) -> None:
    store.finish(owner, job_id, Outcome(JobStatus.SUCCEEDED, "OK", "Done."))


# --- what a claim reads ---------------------------------------------------------------------------------------


def rows_read(plan: dict[str, Any]) -> int:
    """Rows the scans of a plan produced or threw away, over all their loops."""
    loops = plan.get("Actual Loops", 1)
    read = 0
    if "Relation Name" in plan or "Index Name" in plan:
        read = (plan.get("Actual Rows", 0) + plan.get("Rows Removed by Filter", 0)
                + plan.get("Rows Removed by Index Recheck", 0)) * loops
    return read + sum(rows_read(child) for child in plan.get("Plans", []))


def claim_plan(url: str, statement: str, now: float, limit: int) -> dict[str, Any]:
    with psycopg.connect(url) as conn:
        (plan,) = conn.execute(f"EXPLAIN (ANALYZE, FORMAT JSON) {statement}",
                               {"owner": "runner-x", "expires": now + LEASE, "now": now, "limit": limit}
                               ).fetchone()  # type: ignore[misc]
        conn.rollback()  # EXPLAIN ANALYZE ran the claim: nothing of it is kept
    return dict(plan[0]["Plan"])


def test_a_claim_reads_the_due_heads_not_the_jobs_waiting_behind_a_retry(store: PostgresJobStore,
                                                                         postgres_db: str, clock: FakeClock) -> None:
    (waiting,) = store.add([req("Blocked")])
    assert [j.id for j in store.claim("runner-a", 1, LEASE)] == [waiting.id]
    fail_later(store, clock, waiting.id, 3600)  # its retry is an hour away
    for start in range(0, 5000, 1000):  # due, every one of them, and all behind it
        store.add([req("Blocked", score=n) for n in range(start, start + 1000)])
    behind_due = store.add([req("Busy", target="C-2", score=n) for n in range(2000)])  # a due head and its queue
    free = store.add([req("Free", target=f"C-{n}") for n in range(3, 8)])
    clock.advance(1)

    plan = claim_plan(postgres_db, CLAIM, clock.now, limit=5)
    assert rows_read(plan) <= 60, json.dumps(plan, indent=1)
    # The claim of schema version 1, which decided the order from the key rows of every due job, reads the jobs
    # waiting behind the retry: what the count above would show if a claim still read them.
    assert rows_read(claim_plan(postgres_db, CLAIM_BY_KEY_ROWS, clock.now, limit=5)) > 5000

    claimed = [j.id for j in store.claim("runner-a", 10, LEASE)]
    assert claimed == [behind_due[0].id] + [j.id for j in free]
    assert wrong_heads(postgres_db) == ([], [])


def test_the_next_due_time_is_read_from_the_heads(store: PostgresJobStore, postgres_db: str,
                                                   clock: FakeClock) -> None:
    (first,) = store.add([req("Blocked")])
    store.claim("runner-a", 1, LEASE)
    fail_later(store, clock, first.id, 60)
    (behind,) = store.add([req("Blocked", score=2)])
    with psycopg.connect(postgres_db) as conn:
        conn.execute("UPDATE jobs SET next_attempt_at = 0 WHERE id = %s", (behind.id,))  # due long ago: not a head
    assert store.waiting() == (1, clock.now + 60)


# --- heads under every write, one at a time -------------------------------------------------------------------


class Rows:
    """An import's rows, read one at a time; `meanwhile` runs once `at` rows have been read (the import is then
    under way, its transaction open)."""

    def __init__(self, requests: list[JobRequest], at: int = -1, meanwhile: Any = None) -> None:
        self.requests, self.at, self.meanwhile = requests, at, meanwhile
        self.rows = self.invalid = 0

    def __iter__(self) -> Iterator[JobRequest]:
        for n, request in enumerate(self.requests):
            if n == self.at:
                self.meanwhile()
            self.rows += 1
            yield request


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_heads_follow_every_write_and_claims_follow_the_rule(store: PostgresJobStore, postgres_db: str,
                                                             clock: FakeClock, seed: int) -> None:
    """Random writes of every kind over a few keys, jobs naming one or two tags: after each, every pending job
    that nothing holds back is a head and no other is, the running marks are the running jobs, and a claim takes
    exactly what `semantics.claimable` lets run."""
    rng = random.Random(seed)
    tags = ["A", "B", "C", "A; B", "B; C"]
    held: list[str] = []
    request_ids = iter(range(10**6))

    def some(n: int) -> list[JobRequest]:
        return [req(rng.choice(tags), rng.choice(["C-1", "C-2"]), rng.randint(1, 9)) for _ in range(n)]

    store.add(some(12))
    for turn in range(40):
        action = rng.choice(["add", "import", "raw", "effects", "finish", "finish", "claim", "cancel",
                             "cancel_where", "retry", "retry_where", "release", "expire"])
        failed = [j.id for j in store.list(JobFilter(status="failed")).jobs]
        pending = [j.id for j in store.list(JobFilter(status="pending")).jobs]
        if action == "add":
            store.add(some(rng.randint(1, 3)))
        elif action == "import":
            store.add_batch(Batch(id=f"b{turn}", file="f.csv", sha256=f"{turn:064d}"), Rows(some(3)))
        elif action == "raw":
            store.add_raw({"operation": "set_score", "tags": rng.choice(tags), "score": "x",
                           "target_kind": "contact", "target_id": "C-1"})
        elif action == "effects" and held:
            store.save_progress("runner-a", held[0], applied=True, effects=Effects(jobs=tuple(
                req(rng.choice(tags), "C-2", 1, request_id=f"r{next(request_ids)}") for _ in range(2))))
        elif action == "finish" and held:
            job_id = held.pop(rng.randrange(len(held)))
            outcome = rng.choice(["succeed", "fail", "later"])
            if outcome == "succeed":
                succeed(store, "runner-a", job_id)
            elif outcome == "fail":
                store.finish("runner-a", job_id, Outcome(JobStatus.FAILED, "NOT_FOUND", "No.", attempt=Attempt(
                    job_id=job_id, started_at=clock.now, outcome="failed", result_code="NOT_FOUND")))
            else:
                fail_later(store, clock, job_id, rng.choice([0, 20]))
        elif action == "cancel" and pending:
            store.cancel(rng.choice(pending), PERSON)
        elif action == "cancel_where":
            store.cancel_where(JobFilter(tag=rng.choice(["A", "C"]), target_id=rng.choice(["C-1", "C-2"])), PERSON)
        elif action == "retry" and failed:
            store.retry(rng.choice(failed), PERSON)
        elif action == "retry_where":
            store.retry_where(JobFilter(target_id=rng.choice(["C-1", "C-2"])), PERSON)
        elif action == "release" and held:
            store.release("runner-a", held.pop(rng.randrange(len(held))))
        elif action == "expire" and held:
            clock.advance(LEASE + 1)  # every lease runs out; the next claim takes the jobs back
            held.clear()
        clock.advance(rng.choice([0, 0, 21]))
        assert wrong_heads(postgres_db) == ([], []), f"turn {turn} ({action})"

        unfinished = [j for j in reversed(store.list(JobFilter(limit=500)).jobs) if not j.status.finished]
        now = clock.now
        expected = {j.id for j in semantics.claimable(unfinished, now)
                    if (j.next_attempt_at <= now if j.status is JobStatus.PENDING
                        else not semantics.holds_lease(j, now))}
        if action == "claim" or rng.random() < 0.5:
            claimed = [j.id for j in store.claim("runner-a", 100, LEASE)]
            assert set(claimed) == expected, f"turn {turn} ({action})"
            held += claimed
        store.renew("runner-a", held, LEASE)


def test_a_job_of_several_keys_is_a_head_once_each_is_free_and_not_before(store: PostgresJobStore,
                                                                         postgres_db: str) -> None:
    a, b, both, after = store.add([req("A"), req("B"), req("A; B"), req("B")])
    assert {j.id for j in store.claim("runner-a", 10, LEASE)} == {a.id, b.id}
    succeed(store, "runner-a", a.id)
    assert store.claim("runner-a", 10, LEASE) == []
    assert wrong_heads(postgres_db) == ([], [])
    succeed(store, "runner-a", b.id)
    assert [j.id for j in store.claim("runner-a", 10, LEASE)] == [both.id]
    succeed(store, "runner-a", both.id)
    assert [j.id for j in store.claim("runner-a", 10, LEASE)] == [after.id]


def test_a_head_retried_by_hand_takes_its_place_back_and_the_next_job_waits_again(store: PostgresJobStore,
                                                                                 postgres_db: str) -> None:
    first, second, third = store.add([req("A"), req("A", score=2), req("A", score=3)])
    store.claim("runner-a", 1, LEASE)
    store.finish("runner-a", first.id, Outcome(JobStatus.FAILED, "NOT_FOUND", "No."))
    store.retry(first.id, PERSON)
    assert wrong_heads(postgres_db) == ([], [])
    assert [j.id for j in store.claim("runner-a", 10, LEASE)] == [first.id]
    store.cancel(second.id, PERSON)
    succeed(store, "runner-a", first.id)
    assert [j.id for j in store.claim("runner-a", 10, LEASE)] == [third.id]


# --- an add racing the close of the job it waits behind -------------------------------------------------------


@pytest.mark.parametrize("keys", [3, pgstore.SETTLE_KEYS + 1])
def test_a_job_imported_behind_one_that_finishes_during_the_import_is_a_head(store: PostgresJobStore,
                                                                            postgres_db: str, keys: int) -> None:
    """The import's transaction is open while the older jobs finish: they cannot see its jobs, so the import
    settles them before it commits (with one lock per key, or one for all when many keys wait)."""
    older = store.add([req(f"T{n}") for n in range(keys)])
    assert len(store.claim("runner-a", keys, LEASE)) == keys
    other = PostgresJobStore(postgres_db, pool_size=2)

    def finish_older() -> None:
        done = threading.Thread(target=lambda: [succeed(other, "runner-a", j.id) for j in older])
        done.start()
        done.join(timeout=60)
        assert not done.is_alive()

    rows = Rows([req(f"T{n}", score=1) for n in range(keys)] + [req("Filler", target=f"C-{n}")
                                                                 for n in range(pgstore.IMPORT_CHUNK)],
                at=pgstore.IMPORT_CHUNK + 1, meanwhile=finish_older)
    try:
        kept = store.add_batch(Batch(id="b1", file="f.csv", sha256="ab" * 32), rows)
    finally:
        other.close()
    assert (kept.rows, kept.queued, kept.already) == (keys + pgstore.IMPORT_CHUNK,) * 2 + (0,)
    assert wrong_heads(postgres_db) == ([], [])
    imported = {j.id for j in store.list(JobFilter(status="pending", limit=2000)).jobs}
    assert {j.id for j in store.claim("runner-a", 2000, LEASE)} == imported


def test_an_import_counts_every_chunk_and_keeps_its_record_as_belonging_to_no_job(store: PostgresJobStore) -> None:
    chunk = pgstore.IMPORT_CHUNK
    store.add([req("T", target=f"C-{n}", request_id=f"r{n}") for n in (1, chunk + 1)])  # one in each chunk
    rows = Rows([req("T", target=f"C-{n}", request_id=f"r{n}") for n in range(chunk + 10)])
    kept = store.add_batch(Batch(id="b1", file="f.csv", sha256="ab" * 32), rows)
    assert (kept.rows, kept.queued, kept.already) == (chunk + 10, chunk + 8, 2)
    assert [entry.job_id for entry in store.entries(Batch.STREAM)] == [""]


def test_valid_input_queued_raw_behind_an_older_job_becomes_a_head_when_it_finishes(store: PostgresJobStore,
                                                                                   postgres_db: str) -> None:
    (older,) = store.add([req("A")])
    store.claim("runner-a", 1, LEASE)
    raw = store.add_raw({"operation": "set_score", "tags": "A", "score": 2, "target_kind": "contact",
                         "target_id": "C-1"})
    assert store.claim("runner-a", 1, LEASE) == []
    succeed(store, "runner-a", older.id)
    assert [j.id for j in store.claim("runner-a", 1, LEASE)] == [raw.id]
    assert wrong_heads(postgres_db) == ([], [])


@pytest.mark.parametrize("leaves", ["retry_later", "release", "lease_expiry"])
def test_a_job_back_to_pending_behind_one_retried_while_it_ran_waits_for_it(store: PostgresJobStore,
                                                                           postgres_db: str, clock: FakeClock,
                                                                           leaves: str) -> None:
    """A failed job retried by hand while a later job of its key runs waits for that job; once the later job is
    back to pending (a retry later, a release, a lease that ran out), the earlier one runs first."""
    first, later = store.add([req("A"), req("A", score=2)])
    store.claim("runner-a", 1, LEASE)
    store.finish("runner-a", first.id, Outcome(JobStatus.FAILED, "NOT_FOUND", "No."))
    assert [j.id for j in store.claim("runner-a", 1, LEASE)] == [later.id]
    store.retry(first.id, PERSON)
    assert store.claim("runner-b", 10, LEASE) == []
    if leaves == "retry_later":
        fail_later(store, clock, later.id, 0)
    elif leaves == "release":
        store.release("runner-a", later.id)
    else:
        clock.advance(LEASE + 1)
    assert [j.id for j in store.claim("runner-b", 10, LEASE)] == [first.id]
    assert wrong_heads(postgres_db) == ([], [])
    succeed(store, "runner-b", first.id)
    assert [j.id for j in store.claim("runner-b", 10, LEASE)] == [later.id]


def test_a_retrying_job_behind_a_running_one_is_counted_without_a_due_time(store: PostgresJobStore,
                                                                          clock: FakeClock) -> None:
    first, later = store.add([req("A"), req("A", score=2)])
    store.claim("runner-a", 1, LEASE)
    store.finish("runner-a", first.id, Outcome(JobStatus.FAILED, "NOT_FOUND", "No."))
    store.claim("runner-a", 1, LEASE)
    fail_later(store, clock, later.id, 60)
    store.retry(first.id, PERSON)
    (job,) = store.claim("runner-a", 1, LEASE)
    assert job.id == first.id
    assert store.waiting() == (1, None)  # the later job waits for the earlier one, not for its time


def test_bulk_acts_take_every_job_their_filter_finds_whatever_the_page(store: PostgresJobStore,
                                                                      clock: FakeClock) -> None:
    jobs = store.add([req("A", target=f"C-{n}") for n in range(6)])
    assert len(store.claim("runner-a", 6, LEASE)) == 6
    fail_later(store, clock, jobs[0].id, 60)  # retrying
    store.finish("runner-a", jobs[5].id, Outcome(JobStatus.FAILED, "NOT_FOUND", "No."))  # the newest
    for job in jobs[1:5]:
        store.release("runner-a", job.id)
    cursor = store.list(JobFilter(limit=1)).next_cursor  # the page after the newest job
    assert cursor is not None
    assert store.cancel_where(JobFilter(status="retrying", after=cursor), PERSON) == [jobs[0].id]
    assert store.retry_where(JobFilter(status="failed", after=cursor), PERSON) == [jobs[5].id]
    assert store.cancel_where(JobFilter(status="pending", after=cursor), PERSON) == [j.id for j in jobs[1:]]


@pytest.mark.parametrize("act", ["cancel_where", "retry_where"])
def test_a_bulk_act_does_not_wait_for_a_running_job_a_runner_is_writing(store: PostgresJobStore, postgres_db: str,
                                                                      act: str) -> None:
    """A bulk act locks only the jobs it may change: a running job whose row a runner holds (its outcome being
    written) is not waited for, whatever else the filter finds."""
    running, pending = store.add([req("A"), req("B")])
    store.claim("runner-a", 1, LEASE)
    with psycopg.connect(postgres_db) as runner:
        runner.execute("SELECT 1 FROM jobs WHERE id = %s FOR UPDATE", (running.id,))  # held until rollback
        done: list[list[str]] = []
        bulk = getattr(store, act)
        thread = threading.Thread(target=lambda: done.append(bulk(JobFilter(target_id="C-1"), PERSON)))
        thread.start()

        def waits_for_a_row() -> bool:
            with psycopg.connect(postgres_db) as conn:
                return bool(conn.execute("SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                         "AND query LIKE '%%FOR UPDATE%%' AND pid <> pg_backend_pid()").fetchall())

        try:
            wait_until(lambda: not thread.is_alive() or waits_for_a_row(), "the bulk act done or waiting")
            assert not thread.is_alive() or not waits_for_a_row(), "it waits for the running job's row"
        finally:
            runner.rollback()
            thread.join(timeout=60)
    assert done == [[pending.id] if act == "cancel_where" else []]


def test_the_claim_is_planned_for_its_own_time_at_each_run(store: PostgresJobStore) -> None:
    """Never prepared: a plan cached for any time and limit may read every due head and sort them."""
    store.add([req("A", target=f"C-{n}") for n in range(3)])
    for _ in range(8):  # more than psycopg's threshold for preparing a statement
        for job in store.claim("runner-a", 1, LEASE):
            succeed(store, "runner-a", job.id)
    with store._connection() as conn:
        prepared = [row["statement"] for row in conn.execute("SELECT statement FROM pg_prepared_statements")]
    assert [text for text in prepared if "picked" in text] == []


# --- closes and adds racing on threads ------------------------------------------------------------------------


def test_two_closes_that_each_free_one_key_of_a_job_make_it_a_head(postgres_db: str) -> None:
    """A job of keys A and B, behind a running job of A and one of B, both finished at the same moment by two
    runners: each close sees the other's job still there when it starts; the job must be a head after both."""
    stores = [PostgresJobStore(postgres_db, clock=lambda: 1.0, pool_size=2) for _ in range(2)]
    try:
        for turn in range(40):
            a, b, both = stores[0].add([req(f"A{turn}"), req(f"B{turn}"), req(f"A{turn}; B{turn}")])
            assert {j.id for j in stores[0].claim("runner-a", 10, LEASE)} == {a.id, b.id}
            start = threading.Barrier(2)

            def close(store: PostgresJobStore, job: Job, start: threading.Barrier) -> None:
                start.wait()
                succeed(store, "runner-a", job.id)

            threads = [threading.Thread(target=close, args=(s, j, start))
                       for s, j in zip(stores, (a, b), strict=True)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=60)
            assert [j.id for j in stores[0].claim("runner-a", 10, LEASE)] == [both.id], f"turn {turn}"
            succeed(stores[0], "runner-a", both.id)
    finally:
        for s in stores:
            s.close()


def _at_once(*acts: Any) -> None:
    start = threading.Barrier(len(acts))
    errors: list[BaseException] = []

    def run(act: Any) -> None:
        start.wait()
        try:
            act()
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(act,)) for act in acts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []


@pytest.mark.parametrize("other", ["finish", "release", "lease_expiry"])
def test_a_cancel_at_the_moment_another_job_of_its_key_leaves_running_strands_nothing(postgres_db: str,
                                                                                     other: str) -> None:
    """Both change which job comes first on the key, at once: they take its lock one after the other, so the
    second sees the first, and the job left first becomes a head."""
    now = [1.0]
    stores = [PostgresJobStore(postgres_db, clock=lambda: now[0], pool_size=2) for _ in range(2)]
    try:
        for turn in range(25):
            key = f"A{turn}"
            if other == "finish":  # a running head, a job behind it cancelled, one more behind
                running, cancelled, last = stores[0].add([req(key), req(key, score=2), req(key, score=3)])
                stores[0].claim("runner-a", 10, LEASE)
            else:  # a failed job retried by hand while the later one runs: it waits for it, and is cancelled
                cancelled, running = stores[0].add([req(key), req(key, score=2)])
                last = running
                stores[0].claim("runner-a", 10, LEASE)
                stores[0].finish("runner-a", cancelled.id, Outcome(JobStatus.FAILED, "NOT_FOUND", "No."))
                stores[0].claim("runner-a", 10, LEASE)
                stores[0].retry(cancelled.id, PERSON)
            if other == "finish":
                leave: Any = functools.partial(succeed, stores[1], "runner-a", running.id)
            elif other == "release":
                leave = functools.partial(stores[1].release, "runner-a", running.id)
            else:
                now[0] += LEASE + 1
                leave = functools.partial(stores[1].claim, "runner-b", 0, LEASE)  # takes the lease back
            _at_once(functools.partial(stores[0].cancel, cancelled.id, PERSON), leave)
            assert wrong_heads(postgres_db) == ([], []), f"turn {turn}"
            assert [j.id for j in stores[0].claim("runner-c", 10, LEASE)] == [last.id], f"turn {turn}"
            succeed(stores[0], "runner-c", last.id)
    finally:
        for s in stores:
            s.close()


def test_adds_racing_finishes_and_retries_on_shared_keys_strand_no_job(postgres_db: str) -> None:
    """Two runners drain while jobs on the same few keys are added (one at a time and in imports) and failed
    jobs are retried by hand: no job is left waiting when nothing holds it back, and no two jobs of a key run at
    once."""
    tags = ["A", "B", "A; B", "B; C", "C"]
    stop = threading.Event()
    running: dict[str, str] = {}
    guard = threading.Lock()
    problems: list[str] = []

    def runner(owner: str, seed: int) -> None:
        rng = random.Random(seed)
        store = PostgresJobStore(postgres_db, clock=lambda: 1.0, pool_size=2)
        try:
            while not stop.is_set():
                for job in store.claim(owner, 2, LEASE):
                    with guard:
                        for key in semantics.keys_of(job):
                            if key in running:
                                problems.append(f"{job.id} and {running[key]} ran at once on {key}")
                            running[key] = job.id
                    with guard:
                        for key in semantics.keys_of(job):
                            running.pop(key, None)
                    if rng.random() < 0.1:
                        store.finish(owner, job.id, Outcome(JobStatus.FAILED, "NOT_FOUND", "No."))
                    else:
                        succeed(store, owner, job.id)
        finally:
            store.close()

    def adder(seed: int) -> None:
        rng = random.Random(seed)
        store = PostgresJobStore(postgres_db, clock=lambda: 1.0, pool_size=2)
        try:
            for n in range(120):
                requests = [req(rng.choice(tags), score=n) for _ in range(rng.randint(1, 3))]
                if n % 10 == 0:
                    store.add_batch(Batch(id=f"b{seed}-{n}", file="f.csv", sha256=f"{seed}{n:063d}"),
                                    Rows(requests))
                else:
                    store.add(requests)
                if n % 15 == 0:
                    store.retry(None, PERSON)
        finally:
            store.close()

    runners = [threading.Thread(target=runner, args=(f"runner-{n}", n)) for n in range(2)]
    adders = [threading.Thread(target=adder, args=(n,)) for n in range(2)]
    for thread in runners + adders:
        thread.start()
    for thread in adders:
        thread.join(timeout=300)
    stop.set()
    for thread in runners:
        thread.join(timeout=60)
    assert problems == []
    assert wrong_heads(postgres_db)[0] == []
    store = PostgresJobStore(postgres_db, clock=lambda: 1.0, pool_size=2)
    try:
        while claimed := store.claim("runner-z", 50, LEASE):
            for job in claimed:
                succeed(store, "runner-z", job.id)
        assert set(store.counts()) <= {"succeeded", "failed"}
    finally:
        store.close()


# --- runners in several processes, jobs of several keys, jobs added meanwhile ---------------------------------


def _drain(url: str, owner: str, out: str, counter: Any, start: Any, adding: Any) -> None:
    store = PostgresJobStore(url, clock=lambda: 1.0, pool_size=2)
    ran: list[tuple[int, int, str]] = []
    start.wait()
    try:
        while True:
            claimed = store.claim(owner, 2, LEASE)
            if not claimed:
                if adding.value == 0 and not any(not j.status.finished
                                                 for j in store.list(JobFilter(limit=50)).jobs):
                    return
                continue
            for job in claimed:
                with counter.get_lock():
                    counter.value += 1
                    began = counter.value
                with counter.get_lock():
                    counter.value += 1
                    ran.append((began, counter.value, job.id))
                succeed(store, owner, job.id)
    finally:
        store.close()
        Path(out).write_text(json.dumps(ran), encoding="utf-8")


def _add_meanwhile(url: str, start: Any, adding: Any) -> None:
    store = PostgresJobStore(url, clock=lambda: 1.0, pool_size=2)
    rng = random.Random(3)
    start.wait()
    try:
        for n in range(60):
            store.add([req(rng.choice(["A", "B", "A; B", "B; C"]), f"C-{n % 2}", n) for _ in range(2)])
    finally:
        store.close()
        adding.value = 0


@pytest.mark.processes
def test_runners_in_several_processes_keep_the_order_of_jobs_of_several_keys(postgres_db: str,
                                                                            tmp_path: Path) -> None:
    store = PostgresJobStore(postgres_db, clock=lambda: 1.0)
    rng = random.Random(5)
    store.add([req(rng.choice(["A", "B", "C", "A; B", "B; C"]), f"C-{n % 2}", n) for n in range(150)])
    ctx = multiprocessing.get_context("spawn")
    counter, start, adding = ctx.Value("q", 0), ctx.Barrier(4), ctx.Value("i", 1)
    outs = [tmp_path / f"ran-{n}.json" for n in range(3)]
    processes = [ctx.Process(target=_drain, args=(postgres_db, f"runner-{n}", str(outs[n]), counter, start, adding))
                 for n in range(3)]
    processes.append(ctx.Process(target=_add_meanwhile, args=(postgres_db, start, adding)))
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=300)
    assert [p.exitcode for p in processes] == [0] * 4

    ran = {job_id: (began, ended) for out in outs for began, ended, job_id in json.loads(out.read_text("utf-8"))}
    jobs = list(reversed(store.list(JobFilter(limit=1000)).jobs))  # creation order
    store.close()
    assert len(ran) == len(jobs) == 270 and all(j.status is JobStatus.SUCCEEDED for j in jobs)
    by_key: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for job in jobs:
        for key in semantics.keys_of(job):
            by_key[key].append(ran[job.id])
    for key, spans in by_key.items():
        # In creation order, and each one over before the next began: never two at once, never out of order.
        assert all(prev[1] < nxt[0] for prev, nxt in itertools.pairwise(spans)), key


# --- the migration ------------------------------------------------------------------------------------------


def test_the_upgrade_computes_the_heads_and_running_marks_of_the_jobs_already_queued(postgres_url: str,
                                                                                    clock: FakeClock) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(schema.SCHEMA_TABLE)
        conn.execute(schema.MIGRATIONS[0])
        conn.execute("INSERT INTO connector_schema (version) VALUES (1)")
    old = PostgresJobStore(postgres_url, clock=clock, check_schema=False)
    with pytest.raises(Exception, match="is at schema version 1; this connector needs version 2"):
        PostgresJobStore(postgres_url, clock=clock)
    with psycopg.connect(postgres_url, autocommit=True) as conn:  # the rows a version 1 store leaves
        for n, (tags, status) in enumerate([("A", "running"), ("A", "pending"), ("B", "pending"),
                                            ("A; B", "pending"), ("C", "succeeded")]):
            conn.execute(
                "INSERT INTO jobs (id, kind, target_kind, target_id, payload, raw, status, created_at, updated_at,"
                " next_attempt_at, lease_owner, lease_expires_at) VALUES (%s, 'remove_tag', 'contact', 'C-1', %s,"
                " '{}', %s, 1, 1, 1, %s, %s)",
                (f"j{n}", json.dumps({"tags": tags.split("; "), "score": None}), status,
                 "runner-a" if status == "running" else None, clock.now + LEASE if status == "running" else None))
            if status != "succeeded":
                for tag in tags.split("; "):
                    conn.execute("INSERT INTO open_keys (key, seq) SELECT %s, seq FROM jobs WHERE id = %s",
                                 (f"contact:C-1|{tag.lower()}", f"j{n}"))
    old.close()
    assert upgrade(postgres_url) == (1, 2)
    assert wrong_heads(postgres_url) == ([], [])
    with psycopg.connect(postgres_url) as conn:
        heads = dict(conn.execute("SELECT id, head FROM jobs WHERE status = 'pending'").fetchall())
    assert heads == {"j1": False, "j2": True, "j3": False}
    store = PostgresJobStore(postgres_url, clock=clock)
    try:
        assert [j.id for j in store.claim("runner-b", 10, LEASE)] == ["j2"]
        succeed(store, "runner-a", "j0")
        succeed(store, "runner-b", "j2")
        assert [j.id for j in store.claim("runner-b", 10, LEASE)] == ["j1"]
    finally:
        store.close()
