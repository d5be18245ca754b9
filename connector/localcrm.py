"""The CRM of the embedded default: timeline posts kept in a local SQLite file.

It stands in for Dynamics 365 until one is configured: a record's external id on the platform is its CRM id,
and each job gets at most one post (the job id is unique in the table).
"""

from __future__ import annotations

import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path

from connector.crm import TimelinePost
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
"""


class LocalCrm:
    name = "local"

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.executescript(SCHEMA)
        self._lock = threading.Lock()

    def identify(self, target_kind: str, target_id: str) -> Contact:
        return Contact(external_id=target_id)

    def post(self, *, target_kind: str, target_id: str, job_id: str, text: str, may_exist: bool = True) -> None:
        now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        with self._lock:
            self._conn.execute(
                "INSERT OR IGNORE INTO posts (job_id, target_kind, target_id, text, created_at) VALUES (?, ?, ?, ?, ?)",
                (job_id, target_kind, target_id, text, now),
            )

    def timeline(self, target_kind: str, target_id: str) -> list[TimelinePost]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT target_kind, target_id, job_id, text, created_at FROM posts "
                "WHERE target_kind = ? AND target_id = ? ORDER BY created_at, rowid",
                (target_kind, target_id),
            ).fetchall()
        return [TimelinePost(*row) for row in rows]

    def close(self) -> None:
        self._conn.close()
