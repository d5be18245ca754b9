"""The job store for several runners on several hosts: PostgreSQL, through psycopg 3 and a connection pool.

Every guarantee of `jobs.store` holds as on SQLite, in the same transactions; what differs is how writers meet.

- **Claims** lock the rows they take with `FOR UPDATE SKIP LOCKED`: runners on any host claim at once, none waits
  for another, and a row one claim holds is passed over by the others. A claim is one statement (`CLAIM`), so it
  decides on one snapshot.
- **Per-key order** is the claim's own condition (the rule of `semantics.claimable`), kept ahead of time as a flag:
  `jobs.head` is true while a pending job may run as far as order goes (no earlier unfinished job shares one of its
  keys, no other job of its keys is running; `IS_HEAD`). A claim reads the due heads in due order from their
  partial index and nothing else, so its cost does not grow with the jobs waiting behind a job whose retry is not
  due. `open_keys` holds a row per (job, key) while the job is unfinished, marked `running` while the job holds a
  lease, which is what deciding a head reads. Two facts make one flag read on one snapshot safe without serialising
  claims:
  1. every transaction that inserts jobs holds the advisory `ADD_LOCK`, so creation order (`seq`) is the order in
     which jobs become visible: a new job's head is decided against every earlier job of its keys;
  2. a retry by hand, the only write that reopens a finished job's keys, holds `REOPEN_LOCK` exclusively, and
     claims hold it shared: no claim decides on a snapshot taken before a retry and commits after it.
  Of the jobs of one key at most one is a head (the first, when nothing of its keys runs), and the row lock makes
  it one claim's; a claim changes no other job's flag (the jobs after it on its keys were not heads).
- **Heads** are decided again by the transactions that change them, under locks that make the one that commits
  second see the first (a flag wrongly false would leave its job waiting forever, wrongly true would break order):
  - an add decides its jobs' heads from what it sees. A job waiting behind an older one is settled again at the
    end of the add, under the locks a close takes (`_settle`): a close that committed meanwhile is seen then, and
    a later one waits for the add and then sees the new job;
  - a job that leaves running (a finish, a release, an expired lease) or is cancelled holds `REOPEN_LOCK` shared
    and the advisory lock of each of its keys (sorted, so they wait in one order): the first job of a key is
    decided by one transaction at a time. It locks that job's row before deciding, so two of them that each freed
    one key of a job with several decide one after the other, the second seeing the first;
  - a retry and a bulk cancel hold `ADD_LOCK` and `REOPEN_LOCK` exclusively (a bulk cancel only the latter): no
    other decision is under way meanwhile.
  The locks are taken in one order (`ADD_LOCK`, `REOPEN_LOCK`, key locks, rows); a transaction holding key locks
  waits only for its own job's row and for rows of pending jobs that are not heads, which no transaction holds
  while it waits for a lock.
- **Wake-ups**: every write that makes a job due (an add, an import, a job a trigger queues, a retry) sends
  `NOTIFY` in its transaction; `wakeups()` listens on a connection of its own, so a runner that waits for its next
  tick starts a new job at once (the scheduler's hook) without polling faster.

A password never appears in an error or a log line: the store names the database by its URL without it. The schema
is versioned (`jobs.store.postgres_schema`); opening a store checks it and refuses an older one.
"""

from __future__ import annotations

import builtins
import dataclasses
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from config.settings import password_apart
from jobs import kinds
from jobs.model import Attempt, Job, JobRequest, JobStatus
from jobs.store import (
    Actor,
    AuditEntry,
    Batch,
    BatchRows,
    Effects,
    Entry,
    JobFilter,
    JobNotFound,
    LeaseLost,
    NotAllowed,
    Outcome,
    Page,
    Record,
    RunnerSeen,
    StoreUnavailable,
    semantics,
)
from jobs.store import postgres_schema as schema
from jobs.store.errors import StoreError
from jobs.store.sqlite import (
    IMPORT_CHUNK,
    _bound,
    _chunks,
    _cursor_seq,
    _entry_args,
    _insert_args,
    _names_tag,
)
from jobs.store.sqlite import _job_from_row as _job_of_row

log = logging.getLogger(__name__)

