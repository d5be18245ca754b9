"""What one claim costs on the PostgreSQL store, with and without a backlog of due jobs waiting behind a job of
their key whose retry is not due yet, before and after the head flags (schema version 2), in one run.

Starts a throw-away PostgreSQL (tests/postgres.py). For each backlog (0 and 5,000 blocked jobs by default) and each
store, a fresh schema holds the blocked jobs and 2,000 free ones (a key each); then one runner claims one job at a
time and finishes it. Kept: the time of each claim call alone, and of each finish beside it. "before" is the store
as it was at BEFORE (loaded from git, on the tables of schema version 1), "after" the store of the working tree.

Usage: python bench/postgres_claims.py [BLOCKED ...]   (default 0 5000)
"""

from __future__ import annotations

import importlib.util
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

import psycopg  # noqa: E402

from jobs.model import Attempt, JobRequest, JobStatus  # noqa: E402
from jobs.store import Outcome  # noqa: E402
from jobs.store import postgres_schema as schema  # noqa: E402
from jobs.store.postgres import PostgresJobStore, upgrade  # noqa: E402
from tests import postgres  # noqa: E402

# The last commit whose PostgreSQL store had no head flags.
BEFORE = "a917a51^"
FREE = 2000
CLAIMS = 300
NOW = 1_800_000_000.0


def store_before(tmp: Path) -> Any:
    """The PostgreSQL store module as it was at BEFORE, imported under a name of its own."""
    source = subprocess.run(["git", "show", f"{BEFORE}:jobs/store/postgres.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    path = tmp / "postgres_before.py"
    path.write_text(source, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("postgres_before", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fill(store: Any, blocked: int) -> None:
    """One job waiting an hour for its retry, `blocked` due jobs of its key behind it, and FREE jobs of a key
    each."""
    (head,) = store.add([JobRequest.from_input(operation="set_score", tags="Blocked", score=0, target_kind="contact",
                                               target_id="C-0")])
    store.claim("bench", 1, 60.0)
    store.record_attempt("bench", Attempt(job_id=head.id, started_at=NOW, outcome="retrying",
                                          result_code="UNAVAILABLE"))
    store.finish("bench", head.id, Outcome(JobStatus.PENDING, "UNAVAILABLE", "Later.", next_attempt_at=NOW + 3600))
    for start in range(0, blocked, 1000):
        store.add([JobRequest.from_input(operation="set_score", tags="Blocked", score=n, target_kind="contact",
                                         target_id="C-0") for n in range(start, min(blocked, start + 1000))])
    for start in range(0, FREE, 1000):
        store.add([JobRequest.from_input(operation="add_tag", tags="VIP", target_kind="contact",
                                         target_id=f"C-{n + 1}") for n in range(start, start + 1000)])


def claims(store: Any) -> tuple[list[float], list[float]]:
    """Milliseconds of each claim of one job, and of each finish of it."""
    times, finishes = [], []
    for _ in range(CLAIMS):
        started = time.perf_counter()
        (job,) = store.claim("bench", 1, 60.0)
        claimed = time.perf_counter()
        store.finish("bench", job.id, Outcome(JobStatus.SUCCEEDED, "OK", "Done."))
        times.append((claimed - started) * 1000)
        finishes.append((time.perf_counter() - claimed) * 1000)
    return times, finishes


def measure(server: postgres.Server, make: Any, blocked: int, version: int) -> tuple[list[float], list[float]]:
    name, url = server.fresh_schema()
    try:
        if version == schema.LATEST:
            upgrade(url)
        else:
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(schema.SCHEMA_TABLE)
                for migration in schema.MIGRATIONS[:version]:
                    conn.execute(migration)
        store = make(url)
        try:
            fill(store, blocked)
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("ANALYZE")
            return claims(store)
        finally:
            store.close()
    finally:
        server.drop_schema(name)


def main() -> None:
    backlogs = [int(arg) for arg in sys.argv[1:]] or [0, 5000]
    import tempfile

    server = postgres.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            before = store_before(Path(tmp))
            stores = {
                "before": (lambda url: before.PostgresJobStore(url, clock=lambda: NOW, check_schema=False), 1),
                "after": (lambda url: PostgresJobStore(url, clock=lambda: NOW), schema.LATEST),
            }
            print(f"ms per claim of one job ({CLAIMS} claims, each followed by its finish; {FREE} free jobs)")
            for blocked in backlogs:
                for label, (make, version) in stores.items():
                    times, finishes = measure(server, make, blocked, version)
                    print(f"  {blocked:>6,} blocked, {label:<6}: median {statistics.median(times):6.2f} ms, "
                          f"mean {statistics.fmean(times):6.2f} ms, p95 "
                          f"{sorted(times)[int(len(times) * 0.95)]:6.2f} ms (a finish: median "
                          f"{statistics.median(finishes):.2f} ms)", flush=True)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
