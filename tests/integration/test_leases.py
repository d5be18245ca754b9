"""Leases are renewed for as long as a claimed job runs: nothing is taken over while it is still in hand."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from config.settings import RetrySettings
from connector.localcrm import LocalCrm
from connector.sandbox.server import Faults, SandboxServer
from connector.sandbox.spotler import SpotlerSandbox
from connector.spotler import SpotlerPlatform
from jobs.executor import Executor
from jobs.model import JobRequest
from jobs.runner import Runner
from jobs.store.sqlite import SqliteJobStore


def test_leases_are_renewed_for_as_long_as_a_claimed_job_runs_even_outside_a_drain(
    tmp_path: Path, spotler_app: SpotlerSandbox, make_spotler: Callable[..., SpotlerPlatform]
) -> None:
    """A drain cut short (Ctrl-C under `run --once`) leaves running jobs: their leases must still be renewed."""
    store = SqliteJobStore(tmp_path / "jobs.db")
    other = SqliteJobStore(tmp_path / "jobs.db")
    crm = LocalCrm(tmp_path / "timeline.db")
    with SandboxServer(spotler_app, faults=Faults(latency_ms=700)) as server:
        platform = make_spotler(server.url + "/integrationservice-1.1.0", read_timeout=5.0)
        runner = Runner(store, Executor(platform, crm, RetrySettings()), workers=1, lease_seconds=0.3)
        try:
            store.add([JobRequest.from_input(operation="add_tag", tags="VIP", target_kind="contact",
                                             target_id="C-1")])
            assert len(runner.tick()) == 1  # claimed and running, no drain around it
            time.sleep(0.6)  # twice the lease: only renewals keep it
            assert other.claim("runner-b", 10, 0.3) == []
        finally:
            runner.close()
            other.close()
            store.close()
            crm.close()
