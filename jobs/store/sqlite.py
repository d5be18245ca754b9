"""The embedded job store: one SQLite file in WAL mode, safe for several runner processes on one machine.

Claims are one `UPDATE ... RETURNING` inside `BEGIN IMMEDIATE`, so two processes can never take the same job.
Per-key order lives in `open_keys`, which holds a row per (job, key) only while the job is unfinished, and in each
job's `head` mark: no earlier unfinished job shares one of its keys, and no other running job does (the rule of
`semantics.claimable`, in SQL). Every write that changes either fact refreshes the marks it can change, in its own
transaction, and the claim's index holds only pending heads: a claim costs the same with a million finished jobs,
or thousands of due jobs waiting behind one whose retry is not due, as with ten. The schema is versioned
(`jobs.store.sqlite_schema`); opening a file upgrades it.

A process writes through one connection, one write at a time; the runner's writes that its threads make at the
same moment share a transaction and its commit (`_write`), and the log is copied into the file outside the write
lock (`_checkpoint_now_and_then`): a small write costs mostly its commit, and the checkpoint's sync to disk.
"""

from __future__ import annotations

import builtins
import dataclasses
import functools
import itertools
import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from config.text import shown
from jobs import kinds
from jobs.kinds import Kind
from jobs.kinds.tagging import raw_tags
from jobs.model import Attempt, Job, JobRequest, JobStatus, Origin, Target, TargetKind
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
from jobs.store.sqlite_schema import upgrade

INSERT_JOB = """
INSERT INTO jobs (seq, id, kind, target_kind, target_id, payload, raw, request_id, origin, batch_id, status,
                  created_at, updated_at, next_attempt_at, head)
VALUES (:seq, :id, :kind, :target_kind, :target_id, :payload, :raw, :request_id, :origin, :batch_id, 'pending', :now,
        :now, :now, :head)
"""  # seq NULL: the next one
# INSERT_JOB for an import's rows, bound by position (`_imported_row`): a row costs less to bind than by name.
INSERT_IMPORTED = """
INSERT INTO jobs (seq, id, kind, target_kind, target_id, payload, raw, request_id, origin, batch_id, status,
                  created_at, updated_at, next_attempt_at, head)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 'pending', ?11, ?11, ?11, ?12)
"""
# Rows written (about as many pages) between two checkpoints of the log; SQLite's own default is 1,000 pages.
CHECKPOINT_ROWS = 1000
# Rows of an import go in chunks of this many: large enough that each statement's overhead is spread thin.
IMPORT_CHUNK = 500
# The page cache of an import's transaction, in KiB (SQLite's default is 2,000). A new job lands at a random place
# of the index of job ids and at its record's place in two more, so a million-row import writes to pages all over
# them: with the default, most of those pages are spilled to the log and read back again and again. A bound, so
# the memory an import holds does not grow with the file.
IMPORT_CACHE_KIB = 32 * 1024
# Keys an import remembers as held by an unfinished job (about 100 bytes each), so as not to look them up again.
IMPORT_HELD_KEYS = 20_000
INSERT_KEY = "INSERT OR IGNORE INTO open_keys (key, seq) VALUES (?, ?)"
# Which of some keys (a JSON list) an unfinished job holds: a new job is a head unless one does, since every
# unfinished job came before it. One look per key, however many jobs wait on it (DISTINCT read every one).
OPEN_AMONG = ("SELECT json_each.value FROM json_each(?) "
              "WHERE EXISTS (SELECT 1 FROM open_keys WHERE open_keys.key = json_each.value)")

# Whether the job `jobs.seq` is at the head of its keys. A running job it shares a key with can only be a later
# one (an earlier one is unfinished): it is looked for among the running jobs created after it, which are few,
# never among the jobs waiting behind its keys, which a long queue on one key makes many. Mostly there are none:
# only a failed job retried by hand comes before a running job of its key.
HEAD = """(
    NOT EXISTS (SELECT 1 FROM open_keys mine
                JOIN open_keys earlier ON earlier.key = mine.key AND earlier.seq < mine.seq
                WHERE mine.seq = jobs.seq)
    AND NOT EXISTS (SELECT 1 FROM jobs running INDEXED BY jobs_status
                    JOIN open_keys theirs ON theirs.seq = running.seq
                    JOIN open_keys mine ON mine.key = theirs.key AND mine.seq = jobs.seq
                    WHERE running.status = 'running' AND running.seq > jobs.seq)
)"""
# Only the first unfinished job on a key can become a head when a job on it finishes or stops running (every other
# one has an earlier job on that key): these refresh the first job on the keys given, or on a job's own keys.
REFRESH_FIRST = f"UPDATE jobs SET head = {HEAD} WHERE seq = (SELECT min(seq) FROM open_keys WHERE key = ?)"
REFRESH_FIRSTS_OF = f"""
UPDATE jobs SET head = {HEAD}
WHERE seq IN (SELECT (SELECT min(first.seq) FROM open_keys first WHERE first.key = mine.key)
              FROM open_keys mine WHERE mine.seq = ?)
"""
REFRESH = f"UPDATE jobs SET head = {HEAD} WHERE seq = ?"
# A failed job retried by hand comes before the jobs queued on its keys since: the first of each is a head no more.
BEHIND = "UPDATE jobs SET head = 0 WHERE seq = (SELECT min(seq) FROM open_keys WHERE key = ? AND seq > ?) AND head = 1"

