"""How long `connector run --once` takes to drain N queued jobs on the embedded default.

Queues N jobs (a mix of every operation over 100 contacts) with `connector jobs import`, then times
`connector run --once` as a user would run it, in a fresh data directory. Usage: python bench/drain.py [N] [workers]
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from throughput import write_jobs


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    workers = sys.argv[2] if len(sys.argv) > 2 else None
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        jobs = work / "jobs.csv"
        write_jobs(jobs, count, contacts=100)
        command = [sys.executable, "-m", "jobs.cli"]
        subprocess.run([*command, "jobs", "import", str(jobs)], cwd=work, check=True, capture_output=True)
        run = [*command, "run", "--once"] + (["--workers", workers] if workers else [])
        started = time.perf_counter()
        result = subprocess.run(run, cwd=work, capture_output=True, text=True)
        elapsed = time.perf_counter() - started
        print(result.stdout.strip())
        print(f"drained {count} jobs with `connector run --once` in {elapsed:.2f} s "
              f"({count / elapsed:.0f} jobs/s, process start and sandbox start included)")
        if result.returncode != 0:
            print(result.stderr, file=sys.stderr)
            sys.exit(result.returncode)


if __name__ == "__main__":
    main()
