"""The SQLite store's `head` mark: what lets a claim read only the jobs that may run.

A claim must not read the due jobs waiting behind an unfinished job on their key: thousands of them behind one
retry that is not due would make every claim pay for all of them. Each job carries a mark, kept by every write
that changes which jobs are unfinished or running, that it is at the head of its keys; the claim's index holds
only pending heads. These tests prove that a claim's work stays the same as the blocked backlog grows (counted in
SQLite's own virtual-machine steps, never timed), that the mark is exactly `semantics.claimable` after any mix of
the store's writes, and that the schema migration which adds it computes it for the jobs already stored.
"""

from __future__ import annotations

import dataclasses
import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jobs.model import Attempt, JobRequest, JobStatus, Origin
from jobs.store import Actor, Batch, Effects, JobFilter, Outcome, semantics
from jobs.store.sqlite import CLAIM, REFRESH_FIRST, SqliteJobStore
from jobs.store.sqlite_schema import LATEST, MIGRATIONS, _statements
from tests.conftest import FakeClock
from tests.integration.helpers import query

LEASE = 1000.0
PERSON = Actor(who="ann", via="cli")
DAY = 86400.0


def req(op: str = "increase_score", tags: str = "Lead", score: object = 5, target: str = "C-1") -> JobRequest:
    return JobRequest.from_input(operation=op, tags=tags, score=score, target_kind="contact", target_id=target)


@dataclasses.dataclass
class Rows:
    """An import's rows, as `add_batch` reads them."""

    requests: list[JobRequest]
    rows: int = 0
    invalid: int = 0

    def __iter__(self) -> Iterator[JobRequest]:
        for request in self.requests:
            self.rows += 1
            yield request


def vm_steps(path: Path, sql: str, args: Any) -> tuple[int, int]:
    """How many virtual-machine steps SQLite takes to run a write, and how many rows it returns; rolled back."""
    conn = sqlite3.connect(path, isolation_level=None)
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.set_progress_handler(count, 1)
        returned = len(conn.execute(sql, args).fetchall())
        conn.set_progress_handler(None, 1)
        conn.execute("ROLLBACK")
    finally:
        conn.close()
    return steps, returned


# --- a claim's work does not grow with the blocked backlog ---------------------------------------------------


def blocked_backlog(path: Path, blocked: int) -> SqliteJobStore:
    """`blocked` due jobs on one key, behind a job of that key whose retry is a day away, then 20 free jobs."""
    clock = FakeClock()
    store = SqliteJobStore(path, clock=clock)
    (head,) = store.add([req()])
    store.claim("runner-a", 1, LEASE)
    store.finish("runner-a", head.id,
                 Outcome(JobStatus.PENDING, "UNAVAILABLE", "Later.", next_attempt_at=clock.now + DAY))
    for start in range(0, blocked, 1000):
        store.add([req() for _ in range(min(1000, blocked - start))])
    store.add([req("add_tag", "Webinar", None, target=f"F-{n}") for n in range(20)])
    clock.advance(1)
    return store


def test_a_claim_reads_only_due_heads_however_many_jobs_wait_behind_a_retry(tmp_path: Path) -> None:
    steps = {}
    for blocked in (100, 5000):
        path = tmp_path / f"{blocked}.db"
        store = blocked_backlog(path, blocked)
        try:
            now = store._clock()
            args = {"owner": "runner-b", "expires": now + LEASE, "now": now, "limit": 8}
            steps[blocked], claimed = vm_steps(path, CLAIM, args)
            assert claimed == 8  # the free jobs, none of the blocked ones
            plan = [row[3] for row in query(path, "EXPLAIN QUERY PLAN " + CLAIM, args)]
            assert any(step.startswith("SEARCH j USING INDEX jobs_ready") for step in plan), plan
            assert not [step for step in plan if step.startswith("SCAN") or "TEMP B-TREE" in step], plan
        finally:
            store.close()
    # Fifty times the blocked rows: the same work, give or take a level of the index's B-tree.
    assert steps[5000] < steps[100] * 1.2, steps


