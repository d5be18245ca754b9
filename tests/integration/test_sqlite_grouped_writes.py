"""The SQLite store's grouped writes: the runner's writes that this process's threads make at the same moment run in
one transaction, with one commit. Each stays all or nothing on its own: one that fails (a lost lease) is undone
alone, and the others are kept, each with its effects."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from jobs.model import JobRequest, JobStatus
from jobs.store import Effects, LeaseLost, Outcome, Record
from jobs.store.sqlite import SqliteJobStore
from tests.conftest import FakeClock

LEASE = 1000.0


def req(target: str) -> JobRequest:
    return JobRequest.from_input(operation="add_tag", tags="Webinar", target_kind="contact", target_id=target)


def history(job: str) -> Effects:
    return Effects(records=(Record("history", f"contact:{job}", {"op": "tag"}),))


def test_writes_made_together_share_a_transaction_and_one_that_fails_is_undone_alone(tmp_path: Path) -> None:
    store = SqliteJobStore(tmp_path / "jobs.db", clock=FakeClock())
    try:
        first, lost, third, broken = store.add([req("C-1"), req("C-2"), req("C-3"), req("C-4")])
        store.claim("runner-a", 4, LEASE)
        not_a_request: Any = {"operation": "add_tag", "tags": "VIP", "target_id": "C-9"}
        outcomes: dict[str, BaseException | None] = {}

        def call(name: str, write: Callable[[], None]) -> None:
            try:
                write()
                outcomes[name] = None
            except BaseException as exc:  # the test reads what each thread met
                outcomes[name] = exc

        writes = {
            "finish": lambda: store.finish("runner-a", first.id, Outcome(JobStatus.SUCCEEDED, "OK", "Done.")),
            # Not this runner's lease: the write must fail, and leave nothing of it.
            "lost": lambda: store.save_progress("runner-b", lost.id, applied=True, effects=history("C-2")),
            "applied": lambda: store.save_progress("runner-a", third.id, applied=True, effects=history("C-3")),
            # Fails halfway, after the mark and the record are written: both must go.
            "broken": lambda: store.save_progress("runner-a", broken.id, applied=True,
                                                  effects=history("C-4") + Effects(jobs=(not_a_request,))),
        }
        threads = [threading.Thread(target=call, args=item) for item in writes.items()]
        # While a write holds the process's write lock, the others queue behind it; the next to take the lock runs
        # every write waiting, so they share its transaction.
        with store.atomic():
            for thread in threads:
                thread.start()
            deadline = time.monotonic() + 30
            while len(store._waiting) < len(writes) and time.monotonic() < deadline:
                pass
            assert len(store._waiting) == len(writes)
        for thread in threads:
            thread.join()

        assert outcomes["finish"] is None and outcomes["applied"] is None
        assert isinstance(outcomes["lost"], LeaseLost)
        assert isinstance(outcomes["broken"], AttributeError)
        assert store.get(broken.id).applied_at is None and store.entries("history", "contact:C-4") == []
        assert store.counts() == {"succeeded": 1, "running": 3}
        assert store.get(first.id).status is JobStatus.SUCCEEDED
        assert store.get(lost.id).applied_at is None and store.entries("history", "contact:C-2") == []
        assert store.get(third.id).applied_at is not None
        assert [entry.job_id for entry in store.entries("history", "contact:C-3")] == [third.id]
    finally:
        store.close()


def test_the_store_copies_its_log_into_the_database_file_as_it_writes(tmp_path: Path) -> None:
    """SQLite's own checkpoint is off on the connection that writes (it would run inside the write lock): the store
    checkpoints itself, so the log does not grow for as long as a runner runs."""
    path = tmp_path / "jobs.db"
    store = SqliteJobStore(path, clock=FakeClock())
    try:
        jobs = store.add([req(f"C-{n}") for n in range(3000)])
        store.claim("runner-a", 3000, LEASE)
        for job in jobs:  # about 9 pages written to the log each: some 27,000 in all
            store.finish("runner-a", job.id, Outcome(JobStatus.SUCCEEDED, "OK", "Done."))
        conn = sqlite3.connect(path)
        try:
            # The frames in the log since it last started again from its beginning, after a complete checkpoint.
            _, frames, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        finally:
            conn.close()
        assert 0 < frames < 5000
    finally:
        store.close()
