"""The drain loop as an operator sees it: what it reports, how it rides out a job store that does not answer a
claim, how many jobs it asks for and runs at once, what it does with a job another runner took or whose attempts
ran out, and how it closes. The SQLite store is real; `FaultyStore` makes chosen claims fail as a Dynamics 365
store answering 503 would, and counts them."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from config.defaults import CLAIM_RETRY_DELAYS
from config.settings import RetrySettings
from connector.localcrm import LocalCrm
from connector.sandbox.spotler import SpotlerSandbox
from connector.spotler import SpotlerPlatform
from jobs.executor import Executor
from jobs.kinds import registered, request_from_raw
from jobs.model import Job, JobRequest, JobStatus
from jobs.observe import AttemptStarted
from jobs.runner import DrainReport, Runner
from jobs.store import StoreUnavailable
from jobs.store.sqlite import SqliteJobStore
from tests.conftest import FakeClock
from tests.integration.helpers import FaultyStore, TestKind, wait_until


@pytest.fixture
def crm(tmp_path: Path) -> Iterator[LocalCrm]:
    crm = LocalCrm(tmp_path / "timeline.db")
    yield crm
    crm.close()


def runner_on(store: Any, spotler: SpotlerPlatform, crm: LocalCrm, clock: FakeClock, workers: int = 1,
              ahead: int = 0) -> Runner:
    """One job claimed at a time unless `ahead` says otherwise: each claim of these tests is one job."""
    executor = Executor(spotler, crm, RetrySettings(max_attempts=1), clock=clock, sleep=clock.sleep)
    return Runner(store, executor, workers=workers, ahead=ahead, lease_seconds=30, sleep=clock.sleep)


def queue(store: SqliteJobStore, *contacts: str) -> list[Job]:
    return store.add([JobRequest.from_input(operation="add_tag", tags="VIP", target_kind="contact", target_id=c)
                      for c in contacts])


def test_after_a_claim_that_worked_the_drain_rides_out_as_many_failed_claims_as_it_has_pauses(
    store: SqliteJobStore, spotler: SpotlerPlatform, spotler_app: SpotlerSandbox, crm: LocalCrm, clock: FakeClock
) -> None:
    queue(store, "C-1", "C-2", "C-3")
    flaky = FaultyStore(store, failing_claims={2, 3, 4, 5})  # every pause used, after the first claim worked
    runner = runner_on(flaky, spotler, crm, clock)
    try:
        assert runner.drain().succeeded == 3
    finally:
        runner.close()
    assert clock.slept == list(CLAIM_RETRY_DELAYS)
    assert [spotler_app.scores(c) for c in ("C-1", "C-2", "C-3")] == [{"VIP": 0}] * 3


def test_one_failed_claim_more_than_it_has_pauses_ends_the_drain_and_loses_no_job(
    store: SqliteJobStore, spotler: SpotlerPlatform, crm: LocalCrm, clock: FakeClock
) -> None:
    queue(store, "C-1", "C-2")
    flaky = FaultyStore(store, failing_claims=set(range(2, 3 + len(CLAIM_RETRY_DELAYS))))
    runner = runner_on(flaky, spotler, crm, clock)
    try:
        with pytest.raises(StoreUnavailable):
            runner.drain()
    finally:
        runner.close()
    assert store.counts() == {"succeeded": 1, "pending": 1}  # the second job waits for the next drain


def test_the_report_counts_every_outcome_and_progress_sees_each_one(
    store: SqliteJobStore, spotler: SpotlerPlatform, crm: LocalCrm, clock: FakeClock
) -> None:
    queue(store, "C-1", "NOBODY-1", "C-2", "NOBODY-2")
    seen: list[DrainReport] = []
    runner = runner_on(store, spotler, crm, clock, workers=2)
    try:
        report = runner.drain(lambda r: seen.append(dataclasses.replace(r)))
    finally:
        runner.close()
    assert (report.succeeded, report.failed, report.processed) == (2, 2, 4)
    assert 0 <= report.seconds < 60  # wall time of the drain, shown to the operator
    assert seen and seen[-1].processed == 4  # the last progress line is the whole drain
    assert [r.processed for r in seen] == sorted(r.processed for r in seen)


def test_a_runner_closed_twice_is_closed_once(
    store: SqliteJobStore, spotler: SpotlerPlatform, crm: LocalCrm, clock: FakeClock
) -> None:
    queue(store, "C-1")
    runner = runner_on(store, spotler, crm, clock)
    assert runner.drain().succeeded == 1  # the lease renewer has started
    runner.close()
    runner.close()  # as `with` blocks and signal handlers may both do


@pytest.mark.parametrize("ahead", [0, 1])
def test_a_runner_whose_workers_and_line_ahead_are_full_asks_the_store_for_nothing(
    store: SqliteJobStore, spotler: SpotlerPlatform, crm: LocalCrm, clock: FakeClock, ahead: int
) -> None:
    counted = FaultyStore(store)
    runner = runner_on(counted, spotler, crm, clock, ahead=ahead)
    gate = threading.Event()
    try:
        with registered(TestKind("held", gate)):
            store.add([request_from_raw({"operation": "held"}) for _ in range(ahead + 2)])
            assert len(runner.tick()) == 1 + ahead  # one for the worker, the rest waiting for it
            assert (runner.tick(), runner.tick()) == ([], [])
            assert counted.claims == 1  # a claim with no free place would be a request for nothing (Dataverse)
    finally:
        gate.set()
        runner.close()


@pytest.mark.parametrize(("ahead", "claimed"), [(1, 1), (2, 0)])
def test_a_runner_holding_jobs_claims_again_only_once_a_line_ahead_s_worth_of_places_is_free(
    store: SqliteJobStore, spotler: SpotlerPlatform, crm: LocalCrm, clock: FakeClock, ahead: int, claimed: int
) -> None:
    counted = FaultyStore(store)
    runner = runner_on(counted, spotler, crm, clock, workers=2, ahead=ahead)
    gate, done = threading.Event(), threading.Event()
    done.set()
    try:
        with registered(TestKind("quick", done)), registered(TestKind("held", gate)):
            store.add([request_from_raw({"operation": "quick"})])
            store.add([request_from_raw({"operation": "held"}) for _ in range(5)])
            first = runner.tick()
            assert len(first) == 2 + ahead  # two workers and the places ahead
            first[0].result(timeout=30)  # the quick one is done: one place is free
            assert len(runner.tick()) == claimed  # a claim when that is a whole line ahead, none when fewer
            assert runner.tick() == []
            assert counted.claims == 1 + (claimed > 0)
    finally:
        gate.set()
        runner.close()


def test_a_job_whose_attempts_ran_out_with_dead_runners_fails_without_another_try(
    store: SqliteJobStore, spotler: SpotlerPlatform, spotler_app: SpotlerSandbox, crm: LocalCrm, clock: FakeClock
) -> None:
    (job,) = queue(store, "C-1")
    for _ in range(2):  # two runners in turn die holding it (the second claim counts the first death)
        assert len(store.claim("doomed", 1, 30)) == 1
        clock.advance(31)
    executor = Executor(spotler, crm, RetrySettings(max_attempts=2), clock=clock, sleep=clock.sleep)
    runner = Runner(store, executor, workers=1, lease_seconds=30, sleep=clock.sleep)
    sent = spotler.session.requests_sent
    try:
        assert runner.drain().failed == 1
    finally:
        runner.close()
    failed = store.get(job.id)
    # The deaths themselves are in the attempts ("Runner doomed stopped renewing its lease").
    assert (failed.status, failed.result_code, failed.attempts) == (JobStatus.FAILED, "GAVE_UP", 2)
    assert failed.message == "Gave up after 2 attempts, the most retry.max_attempts allows."
    assert [a.outcome for a in store.attempts(job.id)] == ["lease_expired", "lease_expired"]
    assert spotler.session.requests_sent == sent  # no third try
    assert spotler_app.scores("C-1") == {}


def test_a_pool_runs_as_many_jobs_at_once_as_it_has_workers(
    store: SqliteJobStore, spotler: SpotlerPlatform, crm: LocalCrm, clock: FakeClock
) -> None:
    workers = 40  # more than any default thread pool size, whatever the machine
    runner = runner_on(store, spotler, crm, clock, workers=workers)
    started: list[str] = []
    runner.observer.subscribe(lambda e: started.append(e.job.id) if isinstance(e, AttemptStarted) else None)
    gate = threading.Event()
    try:
        with registered(TestKind("held", gate)):
            store.add([request_from_raw({"operation": "held"}) for _ in range(workers)])
            assert len(runner.tick()) == workers
            wait_until(lambda: len(started) == workers, f"{workers} attempts started at once")
            gate.set()
    finally:
        gate.set()
        runner.close()


def test_an_outcome_refused_because_another_runner_took_the_job_is_not_offered_again(
    store: SqliteJobStore, spotler: SpotlerPlatform, crm: LocalCrm, clock: FakeClock
) -> None:
    offers: list[str] = []

    class TakenMeanwhile(FaultyStore):
        def finish(self, owner: str, job_id: str, outcome: Any) -> None:
            offers.append(job_id)
            if len(offers) == 1:  # the lease ran out just before, and another runner took the job
                clock.advance(31)
                assert [j.id for j in store.claim("runner-b", 1, 30)] == [job_id]
            store.finish(owner, job_id, outcome)

    (job,) = queue(store, "C-1")
    runner = runner_on(TakenMeanwhile(store), spotler, crm, clock)
    try:
        assert runner.drain().processed == 0  # left to its new holder
    finally:
        runner.close()
    assert offers == [job.id] and clock.slept == []  # LeaseLost is final: no second offer, no pause
    assert store.get(job.id).lease_owner == "runner-b"