# Leases that ran out: the runner that held them died or hung. Recorded as an attempt, then pending again.
EXPIRED_LEASES = """
SELECT seq, id, lease_owner FROM jobs INDEXED BY jobs_status WHERE status = 'running' AND lease_expires_at < :now
"""
REQUEUE_EXPIRED = """
UPDATE jobs SET status = 'pending', lease_owner = NULL, lease_expires_at = NULL, next_attempt_at = :now,
                updated_at = :now
WHERE status = 'running' AND lease_expires_at < :now
"""

CLAIM = """
UPDATE jobs SET status = 'running', lease_owner = :owner, lease_expires_at = :expires, updated_at = :now
WHERE seq IN (
    SELECT j.seq FROM jobs j INDEXED BY jobs_ready  -- else the planner may pick jobs_status and sort every pending job
    WHERE j.status = 'pending' AND j.head = 1 AND j.next_attempt_at <= :now
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

# The final attempt, when the outcome brings one, is counted here: one statement for the lease check and the count.
FINISH = """
UPDATE jobs SET status = :status, attempts = attempts + :counted, result_code = :result_code, message = :message,
                http_status = :http_status,
                next_attempt_at = :next_attempt_at, lease_owner = NULL, lease_expires_at = NULL, updated_at = :now,
                posted_at = CASE WHEN :posted THEN coalesce(posted_at, :now) ELSE posted_at END,
                applied_at = CASE WHEN :applied THEN coalesce(applied_at, :now) ELSE applied_at END
WHERE id = :id AND status = 'running' AND lease_owner = :owner
RETURNING seq
"""
CLOSE_KEYS = "DELETE FROM open_keys WHERE seq = ? RETURNING key"
INSERT_ENTRY = """
INSERT OR IGNORE INTO entries (stream, key, job_id, at, data, uniq) VALUES (:stream, :key, :job_id, :at, :data, :uniq)
"""

RELEASE = """
UPDATE jobs SET status = :status, lease_owner = :lease_owner, lease_expires_at = :lease_expires_at, updated_at = :now
WHERE id = :id AND status = 'running' AND lease_owner = :owner
RETURNING seq
"""

RETRY = """
UPDATE jobs SET status = :status, next_attempt_at = :next_attempt_at, updated_at = :next_attempt_at,
                attempts = :attempts, result_code = :result_code, message = :message, http_status = :http_status,
                score_before = :score_before
