"""The embedded job store: one SQLite file in WAL mode, safe for several runner processes on one machine.

Claims are one `UPDATE ... RETURNING` inside `BEGIN IMMEDIATE`, so two processes can never take the same job.
Per-key order lives in `open_keys`, which holds a row per (job, key) only while the job is unfinished: a job is
claimable when no earlier job appears under one of its keys. Because finished jobs leave that table and the
pending-job index is partial, a claim costs the same with a million finished jobs as with ten.
"""

from __future__ import annotations

import builtins
import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from jobs.model import Attempt, Job, JobRequest, JobStatus
from jobs.store import JobNotFound, LeaseLost, NotAllowed, StoreUnavailable

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,   -- creation order
    id TEXT NOT NULL UNIQUE,
    operation TEXT NOT NULL,
    target_kind TEXT,
    target_id TEXT,
    tags TEXT NOT NULL,                      -- JSON list
    score INTEGER,
    raw TEXT NOT NULL,                       -- JSON of the input as given
    status TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    next_attempt_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    result_code TEXT,
    message TEXT NOT NULL DEFAULT '',
    http_status INTEGER,
    lease_owner TEXT,
    lease_expires_at REAL,
    applied_at REAL,
    posted_at REAL,
    score_before INTEGER
);
CREATE INDEX IF NOT EXISTS jobs_due ON jobs(next_attempt_at, seq) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS jobs_leased ON jobs(lease_expires_at) WHERE status = 'running';
CREATE INDEX IF NOT EXISTS jobs_target ON jobs(target_id, seq);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status, seq);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs(created_at);

