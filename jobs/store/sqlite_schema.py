"""The SQLite store's schema, in numbered migrations applied in order. `PRAGMA user_version` holds the number of
the last one applied; a file made before versions existed has a `jobs` table and version 0, and counts as 1.

A migration is never edited once released: a new column or table is a new migration at the end of the list.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

from jobs.store.errors import StoreError, StoreUnavailable

# 1: the schema as first released.
V1 = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    operation TEXT NOT NULL,
    target_kind TEXT,
    target_id TEXT,
    tags TEXT NOT NULL,
    score INTEGER,
    raw TEXT NOT NULL,
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

# 2: a job is a kind and a payload (JSON), not an operation with tag and score columns; a caller's request id is
# unique; who retried or cancelled a job is audited; durable subscribers keep entries with a job's outcome.
V2 = """
CREATE TABLE jobs_v2 (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,   -- creation order
    id TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,                      -- the kind's name, as given (invalid input may name none)
    target_kind TEXT,
    target_id TEXT,
    payload TEXT,                            -- JSON of the validated payload; NULL when the input is not valid
    raw TEXT NOT NULL,                       -- JSON of the input as given
    request_id TEXT,                         -- the caller's key: queued once
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
INSERT INTO jobs_v2 (seq, id, kind, target_kind, target_id, payload, raw, status, created_at, updated_at,
                     next_attempt_at, attempts, result_code, message, http_status, lease_owner, lease_expires_at,
                     applied_at, posted_at, score_before)
SELECT seq, id, operation, target_kind, target_id, NULL, raw, status, created_at, updated_at, next_attempt_at,
       attempts, result_code, message, http_status, lease_owner, lease_expires_at, applied_at, posted_at,
       score_before
FROM jobs ORDER BY seq;
DROP TABLE jobs;
ALTER TABLE jobs_v2 RENAME TO jobs;
CREATE INDEX jobs_due ON jobs(next_attempt_at, seq) WHERE status = 'pending';
CREATE INDEX jobs_leased ON jobs(lease_expires_at) WHERE status = 'running';
CREATE INDEX jobs_target ON jobs(target_id, seq);
CREATE INDEX jobs_status ON jobs(status, seq);
CREATE INDEX jobs_created ON jobs(created_at);
CREATE UNIQUE INDEX jobs_request ON jobs(request_id) WHERE request_id IS NOT NULL;

CREATE TABLE audit (
    id INTEGER PRIMARY KEY,
    job_id TEXT NOT NULL,
    at REAL NOT NULL,
    action TEXT NOT NULL,
    who TEXT NOT NULL,
    via TEXT NOT NULL
);
CREATE INDEX audit_job ON audit(job_id, id);

CREATE TABLE entries (
    id INTEGER PRIMARY KEY,
    stream TEXT NOT NULL,
    key TEXT NOT NULL,
    job_id TEXT NOT NULL,
    at REAL NOT NULL,
    data TEXT NOT NULL,
    uniq TEXT
);
CREATE INDEX entries_key ON entries(stream, key, id);
CREATE UNIQUE INDEX entries_unique ON entries(stream, uniq) WHERE uniq IS NOT NULL;
"""


def _payloads(db: sqlite3.Connection) -> None:
    """Version 2's payload column, from each job's input as it was kept (invalid input keeps none)."""
    from jobs.kinds import payload_json, try_request

    rows = db.execute("SELECT seq, raw FROM jobs").fetchall()
    for seq, raw in rows:
        request = try_request(json.loads(raw))
        if request is not None:
            db.execute("UPDATE jobs SET payload = ? WHERE seq = ?", (json.dumps(payload_json(request)), seq))


# 3: where a job comes from (a CRM user, an import, a rule, a trigger, the API) and, for a trigger's action, the job
# and firing that caused it: JSON, NULL for a CRM user's job.
V3 = """
ALTER TABLE jobs ADD COLUMN origin TEXT;
"""

# 4: the import batch a job was queued by (its record is an entry of stream `batch`), so that a batch can be listed
# and cancelled; jobs before it belong to none.
V4 = """
ALTER TABLE jobs ADD COLUMN batch_id TEXT;
CREATE INDEX jobs_batch ON jobs(batch_id, seq) WHERE batch_id IS NOT NULL;
"""

# 5: what the console reads at a glance without scanning every job: finished jobs by the time of their outcome,
# attempts by time (429s and errors of the last day), and each runner's last heartbeat.
V5 = """
CREATE INDEX jobs_finished ON jobs(updated_at) WHERE status IN ('succeeded', 'failed');
CREATE INDEX attempts_started ON attempts(started_at);
CREATE TABLE runners (
    owner TEXT PRIMARY KEY,
    seen_at REAL NOT NULL
);
"""

# 6: a claim reads only the jobs that may run. `head` is 1 when no earlier unfinished job shares one of the job's
# keys and no other running job does (the rule of `semantics.claimable`), kept by every write that changes either;
# the claim's index holds only pending heads, so due jobs waiting behind an unfinished job cost it nothing. And a
# job's outcome writes fewer pages: expired leases are found among the running jobs of `jobs_status` (a few), not
# in an index of their own that every claim, renewal and outcome rewrote; attempts are kept in their primary key,
# with no rowid table beside it.
V6 = """
ALTER TABLE jobs ADD COLUMN head INTEGER NOT NULL DEFAULT 0;
UPDATE jobs SET head = (
    NOT EXISTS (SELECT 1 FROM open_keys mine
                JOIN open_keys earlier ON earlier.key = mine.key AND earlier.seq < mine.seq
                WHERE mine.seq = jobs.seq)
    AND NOT EXISTS (SELECT 1 FROM jobs running
                    JOIN open_keys theirs ON theirs.seq = running.seq
                    JOIN open_keys mine ON mine.key = theirs.key AND mine.seq = jobs.seq
                    WHERE running.status = 'running' AND running.seq != jobs.seq)
) WHERE status IN ('pending', 'running');
DROP INDEX jobs_due;
CREATE INDEX jobs_ready ON jobs(next_attempt_at, seq) WHERE status = 'pending' AND head = 1;
DROP INDEX jobs_leased;

CREATE TABLE attempts_v6 (
    job_id TEXT NOT NULL,
    number INTEGER NOT NULL,
    started_at REAL NOT NULL,
    ended_at REAL,
    outcome TEXT NOT NULL,
    result_code TEXT,
    http_status INTEGER,
    message TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (job_id, number)
) WITHOUT ROWID;
INSERT INTO attempts_v6 (job_id, number, started_at, ended_at, outcome, result_code, http_status, message)
SELECT job_id, number, started_at, ended_at, outcome, result_code, http_status, message FROM attempts;
DROP TABLE attempts;
ALTER TABLE attempts_v6 RENAME TO attempts;
CREATE INDEX attempts_started ON attempts(started_at);
"""

Step = str | Callable[[sqlite3.Connection], None]
MIGRATIONS: list[list[Step]] = [
    [V1],
    [V2, _payloads],
    [V3],
    [V4],
    [V5],
    [V6],
]
LATEST = len(MIGRATIONS)


def upgrade(conn: sqlite3.Connection, path: Path) -> int:
    """Bring the file to the latest version; returns the version it had. Each migration is one transaction, so
    a runner killed halfway leaves the file at the previous version, and the next open finishes the work."""
    found = _version(conn)
    if found > LATEST:
        raise StoreError(
            f"The job store {path} is at schema version {found}, newer than this connector knows ({LATEST}); "
            f"run a connector as new as the one that last wrote it."
        )
    while (version := _version(conn)) < LATEST:
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"The job store {path} is busy and cannot be upgraded now ({exc}).") from exc
        try:
            if _version(conn) == version:  # another process may have upgraded it while we waited for the lock
                for step in MIGRATIONS[version]:
                    if isinstance(step, str):
                        for statement in _statements(step):
                            conn.execute(statement)
                    else:
                        step(conn)
                conn.execute(f"PRAGMA user_version = {version + 1}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    return found


def _version(conn: sqlite3.Connection) -> int:
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version == 0 and conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'jobs'").fetchone():
        return 1  # made before versions existed
    return version


def _statements(script: str) -> list[str]:
    """`executescript` would commit our transaction first; statements are run one by one inside it instead."""
    out, buffer = [], ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            out.append(buffer.strip())
            buffer = ""
    return [s for s in out if s]