WHERE status = 'failed' AND (:id IS NULL OR id = :id)
RETURNING *
"""

CANCEL = """
UPDATE jobs SET status = :status, result_code = :result_code, message = :message, updated_at = :now
WHERE id = :id AND status = 'pending'
RETURNING seq
"""
AUDIT = "INSERT INTO audit (job_id, at, action, who, via) VALUES (?, ?, ?, ?, ?)"

COUNTS = """
SELECT CASE WHEN status = 'pending' AND attempts > 0 THEN 'retrying' ELSE status END AS s, count(*)
FROM jobs GROUP BY s
"""
# Finished jobs by the time of their outcome: `updated_at` is the finish for a job that stays finished.
FINISHED_SINCE = """
SELECT result_code, count(*) FROM jobs INDEXED BY jobs_finished
WHERE status IN ('succeeded', 'failed') AND updated_at >= ? GROUP BY result_code
"""
FAILED_ATTEMPTS_SINCE = """
SELECT j.kind, a.result_code, count(*) FROM attempts a JOIN jobs j ON j.id = a.job_id
WHERE a.started_at >= ? AND a.outcome != 'succeeded' GROUP BY j.kind, a.result_code
"""
HEARTBEAT = """
INSERT INTO runners (owner, seen_at) VALUES (?, ?) ON CONFLICT (owner) DO UPDATE SET seen_at = excluded.seen_at
"""
# When the next job can run: a pending job that waits behind an earlier unfinished job on its key cannot run at
# its own next_attempt_at (long past, often), only after that job; it must not make the queue look due now.
NEXT_DUE = "SELECT min(next_attempt_at) FROM jobs INDEXED BY jobs_ready WHERE status = 'pending' AND head = 1"


_T = TypeVar("_T")


class _Write:
    """A write waiting for the lock, and, once run, what came of it."""

    __slots__ = ("done", "error", "result", "work")

    def __init__(self, work: Callable[[sqlite3.Connection], Any]) -> None:
        self.work = work
        self.done = False
        self.result: Any = None
        self.error: BaseException | None = None


class SqliteJobStore:
    """The job store of the embedded default. Thread-safe: reads on a connection per thread, writes serialised on
    one connection of their own."""

    name = "sqlite"
    atomic_batches = True

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
        self._writer = threading.Lock()
        self._waiting: builtins.list[_Write] = []
        self._write_conn: sqlite3.Connection | None = None
        self._checkpointing = threading.Lock()
        self._checkpointed = 0  # the write connection's count of changed rows at the last checkpoint
        conn = self._conn()
        conn.execute("PRAGMA journal_mode=WAL")
        self.upgraded_from = upgrade(conn, self.path)

    def _conn(self) -> sqlite3.Connection:
        """This thread's connection, for reads."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    def _writing(self) -> sqlite3.Connection:
        """The connection every write of this process goes through; the caller holds the write lock. One for all
        threads: a connection drops its page cache when it finds the file changed by another one, so writes that
        took turns on each thread's own connection would each start by reading their pages again."""
        if self._write_conn is None:
            self._write_conn = self._connect()
            self._write_conn.execute("PRAGMA wal_autocheckpoint=0")  # see _checkpoint_now_and_then
            self._checkpointed = 0
        return self._write_conn

    def _checkpoint_now_and_then(self) -> None:
        """Copy the log into the database file once enough was written, outside the write lock. SQLite's own
        checkpoint runs inside the commit that crosses its threshold, and so, syncing the file to disk, holds up
        every write of the process; a passive one here runs beside the next writes."""
        conn = self._write_conn
        if conn is None or conn.total_changes - self._checkpointed < CHECKPOINT_ROWS:
            return
        if not self._checkpointing.acquire(blocking=False):
            return  # another thread is at it
        try:
            self._checkpointed = conn.total_changes
            self._conn().execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.OperationalError:
            pass  # the file is busy (another process checkpoints, or is being backed up): next time
        finally:
            self._checkpointing.release()

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN ourselves, so that writers take the lock up front (IMMEDIATE).
        conn = sqlite3.connect(self.path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False)
        conn.row_factory = sqlite3.Row
        conn.create_function("names_tag", 3, _names_tag, deterministic=True)
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(f"PRAGMA busy_timeout={int(self._busy_timeout * 1000)}")
        with self._lock:
            self._connections.append(conn)
        return conn

    @contextmanager
    def atomic(self) -> Iterator[sqlite3.Connection]:
        """One write transaction. A file that stays locked (a backup, a `sqlite3` shell) or cannot be written
        (a full disk) is StoreUnavailable: the runner treats it like any job store that does not answer."""
        # Threads of this process queue on a lock of their own, woken the moment it is free; left to SQLite, each
        # would sleep in its busy handler (1 ms, 2 ms, ... 100 ms) and wake late. Other processes still meet the
        # busy timeout.
        if not self._writer.acquire(timeout=self._busy_timeout):
            raise StoreUnavailable(f"The job store {self.path} is busy: another write of this process held it "
                                   f"for {self._busy_timeout:g} s.")
        try:
            conn = self._writing()
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
                    raise StoreUnavailable(f"The job store {self.path} is busy or cannot be written ({exc}).") \
                        from exc
                raise
        finally:
            self._writer.release()
        self._checkpoint_now_and_then()

    def _write(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run `work` as one write, all or nothing, durable when this returns: the runner's calls.

        Writes that this process's threads make at the same moment share a transaction and its commit (one that
        fails is undone alone): writing the changed pages to the log is most of what a small write costs, and
        writes made together change many of the same pages. Whoever takes the write lock runs every write waiting
        by then, its own among them."""
        mine = _Write(work)
        with self._lock:
            self._waiting.append(mine)
        if not self._writer.acquire(timeout=self._busy_timeout):
            with self._lock:
                if mine in self._waiting:
                    self._waiting.remove(mine)
                    raise StoreUnavailable(f"The job store {self.path} is busy: another write of this process "
                                           f"held it for {self._busy_timeout:g} s.")
            self._writer.acquire()  # the write holding the lock runs this one too: it ends, one way or another
        try:
            if not mine.done:
                self._run_waiting()
        finally:
            self._writer.release()
        self._checkpoint_now_and_then()
        if mine.error is not None:
            raise mine.error
        return mine.result

    def _run_waiting(self) -> None:
        """Run the writes waiting for the lock in one transaction; the caller holds the write lock.

        A write that raises (a lost lease, mostly: rare) is undone with the whole transaction, and the others run
        again without it: cheaper than a savepoint around every write, which would cost two statements each."""
        with self._lock:
            group, self._waiting = self._waiting, []
        conn = self._writing()
        try:
            todo = group
            while todo:
                conn.execute("BEGIN IMMEDIATE")
                for write in todo:
                    try:
                        write.result = write.work(conn)
                    except sqlite3.OperationalError:
                        raise  # the file is at fault, not this write: the transaction cannot go on
                    except Exception as exc:
                        write.error = exc
                        conn.execute("ROLLBACK")
                        break
                else:
                    conn.execute("COMMIT")
                    break
                todo = [write for write in todo if write.error is None]
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            # Nothing of the group is kept. A file that is locked or cannot be written is StoreUnavailable, as in
            # `atomic`; an interrupt is raised here, in the thread it came to, and ends the others' writes too.
            failure: BaseException = exc
            if isinstance(exc, sqlite3.OperationalError) or not isinstance(exc, Exception):
                failure = StoreUnavailable(f"The job store {self.path} is busy or cannot be written ({exc}).")
                failure.__cause__ = exc
            for write in group:
                write.error = write.error or failure
            if not isinstance(exc, Exception):
                raise
        finally:
            for write in group:
                write.done = True

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()
        self._write_conn = None

    # --- what people do -------------------------------------------------------------------------------------

    def add(self, requests: Sequence[JobRequest]) -> builtins.list[Job]:
        with self.atomic() as db:
            slots, first_new = self._add(db, requests, self._clock())
            if not slots:
                return []
            # New rows are consecutive under the write lock: one read for them, and one per earlier job named.
            rows = {}
            if first_new is not None:
                rows = {row["seq"]: row for row in db.execute("SELECT * FROM jobs WHERE seq >= ?", (first_new,))}
            for seq in slots:
                if seq not in rows:
                    rows[seq] = db.execute("SELECT * FROM jobs WHERE seq = ?", (seq,)).fetchone()
            return [_job_from_row(rows[seq]) for seq in slots]

    def _add(self, db: sqlite3.Connection, requests: Sequence[JobRequest],
             now: float) -> tuple[builtins.list[int], int | None]:
        """Insert the requests not stored yet: the seq of each request's job, new or already stored, and the
        first new seq."""
        slots: builtins.list[int] = []
        known: dict[str, int] = {}
        first_new = None
        for request in requests:
            if request.request_id is not None:
                seq = known.get(request.request_id) or self._seq_of_request(db, request.request_id)
                if seq is not None:
                    slots.append(seq)
                    continue
            seq = self._insert(db, kinds.raw_of(request), request, now)
            first_new = first_new or seq
            if request.request_id is not None:
                known[request.request_id] = seq
            slots.append(seq)
        return slots, first_new

    @staticmethod
    def _seq_of_request(db: sqlite3.Connection, request_id: str) -> int | None:
        row = db.execute("SELECT seq FROM jobs WHERE request_id = ?", (request_id,)).fetchone()
        return int(row[0]) if row else None

    @staticmethod
    def _insert(db: sqlite3.Connection, raw: dict[str, Any], request: JobRequest | None, now: float) -> int:
        # Invalid input has no keys to wait on: it fails without touching anything.
        keys = request.keys if request else []
        seq = db.execute(INSERT_JOB, _insert_args(raw, request, now, head=not _open_among(db, keys))).lastrowid
        assert seq is not None
        db.executemany(INSERT_KEY, [(key, seq) for key in keys])
        return seq

    @staticmethod
    def _close(db: sqlite3.Connection, seq: int) -> None:
        """The job `seq` is finished: it leaves its keys, and the first job left on each may be a head now."""
        keys = [(row[0],) for row in db.execute(CLOSE_KEYS, (seq,))]
        db.executemany(REFRESH_FIRST, keys)

    @staticmethod
    def _reopen(db: sqlite3.Connection, row: sqlite3.Row) -> None:
        """A failed job retried by hand is unfinished again, before every job queued on its keys since."""
        seq = row["seq"]
        keys = semantics.keys_of(_job_from_row(row))
        db.executemany(INSERT_KEY, [(key, seq) for key in keys])
        db.executemany(BEHIND, [(key, seq) for key in keys])
        db.execute(REFRESH, (seq,))

    def add_batch(self, batch: Batch, requests: BatchRows) -> Batch:
        """One transaction however long the file: a runner on the same file waits for it (its writes are
        retried), and an interrupted import leaves nothing. Rows are inserted as they are read, a chunk at a time
        with `executemany`, so memory stays flat; SQLite spills the transaction's pages to the write-ahead log."""
        now = self._clock()
        queued = already = 0
        # Keys an unfinished job holds, as far as this import knows: under its write lock no job finishes, so a key
        # once held stays held, and only keys not met yet are looked up. Forgotten past a bound, to keep memory flat.
        held: set[str] = set()
        with self.atomic() as db, _page_cache(db, IMPORT_CACHE_KIB):
            # Under the write lock nobody else inserts: seqs can be given out here, and rows inserted in bulk.
            next_seq = 1 + int(db.execute(
                "SELECT max(coalesce((SELECT max(seq) FROM jobs), 0), "
                "coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'jobs'), 0))").fetchone()[0])
            for chunk in _chunks(requests, IMPORT_CHUNK):
                new = self._not_stored(db, chunk)
                already += len(chunk) - len(new)
                keys = [request.keys for request in new]
                if len(held) > IMPORT_HELD_KEYS:
                    held.clear()
                held.update(_open_among(db, builtins.list({key for row_keys in keys for key in row_keys} - held)))
                # A row is a head unless an unfinished job holds one of its keys: one stored, or an earlier row.
                heads = []
                for row_keys in keys:
                    heads.append(held.isdisjoint(row_keys))
                    held.update(row_keys)
                seqs = range(next_seq, next_seq + len(new))
                db.executemany(INSERT_IMPORTED, map(_imported_row, seqs, _job_ids(len(new)), new, heads,
                                                    itertools.repeat(now)))
                db.executemany(INSERT_KEY, [(key, seq) for seq, row_keys in zip(seqs, keys, strict=True)
                                            for key in row_keys])
                next_seq += len(new)
                queued += len(new)
            kept = dataclasses.replace(batch, at=now, rows=requests.rows, invalid=requests.invalid, queued=queued,
                                       already=already)
            db.execute(INSERT_ENTRY, _entry_args(kept.record(), "", now))
        return kept

    @staticmethod
    def _not_stored(db: sqlite3.Connection, chunk: Sequence[JobRequest]) -> builtins.list[JobRequest]:
        """The requests whose request id is neither stored (earlier chunks included) nor earlier in the chunk."""
        wanted = [r.request_id for r in chunk if r.request_id is not None]
        seen: set[str] = set()
        if wanted:
            marks = ", ".join("?" * len(wanted))
            seen = {row[0] for row in db.execute(f"SELECT request_id FROM jobs WHERE request_id IN ({marks})",
                                                 wanted)}
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
            # Input that happens to be valid is kept and ordered like any other job.
            seq = self._insert(db, raw, kinds.try_request(raw), self._clock())
            return _job_from_row(db.execute("SELECT * FROM jobs WHERE seq = ?", (seq,)).fetchone())

    def keep(self, records: Sequence[Record]) -> None:
        now = self._clock()
        with self.atomic() as db:
            db.executemany(INSERT_ENTRY, [_entry_args(record, "", now) for record in records])

    def retry(self, job_id: str | None, by: Actor) -> builtins.list[str]:
        now = self._clock()
        with self.atomic() as db:
            if job_id is not None:
                self._check(db, job_id, "retry", semantics.RETRYABLE)
            rows = db.execute(RETRY, {**_bound(semantics.retried(now)), "id": job_id}).fetchall()
            for row in rows:
                self._reopen(db, row)
                db.execute(AUDIT, (row["id"], now, "retry", by.who, by.via))
        return [row["id"] for row in rows]

    def cancel(self, job_id: str, by: Actor) -> Job:
        now = self._clock()
        with self.atomic() as db:
            self._check(db, job_id, "cancel", semantics.CANCELLABLE)
            tried = db.execute("SELECT count(*) FROM attempts WHERE job_id = ?", (job_id,)).fetchone()[0]
            row = db.execute(CANCEL, {**_bound(semantics.cancelled(tried)), "now": now, "id": job_id}).fetchone()
            self._close(db, row["seq"])
            db.execute(AUDIT, (job_id, now, "cancel", by.who, by.via))
        return self.get(job_id)

    def cancel_where(self, query: JobFilter, by: Actor) -> builtins.list[str]:
        if query.status not in (None, "pending", "retrying"):
            return []  # only pending jobs can be cancelled
        now = self._clock()
        where, args = _where(dataclasses.replace(query, status=query.status or "pending", after=None))
        with self.atomic() as db:
            rows = db.execute(f"SELECT seq, id FROM jobs {where} ORDER BY seq", args).fetchall()
            for seq, job_id in rows:
                tried = db.execute("SELECT count(*) FROM attempts WHERE job_id = ?", (job_id,)).fetchone()[0]
                db.execute(CANCEL, {**_bound(semantics.cancelled(tried)), "now": now, "id": job_id}).fetchall()
                self._close(db, seq)
                db.execute(AUDIT, (job_id, now, "cancel", by.who, by.via))
        return [row["id"] for row in rows]

    def retry_where(self, query: JobFilter, by: Actor) -> builtins.list[str]:
        if query.status not in (None, "failed"):
            return []  # only failed jobs can be retried
        now = self._clock()
        where, args = _where(dataclasses.replace(query, status="failed", after=None))
        with self.atomic() as db:
            found = [row[0] for row in db.execute(f"SELECT id FROM jobs {where} ORDER BY seq", args)]
            for job_id in found:
                for row in db.execute(RETRY, {**_bound(semantics.retried(now)), "id": job_id}).fetchall():
                    self._reopen(db, row)
                    db.execute(AUDIT, (row["id"], now, "retry", by.who, by.via))
        return found

    def _check(self, db: sqlite3.Connection, job_id: str, action: str, allowed: frozenset[JobStatus]) -> None:
        row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFound(job_id)
        job = _job_from_row(row)
        if job.status not in allowed:
            raise NotAllowed(semantics.refusal(action, job))

    # --- what readers ask -----------------------------------------------------------------------------------

    def get(self, job_id: str) -> Job:
        row = self._conn().execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFound(job_id)
        return _job_from_row(row)

    def list(self, query: JobFilter) -> Page:
        where, args = _where(query)
        # One row more than asked tells whether a page follows.
        sql = f"SELECT * FROM jobs {where} ORDER BY seq DESC LIMIT {int(query.limit) + 1}"
        rows = self._conn().execute(sql, args).fetchall()
        more = len(rows) > query.limit
        rows = rows[: query.limit]
        return Page([_job_from_row(row) for row in rows], str(rows[-1]["seq"]) if more and rows else None)

    def attempts(self, job_id: str) -> builtins.list[Attempt]:
        rows = self._conn().execute("SELECT * FROM attempts WHERE job_id = ? ORDER BY number", (job_id,))
        return [Attempt(**dict(row)) for row in rows]

    def audit(self, job_id: str) -> builtins.list[AuditEntry]:
        rows = self._conn().execute(
            "SELECT job_id, at, action, who, via FROM audit WHERE job_id = ? ORDER BY id", (job_id,))
        return [AuditEntry(**dict(row)) for row in rows]

    def entries(self, stream: str, key: str | None = None) -> builtins.list[Entry]:
        sql, args = "SELECT * FROM entries WHERE stream = ?", [stream]
        if key is not None:
            sql += " AND key = ?"
            args.append(key)
        rows = self._conn().execute(sql + " ORDER BY id", args)
        return [Entry(stream=row["stream"], key=row["key"], data=json.loads(row["data"]), job_id=row["job_id"],
                      at=row["at"]) for row in rows]

    def counts(self) -> dict[str, int]:
        return {row[0]: row[1] for row in self._conn().execute(COUNTS)}

    def oldest_pending(self) -> Job | None:
        row = self._conn().execute(
            "SELECT * FROM jobs INDEXED BY jobs_status WHERE status = 'pending' ORDER BY seq LIMIT 1").fetchone()
        return _job_from_row(row) if row else None

    def finished_since(self, since: float) -> dict[str, int]:
        rows = self._conn().execute(FINISHED_SINCE, (since,))
        return {row[0] or "": row[1] for row in rows}

    def failed_attempts_since(self, since: float) -> dict[tuple[str, str], int]:
        rows = self._conn().execute(FAILED_ATTEMPTS_SINCE, (since,))
        return {(row[0], row[1] or ""): row[2] for row in rows}

    def heartbeat(self, owner: str) -> None:
        seen = (owner, self._clock())
        self._write(lambda db: db.execute(HEARTBEAT, seen))

    def runners(self, since: float) -> builtins.list[RunnerSeen]:
        rows = self._conn().execute("SELECT owner, seen_at FROM runners WHERE seen_at >= ? ORDER BY seen_at DESC",
                                    (since,))
        return [RunnerSeen(row[0], row[1]) for row in rows]

    def waiting(self) -> tuple[int, float | None]:
        conn = self._conn()
        retrying = conn.execute("SELECT count(*) FROM jobs WHERE status = 'pending' AND attempts > 0").fetchone()[0]
        if not retrying:
            return 0, None
        value = conn.execute(NEXT_DUE).fetchone()[0]
        return int(retrying), float(value) if value is not None else None

    # --- the runner's side ----------------------------------------------------------------------------------

    def claim(self, owner: str, limit: int, lease_seconds: float) -> builtins.list[Job]:
        now = self._clock()

        def claim(db: sqlite3.Connection) -> builtins.list[sqlite3.Row]:
            expired = db.execute(EXPIRED_LEASES, {"now": now}).fetchall()
            for row in expired:
                attempt = semantics.expired_attempt(row["id"], row["lease_owner"], now)
                db.execute(RECORD_ATTEMPT, _attempt_args(attempt))
                db.execute("UPDATE jobs SET attempts = attempts + 1 WHERE id = ?", (row["id"],))
            if expired:
                db.execute(REQUEUE_EXPIRED, {"now": now})
                # Not running any more: a job retried by hand that waited for one of them may be a head again.
                db.executemany(REFRESH_FIRSTS_OF, [(row["seq"],) for row in expired])
            return db.execute(
                CLAIM, {"owner": owner, "expires": now + lease_seconds, "now": now, "limit": limit}
            ).fetchall()

        # The rows become jobs after the write: no other write waits for that.
        return sorted((_job_from_row(row) for row in self._write(claim)), key=lambda j: j.created_at)

    def renew(self, owner: str, job_ids: Sequence[str], lease_seconds: float) -> builtins.list[str]:
        expires = self._clock() + lease_seconds

        def renew(db: sqlite3.Connection) -> builtins.list[str]:
            return [job_id for job_id in job_ids
                    if db.execute(RENEW, {"expires": expires, "id": job_id, "owner": owner}).rowcount == 0]

        return self._write(renew)

    def record_attempt(self, owner: str, attempt: Attempt) -> None:
        now = self._clock()

        def record(db: sqlite3.Connection) -> None:
            if not db.execute(COUNT_ATTEMPT, {"now": now, "job_id": attempt.job_id, "owner": owner}).rowcount:
                raise LeaseLost(f"Job {attempt.job_id} is no longer held by {owner}.")
            db.execute(RECORD_ATTEMPT, _attempt_args(attempt))

        self._write(record)

    def save_progress(
        self, owner: str, job_id: str, *, score_before: int | None = None, applied: bool = False,
        posted: bool = False, effects: Effects | None = None,
    ) -> None:
        now = self._clock()
        sets, args = ["updated_at = :now"], {"now": now, "id": job_id, "owner": owner}
        if score_before is not None:
            sets.append("score_before = :score_before")
            args["score_before"] = score_before
        if applied:
            sets.append("applied_at = coalesce(applied_at, :now)")
        if posted:
            sets.append("posted_at = coalesce(posted_at, :now)")
        sql = f"UPDATE jobs SET {', '.join(sets)} WHERE id = :id AND status = 'running' AND lease_owner = :owner"
        keep = self._keeping(job_id, effects, now)

        def save(db: sqlite3.Connection) -> None:
            if db.execute(sql, args).rowcount == 0:
                raise LeaseLost(f"Job {job_id} is no longer held by {owner}.")
            keep(db)

        self._write(save)

    def _keeping(self, job_id: str, effects: Effects | None, now: float) -> Callable[[sqlite3.Connection], None]:
        """What writes the effects of the job's applied change in a write: their records' rows are made here,
        before the write lock is taken, so that the lock is held for the statements alone."""
        entries = [_entry_args(record, job_id, now) for record in effects.records] if effects else []

        def keep(db: sqlite3.Connection) -> None:
            if entries:
                db.executemany(INSERT_ENTRY, entries)
            if effects and effects.jobs:
                self._add(db, effects.jobs, now)

        return keep

    def finish(self, owner: str, job_id: str, outcome: Outcome) -> None:
        now = self._clock()
        args = {
            "status": outcome.status.value, "result_code": outcome.result_code, "message": outcome.message,
            "http_status": outcome.http_status,
            "next_attempt_at": outcome.next_attempt_at if outcome.next_attempt_at is not None else now,
            "now": now, "id": job_id, "owner": owner, "posted": outcome.posted, "applied": outcome.applied,
            "counted": 0 if outcome.attempt is None else 1,
        }
        attempt = None if outcome.attempt is None else _attempt_args(outcome.attempt)
        keep = self._keeping(job_id, outcome.effects, now)

        def finish(db: sqlite3.Connection) -> None:
            row = db.execute(FINISH, args).fetchone()
            if row is None:
                raise LeaseLost(f"Job {job_id} is no longer held by {owner}.")
            if attempt is not None:
                db.execute(RECORD_ATTEMPT, attempt)
            keep(db)
            if outcome.status.finished:
                self._close(db, row[0])
            else:
                db.execute(REFRESH_FIRSTS_OF, (row[0],))

        self._write(finish)

    def release(self, owner: str, job_id: str) -> None:
        args = {**_bound(semantics.released()), "now": self._clock(), "id": job_id, "owner": owner}

        def release(db: sqlite3.Connection) -> None:
            row = db.execute(RELEASE, args).fetchone()
            if row is not None:
                db.execute(REFRESH_FIRSTS_OF, (row[0],))

        self._write(release)


