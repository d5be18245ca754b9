"""Leases are renewed for as long as a claimed job runs: nothing is taken over while it is still in hand.

Real time, since the renewer is a thread on the real clock; the lease (2 s) is six times the renewal period
(a third of it, 0.67 s) and the test waits for renewals to happen rather than for a fixed time, so a busy machine
slows it down without making it fail.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel

from config.settings import RetrySettings
from connector.localcrm import LocalCrm
from connector.spotler import SpotlerPlatform
from jobs.executor import Executor
from jobs.kinds import RunContext, RunsOn, registered, request_from_raw
from jobs.model import Target
from jobs.runner import Runner
from jobs.store.sqlite import SqliteJobStore

LEASE = 2.0


class Nothing(BaseModel):
    pass


@dataclass(frozen=True)
class Held:
    """A job that runs until the test lets it go."""

    gate: threading.Event
    name: ClassVar[str] = "held"
    label: ClassVar[str] = "Held"
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
        return ["held"]

    def describe(self, payload: Nothing) -> str:
        return "held"

    def brief(self, payload: Nothing) -> str:
        return "held"

    def template_fields(self, payload: Nothing) -> dict[str, Any]:
        return {"tags": "", "score": ""}

    def to_json(self, payload: Nothing) -> dict[str, Any]:
        return {}

    def run(self, ctx: RunContext) -> None:
        assert self.gate.wait(timeout=60)


def test_leases_are_renewed_for_as_long_as_a_claimed_job_runs_even_outside_a_drain(
    tmp_path: Path, spotler: SpotlerPlatform
) -> None:
    """A drain cut short (Ctrl-C under `run --once`) leaves running jobs: their leases must still be renewed."""
    gate = threading.Event()
    store = SqliteJobStore(tmp_path / "jobs.db")
    other = SqliteJobStore(tmp_path / "jobs.db")
    crm = LocalCrm(tmp_path / "timeline.db")
    runner = Runner(store, Executor(spotler, crm, RetrySettings()), workers=1, lease_seconds=LEASE)
    try:
        with registered(Held(gate)):
            (job,) = store.add([request_from_raw({"operation": "held"})])
            assert len(runner.tick()) == 1  # claimed and running, no drain around it
            first = store.get(job.id).lease_expires_at
            assert first is not None
            renewals, deadline = 0, time.monotonic() + 30
            seen = first
            while renewals < 3 and time.monotonic() < deadline:  # three renewals: past the first lease
                assert other.claim("runner-b", 10, LEASE) == []
                expires = store.get(job.id).lease_expires_at or 0
                if expires > seen:
                    renewals, seen = renewals + 1, expires
                time.sleep(0.05)
            assert renewals == 3 and time.time() > first  # held beyond its first lease, by renewals alone
            assert store.get(job.id).lease_owner == runner.owner
            gate.set()
    finally:
        gate.set()
        runner.close()
        other.close()
        store.close()
        crm.close()
