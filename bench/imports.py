"""How long `connector jobs import` takes for a large file, and the most memory it holds while it runs.

Writes a CSV of N rows (a mix of operations over 1,000 contacts), then times `connector jobs import` as a user runs
it, in a fresh data directory, and reads the child's peak resident set size from the kernel (`ru_maxrss`).
Usage: python bench/imports.py [N]   (default 1,000,000)
"""

from __future__ import annotations

import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from throughput import write_jobs


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        jobs = work / "jobs.csv"
        write_jobs(jobs, count, contacts=1000)
        started = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "jobs.cli", "jobs", "import", str(jobs)], cwd=work,
                                capture_output=True, text=True)
        elapsed = time.perf_counter() - started
        peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # kilobytes on Linux
        print(result.stdout.strip())
        if result.returncode != 0:
            print(result.stderr, file=sys.stderr)
            sys.exit(result.returncode)
        size_mib = jobs.stat().st_size / 2**20
        print(f"imported {count:,} rows ({size_mib:.0f} MiB of CSV) in {elapsed:.1f} s ({count / elapsed:,.0f} "
              f"rows/s, process start included); peak RSS {peak_mib:.0f} MiB")


if __name__ == "__main__":
    main()