def _insert_args(raw: dict[str, Any], request: JobRequest | None, now: float, seq: int | None = None,
                 head: bool = True) -> dict[str, Any]:
    """The values of a new job's row, from its input as given and (when valid) its request."""
    target = request.target if request else None
    return {
        "seq": seq,
        "id": uuid.uuid4().hex[:12],
        "kind": request.kind.name if request else str(raw.get("operation", "")),
        "target_kind": target.kind.value if target else raw.get("target_kind"),
        "target_id": target.id if target else raw.get("target_id"),
        "payload": json.dumps(kinds.payload_json(request)) if request else None,
        "raw": json.dumps(raw),
        "request_id": request.request_id if request else None,
        "origin": _origin_json(request.origin.to_json() if request else raw.get("origin")),
        "batch_id": request.origin.batch if request else None,
        "now": now,
        "head": head,
    }


def _imported_row(seq: int, job_id: str, request: JobRequest, head: bool, now: float) -> tuple[Any, ...]:
    """INSERT_IMPORTED's values for a request of an import: what `_insert_args` gives for it, by position."""
    target = request.target
    return (seq, job_id, request.kind.name, target.kind.value if target else None, target.id if target else None,
            json.dumps(kinds.payload_json(request)), json.dumps(kinds.raw_of(request)), request.request_id,
            _origin_column(request.origin), request.origin.batch, now, head)