def test_finishing_the_first_job_of_a_long_queue_does_not_read_the_queue(tmp_path: Path) -> None:
    """When a job finishes, the first job left on each of its keys may become a head: finding out reads the
    earlier jobs of its keys and the running jobs, never the jobs queued behind it on its keys."""
    steps = {}
    for queued in (100, 5000):
        path = tmp_path / f"{queued}.db"
        store = SqliteJobStore(path, clock=FakeClock())
        try:
            for start in range(0, queued, 1000):
                store.add([req() for _ in range(min(1000, queued - start))])
            (first,) = store.claim("runner-a", 8, LEASE)
            store.finish("runner-a", first.id, Outcome(JobStatus.SUCCEEDED, "OK", "Done."))
            (key,) = first.request.keys if first.request else []
            steps[queued], _ = vm_steps(path, REFRESH_FIRST, (key,))
            assert query(path, "SELECT count(*) FROM jobs WHERE head = 1 AND status = 'pending'") == [(1,)]
        finally:
            store.close()
    assert steps[5000] < steps[100] * 1.2, steps


# --- the mark is the rule, after any write -------------------------------------------------------------------


def marks(path: Path) -> dict[str, bool]:
    rows = query(path, "SELECT id, head FROM jobs WHERE status IN ('pending', 'running')")
    return {job_id: bool(head) for job_id, head in rows}


def the_rule(store: SqliteJobStore, now: float) -> dict[str, bool]:
    """Which unfinished jobs `semantics.claimable` lets run (or run on), pending or running."""
    unfinished = [j for j in reversed(store.list(JobFilter(limit=10_000)).jobs) if not j.status.finished]
    free = {job.id for job in semantics.claimable(unfinished, now)}
    return {job.id: job.id in free for job in unfinished}


