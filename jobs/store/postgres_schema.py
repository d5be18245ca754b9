"""The PostgreSQL store's schema, in numbered migrations. `connector db upgrade` applies them; a store refuses to
open a database whose schema is older than the code (and names that command), so that a runner of a new release
never writes to tables an old release made, and one of an old release never writes to newer ones.

`connector_schema` holds one row per migration applied. Each migration is one transaction taken under an advisory
lock, so two hosts upgrading at once apply it once, and a process killed halfway leaves the previous version.
A migration is never edited once released: a new table or column is a new migration at the end of `MIGRATIONS`.

The tables mirror the SQLite store's (`jobs.store.sqlite_schema`, version 5): times are seconds since the epoch
(`double precision`), JSON is kept as text exactly as written (a job's raw input comes back as given), and
`open_keys` holds a row per (job, ordering key) while the job is unfinished. Version 2 adds what lets a claim read
only the jobs it may take: `jobs.head` (no earlier unfinished job shares one of the job's keys) with a partial index
of the pending heads in due order, and `open_keys.running` (the job holds a lease) with a partial index by key.
"""

from __future__ import annotations

from typing import Any

from jobs.store.errors import StoreError

# Advisory locks of the connector: (namespace, id). The namespace keeps them apart from other users of the database.
LOCK_NAMESPACE = 0x636F6E6E  # "conn"
MIGRATION_LOCK = 0
# Held by every transaction that inserts jobs: the creation order (seq) is then the order in which new jobs become
# visible, which per-key order rests on (see `jobs.store.postgres`).
ADD_LOCK = 1
# Claims hold it shared, a retry by hand exclusive: a retry reopens a job's keys, and no claim may be deciding on
# a snapshot taken before it (see `jobs.store.postgres`). Writes that close jobs (finish, cancel) and adds settling
# their heads hold it shared too; a retry and a bulk cancel exclusive.
REOPEN_LOCK = 2
# Per ordering key: (KEY_NAMESPACE, hashtext(key)), held by a write that closes a job of the key or settles the head
# of a new one, so that the first unfinished job of a key is decided by one transaction at a time. Two keys with
# the same hash only wait for each other.
KEY_NAMESPACE = 0x636F6E6B  # "conk"

V1 = """
CREATE TABLE jobs (
    seq bigserial PRIMARY KEY,               -- creation order
    id text NOT NULL UNIQUE,
    kind text NOT NULL,                      -- the kind's name, as given (invalid input may name none)
    target_kind text,
    target_id text,
    payload text,                            -- JSON of the validated payload; NULL when the input is not valid
    raw text NOT NULL,                       -- JSON of the input as given
    request_id text,                         -- the caller's key: queued once
    origin text,                             -- JSON: where the job comes from; NULL for a CRM user's job
    batch_id text,                           -- the import that queued it
    status text NOT NULL,
    created_at double precision NOT NULL,
    updated_at double precision NOT NULL,
    next_attempt_at double precision NOT NULL,
    attempts integer NOT NULL DEFAULT 0,
    result_code text,
    message text NOT NULL DEFAULT '',
    http_status integer,
    lease_owner text,
    lease_expires_at double precision,
    applied_at double precision,
    posted_at double precision,
    score_before bigint
);
CREATE INDEX jobs_due ON jobs (next_attempt_at, seq) WHERE status = 'pending';
CREATE INDEX jobs_leased ON jobs (lease_expires_at) WHERE status = 'running';
CREATE INDEX jobs_retrying ON jobs (seq) WHERE status = 'pending' AND attempts > 0;
CREATE INDEX jobs_target ON jobs (target_id, seq);
CREATE INDEX jobs_status ON jobs (status, seq);
CREATE INDEX jobs_created ON jobs (created_at);
CREATE UNIQUE INDEX jobs_request ON jobs (request_id) WHERE request_id IS NOT NULL;
CREATE INDEX jobs_batch ON jobs (batch_id, seq) WHERE batch_id IS NOT NULL;
CREATE INDEX jobs_finished ON jobs (updated_at) WHERE status IN ('succeeded', 'failed');

CREATE TABLE open_keys (
    key text NOT NULL,
    seq bigint NOT NULL,
    PRIMARY KEY (key, seq)
);
CREATE INDEX open_keys_seq ON open_keys (seq);

CREATE TABLE attempts (
    job_id text NOT NULL,
    number integer NOT NULL,
    started_at double precision NOT NULL,
    ended_at double precision,
    outcome text NOT NULL,
    result_code text,
    http_status integer,
    message text NOT NULL DEFAULT '',
    PRIMARY KEY (job_id, number)
);
CREATE INDEX attempts_started ON attempts (started_at);

CREATE TABLE audit (
    id bigserial PRIMARY KEY,
    job_id text NOT NULL,
    at double precision NOT NULL,
    action text NOT NULL,
    who text NOT NULL,
    via text NOT NULL
);
CREATE INDEX audit_job ON audit (job_id, id);

CREATE TABLE entries (
    id bigserial PRIMARY KEY,
    stream text NOT NULL,
    key text NOT NULL,
    job_id text NOT NULL,
    at double precision NOT NULL,
    data text NOT NULL,
    uniq text
);
CREATE INDEX entries_key ON entries (stream, key, id);
CREATE UNIQUE INDEX entries_unique ON entries (stream, uniq) WHERE uniq IS NOT NULL;

CREATE TABLE runners (
    owner text PRIMARY KEY,
    seen_at double precision NOT NULL
);
"""