@functools.lru_cache(maxsize=64)
def _origin_column(origin: Origin) -> str | None:
    """An origin's JSON: the same for every row of an import, written once."""
    return _origin_json(origin.to_json())


def _job_ids(count: int) -> builtins.list[str]:
    """New job ids, as `_insert_args` makes them (12 random hex digits), from one read of random bytes."""
    digits = os.urandom(6 * count).hex()
    return [digits[at:at + 12] for at in range(0, 12 * count, 12)]


@contextmanager
def _page_cache(db: sqlite3.Connection, kib: int) -> Iterator[None]:
    """The connection's page cache at `kib` KiB for the block, then as it was."""
    before = int(db.execute("PRAGMA cache_size").fetchone()[0])
    db.execute(f"PRAGMA cache_size = -{int(kib)}")
    try:
        yield
    finally:
        db.execute(f"PRAGMA cache_size = {before}")


def _open_among(db: sqlite3.Connection, keys: Sequence[str]) -> set[str]:
    """Those of `keys` that an unfinished job holds."""
    if not keys:
        return set()
    return {row[0] for row in db.execute(OPEN_AMONG, (json.dumps(keys),))}


def _chunks(items: Iterable[JobRequest], size: int) -> Iterator[builtins.list[JobRequest]]:
    iterator = iter(items)
    while chunk := builtins.list(itertools.islice(iterator, size)):
        yield chunk


