"""Claims from several processes, as runners on several hosts make them, on every store: three processes claim and
finish until the queue is drained; no job is handed to two of them, every job is run, and on each key the jobs
ran in creation order. Each process opens the store itself (`open_in_process`); their records of what ran carry a
counter they share, so the order across processes is known."""

from __future__ import annotations

import json
import multiprocessing
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

from jobs.model import JobStatus
from jobs.store import JobFilter, Outcome
from tests.contract.conftest import LEASE, StoreCase, open_in_process

PROCESSES = 3


def _claim_until_drained(opener: tuple[str, ...], now: float, owner: str, out: str, counter: Any,
                         start: Any) -> None:
    store = open_in_process(opener, now)
    ran: list[tuple[int, str, str, int]] = []
    start.wait()
    try:
        while True:
            claimed = store.claim(owner, 2, LEASE)
            if not claimed:
                unfinished = [j for j in store.list(JobFilter(limit=200)).jobs if not j.status.finished]
                if not unfinished:
                    return
                continue
            for job in claimed:
                # While this process holds the job, no other may run one of its key: the counter orders them all.
                with counter.get_lock():
                    counter.value += 1
                    ran.append((counter.value, job.id, job.request.payload.tags[0], job.request.payload.score))
                store.finish(owner, job.id, Outcome(JobStatus.SUCCEEDED, "OK", f"By {owner}."))
    finally:
        store.close()
        Path(out).write_text(json.dumps(ran), encoding="utf-8")


@pytest.mark.processes
def test_runners_in_several_processes_never_share_a_job_nor_break_key_order(case: StoreCase,
                                                                            tmp_path: Path) -> None:
    count = 24 if case.name == "dataverse" else 150  # each Dataverse claim is several sandbox round trips
    jobs = case.store.add([case.req("set_score" if n % 4 == 0 else "increase_score", f"T{n % 5}", n + 1,
                                    target=f"C-{n % 2}") for n in range(count)])
    case.clock.advance(1)
    ctx = multiprocessing.get_context("spawn")
    counter, start = ctx.Value("q", 0), ctx.Barrier(PROCESSES)
    outs = [tmp_path / f"ran-{n}.json" for n in range(PROCESSES)]
    processes = [ctx.Process(target=_claim_until_drained, args=(case.opener, case.clock.now, f"runner-{n}",
                                                                str(outs[n]), counter, start))
                 for n in range(PROCESSES)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=300)
    assert [p.exitcode for p in processes] == [0] * PROCESSES

    ran = sorted(entry for out in outs for entry in json.loads(out.read_text(encoding="utf-8")))
    assert [job_id for job_id, n in Counter(entry[1] for entry in ran).items() if n > 1] == []
    assert sorted(entry[1] for entry in ran) == sorted(job.id for job in jobs)
    assert sum(1 for out in outs if json.loads(out.read_text(encoding="utf-8"))) >= 2, "one process did all"
    by_key: dict[tuple[str, str], list[int]] = defaultdict(list)
    target_of = {job.id: job.request.target.id for job in jobs}
    for _, job_id, tag, score in ran:
        by_key[(target_of[job_id], tag)].append(score)
    expected: dict[tuple[str, str], list[int]] = defaultdict(list)
    for job in jobs:  # creation order
        expected[(job.request.target.id, job.request.payload.tags[0])].append(job.request.payload.score)
    assert by_key == expected
    assert case.store.counts() == {"succeeded": count}
