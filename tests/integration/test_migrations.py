"""Schema versions of the SQLite store: a `jobs.db` made before versions existed is upgraded in place without
losing a job, an attempt or a field; a file newer than the code is refused with a sentence."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from jobs.model import JobStatus
from jobs.store import Actor, JobFilter, Outcome, StoreError
from jobs.store.sqlite import SqliteJobStore
from jobs.store.sqlite_schema import LATEST
from tests.conftest import FakeClock

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "jobs-before-migrations.db"
# When the fixture's jobs were written (its store's clock), and a time after all of them.
WRITTEN_AT = 1_780_000_000.0


def rows(path: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


@pytest.fixture
def old_db(tmp_path: Path) -> Path:
    path = tmp_path / "jobs.db"
    shutil.copy(FIXTURE, path)
    return path


def test_a_jobs_db_from_before_schema_versions_is_upgraded_without_losing_anything(old_db: Path) -> None:
    before_jobs = rows(old_db, "SELECT id, operation, target_kind, target_id, raw, status, created_at, updated_at, "
                               "next_attempt_at, attempts, result_code, message, http_status, lease_owner, "
                               "lease_expires_at, applied_at, posted_at, score_before FROM jobs ORDER BY seq")
    before_attempts = rows(old_db, "SELECT * FROM attempts ORDER BY job_id, number")
    before_keys = rows(old_db, "SELECT key, seq FROM open_keys ORDER BY key, seq")
    assert rows(old_db, "PRAGMA user_version") == [(0,)] and len(before_jobs) == 9

    store = SqliteJobStore(old_db, clock=FakeClock(WRITTEN_AT + 10))
    try:
        assert store.upgraded_from == 1
        assert rows(old_db, "PRAGMA user_version") == [(LATEST,)]
        after_jobs = rows(old_db, "SELECT id, kind, target_kind, target_id, raw, status, created_at, updated_at, "
                                  "next_attempt_at, attempts, result_code, message, http_status, lease_owner, "
                                  "lease_expires_at, applied_at, posted_at, score_before FROM jobs ORDER BY seq")
        assert after_jobs == before_jobs
        assert rows(old_db, "SELECT * FROM attempts ORDER BY job_id, number") == before_attempts
        assert rows(old_db, "SELECT key, seq FROM open_keys ORDER BY key, seq") == before_keys

        jobs = {job.id: job for job in store.list(JobFilter(limit=50)).jobs}
        by_status = sorted(job.display_status for job in jobs.values())
        assert by_status == ["cancelled", "failed", "failed", "pending", "pending", "retrying", "running",
                             "running", "succeeded"]
        invalid = [job for job in jobs.values() if job.request is None]
        assert len(invalid) == 1 and invalid[0].raw["score"] == "ten"
        increment = next(j for j in jobs.values() if j.request and j.request.kind.name == "increase_score")
        assert (increment.score_before, increment.request.payload.score) == (5, 10)
        tags = next(j for j in jobs.values() if j.request and j.request.payload.tags == ["Webinar", "VIP"])
        assert (tags.status, tags.attempts, tags.posted_at is not None) == (JobStatus.SUCCEEDED, 2, True)
        assert [a.outcome for a in store.attempts(tags.id)] == ["retrying", "succeeded"]
    finally:
        store.close()


def test_an_upgraded_store_goes_on_working_and_opening_it_again_changes_nothing(old_db: Path) -> None:
    clock = FakeClock(WRITTEN_AT + 3600)  # past the leases of the jobs the old runner held
    store = SqliteJobStore(old_db, clock=clock)
    try:
        claimed = store.claim("runner-new", 20, 30)
        assert claimed  # the released, retrying and expired jobs come back
        for job in claimed:
            store.finish("runner-new", job.id, Outcome(JobStatus.SUCCEEDED, "OK", "Done."))
        failed = store.list(JobFilter(status="failed")).jobs
        assert store.retry(failed[0].id, Actor("ann", "cli")) == [failed[0].id]
        assert [e.action for e in store.audit(failed[0].id)] == ["retry"]
    finally:
        store.close()
    again = SqliteJobStore(old_db, clock=clock)
    try:
        assert again.upgraded_from == LATEST
    finally:
        again.close()


def test_a_store_newer_than_the_code_is_refused_with_a_sentence(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    SqliteJobStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {LATEST + 1}")
    conn.close()
    with pytest.raises(StoreError) as refused:
        SqliteJobStore(path)
    assert str(refused.value) == (
        f"The job store {path} is at schema version {LATEST + 1}, newer than this connector knows ({LATEST}); "
        f"run a connector as new as the one that last wrote it."
    )


def test_a_new_file_starts_at_the_latest_version(tmp_path: Path) -> None:
    store = SqliteJobStore(tmp_path / "jobs.db")
    store.close()
    assert store.upgraded_from == 0
    assert rows(tmp_path / "jobs.db", "PRAGMA user_version") == [(LATEST,)]