def _where(query: JobFilter) -> tuple[str, builtins.list[Any]]:
    """The WHERE clause of a filter: fixed strings, with the values bound."""
    clauses: builtins.list[str] = []
    args: builtins.list[Any] = []
    if query.status == "retrying":
        clauses.append("status = 'pending' AND attempts > 0")
    elif query.status is not None:
        clauses.append("status = ?")
        args.append(str(query.status))
    for clause, value in (("target_id = ?", query.target_id), ("created_at >= ?", query.since),
                          ("batch_id = ?", query.batch), ("kind = ?", query.operation),
                          ("result_code = ?", query.result_code)):
        if value is not None:
            clauses.append(clause)
            args.append(value)
    if query.request_ids:
        clauses.append(f"request_id IN ({', '.join('?' * len(query.request_ids))})")
        args.extend(query.request_ids)
    if query.tag is not None:
        if query.tag.isascii():
            # A cheap look at the JSON first; JSON escapes other characters, so it only helps with ASCII.
            clauses.append("instr(lower(coalesce(payload, raw)), lower(?)) > 0")
            # As the JSON spells it: a quote or a backslash in a tag is escaped there.
            args.append(json.dumps(query.tag.strip())[1:-1])
        clauses.append("names_tag(payload, raw, ?)")
        args.append(query.tag)
    if query.text is not None:
        clauses.append("(instr(lower(message), lower(?)) > 0 OR id = ?)")
        args.extend([query.text, query.text.strip()])
    if query.after is not None:
        clauses.append("seq < ?")
        args.append(_cursor_seq(query.after))
    return (f"WHERE {' AND '.join(clauses)}" if clauses else ""), args


