"""Leases are renewed for as long as a claimed job runs: nothing is taken over while it is still in hand.

Real time, since the renewer is a thread on the real clock: the lease is 2 s, renewed every third of it. The tests
wait for renewals to happen (with a 30 s deadline) rather than for a fixed time, so a busy machine slows them
down without making them fail.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from config.settings import RetrySettings
from connector.localcrm import LocalCrm
from connector.spotler import SpotlerPlatform
from jobs.executor import Executor
from jobs.kinds import registered, request_from_raw
from jobs.runner import Runner
from jobs.store import StoreUnavailable
from jobs.store.sqlite import SqliteJobStore
from tests.conftest import FakeClock
from tests.integration.helpers import FaultyStore, TestKind, wait_until

LEASE = 2.0


@dataclass
class Held:
    store: SqliteJobStore
    other: SqliteJobStore  # a second runner's view of the same file
    runner: Runner
    gate: threading.Event

    def run_one(self) -> str:
        """Claim one job that runs until the test lets it go, outside any drain; its id."""
        (job,) = self.store.add([request_from_raw({"operation": "held"})])
        assert len(self.runner.tick()) == 1
        return job.id

    def assert_renewed_past_its_first_lease(self, job_id: str) -> None:
        first = self.store.get(job_id).lease_expires_at
        assert first is not None
        renewals, deadline = 0, time.monotonic() + 30
        seen = first
        # Until well past the first lease (and at least three renewals, however slow the machine): never free.
        while (renewals < 3 or time.time() < first + LEASE / 2) and time.monotonic() < deadline:
            assert self.other.claim("runner-b", 10, LEASE) == []
            expires = self.store.get(job_id).lease_expires_at or 0
            if expires > seen:
                renewals, seen = renewals + 1, expires
            time.sleep(0.05)
        assert renewals >= 3 and time.time() >= first + LEASE / 2  # held beyond its first lease, by renewals alone
        assert self.store.get(job_id).lease_owner == self.runner.owner


@pytest.fixture(params=[None, StoreUnavailable("The job store answered 503."), RuntimeError("a surprise")],
                ids=["store-answers", "first-renewal-unavailable", "first-renewal-surprise"])
def held(request: pytest.FixtureRequest, tmp_path: Path, spotler: SpotlerPlatform) -> Iterator[Held]:
    gate = threading.Event()
    store = SqliteJobStore(tmp_path / "jobs.db")
    other = SqliteJobStore(tmp_path / "jobs.db")
    crm = LocalCrm(tmp_path / "timeline.db")
    runs_on: Any = FaultyStore(store, renewal_errors=[request.param]) if request.param else store
    runner = Runner(runs_on, Executor(spotler, crm, RetrySettings()), workers=1, lease_seconds=LEASE)
    try:
        with registered(TestKind("held", gate, key="held")):
            yield Held(store, other, runner, gate)
    finally:
        gate.set()
        runner.close()
        other.close()
        store.close()
        crm.close()


def test_leases_are_renewed_for_as_long_as_a_claimed_job_runs_even_outside_a_drain(held: Held) -> None:
    """A drain cut short (Ctrl-C under `run --once`) leaves running jobs: their leases must still be renewed, also
    when a renewal fails on the way."""
    job_id = held.run_one()
    held.assert_renewed_past_its_first_lease(job_id)
    held.gate.set()


def test_a_renewer_that_found_nothing_to_renew_renews_the_next_job(held: Held) -> None:
    held.gate.set()
    first = held.run_one()
    wait_until(lambda: held.store.get(first).status.value == "succeeded", "the first job done")
    time.sleep(LEASE)  # three renewal periods with nothing in hand
    held.gate.clear()
    held.assert_renewed_past_its_first_lease(held.run_one())
    held.gate.set()


def test_a_lease_taken_over_by_another_runner_is_reported_once_renewing_finds_it_lost(
    held: Held, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    job_id = held.run_one()
    later = SqliteJobStore(tmp_path / "jobs.db", clock=FakeClock(time.time() + 60))  # a runner past the lease
    try:
        assert [j.id for j in later.claim("runner-b", 10, 600)] == [job_id]
    finally:
        later.close()
    wait_until(lambda: f"job {job_id}: lease lost; another runner may take it" in caplog.text, "the loss logged")
    held.gate.set()
