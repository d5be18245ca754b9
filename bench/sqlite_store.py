"""The SQLite job store alone, at the runner's own call pattern: jobs/s with no platform behind it, and what a claim
costs when thousands of due jobs wait behind an unfinished job whose retry is not due.

    .venv/bin/python bench/sqlite_store.py [--jobs 20000] [--threads 8] [--runs 3] [--blocked 5000]
                                           [--compare other_sqlite.py]

1. *drain*: N jobs queued (the mix of `bench/throughput.py`'s OPERATIONS over a few hundred contacts), then
   drained by the runner itself (`Runner.drain`, claiming as it does) with `--threads` workers, whose executor
   makes only the store calls the executor makes for a job:
   `save_progress(score_before=...)` before an increment, `save_progress(applied=True, effects=...)` with the score
   history records the observer makes of the job's changes (an increment only: an idempotent change is marked
   applied with its outcome), `finish(...)` with the final attempt and `posted=True`.
   No HTTP, no executor: what is measured is the store. Reports jobs/s, the process's CPU per job (all threads:
   steadier than jobs/s on a shared machine) and the mean milliseconds per call kind (with 8 threads a call's time
   includes its wait for the write lock).
2. *claim cost*: 2,000 free jobs on their own contacts claimed 8 at a time (each batch finished before the next
   claim), first with nothing else queued, then behind `--blocked` due jobs that wait on one key for a job whose
   retry is a day away. Reports ms per claim call and per job claimed.

`--compare FILE` runs the same scenarios against another version of the store module as well (a copy of
`jobs/store/sqlite.py`, with a `sqlite_schema` module beside it if its schema differs), alternating the two, run
after run, so that both meet the same load of a shared machine. Every figure is the median of `--runs` runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import resource
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.throughput import OPERATIONS  # noqa: E402
from jobs.kinds import request_from_raw  # noqa: E402
from jobs.model import Attempt, Job, JobRequest, JobStatus  # noqa: E402
from jobs.observe import Observer  # noqa: E402
from jobs.runner import Runner  # noqa: E402
from jobs.scoring.changes import Change, Op  # noqa: E402
from jobs.scoring.history import history_effects  # noqa: E402
from jobs.store import Outcome  # noqa: E402
from jobs.store.sqlite import SqliteJobStore  # noqa: E402

CONTACTS = 300
LEASE = 60.0
FREE_JOBS = 2000
CLAIM_BATCH = 8
OWNER = "bench-runner"


def load_store(path: str | None) -> type[Any]:
    """The store class of the repository, or of a copy of its module (with its own `sqlite_schema` beside it)."""
    if path is None:
        return SqliteJobStore
    file = Path(path).resolve()
    sys.path.insert(0, str(file.parent))
    spec = importlib.util.spec_from_file_location(f"compared_{file.stem}", file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SqliteJobStore  # type: ignore[no-any-return]


def request(i: int, contacts: int = CONTACTS) -> JobRequest:
    op, tags, score = OPERATIONS[i % len(OPERATIONS)]
    return request_from_raw({"operation": op, "target_kind": "contact", "target_id": f"C-{i % contacts:03d}",
                             "tags": tags, "score": score or None})


def queue(store: Any, requests: list[JobRequest]) -> None:
    for start in range(0, len(requests), 1000):
        store.add(requests[start:start + 1000])


# --- 1. the drain -----------------------------------------------------------------------------------------------


class Calls:
    """Time spent per store call kind, over every thread."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.count: dict[str, int] = defaultdict(int)
        self._lock = threading.Lock()

    def timed(self, kind: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return call(*args, **kwargs)
        finally:
            spent = time.perf_counter() - started
            with self._lock:
                self.seconds[kind] += spent
                self.count[kind] += 1

    def ms(self) -> dict[str, float]:
        return {kind: 1000 * self.seconds[kind] / self.count[kind] for kind in self.seconds}


class Worker:
    """The runner's executor, making only the store calls the executor makes for a job that succeeds at the first
    try, with a platform that answers at once. Scores live here, per contact and tag: the claim runs one job per
    key at a time."""

    def __init__(self, store: Any, calls: Calls) -> None:
        self.store = store
        self.calls = calls
        self.scores: dict[tuple[str, str], int] = defaultdict(int)
        self.stop = threading.Event()
        self.observer = Observer()

    def execute(self, job: Job, store: Any, owner: str) -> JobStatus:
        return self.run(job)

    def run(self, job: Job) -> JobStatus:
        request = job.request
        assert request is not None and request.target is not None
        started = time.time()
        name, tags, score = request.kind.name, request.payload.tags, request.payload.score
        changes: list[Change] = []
        if name in ("increase_score", "decrease_score"):
            key = (request.target.id, tags[0].casefold())
            current, delta = self.scores[key], score if name == "increase_score" else -score
            if job.score_before != current:
                self.calls.timed("save_progress(score_before)", self.store.save_progress, OWNER, job.id,
                                 score_before=current)
            self.scores[key] = current + delta
            changes.append(Change(tags[0], Op.ADD, before=current, after=current + delta, delta=delta))
        elif name == "set_score":
            self.scores[(request.target.id, tags[0].casefold())] = score
            changes.append(Change(tags[0], Op.SET, after=score))
        elif name == "add_tag":
            changes.extend(Change(tag, Op.TAG) for tag in tags)
        else:
            changes.extend(Change(tag, Op.UNTAG, after=0) for tag in tags)
        effects = history_effects(job, changes)
        # As the executor does: an idempotent change is marked applied with its outcome, an increment before.
        unsaved = effects if request.kind.idempotent else None
        if unsaved is None:
            self.calls.timed("save_progress(applied, effects)", self.store.save_progress, OWNER, job.id,
                             applied=True, effects=effects)
        summary = request.describe().capitalize() + f" for {request.target}"
        attempt = Attempt(job_id=job.id, started_at=started, ended_at=time.time(), outcome="succeeded",
                          result_code="OK", message=summary)
        self.calls.timed("finish", self.store.finish, OWNER, job.id,
                         Outcome(JobStatus.SUCCEEDED, "OK", summary, attempt=attempt, posted=True,
                                 applied=unsaved is not None, effects=unsaved))
        return JobStatus.SUCCEEDED


class TimedStore:
    """The store as the runner sees it, its claims timed (the worker times the calls it makes)."""

    def __init__(self, store: Any, calls: Calls) -> None:
        self._store = store
        self._calls = calls

    def claim(self, *args: Any, **kwargs: Any) -> Any:
        return self._calls.timed("claim", self._store.claim, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def drain(store_class: type[Any], jobs: int, threads: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as home:
        store = store_class(Path(home) / "jobs.db")
        try:
            queue(store, [request(i) for i in range(jobs)])
            calls = Calls()
            worker = Worker(store, calls)
            # The runner itself, with the store calls of the executor in its place: it claims as it does in
            # `connector run`, for its free workers, and claims again as they free up.
            runner = Runner(TimedStore(store, calls), worker, workers=threads, lease_seconds=LEASE,
                            owner=OWNER)
            cpu = _cpu_seconds()
            started = time.perf_counter()
            try:
                report = runner.drain(report_waiting=False)
            finally:
                runner.close()
            seconds = time.perf_counter() - started
            cpu = _cpu_seconds() - cpu
            counts = store.counts()
            assert counts == {"succeeded": jobs} and report.succeeded == jobs, (counts, report)
        finally:
            store.close()
    return {"jobs_per_s": jobs / seconds, "cpu_ms_per_job": 1000 * cpu / jobs, "ms": calls.ms(),
            "calls": dict(calls.count)}


def _cpu_seconds() -> float:
    """The process's CPU time, every thread's, user and system."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --- 2. the claim behind a blocked backlog ----------------------------------------------------------------------


def claim_cost(store_class: type[Any], blocked: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as home:
        store = store_class(Path(home) / "jobs.db")
        try:
            if blocked:
                # The head of the backlog: tried once, its retry a day away.
                (head,) = store.add([request(1, contacts=1)])
                store.claim(OWNER, 1, LEASE)
                store.finish(OWNER, head.id, Outcome(JobStatus.PENDING, "SERVER_ERROR", "Try again later.",
                                                     next_attempt_at=time.time() + 86400))
                queue(store, [request(1, contacts=1) for _ in range(blocked)])
            queue(store, [request_from_raw({"operation": "add_tag", "target_kind": "contact",
                                            "target_id": f"F-{i}", "tags": "Webinar"}) for i in range(FREE_JOBS)])
            spent, claims, claimed = 0.0, 0, 0
            while True:
                started = time.perf_counter()
                jobs = store.claim(OWNER, CLAIM_BATCH, LEASE)
                spent += time.perf_counter() - started
                if not jobs:
                    break
                claims += 1
                claimed += len(jobs)
                for job in jobs:
                    store.finish(OWNER, job.id, Outcome(JobStatus.SUCCEEDED, "OK", "Done."))
            assert claimed == FREE_JOBS, claimed
        finally:
            store.close()
    return {"ms_per_claim": 1000 * spent / claims, "ms_per_job": 1000 * spent / claimed}


# --- the report -------------------------------------------------------------------------------------------------


def median_of(readings: list[dict[str, Any]], *path: str) -> float:
    values = []
    for reading in readings:
        value: Any = reading
        for step in path:
            value = value[step]
        values.append(value)
    return statistics.median(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--blocked", type=int, default=5000)
    parser.add_argument("--compare", help="another version of jobs/store/sqlite.py, measured alongside")
    args = parser.parse_args()

    stores = {"this store": load_store(None)}
    if args.compare:
        stores = {"compared": load_store(args.compare), **stores}
    drains: dict[str, list[dict[str, Any]]] = defaultdict(list)
    claims: dict[tuple[str, int], list[dict[str, float]]] = defaultdict(list)
    for run in range(args.runs):
        for label, store_class in stores.items():
            reading = drain(store_class, args.jobs, args.threads)
            drains[label].append(reading)
            print(f"run {run + 1} {label}: drain {reading['jobs_per_s']:,.0f} jobs/s, "
                  f"{reading['cpu_ms_per_job']:.3f} CPU ms/job", flush=True)
            for blocked in (0, args.blocked):
                cost = claim_cost(store_class, blocked)
                claims[(label, blocked)].append(cost)
                print(f"run {run + 1} {label}: claim behind {blocked:,} blocked: "
                      f"{cost['ms_per_claim']:.3f} ms/claim, {cost['ms_per_job']:.3f} ms/job", flush=True)

    print(f"\n1. drain: {args.jobs:,} jobs, {args.threads} threads, medians of {args.runs} runs")
    kinds = ["claim", "save_progress(score_before)", "save_progress(applied, effects)", "finish"]
    print("| store | jobs/s | CPU ms/job | " + " | ".join(f"{kind} ms" for kind in kinds) + " | claims |")
    print("|---|---|---|" + "---|" * len(kinds) + "---|")
    for label, readings in drains.items():
        cells = [f"{median_of(readings, 'ms', kind):.3f}" for kind in kinds]
        print(f"| {label} | {median_of(readings, 'jobs_per_s'):,.0f} | {median_of(readings, 'cpu_ms_per_job'):.3f} | "
              + " | ".join(cells)
              + f" | {median_of(readings, 'calls', 'claim'):,.0f} |")
    print(f"\n2. claim cost: {FREE_JOBS:,} free jobs claimed {CLAIM_BATCH} at a time, medians of {args.runs} runs")
    print("| store | blocked rows | ms/claim | ms/job claimed |")
    print("|---|---|---|---|")
    for (label, blocked), readings in claims.items():
        print(f"| {label} | {blocked:,} | {median_of(readings, 'ms_per_claim'):.3f} | "
              f"{median_of(readings, 'ms_per_job'):.3f} |")


if __name__ == "__main__":
    main()
