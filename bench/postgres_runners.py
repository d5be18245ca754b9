"""Several runners on one PostgreSQL job store: how the drain scales with runner processes, and what the store
itself sustains.

Starts a throw-away PostgreSQL (durable: fsync and synchronous commits on, as in production; see tests/postgres.py)
and the sandboxes in a process of their own with 20 ms of latency per request. Then, for 1, 2 and 3 runner
processes (`connector run --once`, started together on a fresh schema holding the same 2,000 mixed jobs), the wall
time until all of them are done. Separately, the store alone: 1, 2 and 3 processes claiming one job at a time and
finishing it at once (no platform), as many claim+complete cycles per second as they can.

Usage: python bench/postgres_runners.py [JOBS]   (default 2000); `make bench-postgres`.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from throughput import sandboxes, stopped, write_jobs  # noqa: E402

from tests import postgres  # noqa: E402


def drain(server: postgres.Server, work: Path, jobs: Path, runners: int, spotler: str) -> tuple[float, int]:
    schema, url = server.fresh_schema()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONNECTOR_")}
    env |= {"CONNECTOR_JOB_STORE": "postgres", "CONNECTOR_POSTGRES__URL": url, "CONNECTOR_SPOTLER__BASE_URL": spotler,
            "CONNECTOR_HOME": str(work / f"home-{runners}")}
    command = [sys.executable, "-m", "jobs.cli"]
    subprocess.run([*command, "db", "upgrade"], env=env, cwd=work, check=True, capture_output=True)
    subprocess.run([*command, "jobs", "import", str(jobs)], env=env, cwd=work, check=True, capture_output=True)
    started = time.perf_counter()
    processes = [subprocess.Popen([*command, "run", "--once"], env=env, cwd=work, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(runners)]
    outputs = [p.communicate()[0] for p in processes]
    seconds = time.perf_counter() - started
    succeeded = sum(int(m.group(1)) for out in outputs if (m := re.search(r"(\d+) succeeded", out)))
    server.drop_schema(schema)
    return seconds, succeeded


def _cycles(url: str, password: str | None, owner: str, until: float, done: multiprocessing.Queue[int]) -> None:
    from jobs.model import JobStatus
    from jobs.store import Outcome
    from jobs.store.postgres import PostgresJobStore

    store = PostgresJobStore(url, password=password, pool_size=2)
    count = 0
    try:
        while time.perf_counter() < until:
            claimed = store.claim(owner, 1, 60.0)
            if not claimed:
                break
            store.finish(owner, claimed[0].id, Outcome(JobStatus.SUCCEEDED, "OK", "Done."))
            count += 1
    finally:
        store.close()
    done.put(count)


def store_cycles(server: postgres.Server, processes: int, seconds: float = 10.0) -> float:
    """Claim + complete per second at the store, `processes` at a time, over distinct keys (nothing waits)."""
    from jobs.model import JobRequest
    from jobs.store.postgres import PostgresJobStore, upgrade

    schema, url = server.fresh_schema()
    upgrade(url)
    store = PostgresJobStore(url)
    requests = [JobRequest.from_input(operation="add_tag", tags="VIP", target_kind="contact", target_id=f"C-{n}")
                for n in range(40_000)]
    for start in range(0, len(requests), 1000):
        store.add(requests[start:start + 1000])
    store.close()
    done: multiprocessing.Queue[int] = multiprocessing.Queue()
    until = time.perf_counter() + seconds
    workers = [multiprocessing.Process(target=_cycles, args=(url, None, f"bench-{n}", until, done))
               for n in range(processes)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    total = sum(done.get() for _ in workers)
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - started
    server.drop_schema(schema)
    return total / elapsed


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    server = postgres.start(durable=True)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            jobs = work / "jobs.csv"
            write_jobs(jobs, count)
            host, urls = sandboxes(work / "sandboxes", {"latency_ms": 20})
            try:
                for runners in (1, 2, 3):
                    seconds, succeeded = drain(server, work, jobs, runners, urls["spotler"])
                    print(f"{runners} runner{'s' if runners > 1 else ''}: {succeeded}/{count} jobs in {seconds:.1f} s "
                          f"= {succeeded / seconds:.0f} jobs/s (20 ms latency, process start included)", flush=True)
            finally:
                stopped(host)
        for processes in (1, 2, 3):
            rate = store_cycles(server, processes)
            print(f"store alone, {processes} process{'es' if processes > 1 else ''}: {rate:,.0f} claim+complete/s",
                  flush=True)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
