"""The SQLite store's grouped writes when the file does not take them: what `make mutate` found untested.

A runner's write that cannot have the lock within the busy timeout, or that the file refuses halfway, is
StoreUnavailable (the runner then leaves the job to its lease, as for any store that does not answer), is never
made later behind the caller's back, and leaves the store able to take the next write."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from jobs.model import JobRequest, JobStatus
from jobs.store import Outcome, StoreUnavailable
from jobs.store.sqlite import SqliteJobStore
from tests.conftest import FakeClock

LEASE = 30.0
DEADLINE = 30.0


def req(target: str) -> JobRequest:
    return JobRequest.from_input(operation="add_tag", tags="T", target_kind="contact", target_id=target)


def test_a_runner_write_that_cannot_have_the_lock_in_time_is_unavailable_and_never_made(
    tmp_path: Path, clock: FakeClock,
) -> None:
    store = SqliteJobStore(tmp_path / "jobs.db", clock=clock, busy_timeout=0.2)
    try:
        (job,) = store.add([req("C-1")])
        store.claim("runner-a", 1, LEASE)
        held, release = threading.Event(), threading.Event()

        def hold() -> None:
            with store.atomic():  # a long write of this process: an import, say
                held.set()
                release.wait(DEADLINE)

        holder = threading.Thread(target=hold)
        holder.start()
        try:
            assert held.wait(DEADLINE)
            with pytest.raises(StoreUnavailable) as raised:
                store.finish("runner-a", job.id, Outcome(JobStatus.SUCCEEDED, "OK", "Done."))
            assert raised.value.message == (f"The job store {tmp_path / 'jobs.db'} is busy: another write of this "
                                            "process held it for 0.2 s.")
        finally:
            release.set()
            holder.join(DEADLINE)
        store.heartbeat("runner-a")  # the next write goes through, alone
        assert store.get(job.id).status is JobStatus.RUNNING  # the finish given up on was not made after all
    finally:
        store.close()


def test_a_write_the_file_refuses_halfway_is_unavailable_and_the_store_takes_the_next_one(
    tmp_path: Path, clock: FakeClock,
) -> None:
    path = tmp_path / "jobs.db"
    store = SqliteJobStore(path, clock=clock)
    try:
        (job,) = store.add([req("C-1")])
        store.claim("runner-a", 1, LEASE)
        # The file refuses the runner's heartbeat inside its transaction, as a full disk would refuse a page.
        other = sqlite3.connect(path)
        other.execute("CREATE TRIGGER refuse BEFORE INSERT ON runners BEGIN SELECT no_such_function(); END")
        other.commit()
        with pytest.raises(StoreUnavailable) as raised:
            store.heartbeat("runner-a")
        assert raised.value.message == (f"The job store {path} is busy or cannot be written "
                                        "(no such function: no_such_function).")
        other.execute("DROP TRIGGER refuse")
        other.commit()
        other.close()
        store.finish("runner-a", job.id, Outcome(JobStatus.SUCCEEDED, "OK", "Done."))
        store.heartbeat("runner-a")
        assert store.get(job.id).status is JobStatus.SUCCEEDED
        assert [seen.owner for seen in store.runners(0)] == ["runner-a"]
    finally:
        store.close()


def test_a_write_to_a_file_that_is_no_database_is_never_reported_made_nor_taken_for_a_pause(
    tmp_path: Path, clock: FakeClock,
) -> None:
    """A damaged file is not a store that does not answer for now: waiting would not mend it, so the error is the
    file's own (the runner fails loudly), never StoreUnavailable, and never a write taken for made."""
    path = tmp_path / "jobs.db"
    store = SqliteJobStore(path, clock=clock)
    try:
        store.heartbeat("runner-a")
        other = sqlite3.connect(path)
        other.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        other.close()
        with path.open("r+b") as file:
            file.write(b"\0" * 16)  # SQLite's header, overwritten
        with pytest.raises(sqlite3.DatabaseError) as raised:
            store.heartbeat("runner-a")
        assert not isinstance(raised.value, StoreUnavailable)
        assert str(raised.value) == "file is not a database"
    finally:
        store.close()
