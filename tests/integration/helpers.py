"""A runner wired like the real one, on a platform sandbox, with a clock and a sleep the test controls."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel

from config.settings import RetrySettings
from connector.localcrm import LocalCrm
from connector.platform import Platform
from jobs.app import make_observer
from jobs.executor import Executor
from jobs.kinds import RunContext, RunsOn
from jobs.model import Job, JobRequest, Target
from jobs.runner import DrainReport, Runner
from jobs.scoring.rules import RuleSet
from jobs.store import StoreUnavailable
from jobs.store.sqlite import SqliteJobStore
from tests.conftest import FakeClock


@dataclass
class Rig:
    store: SqliteJobStore
    crm: LocalCrm
    executor: Executor
    runner: Runner
    clock: FakeClock

    def queue(self, **fields: Any) -> Job:
        fields.setdefault("target_kind", "contact")
        return self.store.add([JobRequest.from_input(**fields)])[0]

    def drain(self) -> DrainReport:
        return self.runner.drain()

    def close(self) -> None:
        self.runner.close()
        self.crm.close()


class FaultyStore:
    """A real store with faults on purpose, as a Dynamics 365 store answering 503 (or a driver's surprise) would
    give them: the claims numbered in `failing_claims` (counted from 1) raise StoreUnavailable, and the next lease
    renewals raise the errors in `renewal_errors`, one each. It counts the claims it is asked for."""

    def __init__(self, store: SqliteJobStore, failing_claims: set[int] | None = None,
                 renewal_errors: list[Exception] | None = None) -> None:
        self._store = store
        self.failing_claims = failing_claims or set()
        self.renewal_errors = list(renewal_errors or [])
        self.claims = 0

    def claim(self, owner: str, limit: int, lease_seconds: float) -> list[Job]:
        self.claims += 1
        if self.claims in self.failing_claims:
            raise StoreUnavailable("The job store answered 503.")
        return self._store.claim(owner, limit, lease_seconds)

    def renew(self, owner: str, job_ids: list[str], lease_seconds: float) -> list[str]:
        if self.renewal_errors:
            raise self.renewal_errors.pop(0)
        return self._store.renew(owner, job_ids, lease_seconds)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def query(path: Path, sql: str, args: Any = ()) -> list[tuple[Any, ...]]:
    """Rows read from a SQLite file on a connection of their own, as another process would see them."""
    conn = sqlite3.connect(path)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll `condition` until it holds; a machine too busy to get there in `timeout` fails the test, saying what."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not {what} within {timeout} s"
        time.sleep(0.01)


def make_rig(tmp_path: Path, store: SqliteJobStore, platform: Platform, clock: FakeClock,
             retry: RetrySettings | None = None, workers: int = 4, lease_seconds: float = 30,
             crm: LocalCrm | None = None, rules: RuleSet | None = None,
             sleep: Callable[[float], Any] | None = None, stop: threading.Event | None = None) -> Rig:
    """`sleep` replaces the clock's (which moves the clock at once); `stop` is the event a SIGTERM sets."""
    crm = crm or LocalCrm(tmp_path / "timeline.db")
    executor = Executor(platform, crm, retry or RetrySettings(), clock=clock, sleep=sleep or clock.sleep, stop=stop,
                        observer=make_observer(rules or RuleSet(), store, clock))
    runner = Runner(store, executor, workers=workers, lease_seconds=lease_seconds)
    return Rig(store, crm, executor, runner, clock)


class Nothing(BaseModel):
    pass


@dataclass(frozen=True)
class TestKind:
    """A kind registered by a test (`jobs.kinds.registered`): it runs until `gate` is set, or, without a gate,
    raises a defect. `key` orders its jobs like any key; None lets them all run at once."""

    __test__ = False  # not a test class, whatever pytest's name rules say

    name: str
    gate: threading.Event | None = None
    key: str | None = None
    label: ClassVar[str] = "Test"
    runs_on: ClassVar[RunsOn] = RunsOn.SERVICE
    idempotent: ClassVar[bool] = True
    posts_timeline: ClassVar[bool] = False
    on_crm_form: ClassVar[bool] = False
    payload_model: ClassVar[type[BaseModel]] = Nothing

    def validate(self, fields: Mapping[str, Any], target: Target | None) -> Nothing:
        return Nothing()

    def raw(self, payload: Nothing) -> dict[str, Any]:
        return {}

    def keys(self, payload: Nothing, target: Target | None) -> list[str]:
        return [] if self.key is None else [self.key]

    def describe(self, payload: Nothing) -> str:
        return self.name

    def brief(self, payload: Nothing) -> str:
        return self.name

    def template_fields(self, payload: Nothing) -> dict[str, Any]:
        return {"tags": "", "score": ""}

    def to_json(self, payload: Nothing) -> dict[str, Any]:
        return {}

    def run(self, ctx: RunContext) -> None:
        if self.gate is None:
            raise KeyError("a defect in a kind")
        assert self.gate.wait(timeout=60)
