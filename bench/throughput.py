"""`make bench`: the connector beside a naive baseline, draining the same queue against the same sandboxes, the
sandboxes in a process of their own (bench/sandbox_host.py), in one run.

Scenarios with Spotler as the platform:
- on the embedded default (SQLite job store, local timeline), against bench/naive.py:
  - 0 ms and 20 ms of latency per request: what concurrency buys;
  - a rate limit of 20 requests/s, without and with `http.max_requests_per_second = 20`: how close to the ceiling;
- with the Dataverse sandbox as job store and CRM (timeline posts), against bench/naive_dataverse.py, at 0 ms and
  20 ms of latency on every sandbox: the queue is created as job rows through the Web API before the clock starts,
  one row set per program (each program drains its own sandboxes).

For each program it reports jobs/s and the ratio to the baseline, the requests per job and the 429s the sandboxes
answered, the fraction of the rate limit used (successful requests per second / limit), jobs failed or left
waiting, the CPU of the draining process per job, and its peak RSS; on Dataverse also its requests per job (a
`$batch` is one) and operations per job (each part of a `$batch` is one, as the service protection limits count).
The tables and the JSON go to bench/results/.

Usage: python bench/throughput.py [JOBS] [RATE_LIMITED_JOBS] [DATAVERSE_JOBS]   (defaults: 2000 400 1000)
"""

from __future__ import annotations

import csv
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from config.settings import DataverseTableSettings
from connector.dataverse import connect
from connector.dataverse.batch import BatchPart
from connector.dataverse.client import MAX_BATCH
from connector.sandbox.dataverse import SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET, SANDBOX_TENANT

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
OPERATIONS = [
    ("Add Tag", "Webinar", ""),
    ("Increase Score", "Lead", "5"),
    ("Decrease Score", "Lead", "2"),
    ("Set Score", "Engagement", "40"),
    ("Remove Tag", "Trial; Event", ""),
]
RATE = 20


@dataclass
class Reading:
    scenario: str
    program: str
    jobs: int
    seconds: float
    succeeded: int
    failed: int
    requests: int
    throttled: int
    cpu_seconds: float  # the process's CPU less what it spends starting and stopping with nothing to do
    peak_rss_mib: float
    ceiling: float | None = None
    store: str = "sqlite"
    dataverse_requests: int = 0
    dataverse_operations: int = 0

    @property
    def per_second(self) -> float:
        return self.succeeded / self.seconds

    def row(self, baseline: Reading | None) -> list[str]:
        ratio = f"{self.per_second / baseline.per_second:.1f}x" if baseline and baseline is not self else "1x"
        not_done = str(self.jobs - self.succeeded)
        cost = [f"{1000 * self.cpu_seconds / self.jobs:.2f}", f"{self.peak_rss_mib:.0f}"]
        if self.store == "dataverse":
            return [self.scenario, self.program, f"{self.per_second:,.0f}", ratio, f"{self.requests / self.jobs:.2f}",
                    f"{self.dataverse_requests / self.jobs:.2f}", f"{self.dataverse_operations / self.jobs:.2f}",
                    str(self.throttled), not_done, *cost]
        used = "" if self.ceiling is None else f"{(self.requests - self.throttled) / self.seconds / self.ceiling:.2f}"
        return [self.scenario, self.program, f"{self.per_second:,.0f}", ratio,
                f"{self.requests / self.jobs:.2f}", str(self.throttled), used, not_done, *cost]


HEADER = ["scenario", "program", "jobs/s", "vs naive", "requests/job", "429s", "of ceiling", "not done",
          "CPU ms/job", "peak RSS MiB"]
DATAVERSE_HEADER = ["scenario", "program", "jobs/s", "vs naive", "Spotler requests/job", "Dataverse requests/job",
                    "Dataverse operations/job", "429s", "not done", "CPU ms/job", "peak RSS MiB"]


