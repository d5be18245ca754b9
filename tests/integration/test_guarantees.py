"""Guarantees that rest on one line each, each tested by its effect (scores, counts, status):

- an increment whose timeline post is refused, then retried by hand, is applied once (`applied_at`);
- a defect in a kind fails that job with INTERNAL_ERROR and no other;
- a runner never holds more claimed jobs than its workers and the short line ahead of them (`claim_ahead`);
- a stop, mid-drain or during an inline backoff, leaves nothing running and spends no attempt.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from config.settings import RetrySettings
from connector.dataverse.crm import DataverseCrm
from connector.localcrm import LocalCrm
from connector.sandbox.server import SandboxServer
from connector.sandbox.spotler import SpotlerSandbox
from connector.spotler import SpotlerPlatform
from jobs.executor import Executor
from jobs.kinds import registered, request_from_raw
from jobs.model import JobRequest, JobStatus
from jobs.observe import AttemptEnded, AttemptStarted, Claimed, Event, Finished, Released
from jobs.runner import Runner
from jobs.store import Actor
from jobs.store.sqlite import SqliteJobStore
from tests.conftest import FakeClock
from tests.integration.helpers import TestKind, make_rig, wait_until

MISSING = "6f9a1c2e-0000-4000-8000-00000000abcd"


def test_an_increment_whose_post_was_refused_is_applied_once_when_retried_by_hand(
    tmp_path: Path, store: SqliteJobStore, spotler: SpotlerPlatform, spotler_app: SpotlerSandbox, clock: FakeClock,
    client: Any,
) -> None:
    # The contact exists on the platform, but not yet in the CRM: the change applies, the post is refused (404).
    spotler_app.seed_contact(MISSING, "late@example.com")
    executor = Executor(spotler, DataverseCrm(client), RetrySettings(), clock=clock, sleep=clock.sleep)
    runner = Runner(store, executor, workers=2)
    try:
        (job,) = store.add([JobRequest.from_input(operation="increase_score", tags="Lead", score=5,
                                                  target_kind="contact", target_id=MISSING)])
        runner.drain()
        failed = store.get(job.id)
        assert (failed.status, failed.result_code, failed.http_status) == (JobStatus.FAILED, "TIMELINE_FAILED", 404)
        # The sentence says what was done, and why the post was not.
        assert failed.message.startswith(
            f"Increased score Lead by 5 for contact {MISSING}, but the timeline post failed: Dataverse 404: ")
        assert spotler_app.scores(MISSING) == {"Lead": 5}
        client.create("contacts", {"contactid": MISSING, "lastname": "Late"})  # someone fixes the CRM record
        store.retry(job.id, Actor("ann", "cli"))
        runner.drain()
    finally:
        runner.close()
    done = store.get(job.id)
    assert (done.status, done.result_code) == (JobStatus.SUCCEEDED, "OK")
    assert spotler_app.scores(MISSING) == {"Lead": 5}  # the retry only posted: the +5 was not applied again
    assert [p.job_id for p in DataverseCrm(client).timeline("contact", MISSING)] == [job.id]


def test_a_defect_fails_only_its_own_job_with_internal_error(
    tmp_path: Path, store: SqliteJobStore, spotler: SpotlerPlatform, clock: FakeClock
) -> None:
    rig = make_rig(tmp_path, store, spotler, clock)
    finished: list[Finished] = []
    rig.executor.observer.subscribe(lambda e: finished.append(e) if isinstance(e, Finished) else None)
    try:
        with registered(TestKind("broken")):
            broken = store.add([request_from_raw({"operation": "broken"})])[0]
            fine = rig.queue(operation="add_tag", tags="VIP", target_id="C-1")
            report = rig.drain()
        assert (report.succeeded, report.failed) == (1, 1)
        failed = store.get(broken.id)
        assert (failed.status, failed.result_code) == (JobStatus.FAILED, "INTERNAL_ERROR")
        assert "KeyError" in failed.message and "a defect" not in failed.message  # no internals for CRM users
        assert store.get(fine.id).status is JobStatus.SUCCEEDED
        # Subscribers hear of it as of any other outcome.
        assert {(e.job.id, e.outcome.result_code) for e in finished} == {(broken.id, "INTERNAL_ERROR"),
                                                                          (fine.id, "OK")}
    finally:
        rig.close()


def test_a_runner_never_holds_more_claimed_jobs_than_its_workers_and_the_line_ahead(
    tmp_path: Path, store: SqliteJobStore, spotler: SpotlerPlatform, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = threading.Event()
    rig = make_rig(tmp_path, store, spotler, clock, workers=3)
    assert rig.runner.ahead == 1  # half the workers, rounded down, at least one
    held: set[str] = set()
    most = 0
    lock = threading.Lock()

    def watch(event: Event) -> None:
        nonlocal most
        with lock:
            if isinstance(event, Claimed):
                held.add(event.job.id)
                most = max(most, len(held))
            elif isinstance(event, Finished | Released):
                held.discard(event.job.id)

    rig.executor.observer.subscribe(watch)
    ticks = [0]
    tick = rig.runner.tick

    def counted() -> Any:
        ticks[0] += 1
        return tick()

    monkeypatch.setattr(rig.runner, "tick", counted)
    try:
        with registered(TestKind("slow", gate)):
            store.add([request_from_raw({"operation": "slow"}) for _ in range(10)])
            drainer = threading.Thread(target=rig.drain)
            drainer.start()
            # Three on the workers, one claimed and waiting for the first worker to free up.
            wait_until(lambda: store.counts().get("running") == 4, "four jobs claimed")
            # The drain loop goes on ticking while every worker is busy: two more ticks, one of them wholly after
            # the fourth claim, had their chance to claim.
            seen = ticks[0]
            wait_until(lambda: ticks[0] >= seen + 2, "two more ticks")
            assert store.counts() == {"running": 4, "pending": 6}
            gate.set()
            drainer.join(timeout=30)
        assert store.counts() == {"succeeded": 10}
        assert most == 4
    finally:
        gate.set()
        rig.close()


def test_a_stop_mid_drain_lets_running_attempts_finish_and_leaves_the_rest_pending_untried(
    tmp_path: Path, store: SqliteJobStore, spotler: SpotlerPlatform, clock: FakeClock
) -> None:
    gate = threading.Event()
    rig = make_rig(tmp_path, store, spotler, clock, workers=3)
    started: list[str] = []
    rig.executor.observer.subscribe(lambda e: started.append(e.job.id) if isinstance(e, AttemptStarted) else None)
    try:
        with registered(TestKind("slow", gate)):
            jobs = store.add([request_from_raw({"operation": "slow"}) for _ in range(8)])
            drainer = threading.Thread(target=rig.drain)
            drainer.start()
            wait_until(lambda: len(started) == 3, "three attempts started")
            rig.runner.request_stop()  # SIGTERM's handler does this
            gate.set()
            drainer.join(timeout=30)
            assert not drainer.is_alive()
        assert store.counts() == {"succeeded": 3, "pending": 5}  # the three running finished; nothing is running
        untried = [store.get(j.id) for j in jobs if store.get(j.id).status is JobStatus.PENDING]
        assert [(j.attempts, store.attempts(j.id)) for j in untried] == [(0, [])] * 5  # no attempt spent
    finally:
        gate.set()
        rig.close()


def test_jobs_claimed_but_not_yet_started_when_a_stop_comes_are_given_back_untried(
    tmp_path: Path, store: SqliteJobStore, spotler: SpotlerPlatform, clock: FakeClock
) -> None:
    rig = make_rig(tmp_path, store, spotler, clock, workers=3)
    released: list[str] = []

    def stop_on_claim(event: Event) -> None:
        if isinstance(event, Claimed):
            rig.runner.request_stop()  # a SIGTERM between the claim and the workers' start
        elif isinstance(event, Released):
            released.append(event.job.id)

    rig.executor.observer.subscribe(stop_on_claim)
    try:
        with registered(TestKind("quick", threading.Event())):
            jobs = store.add([request_from_raw({"operation": "quick"}) for _ in range(5)])
            assert rig.drain().succeeded == 0
    finally:
        rig.close()
    assert store.counts() == {"pending": 5}  # nothing running, nothing run
    # The four claimed ones (three for the workers, one waiting ahead of them), given back.
    assert sorted(released) == sorted(j.id for j in jobs[:4])
    assert [(store.get(j.id).attempts, store.get(j.id).lease_owner, store.attempts(j.id)) for j in jobs] == \
        [(0, None, [])] * 5


def test_a_stop_during_an_inline_backoff_puts_the_job_back_to_pending_without_another_attempt(
    tmp_path: Path, store: SqliteJobStore, spotler: SpotlerPlatform, spotler_server: SandboxServer,
    spotler_app: SpotlerSandbox, clock: FakeClock,
) -> None:
    # The backoff really waits here (on the stop event, as in production): only a stop can end it within the test.
    retry = RetrySettings(backoff_initial=300, inline_wait_max=600, jitter=0)
    crm = LocalCrm(tmp_path / "timeline.db")
    executor = Executor(spotler, crm, retry, clock=clock)
    waiting = threading.Semaphore(0)
    executor.observer.subscribe(
        lambda event: waiting.release() if isinstance(event, AttemptEnded) and event.attempt.outcome == "retrying"
        else None)
    runner = Runner(store, executor, workers=2, lease_seconds=30)
    jobs = store.add([JobRequest.from_input(operation="increase_score", tags="Lead", score=5, target_kind="contact",
                                            target_id=f"C-{n}") for n in (1, 2, 3)])
    spotler_server.injector.script("503", "503")  # the first request of each of the two claimed jobs
    drainer = threading.Thread(target=runner.drain)
    try:
        drainer.start()
        assert waiting.acquire(timeout=30) and waiting.acquire(timeout=30)  # both wait out a 300 s backoff
        runner.request_stop()
        drainer.join(timeout=30)
        assert not drainer.is_alive()
    finally:
        runner.close()

    assert store.counts() == {"pending": 1, "retrying": 2}  # nothing left running, nothing failed
    tried = [store.get(j.id) for j in jobs if store.attempts(j.id)]
    assert len(tried) == 2
    for job in tried:  # the refused attempt is the only one: the stop spent none
        assert (job.status, job.attempts) == (JobStatus.PENDING, 1)
        assert [(a.outcome, a.result_code) for a in store.attempts(job.id)] == [("retrying", "UNAVAILABLE")]
        assert job.next_attempt_at == clock() + 300  # the stop does not shorten the backoff
        assert job.lease_owner is None
    assert {spotler_app.scores(f"C-{n}").get("Lead") for n in (1, 2, 3)} == {None}  # nothing applied yet

    rig = make_rig(tmp_path, store, spotler, clock)
    try:
        assert rig.drain().succeeded == 1
        clock.advance(300)
        assert rig.drain().succeeded == 2
    finally:
        rig.close()
        crm.close()
    assert [spotler_app.scores(f"C-{n}")["Lead"] for n in (1, 2, 3)] == [5, 5, 5]  # applied once each