NEXT_SEQS = "SELECT nextval(pg_get_serial_sequence('jobs', 'seq')) FROM generate_series(1, %s)"
INSERT_JOB = """
INSERT INTO jobs (seq, id, kind, target_kind, target_id, payload, raw, request_id, origin, batch_id, status,
                  created_at, updated_at, next_attempt_at, head)
VALUES (%(seq)s, %(id)s, %(kind)s, %(target_kind)s, %(target_id)s, %(payload)s, %(raw)s, %(request_id)s,
        %(origin)s, %(batch_id)s, 'pending', %(now)s, %(now)s, %(now)s, %(head)s)
"""
INSERT_KEY = "INSERT INTO open_keys (key, seq) VALUES (%s, %s) ON CONFLICT DO NOTHING"
# The first unfinished job of each of these keys, when it is older than this transaction's first new job.
OPEN_BEFORE = "SELECT key, min(seq) AS first FROM open_keys WHERE key = ANY(%s) GROUP BY key"
LOCK = "SELECT pg_advisory_xact_lock(%s, %s)"
LOCK_SHARED = "SELECT pg_advisory_xact_lock_shared(%s, %s)"
# In the order of the lock ids, the same in every transaction, so that two never wait for each other.
KEY_LOCKS = """
SELECT count(pg_advisory_xact_lock(%(ns)s, h)) AS n
FROM (SELECT DISTINCT hashtext(k) AS h FROM unnest(%(keys)s::text[]) k ORDER BY h) sorted
"""
JOB_KEY_LOCKS = """
SELECT count(pg_advisory_xact_lock(%(ns)s, h)) AS n
FROM (SELECT DISTINCT hashtext(o.key) AS h FROM open_keys o JOIN jobs j ON j.seq = o.seq WHERE j.id = %(id)s
      ORDER BY h) sorted
"""
EARLIER = """
SELECT 1 FROM open_keys mine JOIN open_keys earlier ON earlier.key = mine.key AND earlier.seq < mine.seq
WHERE mine.seq = j.seq
"""
# The rule of `semantics.claimable` for the job `j`: no earlier unfinished job shares one of its keys, and no other
# job of its keys is running (a failed job retried by hand after later jobs started must not run beside them).
# A few index probes per key: the running rows have an index of their own.
IS_HEAD = f"""
NOT EXISTS ({EARLIER}) AND NOT EXISTS (
    SELECT 1 FROM open_keys mine
    JOIN open_keys other ON other.key = mine.key AND other.running AND other.seq <> mine.seq
    WHERE mine.seq = j.seq
)
"""
# New jobs that waited behind an older job when they were inserted, and no longer do (see `_settle`).
SETTLE = f"""
UPDATE jobs j SET head = true
WHERE j.seq >= %s AND NOT j.head AND j.status = 'pending' AND {IS_HEAD}
"""
# After a job leaves running: the first unfinished job of each of its keys (the job itself too, when it is back
# to pending), when pending and not a head yet, locked (in seq order) before `BECOME_HEADS` decides, in a statement
# of its own, with what committed meanwhile. A job finished for good is taken out of `open_keys` first (`closed`
# removes its rows: the statement's snapshot still shows them, hence `<>`).
FREED_FIRSTS = """
WITH freed AS ({keys})
SELECT j.seq FROM jobs j
WHERE j.seq IN (SELECT (SELECT o.seq FROM open_keys o WHERE o.key = freed.key {skip}
                        ORDER BY o.seq LIMIT 1) FROM freed)
  AND j.status = 'pending' AND NOT j.head
ORDER BY j.seq
FOR UPDATE OF j
"""
CLOSE_KEYS = FREED_FIRSTS.format(keys="DELETE FROM open_keys WHERE seq = %(seq)s RETURNING key",
                                 skip="AND o.seq <> %(seq)s")
STOPPED_KEYS = FREED_FIRSTS.format(keys="SELECT key FROM open_keys WHERE seq = %(seq)s", skip="")
BECOME_HEADS = f"UPDATE jobs j SET head = true WHERE j.seq = ANY(%s) AND {IS_HEAD}"
# A job back to pending was a head when claimed; whether it still is, is decided again (a job before it may have
# been retried by hand while it ran).
BACK_HEAD = f"UPDATE jobs j SET head = {IS_HEAD} WHERE j.seq = %s AND j.status = 'pending'"
# After a retry, under its exclusive locks: the reopened jobs, and the job that came first after each on each key.
REOPENED_HEADS = f"""
UPDATE jobs j SET head = {IS_HEAD}
WHERE j.status = 'pending' AND (j.seq = ANY(%(seqs)s) OR j.seq IN (
    SELECT (SELECT o.seq FROM open_keys o WHERE o.key = r.key AND o.seq > r.seq ORDER BY o.seq LIMIT 1)
    FROM open_keys r WHERE r.seq = ANY(%(seqs)s)
))
"""
# Keys on which more of a new transaction's jobs wait behind older ones than this are settled under REOPEN_LOCK
# taken exclusively instead of one lock per key (the server's lock table is shared and small).
SETTLE_KEYS = 64

EXPIRED_LEASES = """
SELECT id, lease_owner FROM jobs WHERE status = 'running' AND lease_expires_at < %(now)s AND id = ANY(%(ids)s)
ORDER BY seq FOR UPDATE SKIP LOCKED
"""
EXPIRED_KEYS = """
SELECT j.id, o.key FROM jobs j LEFT JOIN open_keys o ON o.seq = j.seq
WHERE j.status = 'running' AND j.lease_expires_at < %(now)s
"""
REQUEUE_EXPIRED = """
WITH requeued AS (
    UPDATE jobs SET status = 'pending', lease_owner = NULL, lease_expires_at = NULL, next_attempt_at = %(now)s,
                    updated_at = %(now)s, attempts = attempts + 1
    WHERE id = ANY(%(ids)s)
    RETURNING seq
), stopped AS (
    UPDATE open_keys SET running = false WHERE seq = ANY(ARRAY(SELECT seq FROM requeued))
)
SELECT seq FROM requeued
"""

# The ordering rule of `semantics.claimable` is the head flag (`IS_HEAD`, kept by every write that changes it):
# a claim reads the due heads in due order from their partial index, and nothing else.
CLAIM = """
WITH picked AS (
    SELECT j.seq FROM jobs j
    WHERE j.status = 'pending' AND j.head AND j.next_attempt_at <= %(now)s
    ORDER BY j.next_attempt_at, j.seq
    LIMIT %(limit)s
    FOR UPDATE OF j SKIP LOCKED
), marked AS (
    UPDATE open_keys SET running = true WHERE seq = ANY(ARRAY(SELECT seq FROM picked))
)
UPDATE jobs SET status = 'running', lease_owner = %(owner)s, lease_expires_at = %(expires)s, updated_at = %(now)s
FROM picked WHERE jobs.seq = picked.seq
RETURNING jobs.*
"""

