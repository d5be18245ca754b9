"""The runner's peak memory with 1,000, 10,000 and 50,000 jobs queued, in one run: it must not grow with the queue.

For each size, the benchmarks' mixed queue (bench/throughput.py `write_jobs`, 400 contacts) is imported into a fresh
SQLite job store with `connector jobs import`; then `connector run --once` drains it against the Spotler sandbox in
a process of its own (bench/sandbox_host.py, 0 ms latency), as `make bench` runs it. Kept: the runner process's peak
RSS (`os.wait4` ru_maxrss), its jobs/s and its CPU per job.

Usage: python bench/runner_rss.py [JOBS ...]   (default 1000 10000 50000)
"""

from __future__ import annotations

import sys

from throughput import measure


def main() -> None:
    sizes = [int(arg) for arg in sys.argv[1:]] or [1_000, 10_000, 50_000]
    print("`connector run --once` on the SQLite store, Spotler sandbox out of process, 0 ms latency")
    print("| jobs queued | peak RSS MiB | jobs/s | CPU ms/job | succeeded | failed |")
    print("|---|---|---|---|---|---|")
    for size in sizes:
        r = measure("0 ms", "connector", size, {})
        print(f"| {size:,} | {r.peak_rss_mib:.1f} | {r.per_second:,.0f} | {1000 * r.cpu_seconds / size:.2f} | "
              f"{r.succeeded:,} | {r.failed:,} |", flush=True)


if __name__ == "__main__":
    main()
