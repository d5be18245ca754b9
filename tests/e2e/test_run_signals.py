"""`connector run --once` stopped by SIGTERM (cron, systemd, Kubernetes) or SIGINT (Ctrl-C) mid-drain, as a real
process: running attempts finish, the jobs it holds go back to pending without spending an attempt, nothing is
left running, and it prints its summary and exits with 128 + the signal's number."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from jobs.model import JobStatus
from jobs.store import JobFilter
from jobs.store.sqlite import SqliteJobStore
from tests.e2e.helpers import connector, in_background
from tests.integration.helpers import wait_until

JOBS = 30


@pytest.mark.processes
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_mid_drain_gives_the_jobs_back_and_prints_the_summary(tmp_path: Path, signum: int) -> None:
    home = tmp_path / "home"
    # Every answer of the sandbox takes 0.3 s: 30 jobs on 2 workers take several seconds to drain.
    env = {"CONNECTOR_HOME": str(home), "CONNECTOR_FAULTS__LATENCY_MS": "300"}
    for n in range(JOBS):
        connector("jobs", "add", "-o", "add_tag", "-t", "Webinar", "--contact", f"C-{n}", cwd=tmp_path, env=env)
    store = SqliteJobStore(home / "jobs.db")
    try:
        with in_background("run", "--once", "--workers", "2", cwd=tmp_path, env=env) as running:
            wait_until(lambda: store.counts().get("succeeded", 0) >= 2, "a few jobs done, others running")
            running.process.send_signal(signum)
            code = running.process.wait(timeout=60)
        assert code == 128 + signum, running.stderr
        jobs = store.list(JobFilter(limit=JOBS)).jobs
        done = [j for j in jobs if j.status is JobStatus.SUCCEEDED]
        back = [j for j in jobs if j.status is JobStatus.PENDING]
        assert len(done) + len(back) == JOBS and back, [(j.id, j.status) for j in jobs]  # nothing left running
        assert all(j.attempts == 0 and store.attempts(j.id) == [] for j in back)  # no attempt spent on them
        assert f"{len(done)} succeeded, 0 failed in" in running.stdout
        assert (f"Stopped by {signal.Signals(signum).name} before the drain finished: the attempts under way were "
                f"let finish and none is left running. {len(back)} jobs still waiting; the next drain runs them."
                ) in running.stderr
        assert "Traceback" not in running.stderr
    finally:
        store.close()
    assert f"{len(back)} succeeded, 0 failed" in connector("run", "--once", cwd=tmp_path, env=env).stdout