RENEW = """
UPDATE jobs SET lease_expires_at = %(expires)s
WHERE id = ANY(%(ids)s) AND status = 'running' AND lease_owner = %(owner)s
RETURNING id
"""
# The job's row is locked by COUNT_ATTEMPT first, so attempts of one job are numbered one at a time.
COUNT_ATTEMPT = """
UPDATE jobs SET attempts = attempts + 1, updated_at = %(now)s
WHERE id = %(job_id)s AND status = 'running' AND lease_owner = %(owner)s
"""
RECORD_ATTEMPT = """
INSERT INTO attempts (job_id, number, started_at, ended_at, outcome, result_code, http_status, message)
VALUES (%(job_id)s, (SELECT coalesce(max(number), 0) + 1 FROM attempts WHERE job_id = %(job_id)s),
        %(started_at)s, %(ended_at)s, %(outcome)s, %(result_code)s, %(http_status)s, %(message)s)
"""
FINISH = """
WITH done AS (
    UPDATE jobs SET status = %(status)s, result_code = %(result_code)s, message = %(message)s,
                    http_status = %(http_status)s, next_attempt_at = %(next_attempt_at)s, lease_owner = NULL,
                    lease_expires_at = NULL, updated_at = %(now)s,
                    posted_at = CASE WHEN %(posted)s THEN coalesce(posted_at, %(now)s) ELSE posted_at END,
                    applied_at = CASE WHEN %(applied)s THEN coalesce(applied_at, %(now)s) ELSE applied_at END
    WHERE id = %(id)s AND status = 'running' AND lease_owner = %(owner)s
    RETURNING seq
), stopped AS (
    UPDATE open_keys SET running = false WHERE seq = ANY(ARRAY(SELECT seq FROM done))
)
SELECT seq FROM done
"""
INSERT_ENTRY = """
INSERT INTO entries (stream, key, job_id, at, data, uniq)
VALUES (%(stream)s, %(key)s, %(job_id)s, %(at)s, %(data)s, %(uniq)s)
ON CONFLICT DO NOTHING
"""
RELEASE = """
WITH released AS (
    UPDATE jobs SET status = %(status)s, lease_owner = %(lease_owner)s, lease_expires_at = %(lease_expires_at)s,
                    updated_at = %(now)s
    WHERE id = %(id)s AND status = 'running' AND lease_owner = %(owner)s
    RETURNING seq
), stopped AS (
    UPDATE open_keys SET running = false WHERE seq = ANY(ARRAY(SELECT seq FROM released))
)
SELECT seq FROM released
"""
RETRY = """
UPDATE jobs SET status = %(status)s, next_attempt_at = %(next_attempt_at)s, updated_at = %(next_attempt_at)s,
                attempts = %(attempts)s, result_code = %(result_code)s, message = %(message)s,
                http_status = %(http_status)s, score_before = %(score_before)s
WHERE status = 'failed' AND id = ANY(%(ids)s)
RETURNING *
"""
CANCEL = """
UPDATE jobs SET status = %(status)s, result_code = %(result_code)s, message = %(message)s, updated_at = %(now)s
WHERE id = %(id)s AND status = 'pending'
RETURNING seq
"""
AUDIT = "INSERT INTO audit (job_id, at, action, who, via) VALUES (%s, %s, %s, %s, %s)"
TRIED = "SELECT count(*) AS n FROM attempts WHERE job_id = %s"

COUNTS = """
SELECT CASE WHEN status = 'pending' AND attempts > 0 THEN 'retrying' ELSE status END AS s, count(*) AS n
FROM jobs GROUP BY 1
"""
FINISHED_SINCE = """
SELECT result_code, count(*) AS n FROM jobs
WHERE status IN ('succeeded', 'failed') AND updated_at >= %s GROUP BY result_code
"""
FAILED_ATTEMPTS_SINCE = """
SELECT j.kind, a.result_code, count(*) AS n FROM attempts a JOIN jobs j ON j.id = a.job_id
WHERE a.started_at >= %s AND a.outcome <> 'succeeded' GROUP BY j.kind, a.result_code
"""
HEARTBEAT = """
INSERT INTO runners (owner, seen_at) VALUES (%s, %s) ON CONFLICT (owner) DO UPDATE SET seen_at = excluded.seen_at
"""
NEXT_DUE = "SELECT min(j.next_attempt_at) AS due FROM jobs j WHERE j.status = 'pending' AND j.head"
# Rows read at a time while a filter on tags is applied in Python (the rule is `semantics.tag_among`).
SCAN_CHUNK = 500


def shown_url(url: str) -> str:
    """The database's URL as it may be shown: without a password (after the user name or as a parameter)."""
    return password_apart(url)[0]


