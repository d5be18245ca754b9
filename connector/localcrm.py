"""The CRM of the embedded default: timeline posts, record fields and tasks kept in a local SQLite file.

It stands in for Dynamics 365 until one is configured: a record's external id on the platform is its CRM id,
each job gets at most one post and one task (the job id is unique in those tables), and a record exists as soon
as it is named (records have no owner here, so tasks have none either).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from connector.crm import Task, TimelinePost
from connector.platform import Contact

SCHEMA = """
CREATE TABLE IF NOT EXISTS posts (
    job_id TEXT PRIMARY KEY,
    target_kind TEXT NOT NULL,
    target_id TEXT NOT NULL,
    text TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS posts_target ON posts(target_kind, target_id, created_at);
CREATE TABLE IF NOT EXISTS record_fields (
    target_kind TEXT NOT NULL,
    target_id TEXT NOT NULL,
    name TEXT NOT NULL,
    value TEXT,                               -- JSON
    PRIMARY KEY (target_kind, target_id, name)
);
CREATE TABLE IF NOT EXISTS tasks (
    job_id TEXT PRIMARY KEY,
    target_kind TEXT NOT NULL,
    target_id TEXT NOT NULL,
    subject TEXT NOT NULL,
    description TEXT NOT NULL,
    due TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS tasks_target ON tasks(target_kind, target_id, created_at);
"""


class LocalCrm:
    """Thread-safe: a connection per thread, so that reads never wait; writes of this process queue on one lock
    (woken the moment it is free, where SQLite's busy handler would sleep in steps of up to 100 ms)."""

    name = "local"

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()  # guards the list of connections
        self._writer = threading.Lock()
        conn = self._conn()
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self._path, timeout=30, isolation_level=None, check_same_thread=False)
            # As the job store: in WAL mode a commit survives the process at once and the OS within moments,
            # without an fsync for every post.
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def _write(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        """The rows in one transaction: a record update of several fields is seen whole or not at all."""
        with self._writer:
            conn = self._conn()
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(sql, rows)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def identify(self, target_kind: str, target_id: str) -> Contact:
        return Contact(external_id=target_id)

    def post(self, *, target_kind: str, target_id: str, job_id: str, text: str, may_exist: bool = True) -> None:
        self._write(
            "INSERT OR IGNORE INTO posts (job_id, target_kind, target_id, text, created_at) VALUES (?, ?, ?, ?, ?)",
            [(job_id, target_kind, target_id, text, _now())],
        )

    def timeline(self, target_kind: str, target_id: str) -> list[TimelinePost]:
        rows = self._conn().execute(
            "SELECT target_kind, target_id, job_id, text, created_at FROM posts "
            "WHERE target_kind = ? AND target_id = ? ORDER BY created_at, rowid",
            (target_kind, target_id),
        ).fetchall()
        return [TimelinePost(*row) for row in rows]

    def update_record(self, target_kind: str, target_id: str, fields: Mapping[str, Any], *, ref: str) -> None:
        self._write(
            "INSERT INTO record_fields (target_kind, target_id, name, value) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (target_kind, target_id, name) DO UPDATE SET value = excluded.value",
            [(target_kind, target_id, name, json.dumps(value)) for name, value in fields.items()],
        )

    def fields(self, target_kind: str, target_id: str, names: list[str]) -> dict[str, Any]:
        rows = self._conn().execute(
            "SELECT name, value FROM record_fields WHERE target_kind = ? AND target_id = ?",
            (target_kind, target_id),
        ).fetchall()
        values = {name: json.loads(value) for name, value in rows}
        return {name: values.get(name) for name in names}

    def create_task(self, target_kind: str, target_id: str, *, subject: str, description: str, due: str,
                    ref: str) -> None:
        self._write(
            "INSERT OR IGNORE INTO tasks (job_id, target_kind, target_id, subject, description, due, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)", [(ref, target_kind, target_id, subject, description, due, _now())],
        )

    def tasks(self, target_kind: str, target_id: str) -> list[Task]:
        rows = self._conn().execute(
            "SELECT target_kind, target_id, job_id, subject, description, due FROM tasks "
            "WHERE target_kind = ? AND target_id = ? ORDER BY created_at, rowid", (target_kind, target_id),
        ).fetchall()
        return [Task(target_kind=row[0], target_id=row[1], job_id=row[2], subject=row[3], description=row[4],
                     due=row[5], owner=None) for row in rows]

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