def some_requests(rng: random.Random, count: int) -> list[JobRequest]:
    tags = ["A", "B", "C", "A; B", "B; C"]
    out = []
    for _ in range(count):
        tag = rng.choice(tags)
        op = "remove_tag" if ";" in tag else rng.choice(["set_score", "increase_score"])
        out.append(req(op, tag, None if ";" in tag else rng.randint(1, 9), target=rng.choice(["C-1", "C-2"])))
    return out


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_the_head_mark_is_semantics_claimable_after_every_kind_of_write(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    clock = FakeClock()
    path = tmp_path / "jobs.db"
    store = SqliteJobStore(path, clock=clock)
    held: list[str] = []
    batches = 0

    def pending() -> list[str]:
        return [j.id for j in store.list(JobFilter(status="pending", limit=10_000)).jobs]

    def failed() -> list[str]:
        return [j.id for j in store.list(JobFilter(status="failed", limit=10_000)).jobs]

    try:
        for turn in range(250):
            clock.advance(1)
            action = rng.choice(["add", "add", "batch", "raw", "claim", "claim", "claim", "finish", "finish",
                                 "finish", "effects", "release", "cancel", "cancel_where", "retry", "retry_all",
                                 "retry_where", "expire"])
            if action == "add":
                store.add(some_requests(rng, rng.randint(1, 3)))
            elif action == "batch":
                batches += 1
                requests = [dataclasses.replace(r, origin=Origin(source="import", batch=f"b{batches}"))
                            for r in some_requests(rng, rng.randint(1, 6))]
                store.add_batch(Batch(id=f"b{batches}", file="jobs.csv", sha256=f"{batches:064x}"), Rows(requests))
            elif action == "raw":
                tag = rng.choice(["A", "B"])
                score = rng.choice([3, "ten"])  # valid input is ordered like any job; invalid input has no keys
                store.add_raw({"operation": "set_score", "target_kind": "contact", "target_id": "C-1", "tags": tag,
                               "score": score})
            elif action == "claim":
                held += [job.id for job in store.claim("runner-a", rng.randint(1, 4), LEASE)]
            elif action == "finish" and held:
                job_id = held.pop(rng.randrange(len(held)))
                status = rng.choice([JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.PENDING])
                attempt = Attempt(job_id=job_id, started_at=clock.now, ended_at=clock.now,
                                  outcome="retrying" if status is JobStatus.PENDING else status.value)
                store.finish("runner-a", job_id, Outcome(status, "X", "Done.", attempt=attempt,
                                                         next_attempt_at=clock.now + rng.choice([0, 3])))
            elif action == "effects" and held:
                # A trigger's action: a job queued in the write that marks a change applied.
                store.save_progress("runner-a", rng.choice(held), applied=True,
                                    effects=Effects(jobs=tuple(some_requests(rng, 1))))
            elif action == "release" and held:
                store.release("runner-a", held.pop(rng.randrange(len(held))))
            elif action == "cancel" and (waiting := pending()):
                store.cancel(rng.choice(waiting), PERSON)
            elif action == "cancel_where":
                store.cancel_where(JobFilter(target_id=rng.choice(["C-1", "C-2"]), tag=rng.choice(["A", "B"])),
                                   PERSON)
            elif action == "retry" and (done := failed()):
                store.retry(rng.choice(done), PERSON)
            elif action == "retry_all":
                store.retry(None, PERSON)
            elif action == "retry_where":
                store.retry_where(JobFilter(tag=rng.choice(["A", "B", "C"])), PERSON)
            elif action == "expire" and held:
                # The runner holding them died: the next claim finds their leases run out and requeues them.
                clock.advance(LEASE + 1)
                held = [job.id for job in store.claim("runner-a", rng.randint(0, 3), LEASE)]
            assert marks(path) == the_rule(store, clock.now), (turn, action)
    finally:
        store.close()


# --- the migration that adds the mark ------------------------------------------------------------------------


def made_at_version_5(path: Path, source: Path) -> None:
    """A file of schema version 5 (built by its own migrations) holding the jobs, keys and attempts of `source`."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for steps in MIGRATIONS[:5]:
            for step in steps:
                if isinstance(step, str):
                    for statement in _statements(step):
                        conn.execute(statement)
        conn.execute("PRAGMA user_version = 5")
        conn.execute("ATTACH DATABASE ? AS source", (str(source),))
        columns = ", ".join(row[1] for row in conn.execute("PRAGMA main.table_info(jobs)"))
        conn.execute(f"INSERT INTO main.jobs ({columns}) SELECT {columns} FROM source.jobs")
        conn.execute("INSERT INTO main.open_keys SELECT * FROM source.open_keys")
        conn.execute("INSERT INTO main.attempts SELECT * FROM source.attempts")
        conn.execute("DETACH DATABASE source")
    finally:
        conn.close()


def test_migration_6_marks_the_heads_of_the_jobs_already_stored(tmp_path: Path) -> None:
    clock = FakeClock()
    source = tmp_path / "source.db"
    store = SqliteJobStore(source, clock=clock)
    try:
        first, second, third, other, _ = store.add([req(), req(), req(), req(target="C-2"), req(target="C-3")])
        clock.advance(1)
        store.add([req("remove_tag", "Lead; Webinar", None), req("add_tag", "Webinar", None)])
        store.add_raw({"operation": "set_score", "target_kind": "contact", "target_id": "C-1", "tags": "Lead",
                       "score": "ten"})
        assert {j.id for j in store.claim("runner-a", 10, LEASE)} >= {first.id, other.id}
        store.finish("runner-a", first.id, Outcome(JobStatus.FAILED, "X", "No."))
        (running,) = store.claim("runner-a", 1, LEASE)
        assert running.id == second.id
        store.retry(first.id, PERSON)  # earlier than the running job of its key: neither may run beside it
        store.finish("runner-a", other.id, Outcome(JobStatus.PENDING, "X", "Later.", next_attempt_at=clock.now + DAY))
        expected = the_rule(store, clock.now)
        assert expected == marks(source)
        assert not expected[first.id] and not expected[third.id] and expected[other.id]
    finally:
        store.close()

    path = tmp_path / "jobs.db"
    made_at_version_5(path, source)
    upgraded = SqliteJobStore(path, clock=clock)
    try:
        assert upgraded.upgraded_from == 5 and query(path, "PRAGMA user_version") == [(LATEST,)]
        assert marks(path) == expected
        indexes = {row[0] for row in query(path, "SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert "jobs_ready" in indexes and "jobs_due" not in indexes
        # And the upgraded file claims by the marks: the running job ends, and the job retried by hand runs.
        upgraded.finish("runner-a", second.id, Outcome(JobStatus.SUCCEEDED, "OK", "Done."))
        assert [job.id for job in upgraded.claim("runner-b", 10, LEASE)][:1] == [first.id]
        assert marks(path) == the_rule(upgraded, clock.now)
    finally:
        upgraded.close()