CREATE TABLE IF NOT EXISTS open_keys (
    key TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (key, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS open_keys_seq ON open_keys(seq);

CREATE TABLE IF NOT EXISTS attempts (
    job_id TEXT NOT NULL,
    number INTEGER NOT NULL,
    started_at REAL NOT NULL,
    ended_at REAL,
    outcome TEXT NOT NULL,
    result_code TEXT,
    http_status INTEGER,
    message TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (job_id, number)
);
"""

INSERT_JOB = """
INSERT INTO jobs (id, operation, target_kind, target_id, tags, score, raw, status, created_at, updated_at,
                  next_attempt_at)
VALUES (:id, :operation, :target_kind, :target_id, :tags, :score, :raw, 'pending', :now, :now, :now)
"""
INSERT_KEY = "INSERT OR IGNORE INTO open_keys (key, seq) VALUES (?, ?)"

# Leases that ran out: the runner that held them died or hung. Recorded as an attempt, then pending again.
EXPIRED_LEASES = """
SELECT id, lease_owner FROM jobs WHERE status = 'running' AND lease_expires_at < :now
"""
REQUEUE_EXPIRED = """
UPDATE jobs SET status = 'pending', lease_owner = NULL, lease_expires_at = NULL, next_attempt_at = :now,
                updated_at = :now
WHERE status = 'running' AND lease_expires_at < :now
"""

CLAIM = """
UPDATE jobs SET status = 'running', lease_owner = :owner, lease_expires_at = :expires, updated_at = :now
WHERE seq IN (
    SELECT j.seq FROM jobs j INDEXED BY jobs_due  -- else the planner may pick jobs_status and sort every pending job
    WHERE j.status = 'pending' AND j.next_attempt_at <= :now
      AND NOT EXISTS (
          -- an earlier unfinished job on one of its keys, or a later one already running (a failed job retried
          -- by hand after later jobs started must not run beside them)
          SELECT 1 FROM open_keys mine
          JOIN open_keys other ON other.key = mine.key AND other.seq != mine.seq
          JOIN jobs o ON o.seq = other.seq
          WHERE mine.seq = j.seq AND (other.seq < mine.seq OR o.status = 'running')
      )
    ORDER BY j.next_attempt_at, j.seq
    LIMIT :limit
)
RETURNING *
"""

RENEW = """
UPDATE jobs SET lease_expires_at = :expires
WHERE id = :id AND status = 'running' AND lease_owner = :owner
"""

RECORD_ATTEMPT = """
INSERT INTO attempts (job_id, number, started_at, ended_at, outcome, result_code, http_status, message)
VALUES (:job_id, (SELECT coalesce(max(number), 0) + 1 FROM attempts WHERE job_id = :job_id),
        :started_at, :ended_at, :outcome, :result_code, :http_status, :message)
"""
# `attempts` counts the tries since the job was queued or last retried by hand: the retry budget.
COUNT_ATTEMPT = """
UPDATE jobs SET attempts = attempts + 1, updated_at = :now
WHERE id = :job_id AND status = 'running' AND lease_owner = :owner
"""

FINISH = """
UPDATE jobs SET status = :status, result_code = :result_code, message = :message, http_status = :http_status,
                next_attempt_at = :next_attempt_at, lease_owner = NULL, lease_expires_at = NULL, updated_at = :now,
                posted_at = CASE WHEN :posted THEN coalesce(posted_at, :now) ELSE posted_at END
WHERE id = :id AND status = 'running' AND lease_owner = :owner
RETURNING seq
"""
CLOSE_KEYS = "DELETE FROM open_keys WHERE seq = ?"

RELEASE = """
UPDATE jobs SET status = 'pending', lease_owner = NULL, lease_expires_at = NULL, updated_at = :now
WHERE id = :id AND status = 'running' AND lease_owner = :owner
"""

# A job retried by hand starts afresh: later jobs on its key may have run since, so a score read before its
# earlier attempts says nothing about them any more (score_before).
RETRY = """
UPDATE jobs SET status = 'pending', next_attempt_at = :now, updated_at = :now, attempts = 0,
                result_code = NULL, message = 'Retry requested.', http_status = NULL, score_before = NULL
WHERE status = 'failed' AND (:id IS NULL OR id = :id)
RETURNING seq, id, operation, target_kind, target_id, tags, score
"""

CANCEL = """
UPDATE jobs SET status = 'cancelled', result_code = 'CANCELLED', message = 'Cancelled before it ran.',
                updated_at = :now
WHERE id = :id AND status = 'pending'
RETURNING seq
"""

COUNTS = """
SELECT CASE WHEN status = 'pending' AND attempts > 0 THEN 'retrying' ELSE status END AS s, count(*)
FROM jobs GROUP BY s
"""
# When the next job can run: a pending job that waits behind an earlier unfinished job on its key cannot run at
# its own next_attempt_at (long past, often), only after that job; it must not make the queue look due now.
NEXT_DUE = """
SELECT min(j.next_attempt_at) FROM jobs j
WHERE j.status = 'pending'
  AND NOT EXISTS (
      SELECT 1 FROM open_keys mine JOIN open_keys earlier ON earlier.key = mine.key AND earlier.seq < mine.seq
      WHERE mine.seq = j.seq
  )
"""


class SqliteJobStore:
    """The job store of the embedded default. Thread-safe: one connection per thread, writes serialised."""

    name = "sqlite"

    def __init__(
        self, path: Path | str, *, clock: Callable[[], float] = time.time, busy_timeout: float = 30.0
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._clock = clock
        # How long a writer waits for another process's write lock before the store counts as unavailable.
        self._busy_timeout = busy_timeout
        self._local = threading.local()
        self._connections: builtins.list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        conn = self._conn()
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            # isolation_level=None: we issue BEGIN ourselves, so that writers take the lock up front (IMMEDIATE).
            conn = sqlite3.connect(
                self.path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False
            )
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA busy_timeout={int(self._busy_timeout * 1000)}")
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    @contextmanager
    def atomic(self) -> Iterator[sqlite3.Connection]:
        """One write transaction. A file that stays locked (a backup, a `sqlite3` shell) or cannot be written
        (a full disk) is StoreUnavailable: the runner treats it like any job store that does not answer."""
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"The job store {self.path} is busy or cannot be written ({exc}).") from exc
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.OperationalError):
                raise StoreUnavailable(f"The job store {self.path} is busy or cannot be written ({exc}).") from exc
            raise

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()

    # --- creating and reading -------------------------------------------------------------------------------

    def add(self, requests: Sequence[JobRequest]) -> builtins.list[Job]:
        now = self._clock()
        seqs = []
        with self.atomic() as db:
            for request in requests:
                job_id = uuid.uuid4().hex[:12]
                raw = _raw_of(request)
                target = request.target
                cursor = db.execute(
                    INSERT_JOB,
                    {
                        "id": job_id,
                        "operation": request.operation.value,
                        "target_kind": target.kind.value if target else None,
                        "target_id": target.id if target else None,
                        "tags": json.dumps(request.tags),
                        "score": request.score,
                        "raw": json.dumps(raw),
                        "now": now,
                    },
                )
                db.executemany(INSERT_KEY, [(key, cursor.lastrowid) for key in request.keys])
                seqs.append(cursor.lastrowid)
            if not seqs:
                return []
            # One read for the whole batch: the write lock keeps its rows consecutive.
            rows = db.execute("SELECT * FROM jobs WHERE seq BETWEEN ? AND ? ORDER BY seq", (seqs[0], seqs[-1]))
            return [_job_from_row(row) for row in rows]

    def add_raw(self, raw: dict[str, Any]) -> Job:
        """Queue input as a CRM user left it, unvalidated: for rows edited into something invalid (and tests)."""
        now = self._clock()
        job_id = uuid.uuid4().hex[:12]
        with self.atomic() as db:
            cursor = db.execute(
                INSERT_JOB,
                {
                    "id": job_id,
                    "operation": str(raw.get("operation", "")),
                    "target_kind": raw.get("target_kind"),
                    "target_id": raw.get("target_id"),
                    "tags": json.dumps(str(raw.get("tags", ""))),
                    "score": raw.get("score"),
                    "raw": json.dumps(raw),
                    "now": now,
                },
            )
            # Input that happens to be valid is ordered like any other job; invalid input has no keys to wait on.
            db.executemany(INSERT_KEY, [(key, cursor.lastrowid) for key in _keys_of_row(
                db.execute("SELECT * FROM jobs WHERE seq = ?", (cursor.lastrowid,)).fetchone())])
        return self.get(job_id)

    def get(self, job_id: str) -> Job:
        row = self._conn().execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFound(job_id)
        return _job_from_row(row)

    def list(
        self,
        *,
        status: JobStatus | str | None = None,
        target_id: str | None = None,
        since: float | None = None,
        limit: int | None = None,
    ) -> builtins.list[Job]:
        clauses: builtins.list[str] = []
        args: builtins.list[Any] = []
        if status == "retrying":
            clauses.append("status = 'pending' AND attempts > 0")
        elif status is not None:
            clauses.append("status = ?")
            args.append(str(status))
        if target_id is not None:
            clauses.append("target_id = ?")
            args.append(target_id)
        if since is not None:
            clauses.append("created_at >= ?")
            args.append(since)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = f"SELECT * FROM jobs {where} ORDER BY seq DESC"  # clauses are fixed strings; values are bound
        if limit:
            sql += f" LIMIT {int(limit)}"
        return [_job_from_row(row) for row in self._conn().execute(sql, args)]

    def attempts(self, job_id: str) -> builtins.list[Attempt]:
        rows = self._conn().execute("SELECT * FROM attempts WHERE job_id = ? ORDER BY number", (job_id,))
        return [Attempt(**dict(row)) for row in rows]

    def counts(self) -> dict[str, int]:
        return {row[0]: row[1] for row in self._conn().execute(COUNTS)}

    def waiting(self) -> tuple[int, float | None]:
        retrying = self._conn().execute(
            "SELECT count(*) FROM jobs WHERE status = 'pending' AND attempts > 0"
        ).fetchone()[0]
        return int(retrying), self.next_due() if retrying else None

    def next_due(self) -> float | None:
        value = self._conn().execute(NEXT_DUE).fetchone()[0]
        return float(value) if value is not None else None

    # --- the runner's side ----------------------------------------------------------------------------------

    def claim(self, owner: str, limit: int, lease_seconds: float) -> builtins.list[Job]:
        now = self._clock()
        with self.atomic() as db:
            expired = db.execute(EXPIRED_LEASES, {"now": now}).fetchall()
            for row in expired:
                db.execute(
                    RECORD_ATTEMPT,
                    {
                        "job_id": row["id"],
                        "started_at": now,
                        "ended_at": now,
                        "outcome": "lease_expired",
                        "result_code": "LEASE_EXPIRED",
                        "http_status": None,
                        "message": f"Runner {row['lease_owner']} stopped renewing its lease; the job is retried.",
                    },
                )
                db.execute("UPDATE jobs SET attempts = attempts + 1 WHERE id = ?", (row["id"],))
            if expired:
                db.execute(REQUEUE_EXPIRED, {"now": now})
            rows = db.execute(
                CLAIM, {"owner": owner, "expires": now + lease_seconds, "now": now, "limit": limit}
            ).fetchall()
        return sorted((_job_from_row(row) for row in rows), key=lambda j: j.created_at)

    def renew(self, owner: str, job_ids: Sequence[str], lease_seconds: float) -> builtins.list[str]:
        lost = []
        expires = self._clock() + lease_seconds
        with self.atomic() as db:
            for job_id in job_ids:
                if db.execute(RENEW, {"expires": expires, "id": job_id, "owner": owner}).rowcount == 0:
                    lost.append(job_id)
        return lost

    def record_attempt(self, owner: str, attempt: Attempt) -> None:
        with self.atomic() as db:
            self._record_attempt(db, owner, attempt)

    def _record_attempt(self, db: sqlite3.Connection, owner: str, attempt: Attempt) -> None:
        changed = db.execute(
            COUNT_ATTEMPT, {"now": self._clock(), "job_id": attempt.job_id, "owner": owner},
        ).rowcount
        if not changed:
            raise LeaseLost(f"Job {attempt.job_id} is no longer held by {owner}.")
        db.execute(RECORD_ATTEMPT, attempt.model_dump(exclude={"number"}))

    def save_progress(
        self,
        owner: str,
        job_id: str,
        *,
        score_before: int | None = None,
        applied: bool = False,
        posted: bool = False,
    ) -> None:
        sets, args = ["updated_at = :now"], {"now": self._clock(), "id": job_id, "owner": owner}
        if score_before is not None:
            sets.append("score_before = :score_before")
            args["score_before"] = score_before
        if applied:
            sets.append("applied_at = coalesce(applied_at, :now)")
        if posted:
            sets.append("posted_at = coalesce(posted_at, :now)")
        sql = f"UPDATE jobs SET {', '.join(sets)} WHERE id = :id AND status = 'running' AND lease_owner = :owner"
        with self.atomic() as db:
            if db.execute(sql, args).rowcount == 0:
                raise LeaseLost(f"Job {job_id} is no longer held by {owner}.")

    def finish(
        self,
        owner: str,
        job_id: str,
        *,
        status: JobStatus,
        result_code: str | None,
        message: str,
        http_status: int | None = None,
        next_attempt_at: float | None = None,
        attempt: Attempt | None = None,
        posted: bool = False,
    ) -> None:
        now = self._clock()
        with self.atomic() as db:
            if attempt is not None:
                self._record_attempt(db, owner, attempt)
            row = db.execute(
                FINISH,
                {
                    "status": status.value,
                    "result_code": result_code,
                    "message": message,
                    "http_status": http_status,
                    "next_attempt_at": next_attempt_at if next_attempt_at is not None else now,
                    "now": now,
                    "id": job_id,
                    "owner": owner,
                    "posted": posted,
                },
            ).fetchone()
            if row is None:
                raise LeaseLost(f"Job {job_id} is no longer held by {owner}.")
            if status.finished:
                db.execute(CLOSE_KEYS, (row["seq"],))

    def release(self, owner: str, job_id: str) -> None:
        with self.atomic() as db:
            db.execute(RELEASE, {"now": self._clock(), "id": job_id, "owner": owner})

    def retry(self, job_id: str | None = None) -> builtins.list[str]:
        if job_id is not None:
            job = self.get(job_id)
            if job.status is not JobStatus.FAILED:
                raise NotAllowed(f"Job {job_id} is {job.display_status}; only failed jobs can be retried.")
        with self.atomic() as db:
            rows = db.execute(RETRY, {"now": self._clock(), "id": job_id}).fetchall()
            for row in rows:
                db.executemany(INSERT_KEY, [(key, row["seq"]) for key in _keys_of_row(row)])
        return [row["id"] for row in rows]

    def cancel(self, job_id: str) -> Job:
        job = self.get(job_id)
        with self.atomic() as db:
            row = db.execute(CANCEL, {"now": self._clock(), "id": job_id}).fetchone()
            if row is None:
                raise NotAllowed(f"Job {job_id} is {job.display_status}; only pending jobs can be cancelled.")
            db.execute(CLOSE_KEYS, (row["seq"],))
        return self.get(job_id)


def _raw_of(request: JobRequest) -> dict[str, Any]:
    target = request.target
    return {
        "operation": request.operation.value,
        "target_kind": target.kind.value if target else None,
        "target_id": target.id if target else None,
        "tags": ", ".join(request.tags),
        "score": request.score,
    }


def _keys_of_row(row: sqlite3.Row) -> builtins.list[str]:
    """The ordering keys of a stored job; none when its input is invalid (it will fail without touching anything)."""
    request = _request_of_row(row)
    if request is not None:
        return request.keys
    return []


def _request_of_row(row: sqlite3.Row) -> JobRequest | None:
    from jobs.model import InvalidJob

    try:
        return JobRequest.from_input(
            operation=row["operation"],
            tags=json.loads(row["tags"]),
            score=row["score"],
            target_kind=row["target_kind"],
            target_id=row["target_id"],
        )
    except (InvalidJob, ValueError):
        return None


# Columns that are a Job's fields as they are; the others (the request, raw input, status) are decoded.
_PLAIN_COLUMNS = ("id", "created_at", "updated_at", "next_attempt_at", "attempts", "result_code", "message",
                  "http_status", "lease_owner", "lease_expires_at", "applied_at", "posted_at", "score_before")


def _job_from_row(row: sqlite3.Row) -> Job:
    return Job(
        **{name: row[name] for name in _PLAIN_COLUMNS},
        request=_request_of_row(row),
        raw=json.loads(row["raw"]),
        status=JobStatus(row["status"]),
    )
