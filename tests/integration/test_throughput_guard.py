"""A guard on throughput, loose enough for a busy shared machine: against a sandbox 20 ms away (in a process of its
own), `connector run --once` drains a few hundred jobs at least five times as fast as the naive one-job-at-a-time
script of bench/naive.py, both timed from their first job to their last (process start left out). A change that
serialises the runner (one worker, a lock around the platform calls) fails it. The figures themselves are
measured by `make bench`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

from throughput import sandboxes, stopped, write_jobs  # noqa: E402

JOBS = 300


@pytest.mark.slow
@pytest.mark.processes
def test_the_runner_drains_at_least_five_times_as_fast_as_one_job_at_a_time(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.csv"
    write_jobs(jobs, JOBS)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONNECTOR_")}
    host, urls = sandboxes(tmp_path / "sandboxes", {"latency_ms": 20})
    try:
        naive = subprocess.run([sys.executable, str(ROOT / "bench" / "naive.py"), str(jobs), urls["spotler"],
                                str(tmp_path / "timeline.db")], env=env, capture_output=True, text=True, check=True)
        env |= {"CONNECTOR_HOME": str(tmp_path / "home"), "CONNECTOR_SPOTLER__BASE_URL": urls["spotler"]}
        subprocess.run([sys.executable, "-m", "jobs.cli", "jobs", "import", str(jobs)], cwd=tmp_path, env=env,
                       capture_output=True, check=True)
        ran = subprocess.run([sys.executable, "-m", "jobs.cli", "run", "--once"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, check=True)
    finally:
        stopped(host)
    baseline = json.loads(naive.stdout)
    drained = re.search(r"(\d+) succeeded, (\d+) failed in ([\d.]+) s", ran.stdout)
    assert drained, ran.stdout
    assert (baseline["succeeded"], int(drained.group(1))) == (JOBS, JOBS)
    ratio = baseline["seconds"] / float(drained.group(3))
    assert ratio >= 5, f"the runner drained {JOBS} jobs only {ratio:.1f} times as fast as one job at a time"
