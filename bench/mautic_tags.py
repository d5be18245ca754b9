"""Mautic tag edits one contact per request against shared `PATCH /api/contacts/batch/edit` requests, side by side
in one run: `connector run --once` drains the same queue with `mautic.batch_tag_edits` false (before) and true
(after), against a Mautic sandbox with 20 ms of latency per request, in this process (the runner is a process of
its own, so its CPU is its own).

Two queues: tag jobs only (Add Tag and Remove Tag over 400 contacts), and the standard mix of `make bench`
(bench/throughput.py OPERATIONS: tags and scores). Each drain starts from a fresh sandbox and job store; before and
after alternate, ROUNDS times, and the table gives each run and the median. Mautic requests per job counts every
request the sandbox answered during the drain (contact look-ups, tag edits, a batch as one, points, group scores);
"tag edit requests/job" counts the tag edits alone (single edits and batches), "contacts/batch" the average batch.

With RATE, the sandbox also answers 429 beyond RATE requests per second (Retry-After 1 s), as a Mautic behind a
rate limit would, and the connector runs with `http.max_requests_per_second = RATE`, as the README advises: there,
fewer requests per job is more jobs per second. Requests per job count the 429s too.

Usage: python bench/mautic_tags.py [JOBS] [ROUNDS] [LATENCY_MS] [RATE]   (defaults: 1000 2 20, no rate limit)
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from connector.sandbox.mautic import MauticSandbox
from connector.sandbox.server import Faults, Request, Response, SandboxServer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import OPERATIONS, markdown, run, write_jobs

ROOT = Path(__file__).resolve().parent.parent
CONTACTS = 400
TAG_OPERATIONS = [("Add Tag", "Webinar", ""), ("Add Tag", "Customer; VIP", ""), ("Remove Tag", "Trial", "")]
USER, PASSWORD = "bench", "bench-password"


@dataclass
class Drain:
    queue: str
    batched: bool
    jobs: int
    seconds: float
    succeeded: int
    requests: int
    edit_requests: int
    batches: int
    batch_contacts: int
    cpu_seconds: float

    @property
    def per_second(self) -> float:
        return self.succeeded / self.seconds


class EditCounter:
    """Counts the contact edit requests (`PATCH /api/contacts/{id}/edit`) the sandbox answers: the sandbox counts
    its batches itself, not its single edits. This wraps its handler before the routes are looked up."""

    def __init__(self, app: MauticSandbox) -> None:
        self.count = 0
        self._lock = threading.Lock()
        self._edit = app.edit_contact
        app._routes = [(method, regex, self._counted if handler == app.edit_contact else handler)
                       for method, regex, handler in app._routes]

    def _counted(self, request: Request) -> Response:
        with self._lock:
            self.count += 1
        return self._edit(request)


def drain(queue: str, operations: list[tuple[str, str, str]], count: int, batched: bool, faults: Faults) -> Drain:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        app = MauticSandbox(work / "mautic.sqlite3", username=USER, password=PASSWORD, contact_field="crm_id")
        for i in range(CONTACTS):
            app.seed_contact(f"c{i:03d}@example.com", external_id=f"C-{i:03d}", tags=["Trial"])
        edits = EditCounter(app)
        jobs = work / "jobs.csv"
        write_jobs(jobs, count, CONTACTS, operations)
        with SandboxServer(app, faults=faults) as server:
            env = {k: v for k, v in os.environ.items() if not k.startswith("CONNECTOR_")} | {
                "CONNECTOR_HOME": str(work / "home"), "CONNECTOR_PLATFORM": "mautic",
                "CONNECTOR_MAUTIC__BASE_URL": server.url, "CONNECTOR_MAUTIC__USERNAME": USER,
                "CONNECTOR_MAUTIC__PASSWORD": PASSWORD, "CONNECTOR_MAUTIC__CONTACT_FIELD": "crm_id",
                "CONNECTOR_MAUTIC__BATCH_TAG_EDITS": "true" if batched else "false",
            }
            if faults.rate_limit:
                env["CONNECTOR_HTTP__MAX_REQUESTS_PER_SECOND"] = f"{faults.rate_limit:g}"
            subprocess.run([sys.executable, "-m", "jobs.cli", "jobs", "import", str(jobs)], cwd=work, env=env,
                           check=True, capture_output=True)
            before = server.injector.requests
            seconds, out, cpu, _ = run([sys.executable, "-m", "jobs.cli", "run", "--once"], cwd=work, env=env)
            requests = server.injector.requests - before
        found = re.search(r"(\d+) succeeded, (\d+) failed", out)
        succeeded = int(found.group(1)) if found else 0
        return Drain(queue, batched, count, seconds, succeeded, requests, edits.count + app.batch_edits,
                     app.batch_edits, app.batch_contacts, cpu)


def speed(per_second: float) -> str:
    return f"{per_second:,.1f}" if per_second < 100 else f"{per_second:,.0f}"


def row(reading: Drain) -> list[str]:
    per_batch = f"{reading.batch_contacts / reading.batches:.1f}" if reading.batches else "-"
    return [reading.queue, "on (after)" if reading.batched else "off (before)", speed(reading.per_second),
            f"{reading.requests / reading.jobs:.2f}", f"{reading.edit_requests / reading.jobs:.2f}", per_batch,
            str(reading.jobs - reading.succeeded), f"{1000 * reading.cpu_seconds / reading.jobs:.2f}"]


HEADER = ["queue", "batch_tag_edits", "jobs/s", "Mautic requests/job", "tag edit requests/job", "contacts/batch",
          "not done", "runner CPU ms/job"]



def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    latency = float(sys.argv[3]) if len(sys.argv) > 3 else 20.0
    rate = float(sys.argv[4]) if len(sys.argv) > 4 else None
    faults = Faults(latency_ms=latency, rate_limit=rate, retry_after=1.0)
    queues = [("tags only", TAG_OPERATIONS), ("standard mix", OPERATIONS)]
    readings: dict[tuple[str, bool], list[Drain]] = {}
    rows: list[list[str]] = []
    for _ in range(rounds):
        for queue, operations in queues:
            for batched in (False, True):
                reading = drain(queue, operations, count, batched, faults)
                readings.setdefault((queue, batched), []).append(reading)
                rows.append(row(reading))
                print(" | ".join(rows[-1]), flush=True)
    medians = []
    for runs in readings.values():
        middle = sorted(runs, key=lambda r: r.per_second)[len(runs) // 2]
        medians.append([*row(middle)[:2], speed(statistics.median(r.per_second for r in runs)), *row(middle)[3:]])
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    limit = f", at most {rate:g} requests/s (429 beyond)" if rate else ""
    print(f"\n{count} jobs per drain, {latency:g} ms latency per Mautic request{limit}, {CONTACTS} contacts, {stamp}, "
          f"{os.cpu_count()} cores\n\nEvery run:\n\n{markdown(HEADER, rows)}\n\nMedian jobs/s of {rounds} runs (other "
          f"columns from the run nearest it):\n\n{markdown(HEADER, sorted(medians))}")


if __name__ == "__main__":
    main()
