"""`make bench`: the connector beside a naive baseline (bench/naive.py), draining the same queue against the same
sandboxes, each sandbox in a process of its own (bench/sandbox_host.py), in one run.

Scenarios, on the embedded default (SQLite job store, local timeline) with Spotler:
- 0 ms and 20 ms of latency per request: what concurrency buys;
- a rate limit of 20 requests/s, without and with `http.max_requests_per_second = 20`: how close to the ceiling.

For each program it reports jobs/s and the ratio to the baseline, the requests per job and the 429s the sandbox
answered, the fraction of the rate limit used (successful requests per second / limit), jobs failed or left
waiting, the CPU of the draining process per job, and its peak RSS. The table and the JSON go to bench/results/.

Usage: python bench/throughput.py [JOBS] [RATE_LIMITED_JOBS]   (defaults: 2000 400)
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
from dataclasses import asdict, dataclass
from pathlib import Path

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

    @property
    def per_second(self) -> float:
        return self.succeeded / self.seconds

    def row(self, baseline: Reading | None) -> list[str]:
        ratio = f"{self.per_second / baseline.per_second:.1f}x" if baseline and baseline is not self else "1x"
        used = "" if self.ceiling is None else f"{(self.requests - self.throttled) / self.seconds / self.ceiling:.2f}"
        return [self.scenario, self.program, f"{self.per_second:,.0f}", ratio,
                f"{self.requests / self.jobs:.2f}", str(self.throttled), used,
                f"{self.failed + (self.jobs - self.succeeded - self.failed)}",
                f"{1000 * self.cpu_seconds / self.jobs:.2f}", f"{self.peak_rss_mib:.0f}"]


HEADER = ["scenario", "program", "jobs/s", "vs naive", "requests/job", "429s", "of ceiling", "not done",
          "CPU ms/job", "peak RSS MiB"]


def write_jobs(path: Path, count: int, contacts: int = 400) -> None:
    """The benchmarks' queue: every tag and score operation in turn over `contacts` contacts, as a CSV file."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["operation", "contact", "tags", "score"])
        for i in range(count):
            op, tags, score = OPERATIONS[i % len(OPERATIONS)]
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


def stopped(host: subprocess.Popen[str]) -> dict[str, dict[str, int]]:
    answered, _ = host.communicate("")
    return json.loads(answered.strip().splitlines()[-1])


def measure(scenario: str, program: str, count: int, faults: dict[str, float], cap: float | None = None,
            idle_cpu: float = 0.0) -> Reading:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        jobs = work / "jobs.csv"
        write_jobs(jobs, count)
        host, urls = sandboxes(work / "sandboxes", faults)
        try:
            env = {k: v for k, v in os.environ.items() if not k.startswith("CONNECTOR_")}
            if program == "naive":
                seconds, out, cpu, rss = run([sys.executable, str(ROOT / "bench" / "naive.py"), str(jobs),
                                              urls["spotler"], str(work / "timeline.db")], cwd=work, env=env)
                done = json.loads(out)
                succeeded, failed = done["succeeded"], done["failed"]
            else:
                env |= {"CONNECTOR_HOME": str(work / "home"), "CONNECTOR_SPOTLER__BASE_URL": urls["spotler"]}
                if cap:
                    env["CONNECTOR_HTTP__MAX_REQUESTS_PER_SECOND"] = str(cap)
                subprocess.run([sys.executable, "-m", "jobs.cli", "jobs", "import", str(jobs)], cwd=work, env=env,
                               check=True, capture_output=True)
                seconds, out, cpu, rss = run([sys.executable, "-m", "jobs.cli", "run", "--once"], cwd=work, env=env)
                found = re.search(r"(\d+) succeeded, (\d+) failed", out)
                succeeded, failed = (int(found.group(1)), int(found.group(2))) if found else (0, 0)
        finally:
            answered = stopped(host)
    spotler = answered["spotler"]
    return Reading(scenario, program, count, seconds, succeeded, failed, spotler["requests"], spotler["429"],
                   max(0.0, cpu - idle_cpu), rss, ceiling=faults.get("rate_limit"))


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    limited = int(sys.argv[2]) if len(sys.argv) > 2 else 400
    plan = [
        ("0 ms", count, {}, [("naive", None), ("connector", None)]),
        ("20 ms", count, {"latency_ms": 20}, [("naive", None), ("connector", None)]),
        (f"{RATE} req/s", limited, {"rate_limit": RATE, "retry_after": 1},
         [("naive", None), ("connector", None), (f"connector, cap {RATE}/s", RATE)]),
    ]
    # What each program spends to start and stop with an empty queue, taken off its CPU per job.
    idle = {program: measure("idle", program, 0, {}).cpu_seconds for program in ("naive", "connector")}
    readings: list[Reading] = []
    rows = []
    for scenario, jobs, faults, programs in plan:
        baseline = None
        for program, cap in programs:
            kind = "naive" if program == "naive" else "connector"
            reading = measure(scenario, kind, jobs, faults, cap, idle[kind])
            reading.program = program
            baseline = baseline or reading
            readings.append(reading)
            rows.append(reading.row(baseline))
            print(" | ".join(rows[-1]), flush=True)
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    table = "\n".join(["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
                      + ["| " + " | ".join(row) + " |" for row in rows])
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.md").write_text(
        f"`make bench` ({count} jobs; {limited} under the rate limit), {stamp}, {machine}\n\n{table}\n",
        encoding="utf-8")
    (RESULTS / "latest.json").write_text(json.dumps({"at": stamp, "machine": machine, "readings": [
        {**asdict(r), "jobs_per_second": r.per_second} for r in readings]}, indent=2) + "\n", encoding="utf-8")
    print(f"\n{table}\n\nwritten to {RESULTS / 'latest.md'} and latest.json")


if __name__ == "__main__":
    main()
