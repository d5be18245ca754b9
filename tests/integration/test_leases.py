"""Leases are renewed for as long as a claimed job runs: nothing is taken over while it is still in hand.

Real time, since the renewer is a thread on the real clock; the lease (2 s) is six times the renewal period
(a third of it, 0.67 s) and the test waits for renewals to happen rather than for a fixed time, so a busy machine
slows it down without making it fail.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from config.settings import RetrySettings
from connector.localcrm import LocalCrm
from connector.spotler import SpotlerPlatform
from jobs.executor import Executor
from jobs.kinds import registered, request_from_raw
from jobs.runner import Runner
from jobs.store.sqlite import SqliteJobStore
from tests.integration.helpers import TestKind

LEASE = 2.0


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
        with registered(TestKind("held", gate, key="held")):
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