class PostgresJobStore:
    """A job store in a PostgreSQL database, shared by runners on any number of hosts. Thread-safe: every call
    takes a connection from the pool for one transaction."""

    name = "postgres"
    atomic_batches = True

    def __init__(
        self, url: str, *, password: str | None = None, clock: Callable[[], float] = time.time,
        pool_size: int = 12, connect_timeout: float = 10.0, check_schema: bool = True,
    ) -> None:
        self.where = shown_url(url)
        self._secret = password or password_apart(url)[1] or None
        self._conninfo = psycopg.conninfo.make_conninfo(url, **({"password": password} if password else {}))
        self._connect_timeout = connect_timeout
        self._clock = clock
        self._pool = ConnectionPool(
            self._conninfo, min_size=1, max_size=max(2, pool_size), open=False, timeout=connect_timeout,
            kwargs={"autocommit": True, "row_factory": dict_row, "connect_timeout": max(1, int(connect_timeout))},
            name="connector-jobs",
        )
        with self._errors():
            self._pool.open(wait=True, timeout=connect_timeout)
        try:
            with self._connection() as conn:
                self.channel = _channel(schema.current_schema(conn, self.where))
                if check_schema:
                    schema.check(conn, self.where)
        except BaseException:
            self._pool.close()
            raise

    # --- connections ----------------------------------------------------------------------------------------

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """The database's errors in our tree: one it cannot answer (down, unreachable, a deadlock, a pool with no
        free connection in time) is StoreUnavailable, transient; the password is never part of the message."""
        try:
            yield
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            raise StoreUnavailable(
                f"The PostgreSQL job store {self.where} did not answer ({self._quiet(exc)})."
            ) from None
        except psycopg.Error as exc:
            raise StoreError(f"The PostgreSQL job store {self.where} refused a request ({self._quiet(exc)}).") from None

    def _quiet(self, exc: BaseException) -> str:
        text = " ".join(str(exc).split()) or type(exc).__name__
        return text.replace(self._secret, "**********") if self._secret else text

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        with self._errors(), self._pool.connection() as conn:
            yield conn

    @contextmanager
    def atomic(self) -> Iterator[psycopg.Connection[Any]]:
        """One transaction: committed when the block ends, rolled back when it raises."""
        with self._connection() as conn, conn.transaction():
            yield conn

    def close(self) -> None:
        self._pool.close()

    def _notify(self, db: psycopg.Connection[Any]) -> None:
        """Runners listening wake up when this transaction commits (NOTIFY is delivered on commit, once)."""
        db.execute("SELECT pg_notify(%s, '')", (self.channel,))

    # --- what people do -------------------------------------------------------------------------------------

    def add(self, requests: Sequence[JobRequest]) -> builtins.list[Job]:
        with self.atomic() as db:
            new = _NewJobs()
            seqs = self._add(db, requests, self._clock(), new)
            self._settle(db, new)
            if not seqs:
                return []
            rows = {row["seq"]: row for row in db.execute("SELECT * FROM jobs WHERE seq = ANY(%s)", (seqs,))}
            return [_job_from_row(rows[seq]) for seq in seqs]

    def _add(self, db: psycopg.Connection[Any], requests: Sequence[JobRequest], now: float,
             new_jobs: _NewJobs) -> builtins.list[int]:
        """Insert the requests not stored yet; the seq of each request's job, new or already stored. The caller
        settles `new_jobs` before it commits."""
        if not requests:
            return []
        db.execute(LOCK, (schema.LOCK_NAMESPACE, schema.ADD_LOCK))
        wanted = [r.request_id for r in requests if r.request_id is not None]
        known: dict[str, int] = {}
        if wanted:
            known = {row["request_id"]: row["seq"] for row in
                     db.execute("SELECT request_id, seq FROM jobs WHERE request_id = ANY(%s)", (wanted,))}
        new = []
        for request in requests:
            if request.request_id is None or request.request_id not in known:
                new.append(request)
                if request.request_id is not None:
                    known[request.request_id] = -1  # given its seq below
        seqs = self._insert(db, [(kinds.raw_of(r), r) for r in new], now, new_jobs)
        slots, fresh = [], iter(seqs)
        for request in requests:
            if request.request_id is None:
                slots.append(next(fresh))
                continue
            if known[request.request_id] == -1:
                known[request.request_id] = next(fresh)
            slots.append(known[request.request_id])
        return slots

    def _insert(self, db: psycopg.Connection[Any], items: Sequence[tuple[dict[str, Any], JobRequest | None]],
                now: float, new_jobs: _NewJobs) -> builtins.list[int]:
        """Insert jobs in the order given (the caller holds ADD_LOCK), each a head when no unfinished job shares
        one of its keys, older or earlier in `items`; returns their seqs."""
        if not items:
            return []
        seqs = [row["nextval"] for row in db.execute(NEXT_SEQS, (len(items),))]
        if new_jobs.first is None:
            new_jobs.first = seqs[0]
        # Invalid input has no keys to wait on: it fails without touching anything.
        keys_of = [sorted(set(request.keys)) if request else [] for _, request in items]
        wanted = sorted({key for keys in keys_of for key in keys})
        taken: set[str] = set()
        for row in db.execute(OPEN_BEFORE, (wanted,)):
            taken.add(row["key"])
            if row["first"] < new_jobs.first:
                new_jobs.behind_older(row["key"])
        rows = []
        for seq, (raw, request), keys in zip(seqs, items, keys_of, strict=True):
            rows.append({**_insert_args(raw, request, now, seq), "head": taken.isdisjoint(keys)})
            taken.update(keys)
        with db.cursor() as cur:
            cur.executemany(INSERT_JOB, rows)
            pairs = [(key, seq) for seq, keys in zip(seqs, keys_of, strict=True) for key in keys]
            if pairs:
                cur.executemany(INSERT_KEY, pairs)
        self._notify(db)
        return seqs

    def _settle(self, db: psycopg.Connection[Any], new_jobs: _NewJobs) -> None:
        """Make heads of the new jobs that waited behind an older job when inserted and no longer do: that job was
        closed since. Under the locks a close takes, so a close that committed before is seen here, and one that
        commits after waited for this transaction and sees its jobs (see the module docstring)."""
        if not (new_jobs.keys or new_jobs.many):
            return  # no new job waits behind an older one: the heads decided at insert hold
        if new_jobs.many:
            db.execute(LOCK, (schema.LOCK_NAMESPACE, schema.REOPEN_LOCK))
        else:
            db.execute(LOCK_SHARED, (schema.LOCK_NAMESPACE, schema.REOPEN_LOCK))
            db.execute(KEY_LOCKS, {"ns": schema.KEY_NAMESPACE, "keys": sorted(new_jobs.keys)})
        db.execute(SETTLE, (new_jobs.first,))

    def add_batch(self, batch: Batch, requests: BatchRows) -> Batch:
        """One transaction however long the file, rows inserted a chunk at a time as they are read, so memory
        stays flat. Other adds wait for it (ADD_LOCK); runners go on claiming and finishing meanwhile."""
        now = self._clock()
        queued = already = 0
        new_jobs = _NewJobs()
        with self.atomic() as db:
            db.execute(LOCK, (schema.LOCK_NAMESPACE, schema.ADD_LOCK))
            for chunk in _chunks(requests, IMPORT_CHUNK):
                new = self._not_stored(db, chunk)
                already += len(chunk) - len(new)
                self._insert(db, [(kinds.raw_of(request), request) for request in new], now, new_jobs)
                queued += len(new)
            kept = dataclasses.replace(batch, at=now, rows=requests.rows, invalid=requests.invalid, queued=queued,
                                       already=already)
            db.execute(INSERT_ENTRY, _entry_args(kept.record(), "", now))
            # Last, so that closes of older jobs of the file's keys wait for the settling only, not the import.
            self._settle(db, new_jobs)
        return kept

    @staticmethod
    def _not_stored(db: psycopg.Connection[Any], chunk: Sequence[JobRequest]) -> builtins.list[JobRequest]:
        """The requests whose request id is neither stored (earlier chunks included) nor earlier in the chunk."""
        wanted = [r.request_id for r in chunk if r.request_id is not None]
        seen: set[str] = set()
        if wanted:
            seen = {row["request_id"] for row in
                    db.execute("SELECT request_id FROM jobs WHERE request_id = ANY(%s)", (wanted,))}
        new = []
        for request in chunk:
            if request.request_id is not None:
                if request.request_id in seen:
                    continue
                seen.add(request.request_id)
            new.append(request)
        return new

    def add_raw(self, raw: dict[str, Any]) -> Job:
        """Queue input as a CRM user left it, unvalidated: for rows edited into something invalid (and tests)."""
        with self.atomic() as db:
            db.execute(LOCK, (schema.LOCK_NAMESPACE, schema.ADD_LOCK))
            # Input that happens to be valid is kept and ordered like any other job.
            new_jobs = _NewJobs()
            (seq,) = self._insert(db, [(raw, kinds.try_request(raw))], self._clock(), new_jobs)
            self._settle(db, new_jobs)
            return _job_from_row(db.execute("SELECT * FROM jobs WHERE seq = %s", (seq,)).fetchone())

    def keep(self, records: Sequence[Record]) -> None:
        now = self._clock()
        with self.atomic() as db, db.cursor() as cur:
            cur.executemany(INSERT_ENTRY, [_entry_args(record, "", now) for record in records])

    def retry(self, job_id: str | None, by: Actor) -> builtins.list[str]:
        with self.atomic() as db:
            self._reopening(db)
            if job_id is not None:
                self._check(db, job_id, "retry", semantics.RETRYABLE)
                ids = [job_id]
            else:
                ids = [row["id"] for row in db.execute("SELECT id FROM jobs WHERE status = 'failed' ORDER BY seq")]
            return self._retry(db, ids, by)

    def _reopening(self, db: psycopg.Connection[Any]) -> None:
        """The locks of a retry, before any row: reopening keys, no claim may be deciding on a snapshot from before
        this, and no add, close or settling may be deciding heads meanwhile (see the module docstring)."""
        db.execute(LOCK, (schema.LOCK_NAMESPACE, schema.ADD_LOCK))
        db.execute(LOCK, (schema.LOCK_NAMESPACE, schema.REOPEN_LOCK))

    def _retry(self, db: psycopg.Connection[Any], ids: builtins.list[str], by: Actor) -> builtins.list[str]:
        if not ids:
            return []
        now = self._clock()
        rows = db.execute(RETRY, {**_bound(semantics.retried(now)), "ids": ids}).fetchall()
        rows.sort(key=lambda row: row["seq"])
        with db.cursor() as cur:
            keys = [(key, row["seq"]) for row in rows for key in semantics.keys_of(_job_from_row(row))]
            if keys:
                cur.executemany(INSERT_KEY, keys)
            if rows:
                cur.executemany(AUDIT, [(row["id"], now, "retry", by.who, by.via) for row in rows])
        if rows:
            db.execute(REOPENED_HEADS, {"seqs": [row["seq"] for row in rows]})
            self._notify(db)
        return [row["id"] for row in rows]

    def cancel(self, job_id: str, by: Actor) -> Job:
        now = self._clock()
        with self.atomic() as db:
            self._closing(db, job_id)
            self._check(db, job_id, "cancel", semantics.CANCELLABLE)
            self._cancel(db, job_id, now, by)
        return self.get(job_id)

    def _cancel(self, db: psycopg.Connection[Any], job_id: str, now: float, by: Actor) -> bool:
        tried = _one(db.execute(TRIED, (job_id,)).fetchone())["n"]
        row = db.execute(CANCEL, {**_bound(semantics.cancelled(tried)), "now": now, "id": job_id}).fetchone()
        if row is None:
            return False  # claimed meanwhile
        self._close_keys(db, row["seq"])
        db.execute(AUDIT, (job_id, now, "cancel", by.who, by.via))
        return True

    def _closing(self, db: psycopg.Connection[Any], job_id: str) -> None:
        """The locks of a close, before any row (see the module docstring)."""
        db.execute(LOCK_SHARED, (schema.LOCK_NAMESPACE, schema.REOPEN_LOCK))
        db.execute(JOB_KEY_LOCKS, {"ns": schema.KEY_NAMESPACE, "id": job_id})

    def _close_keys(self, db: psycopg.Connection[Any], seq: int, *, finished: bool = True) -> None:
        """The job of `seq` left running, finished (its keys are free) or back to pending (it is decided again):
        the job that now comes first on one of its keys may be a head. Under the locks of `_closing`."""
        if not finished:
            db.execute(BACK_HEAD, (seq,))
        firsts = [row["seq"] for row in db.execute(CLOSE_KEYS if finished else STOPPED_KEYS, {"seq": seq})]
        if firsts:
            db.execute(BECOME_HEADS, (firsts,))

    def cancel_where(self, query: JobFilter, by: Actor) -> builtins.list[str]:
        if query.status not in (None, "pending", "retrying"):
            return []  # only pending jobs can be cancelled
        now = self._clock()
        with self.atomic() as db:
            # Exclusive: closing any number of keys at once, no other close or settling may decide meanwhile.
            db.execute(LOCK, (schema.LOCK_NAMESPACE, schema.REOPEN_LOCK))
            found = self._matching(db, dataclasses.replace(query, status=query.status or "pending", after=None),
                                   lock=True)
            return [job_id for job_id in found if self._cancel(db, job_id, now, by)]

    def retry_where(self, query: JobFilter, by: Actor) -> builtins.list[str]:
        if query.status not in (None, "failed"):
            return []  # only failed jobs can be retried
        with self.atomic() as db:
            self._reopening(db)
            found = self._matching(db, dataclasses.replace(query, status="failed", after=None), lock=True)
            retried = set(self._retry(db, found, by))
            return [job_id for job_id in found if job_id in retried]

    def _matching(self, db: psycopg.Connection[Any], query: JobFilter, *, lock: bool) -> builtins.list[str]:
        """The ids of every job a filter finds, whatever its limit, oldest first; locked for an update."""
        where, args = _where(query)
        rows = db.execute(f"SELECT seq, id, payload, raw FROM jobs {where} ORDER BY seq"
                          f"{' FOR UPDATE' if lock else ''}", args).fetchall()
        return [row["id"] for row in rows if query.tag is None or _names_tag(row["payload"], row["raw"], query.tag)]

    def _check(self, db: psycopg.Connection[Any], job_id: str, action: str, allowed: frozenset[JobStatus]) -> None:
        row = db.execute("SELECT * FROM jobs WHERE id = %s FOR UPDATE", (job_id,)).fetchone()
        if row is None:
            raise JobNotFound(job_id)
        job = _job_from_row(row)
        if job.status not in allowed:
            raise NotAllowed(semantics.refusal(action, job))

    # --- what readers ask -----------------------------------------------------------------------------------

    def get(self, job_id: str) -> Job:
        with self._connection() as conn:
            row = conn.execute("SELECT * FROM jobs WHERE id = %s", (job_id,)).fetchone()
        if row is None:
            raise JobNotFound(job_id)
        return _job_from_row(row)

    def list(self, query: JobFilter) -> Page:
        where, args = _where(query)
        found: builtins.list[dict[str, Any]] = []
        with self._connection() as conn:
            if query.tag is None:
                # One row more than asked tells whether a page follows.
                found = conn.execute(f"SELECT * FROM jobs {where} ORDER BY seq DESC LIMIT {int(query.limit) + 1}",
                                     args).fetchall()
            else:
                found = self._tagged(conn, query, where, args)
        more = len(found) > query.limit
        found = found[: query.limit]
        return Page([_job_from_row(row) for row in found], str(found[-1]["seq"]) if more and found else None)

    def _tagged(self, conn: psycopg.Connection[Any], query: JobFilter, where: str,
                args: builtins.list[Any]) -> builtins.list[dict[str, Any]]:
        """Rows the SQL narrowed down, newest first, read a chunk at a time until the page (and one more) is full
        of jobs that name the tag by `semantics.tag_among`."""
        found: builtins.list[dict[str, Any]] = []
        below = None
        while len(found) <= query.limit:
            more_where = where + (f"{' AND' if where else 'WHERE'} seq < %s" if below is not None else "")
            rows = conn.execute(f"SELECT * FROM jobs {more_where} ORDER BY seq DESC LIMIT {SCAN_CHUNK}",
                                [*args, *([below] if below is not None else [])]).fetchall()
            found += [row for row in rows if _names_tag(row["payload"], row["raw"], str(query.tag))]
            if len(rows) < SCAN_CHUNK:
                break
            below = rows[-1]["seq"]
        return found[: query.limit + 1]

    def attempts(self, job_id: str) -> builtins.list[Attempt]:
        with self._connection() as conn:
            rows = conn.execute("SELECT * FROM attempts WHERE job_id = %s ORDER BY number", (job_id,)).fetchall()
        return [Attempt(**row) for row in rows]

    def audit(self, job_id: str) -> builtins.list[AuditEntry]:
        with self._connection() as conn:
            rows = conn.execute("SELECT job_id, at, action, who, via FROM audit WHERE job_id = %s ORDER BY id",
                                (job_id,)).fetchall()
        return [AuditEntry(**row) for row in rows]

    def entries(self, stream: str, key: str | None = None) -> builtins.list[Entry]:
        statement, args = "SELECT * FROM entries WHERE stream = %s", [stream]
        if key is not None:
            statement += " AND key = %s"
            args.append(key)
        with self._connection() as conn:
            rows = conn.execute(statement + " ORDER BY id", args).fetchall()
        return [Entry(stream=row["stream"], key=row["key"], data=json.loads(row["data"]), job_id=row["job_id"],
                      at=row["at"]) for row in rows]

    def counts(self) -> dict[str, int]:
        with self._connection() as conn:
            return {row["s"]: row["n"] for row in conn.execute(COUNTS)}

    def oldest_pending(self) -> Job | None:
        with self._connection() as conn:
            row = conn.execute("SELECT * FROM jobs WHERE status = 'pending' ORDER BY seq LIMIT 1").fetchone()
        return _job_from_row(row) if row else None

    def finished_since(self, since: float) -> dict[str, int]:
        with self._connection() as conn:
            return {row["result_code"] or "": row["n"] for row in conn.execute(FINISHED_SINCE, (since,))}

    def failed_attempts_since(self, since: float) -> dict[tuple[str, str], int]:
        with self._connection() as conn:
            return {(row["kind"], row["result_code"] or ""): row["n"]
                    for row in conn.execute(FAILED_ATTEMPTS_SINCE, (since,))}

    def heartbeat(self, owner: str) -> None:
        with self._connection() as conn:
            conn.execute(HEARTBEAT, (owner, self._clock()))

    def runners(self, since: float) -> builtins.list[RunnerSeen]:
        with self._connection() as conn:
            rows = conn.execute("SELECT owner, seen_at FROM runners WHERE seen_at >= %s ORDER BY seen_at DESC",
                                (since,)).fetchall()
        return [RunnerSeen(row["owner"], row["seen_at"]) for row in rows]

    def waiting(self) -> tuple[int, float | None]:
        with self._connection() as conn:
            retrying = _one(conn.execute(
                "SELECT count(*) AS n FROM jobs WHERE status = 'pending' AND attempts > 0").fetchone())["n"]
            if not retrying:
                return 0, None
            due = _one(conn.execute(NEXT_DUE).fetchone())["due"]
        return int(retrying), float(due) if due is not None else None

    # --- the runner's side ----------------------------------------------------------------------------------

    def claim(self, owner: str, limit: int, lease_seconds: float) -> builtins.list[Job]:
        now = self._clock()
        with self.atomic() as db:
            db.execute(LOCK_SHARED, (schema.LOCK_NAMESPACE, schema.REOPEN_LOCK))
            # The key locks of the jobs whose lease ran out before their rows, as a close takes them.
            found = db.execute(EXPIRED_KEYS, {"now": now}).fetchall()
            keys = [row["key"] for row in found if row["key"] is not None]
            if keys:
                db.execute(KEY_LOCKS, {"ns": schema.KEY_NAMESPACE, "keys": keys})
            expired = db.execute(EXPIRED_LEASES, {"now": now, "ids": [row["id"] for row in found]}).fetchall()
            if expired:
                with db.cursor() as cur:
                    cur.executemany(RECORD_ATTEMPT, [
                        semantics.expired_attempt(row["id"], row["lease_owner"], now).model_dump()
                        for row in expired])
                for row in db.execute(REQUEUE_EXPIRED, {"now": now, "ids": [row["id"] for row in expired]}
                                      ).fetchall():
                    self._close_keys(db, row["seq"], finished=False)
            # Planned for this time and limit at each run: a plan cached for any of them may read every due head
            # and sort them, where this one reads the first `limit` of the index.
            rows = db.execute(CLAIM, {"owner": owner, "expires": now + lease_seconds, "now": now,
                                      "limit": limit}, prepare=False).fetchall()
        return [_job_from_row(row) for row in sorted(rows, key=lambda row: row["seq"])]

    def renew(self, owner: str, job_ids: Sequence[str], lease_seconds: float) -> builtins.list[str]:
        if not job_ids:
            return []
        with self.atomic() as db:
            held = {row["id"] for row in db.execute(
                RENEW, {"expires": self._clock() + lease_seconds, "ids": builtins.list(job_ids), "owner": owner})}
        return [job_id for job_id in job_ids if job_id not in held]

    def record_attempt(self, owner: str, attempt: Attempt) -> None:
        with self.atomic() as db:
            self._record_attempt(db, owner, attempt)

    def _record_attempt(self, db: psycopg.Connection[Any], owner: str, attempt: Attempt) -> None:
        changed = db.execute(COUNT_ATTEMPT, {"now": self._clock(), "job_id": attempt.job_id, "owner": owner}).rowcount
        if not changed:
            raise LeaseLost(f"Job {attempt.job_id} is no longer held by {owner}.")
        db.execute(RECORD_ATTEMPT, {**attempt.model_dump(), "message": _text(attempt.message)})

    def save_progress(
        self, owner: str, job_id: str, *, score_before: int | None = None, applied: bool = False,
        posted: bool = False, effects: Effects | None = None,
    ) -> None:
        now = self._clock()
        sets, args = ["updated_at = %(now)s"], {"now": now, "id": job_id, "owner": owner}
        if score_before is not None:
            sets.append("score_before = %(score_before)s")
            args["score_before"] = score_before
        if applied:
            sets.append("applied_at = coalesce(applied_at, %(now)s)")
        if posted:
            sets.append("posted_at = coalesce(posted_at, %(now)s)")
        statement = (f"UPDATE jobs SET {', '.join(sets)} "
                     "WHERE id = %(id)s AND status = 'running' AND lease_owner = %(owner)s")
        with self.atomic() as db:
            if db.execute(statement, args).rowcount == 0:
                raise LeaseLost(f"Job {job_id} is no longer held by {owner}.")
            if effects:
                if effects.jobs:
                    # Before the records: ADD_LOCK is always the first thing a transaction waits for after its own
                    # row, so two writers never wait for each other.
                    db.execute(LOCK, (schema.LOCK_NAMESPACE, schema.ADD_LOCK))
                self._keep(db, job_id, effects, now)

    def _keep(self, db: psycopg.Connection[Any], job_id: str, effects: Effects, now: float) -> None:
        """The effects of the job's applied change, in the caller's transaction; one that queues jobs has taken
        ADD_LOCK already, where its lock order puts it."""
        with db.cursor() as cur:
            cur.executemany(INSERT_ENTRY, [_entry_args(record, job_id, now) for record in effects.records])
        new_jobs = _NewJobs()
        self._add(db, effects.jobs, now, new_jobs)
        self._settle(db, new_jobs)

    def finish(self, owner: str, job_id: str, outcome: Outcome) -> None:
        now = self._clock()
        effects = outcome.effects
        with self.atomic() as db:
            if effects and effects.jobs:
                # Jobs to queue with the outcome: the lock of an add comes first, in the order every transaction
                # takes its locks (see the module docstring).
                db.execute(LOCK, (schema.LOCK_NAMESPACE, schema.ADD_LOCK))
            self._closing(db, job_id)
            if outcome.attempt is not None:
                self._record_attempt(db, owner, outcome.attempt)
            row = db.execute(FINISH, {
                "status": outcome.status.value, "result_code": outcome.result_code,
                "message": _text(outcome.message), "http_status": outcome.http_status,
                "next_attempt_at": outcome.next_attempt_at if outcome.next_attempt_at is not None else now,
                "now": now, "id": job_id, "owner": owner, "posted": outcome.posted, "applied": outcome.applied,
            }).fetchone()
            if row is None:
                raise LeaseLost(f"Job {job_id} is no longer held by {owner}.")
            self._close_keys(db, row["seq"], finished=outcome.status.finished)
            if effects:
                self._keep(db, job_id, effects, now)

    def release(self, owner: str, job_id: str) -> None:
        with self.atomic() as db:
            self._closing(db, job_id)
            row = db.execute(RELEASE, {**_bound(semantics.released()), "now": self._clock(), "id": job_id,
                                       "owner": owner}).fetchone()
            if row is not None:
                self._close_keys(db, row["seq"], finished=False)

    # --- waking runners -------------------------------------------------------------------------------------

    def wakeups(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call `callback` whenever jobs become due by a write of any host (an add, an import, a trigger's
        actions, a retry); returns the function that stops listening. Listens on a connection of its own, which
        is opened again after a failure: a lost wake-up costs at most one tick."""
        stop = threading.Event()
        thread = threading.Thread(target=self._listen, args=(callback, stop), name="job-wakeups", daemon=True)
        thread.start()

        def stop_listening() -> None:
            stop.set()
            thread.join(timeout=5)

        return stop_listening

    def _listen(self, callback: Callable[[], None], stop: threading.Event) -> None:
        pause = 0.5
        while not stop.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True,
                                     connect_timeout=max(1, int(self._connect_timeout))) as conn:
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
                    callback()  # jobs added while no one listened are found now
                    pause = 0.5
                    while not stop.is_set():
                        # A short timeout, so that stopping takes no longer than this.
                        if any(True for _ in conn.notifies(timeout=0.5)):
                            callback()
            except psycopg.Error as exc:
                log.warning("Listening for new jobs on %s failed (%s); listening again in %g s", self.where,
                            self._quiet(exc), pause)
                stop.wait(pause)
                pause = min(pause * 2, 30.0)
            except Exception:
                log.exception("Waking runners for new jobs failed; listening again")
                stop.wait(pause)


class _NewJobs:
    """What a transaction that adds jobs must settle before it commits: its first seq, and the keys on which a new
    job waits behind an older unfinished one (`many` past `SETTLE_KEYS` of them, which are then not kept)."""

    def __init__(self) -> None:
        self.first: int | None = None
        self.keys: set[str] = set()
        self.many = False

    def behind_older(self, key: str) -> None:
        if self.many:
            return
        self.keys.add(key)
        if len(self.keys) > SETTLE_KEYS:
            self.keys.clear()
            self.many = True


def upgrade(url: str, *, password: str | None = None, connect_timeout: float = 10.0) -> tuple[int, int]:
    """Bring the database's schema to this connector's version (`connector db upgrade`): (before, after)."""
    where = shown_url(url)
    secret = password or password_apart(url)[1]
    conninfo = psycopg.conninfo.make_conninfo(url, **({"password": password} if password else {}))
    try:
        with psycopg.connect(conninfo, autocommit=True, connect_timeout=max(1, int(connect_timeout))) as conn:
            return schema.upgrade(conn, where)
    except psycopg.Error as exc:
        text = " ".join(str(exc).split())
        if secret:
            text = text.replace(secret, "**********")
        kind = StoreUnavailable if isinstance(exc, psycopg.OperationalError) else StoreError
        raise kind(f"The PostgreSQL job store {where} could not be upgraded ({text}).") from None


def _channel(schema_name: str) -> str:
    """The NOTIFY channel of the jobs in a schema. PostgreSQL cuts names at 63 bytes (and pg_notify refuses a
    longer one): a long schema name is stood for by a digest of it, the same for every runner."""
    channel = f"connector_jobs:{schema_name}"
    if len(channel.encode()) > 63:
        channel = f"connector_jobs:{hashlib.sha256(schema_name.encode()).hexdigest()[:40]}"
    return channel


def _job_from_row(row: Any) -> Job:
    """A job from its row: the columns are the SQLite store's, read by name."""
    return _job_of_row(row)


def _text(message: str) -> str:
    """A message as a text column takes it. A platform's error text is quoted into messages as it came, and
    PostgreSQL refuses a NUL character in text: the outcome would never be written, and the job would run again
    at each lease expiry. Shown escaped, as `config.text.shown` shows control characters."""
    return message.replace("\x00", "\\x00")


def _one(row: Any) -> Any:
    """The row a statement that always answers one gave."""
    assert row is not None
    return row


def _where(query: JobFilter) -> tuple[str, builtins.list[Any]]:
    """The WHERE clause of a filter: fixed strings, with the values bound. A tag is narrowed down here (a cheap
    look at the JSON, for ASCII tags: JSON escapes other characters) and decided in Python by the caller."""
    clauses: builtins.list[str] = []
    args: builtins.list[Any] = []
    if query.status == "retrying":
        clauses.append("status = 'pending' AND attempts > 0")
    elif query.status is not None:
        clauses.append("status = %s")
        args.append(str(query.status))
    if query.target_id is not None:
        clauses.append("target_id = %s")
        args.append(query.target_id)
    if query.since is not None:
        clauses.append("created_at >= %s")
        args.append(query.since)
    if query.batch is not None:
        clauses.append("batch_id = %s")
        args.append(query.batch)
    if query.request_ids:
        clauses.append("request_id = ANY(%s)")
        args.append(builtins.list(query.request_ids))
    if query.tag is not None and query.tag.isascii():
        clauses.append("strpos(lower(coalesce(payload, raw)), lower(%s)) > 0")
        # As the JSON spells it: a quote or a backslash in a tag is escaped there.
        args.append(json.dumps(query.tag.strip())[1:-1])
    if query.operation is not None:
        clauses.append("kind = %s")
        args.append(query.operation)
    if query.result_code is not None:
        clauses.append("result_code = %s")
        args.append(query.result_code)
    if query.text is not None:
        clauses.append("(strpos(lower(message), lower(%s)) > 0 OR id = %s)")
        args.extend([query.text, query.text.strip()])
    if query.after is not None:
        clauses.append("seq < %s")
        args.append(_cursor_seq(query.after))
    return (f"WHERE {' AND '.join(clauses)}" if clauses else ""), args