def _names_tag(payload: str | None, raw: str, tag: str) -> bool:
    """Whether a row names `tag` (`semantics.tag_among`, case ignored): the payload's tags, or the tags of input
    that is not valid, as given. What `JobFilter.tag` finds."""
    if payload is not None:
        tags = json.loads(payload).get("tags") or []
    else:
        given = json.loads(raw)
        tags = raw_tags(given.get("tags", given.get("tag")) if isinstance(given, dict) else None)
    return semantics.tag_among(tags, tag)


def _bound(fields: dict[str, Any]) -> dict[str, Any]:
    """Field values as SQL parameters: statuses by their value."""
    return {name: value.value if isinstance(value, JobStatus) else value for name, value in fields.items()}


def _attempt_args(attempt: Attempt) -> dict[str, Any]:
    """An attempt as RECORD_ATTEMPT's parameters (the statement numbers it)."""
    return {"job_id": attempt.job_id, "started_at": attempt.started_at, "ended_at": attempt.ended_at,
            "outcome": attempt.outcome, "result_code": attempt.result_code, "http_status": attempt.http_status,
            "message": attempt.message}


def _entry_args(record: Record, job_id: str, at: float) -> dict[str, Any]:
    return {"stream": record.stream, "key": record.key, "job_id": job_id, "at": at,
            "data": json.dumps(record.data), "uniq": record.unique}


