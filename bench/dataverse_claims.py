"""What one claim costs on the Dataverse job store with 50 pending job rows and with 50,000, side by side in one run.

For each backlog a fresh Dataverse sandbox runs in a process of its own (bench/sandbox_host.py, no latency) and
holds that many pending add_tag jobs on 200 keys (25 contacts, 8 tags) taking turns at random. One runner then
claims up to LIMIT jobs, finishes them and queues as many new ones, CLAIMS times over, so the backlog stays the
same. Kept per claim: its wall time (the claim call alone), the GETs of the job table it sent and the rows they
read (a response hook on the client's session), and the `$batch` that takes the jobs.

Usage: python bench/dataverse_claims.py [BACKLOG ...]   (default 50 50000; LIMIT 20, CLAIMS 100)
"""

from __future__ import annotations

import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from throughput import environment_url, sandboxes, stopped

from config.settings import DataverseTableSettings
from connector.dataverse import connect
from connector.dataverse.client import DataverseClient
from connector.sandbox.dataverse import SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET, SANDBOX_TENANT
from jobs.model import JobRequest, JobStatus
from jobs.store import Outcome
from jobs.store.dataverse import DataverseJobStore

LIMIT = 20
CLAIMS = 100
TABLE = DataverseTableSettings()


def requests_for(rng: random.Random, contacts: list[str], count: int) -> list[JobRequest]:
    return [JobRequest.from_input(operation="add_tag", tags=f"T{rng.randrange(8)}", target_kind="contact",
                                  target_id=rng.choice(contacts)) for _ in range(count)]


def listing(client: DataverseClient) -> list[int]:
    """The rows each GET of the job table reads from now on."""
    seen: list[int] = []

    def hook(response: Any, *args: Any, **kwargs: Any) -> None:
        if response.request.method == "GET" and f"/{TABLE.entity_set}?" in response.url:
            seen.append(len(response.json()["value"]))

    client.session.hooks["response"].append(hook)
    return seen


def measure(backlog: int) -> dict[str, float]:
    rng = random.Random(3)
    with tempfile.TemporaryDirectory() as tmp:
        host, urls = sandboxes(Path(tmp), {})
        url = environment_url(urls)
        client = connect(environment_url=url, tenant_id=SANDBOX_TENANT, client_id=SANDBOX_CLIENT_ID,
                         client_secret=SANDBOX_CLIENT_SECRET, authority_host=url, ca_file=urls["dataverse_ca"])
        try:
            store = DataverseJobStore(client, TABLE)
            contacts = [client.create("contacts", {"lastname": f"Bench {n}"}) for n in range(25)]
            started = time.perf_counter()
            for start in range(0, backlog, 1000):
                store.add(requests_for(rng, contacts, min(1000, backlog - start)))
            queued = time.perf_counter() - started
            reads = listing(client)
            times, rows, gets, taken = [], [], [], []
            for _ in range(CLAIMS):
                before = len(reads)
                began = time.perf_counter()
                claimed = store.claim("bench", LIMIT, 60.0)
                times.append((time.perf_counter() - began) * 1000)
                rows.append(sum(reads[before:]))
                gets.append(len(reads) - before)
                taken.append(len(claimed))
                for job in claimed:
                    store.finish("bench", job.id, Outcome(JobStatus.SUCCEEDED, "OK", "Done."))
                store.add(requests_for(rng, contacts, len(claimed)))
        finally:
            client.close()
            stopped(host)
    return {"backlog": backlog, "queued_s": queued, "jobs": statistics.fmean(taken), "gets": statistics.fmean(gets),
            "rows_mean": statistics.fmean(rows), "rows_max": max(rows), "ms_median": statistics.median(times),
            "ms_p95": sorted(times)[int(len(times) * 0.95)]}


def main() -> None:
    backlogs = [int(arg) for arg in sys.argv[1:]] or [50, 50_000]
    print(f"One claim of up to {LIMIT} jobs on the Dataverse store ({CLAIMS} claims, each followed by the finish of "
          f"its jobs and as many new ones; sandbox in a process of its own, no latency)")
    print("| pending rows | jobs per claim | GETs of the job table | rows read (mean / max) | ms per claim "
          "(median / p95) | queueing the backlog |")
    print("|---|---|---|---|---|---|")
    for backlog in backlogs:
        r = measure(backlog)
        print(f"| {backlog:,} | {r['jobs']:.1f} | {r['gets']:.2f} | {r['rows_mean']:.0f} / {r['rows_max']:.0f} | "
              f"{r['ms_median']:.1f} / {r['ms_p95']:.1f} | {r['queued_s']:.1f} s |", flush=True)


if __name__ == "__main__":
    main()