def write_jobs(path: Path, count: int, contacts: int = 400,
               operations: list[tuple[str, str, str]] = OPERATIONS) -> None:
    """The benchmarks' queue: `operations` in turn (every tag and score operation unless told) over `contacts`
    contacts, as a CSV file."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["operation", "contact", "tags", "score"])
        for i in range(count):
            op, tags, score = operations[i % len(operations)]
            writer.writerow([op, f"C-{i % contacts:03d}", tags, score])


def run(command: list[str], *, cwd: Path, env: dict[str, str]) -> tuple[float, str, float, float]:
    """Wall time, stdout, CPU seconds and peak RSS (MiB) of one process."""
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stderr is not None
    # wait4 reaps the process and gives its own resource usage; the pipes are read after it (the outputs are short).
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    stdout, stderr = process.stdout.read(), process.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{stderr}")
    return seconds, stdout, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def sandboxes(home: Path, faults: dict[str, float]) -> tuple[subprocess.Popen[str], dict[str, str]]:
    host = subprocess.Popen([sys.executable, str(ROOT / "bench" / "sandbox_host.py"), str(home), json.dumps(faults)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert host.stdout is not None
    return host, json.loads(host.stdout.readline())


def answered(host: subprocess.Popen[str]) -> dict[str, dict[str, int]]:
    """What each sandbox has answered so far."""
    assert host.stdin is not None and host.stdout is not None
    host.stdin.write("counts\n")
    host.stdin.flush()
    return json.loads(host.stdout.readline())


def stopped(host: subprocess.Popen[str]) -> dict[str, dict[str, int]]:
    answered, _ = host.communicate("")
    return json.loads(answered.strip().splitlines()[-1])


def environment_url(urls: dict[str, str]) -> str:
    return urls["dataverse"].split("/api/data/")[0]


def create_job_rows(urls: dict[str, str], count: int, contacts: int = 400) -> None:
    """The benchmarks' queue as a CRM user's job rows in the Dataverse sandbox, on as many contacts, created
    through its Web API in batches: the same operations in the same order as `write_jobs`."""
    url, t = environment_url(urls), DataverseTableSettings()
    client = connect(environment_url=url, tenant_id=SANDBOX_TENANT, client_id=SANDBOX_CLIENT_ID,
                     client_secret=SANDBOX_CLIENT_SECRET, authority_host=url, ca_file=urls["dataverse_ca"])
    ids = [str(uuid.uuid4()) for _ in range(min(count, contacts))]
    parts = [BatchPart("POST", "contacts", body={"contactid": row_id, "lastname": f"Bench {i:03d}"})
             for i, row_id in enumerate(ids)]
    for i in range(count):
        operation, tags, score = OPERATIONS[i % len(OPERATIONS)]
        parts.append(BatchPart("POST", t.entity_set, body={
            t.operation: t.operation_values[operation.lower().replace(" ", "_")], t.tags: tags or None,
            t.score: int(score) if score else None, f"{t.contact_lookup}@odata.bind": f"/contacts({ids[i % contacts]})",
        }))
    try:
        for start in range(0, len(parts), MAX_BATCH):
            failed = [r for r in client.batch(parts[start:start + MAX_BATCH]) if not r.ok]
            if failed:
                raise SystemExit(f"the Dataverse sandbox refused a job row: {failed[0].status} {failed[0].body!r}")
    finally:
        client.close()


def dataverse_environment(urls: dict[str, str]) -> dict[str, str]:
    """The connector's settings for the Dataverse sandbox of the sandbox host, as for a real environment."""
    url = environment_url(urls)
    return {"CONNECTOR_JOB_STORE": "dataverse", "CONNECTOR_CRM": "dataverse",
            "CONNECTOR_DATAVERSE__ENVIRONMENT_URL": url, "CONNECTOR_DATAVERSE__AUTHORITY_HOST": url,
            "CONNECTOR_DATAVERSE__TENANT_ID": SANDBOX_TENANT, "CONNECTOR_DATAVERSE__CLIENT_ID": SANDBOX_CLIENT_ID,
            "CONNECTOR_DATAVERSE__CLIENT_SECRET": SANDBOX_CLIENT_SECRET, "REQUESTS_CA_BUNDLE": urls["dataverse_ca"]}