# Heads. `head` is true while a pending job may be claimed as far as order goes (`semantics.claimable`): no earlier
# unfinished job shares one of its keys, and no other job of its keys is running. `running` mirrors the job's
# status on its key rows, so that the second half is a look at a handful of rows. Existing rows get both here.
V2 = """
ALTER TABLE jobs ADD COLUMN head boolean NOT NULL DEFAULT false;
ALTER TABLE open_keys ADD COLUMN running boolean NOT NULL DEFAULT false;
UPDATE open_keys o SET running = true FROM jobs j WHERE j.seq = o.seq AND j.status = 'running';
UPDATE jobs j SET head = true
WHERE j.status = 'pending'
  AND NOT EXISTS (
      SELECT 1 FROM open_keys mine JOIN open_keys earlier ON earlier.key = mine.key AND earlier.seq < mine.seq
      WHERE mine.seq = j.seq
  )
  AND NOT EXISTS (
      SELECT 1 FROM open_keys mine
      JOIN open_keys other ON other.key = mine.key AND other.running AND other.seq <> mine.seq
      WHERE mine.seq = j.seq
  );
CREATE INDEX jobs_heads ON jobs (next_attempt_at, seq) WHERE status = 'pending' AND head;
CREATE INDEX open_keys_running ON open_keys (key) WHERE running;
"""

MIGRATIONS: list[str] = [V1, V2]
LATEST = len(MIGRATIONS)

SCHEMA_TABLE = """
CREATE TABLE IF NOT EXISTS connector_schema (
    version integer PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""
VERSION = "SELECT coalesce(max(version), 0) AS v FROM connector_schema"
# Whether the version table exists, without creating it: a check at start-up writes nothing.
HAS_SCHEMA_TABLE = "SELECT to_regclass('connector_schema') IS NOT NULL AS v"
CURRENT_SCHEMA = "SELECT current_schema() AS v"


def current_schema(conn: Any, where: str) -> str:
    """The schema the connector's tables are in: the first one of the search_path that exists. None exists when
    the path names a schema not created yet, or misspelt: said here, not found out as a missing table."""
    name = _value(conn.execute(CURRENT_SCHEMA).fetchone())
    if name is None:
        raise StoreError(
            f"The PostgreSQL job store {where} has no schema to use: no schema on its search_path exists. Create the "
            f"schema, or name one that exists (options=-csearch_path=... in postgres.url, or the role's search_path)."
        )
    return str(name)


def version(conn: Any) -> int:
    """The version the database is at: 0 when the connector's tables were never made."""
    if not _value(conn.execute(HAS_SCHEMA_TABLE).fetchone()):
        return 0
    return int(_value(conn.execute(VERSION).fetchone()))


def check(conn: Any, where: str) -> int:
    """Refuse a schema other than the code's, with the sentence that says what to do; returns the version."""
    found = version(conn)
    if found < LATEST:
        state = "has no connector tables yet" if found == 0 else f"is at schema version {found}"
        raise StoreError(
            f"The PostgreSQL job store {where} {state}; this connector needs version {LATEST}. Run "
            f"`connector db upgrade` (with the same settings) first."
        )
    if found > LATEST:
        raise StoreError(
            f"The PostgreSQL job store {where} is at schema version {found}, newer than this connector knows "
            f"({LATEST}); run a connector as new as the one that upgraded it."
        )
    return found


def upgrade(conn: Any, where: str) -> tuple[int, int]:
    """Apply the migrations the database lacks, each in one transaction; returns (version before, after). `conn`
    is a psycopg connection that is not in a transaction."""
    before = None
    while True:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (LOCK_NAMESPACE, MIGRATION_LOCK))
            current_schema(conn, where)
            conn.execute(SCHEMA_TABLE)
            found = int(_value(conn.execute(VERSION).fetchone()))
            before = found if before is None else before
            if found > LATEST:
                raise StoreError(
                    f"The PostgreSQL job store {where} is at schema version {found}, newer than this connector "
                    f"knows ({LATEST}); run a connector as new as the one that upgraded it."
                )
            if found == LATEST:
                return before, found
            conn.execute(MIGRATIONS[found])
            conn.execute("INSERT INTO connector_schema (version) VALUES (%s)", (found + 1,))


def _value(row: Any) -> Any:
    """The one value of a row, whether the connection gives tuples or dicts."""
    return row["v"] if isinstance(row, dict) else row[0]