def _origin_json(origin: object) -> str | None:
    return json.dumps(origin) if origin else None


def _cursor_seq(cursor: str) -> int:
    """A cursor is a job's seq: a positive 64-bit integer (SQLite's and PostgreSQL's), and nothing else."""
    try:
        seq = int(cursor)
    except ValueError:
        seq = 0
    if not 0 < seq < 2**63:
        raise NotAllowed(f"The page cursor {shown(cursor)} is not one this store gave out.")
    return seq


_TARGET_KINDS = {kind.value: kind for kind in TargetKind}


def _target_of_row(row: sqlite3.Row) -> Target | None:
    kind = _TARGET_KINDS.get(row["target_kind"])
    if row["target_id"] is None or kind is None:
        return None
    return Target.model_construct(kind=kind, id=row["target_id"])


def _request_of_row(row: sqlite3.Row) -> JobRequest | None:
    """The request a row keeps, as `kinds.stored_request` reads it, with each payload validated once: a queue holds
    the same few payloads over and over (one tag and score for thousands of records)."""
    kind = {kind.name: kind for kind in kinds.all_kinds()}.get(row["kind"])
    if kind is None or row["payload"] is None:
        return None
    validated = _validated(row["kind"], row["payload"])
    if validated is None or validated[0] is not kind:
        # Not valid, or validated for a kind of that name that is no longer the one registered (tests swap kinds).
        validated = _validated.__wrapped__(row["kind"], row["payload"])
        if validated is None:
            return None
    return JobRequest(kind=kind, target=_target_of_row(row), payload=validated[1], request_id=row["request_id"],
                      origin=Origin.from_json(json.loads(row["origin"]) if row["origin"] else None))


@functools.lru_cache(maxsize=4096)
def _validated(kind_name: str, payload: str) -> tuple[Kind, Any] | None:
    """A stored payload validated, with its kind; None when not valid. Payloads are frozen models: the jobs that
    read the same one can share it."""
    request = kinds.stored_request(kind_name, None, json.loads(payload), None)
    return None if request is None else (request.kind, request.payload)


def _job_from_row(row: sqlite3.Row) -> Job:
    request = _request_of_row(row)
    return Job(
        id=row["id"], request=request, raw=json.loads(row["raw"]), status=JobStatus(row["status"]),
        created_at=row["created_at"], updated_at=row["updated_at"], next_attempt_at=row["next_attempt_at"],
        attempts=row["attempts"], result_code=row["result_code"], message=row["message"],
        http_status=row["http_status"], lease_owner=row["lease_owner"], lease_expires_at=row["lease_expires_at"],
        applied_at=row["applied_at"], posted_at=row["posted_at"], score_before=row["score_before"],
        request_id=row["request_id"],
    )
