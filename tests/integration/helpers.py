"""A runner wired like the real one, on a platform sandbox, with a clock and a sleep the test controls."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from config.settings import RetrySettings
from connector.localcrm import LocalCrm
from connector.platform import Platform
from jobs.app import make_observer
from jobs.executor import Executor
from jobs.model import Job, JobRequest
from jobs.runner import DrainReport, Runner
from jobs.scoring.rules import RuleSet
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


def make_rig(tmp_path: Path, store: SqliteJobStore, platform: Platform, clock: FakeClock,
             retry: RetrySettings | None = None, workers: int = 4, lease_seconds: float = 30,
             crm: LocalCrm | None = None, rules: RuleSet | None = None) -> Rig:
    crm = crm or LocalCrm(tmp_path / "timeline.db")
    executor = Executor(platform, crm, retry or RetrySettings(), clock=clock, sleep=clock.sleep,
                        observer=make_observer(rules or RuleSet(), store, clock))
    runner = Runner(store, executor, workers=workers, lease_seconds=lease_seconds, clock=clock)
    return Rig(store, crm, executor, runner, clock)