def measure(scenario: str, program: str, count: int, faults: dict[str, float], cap: float | None = None,
            idle_cpu: float = 0.0, store: str = "sqlite") -> Reading:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        jobs = work / "jobs.csv"
        write_jobs(jobs, count)
        host, urls = sandboxes(work / "sandboxes", faults)
        try:
            env = {k: v for k, v in os.environ.items() if not k.startswith("CONNECTOR_")}
            connector_env = env | {"CONNECTOR_HOME": str(work / "home"), "CONNECTOR_SPOTLER__BASE_URL": urls["spotler"]}
            if store == "dataverse":
                create_job_rows(urls, count)
                connector_env |= dataverse_environment(urls)
            before: dict[str, Any] = answered(host)
            if program == "naive":
                if store == "dataverse":
                    command = [sys.executable, str(ROOT / "bench" / "naive_dataverse.py"), environment_url(urls),
                               urls["dataverse_ca"], urls["spotler"]]
                else:
                    command = [sys.executable, str(ROOT / "bench" / "naive.py"), str(jobs), urls["spotler"],
                               str(work / "timeline.db")]
                seconds, out, cpu, rss = run(command, cwd=work, env=env)
                done = json.loads(out)
                succeeded, failed = done["succeeded"], done["failed"]
            else:
                if cap:
                    connector_env["CONNECTOR_HTTP__MAX_REQUESTS_PER_SECOND"] = str(cap)
                if store == "sqlite":
                    subprocess.run([sys.executable, "-m", "jobs.cli", "jobs", "import", str(jobs)], cwd=work,
                                   env=connector_env, check=True, capture_output=True)
                    before = answered(host)
                seconds, out, cpu, rss = run([sys.executable, "-m", "jobs.cli", "run", "--once"], cwd=work,
                                             env=connector_env)
                found = re.search(r"(\d+) succeeded, (\d+) failed", out)
                succeeded, failed = (int(found.group(1)), int(found.group(2))) if found else (0, 0)
        finally:
            after = stopped(host)
    spent = {name: {k: v - before.get(name, {}).get(k, 0) for k, v in counted.items()}
             for name, counted in after.items()}
    spotler, dataverse = spent["spotler"], spent["dataverse"]
    throttled = spotler["429"] + (dataverse["429"] if store == "dataverse" else 0)
    return Reading(scenario, program, count, seconds, succeeded, failed, spotler["requests"], throttled,
                   max(0.0, cpu - idle_cpu), rss, ceiling=faults.get("rate_limit"), store=store,
                   dataverse_requests=dataverse["api_requests"] if store == "dataverse" else 0,
                   dataverse_operations=dataverse["operations"] if store == "dataverse" else 0)


def markdown(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join(row) + " |" for row in rows])


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    limited = int(sys.argv[2]) if len(sys.argv) > 2 else 400
    on_dataverse = int(sys.argv[3]) if len(sys.argv) > 3 else 1000
    both: list[tuple[str, float | None]] = [("naive", None), ("connector", None)]
    plan: list[tuple[str, str, int, dict[str, float], list[tuple[str, float | None]]]] = [
        ("sqlite", "0 ms", count, {}, both),
        ("sqlite", "20 ms", count, {"latency_ms": 20}, both),
        ("sqlite", f"{RATE} req/s", limited, {"rate_limit": RATE, "retry_after": 1},
         [*both, (f"connector, cap {RATE}/s", RATE)]),
        ("dataverse", "0 ms", on_dataverse, {}, both),
        ("dataverse", "20 ms", on_dataverse, {"latency_ms": 20}, both),
    ]
    # What each program spends to start and stop with an empty queue, taken off its CPU per job.
    idle = {(store, kind): measure("idle", kind, 0, {}, store=store).cpu_seconds
            for store in ("sqlite", "dataverse") for kind in ("naive", "connector")}
    readings: list[Reading] = []
    rows: dict[str, list[list[str]]] = {"sqlite": [], "dataverse": []}
    for store, scenario, jobs, faults, programs in plan:
        baseline = None
        for program, cap in programs:
            kind = "naive" if program == "naive" else "connector"
            reading = measure(scenario, kind, jobs, faults, cap, idle[store, kind], store)
            reading.program = program
            baseline = baseline or reading
            readings.append(reading)
            rows[store].append(reading.row(baseline))
            print(f"{store}: " + " | ".join(rows[store][-1]), flush=True)
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    text = (f"`make bench` ({count} jobs; {limited} under the rate limit), {stamp}, {machine}\n\n"
            f"{markdown(HEADER, rows['sqlite'])}\n\n"
            f"With the Dataverse sandbox as job store and CRM (timeline posts), Spotler as platform ({on_dataverse} "
            f"jobs, the same queue as job rows; latency on every sandbox):\n\n"
            f"{markdown(DATAVERSE_HEADER, rows['dataverse'])}\n")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.md").write_text(text, encoding="utf-8")
    (RESULTS / "latest.json").write_text(json.dumps({"at": stamp, "machine": machine, "readings": [
        {**asdict(r), "jobs_per_second": r.per_second} for r in readings]}, indent=2) + "\n", encoding="utf-8")
    print(f"\n{text}\nwritten to {RESULTS / 'latest.md'} and latest.json")


if __name__ == "__main__":
    main()
