"""Transient failures are retried until they succeed; permanent ones fail at once. Nothing sleeps for real."""

from __future__ import annotations

import itertools
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from config.settings import RetrySettings
from connector.sandbox.server import Faults, SandboxServer
from connector.sandbox.spotler import SpotlerSandbox
from connector.spotler import SpotlerPlatform
from jobs.model import Job, JobStatus
from jobs.runner import DrainReport
from jobs.store import Actor
from jobs.store.sqlite import SqliteJobStore
from tests.conftest import HANG, FakeClock
from tests.integration.helpers import Rig, make_rig


@pytest.fixture
def rig(tmp_path: Path, store: SqliteJobStore, spotler: SpotlerPlatform, clock: FakeClock) -> Iterator[Rig]:
    r = make_rig(tmp_path, store, spotler, clock, retry=RetrySettings(max_attempts=4, jitter=0))
    yield r
    r.close()


def _outcomes(rig: Rig, job_id: str) -> list[tuple[str, str | None, int | None]]:
    return [(a.outcome, a.result_code, a.http_status) for a in rig.store.attempts(job_id)]


def test_429_waits_the_retry_after_then_succeeds(rig: Rig, spotler_server: SandboxServer, clock: FakeClock) -> None:
    spotler_server.injector.faults = Faults(retry_after=3)
    spotler_server.injector.script("429")
    job = rig.queue(operation="add_tag", tags="VIP", target_id="C-1")
    assert rig.drain().succeeded == 1
    assert clock.slept == [3.0]
    assert _outcomes(rig, job.id) == [("retrying", "RATE_LIMITED", 429), ("succeeded", "OK", None)]
    assert rig.store.get(job.id).attempts == 2


@pytest.mark.parametrize("fault", ["503", "502", "500", "reset"])
def test_server_errors_and_resets_are_retried_with_backoff(
    rig: Rig, spotler_server: SandboxServer, spotler_app: SpotlerSandbox, clock: FakeClock, fault: str
) -> None:
    spotler_server.injector.script(fault, fault)
    job = rig.queue(operation="set_score", tags="Lead", score=8, target_id="C-1")
    assert rig.drain().succeeded == 1
    assert clock.slept == [1.0, 2.0]  # exponential backoff from 1 s, jitter off
    assert spotler_app.scores("C-1") == {"Lead": 8}
    assert [o for o, _, _ in _outcomes(rig, job.id)] == ["retrying", "retrying", "succeeded"]


def test_a_response_that_never_comes_is_retried(
    rig: Rig, spotler_server: SandboxServer, spotler_app: SpotlerSandbox
) -> None:
    spotler_server.injector.faults = Faults(hang_seconds=HANG)  # the client gives up after READ_TIMEOUT
    spotler_server.injector.script("timeout")
    job = rig.queue(operation="add_tag", tags="VIP", target_id="C-1")
    assert rig.drain().succeeded == 1
    assert _outcomes(rig, job.id)[0][:2] == ("retrying", "OUTCOME_UNKNOWN")
    assert spotler_app.scores("C-1") == {"VIP": 0}


def test_an_increment_applied_then_dropped_is_not_applied_twice(
    rig: Rig, spotler_server: SandboxServer, spotler_app: SpotlerSandbox
) -> None:
    rig.queue(operation="set_score", tags="Lead", score=10, target_id="C-1")
    rig.drain()
    # The read before the change passes, the change is made and its answer lost.
    spotler_server.injector.script(None, "drop")
    job = rig.queue(operation="increase_score", tags="Lead", score=5, target_id="C-1")
    assert rig.drain().succeeded == 1
    assert spotler_app.scores("C-1") == {"Lead": 15}
    assert rig.store.get(job.id).score_before == 10
    assert [o for o, _, _ in _outcomes(rig, job.id)] == ["retrying", "succeeded"]


def test_an_increment_whose_request_never_arrived_is_sent_again(
    rig: Rig, spotler_server: SandboxServer, spotler_app: SpotlerSandbox
) -> None:
    spotler_server.injector.script(None, "reset")  # the change is refused before it is read: not applied
    rig.queue(operation="decrease_score", tags="Lead", score=4, target_id="C-1")
    assert rig.drain().succeeded == 1
    assert spotler_app.scores("C-1") == {"Lead": -4}


@pytest.mark.parametrize(
    ("target", "score", "code", "status"),
    [("NOBODY", 5, "CONTACT_NOT_FOUND", 404)],
)
def test_permanent_errors_fail_at_once(rig: Rig, target: str, score: int, code: str, status: int) -> None:
    job = rig.queue(operation="set_score", tags="Lead", score=score, target_id=target)
    assert rig.drain().failed == 1
    done = rig.store.get(job.id)
    assert (done.status, done.result_code, done.http_status) == (JobStatus.FAILED, code, status)
    assert _outcomes(rig, job.id) == [("failed", code, status)]


def test_a_400_fails_at_once_with_invalid_input(
    rig: Rig, spotler: SpotlerPlatform, spotler_server: SandboxServer
) -> None:
    # The sandbox refuses what the API would refuse; point the set route at a body it cannot accept.
    spotler.routes["set_score"] = ("POST", "contact/{contact}/tags")
    job = rig.queue(operation="set_score", tags="Lead", score=3, target_id="C-1")
    assert rig.drain().failed == 1
    assert _outcomes(rig, job.id) == [("failed", "INVALID_INPUT", 400)]


def test_attempts_exhausted_fail_with_the_last_error(rig: Rig, spotler_server: SandboxServer) -> None:
    spotler_server.injector.script("503", "503", "503", "503")
    job = rig.queue(operation="add_tag", tags="VIP", target_id="C-1")
    assert rig.drain().failed == 1
    done = rig.store.get(job.id)
    assert (done.status, done.result_code, done.http_status) == (JobStatus.FAILED, "UNAVAILABLE", 503)
    assert done.message.startswith("Gave up after 4 attempts, the most retry.max_attempts allows: ")
    assert [o for o, _, _ in _outcomes(rig, job.id)] == ["retrying", "retrying", "retrying", "failed"]


def test_a_long_retry_after_puts_the_job_back_to_pending(
    rig: Rig, spotler_server: SandboxServer, clock: FakeClock
) -> None:
    spotler_server.injector.faults = Faults(retry_after=120)
    spotler_server.injector.script("429")
    job = rig.queue(operation="add_tag", tags="VIP", target_id="C-1")
    first = rig.drain()
    assert (first.succeeded, first.failed, first.retrying) == (0, 0, 1)
    waiting = rig.store.get(job.id)
    assert waiting.display_status == "retrying"
    assert (waiting.result_code, waiting.http_status) == ("RATE_LIMITED", 429)  # why it waits
    assert waiting.next_attempt_at == pytest.approx(clock() + 120)
    assert clock.slept == []
    clock.advance(120)
    assert rig.drain().succeeded == 1


@pytest.mark.parametrize(("operation", "score"), [("increase_score", 5), ("add_tag", None)])
def test_only_the_timeline_post_is_retried_when_only_it_fails(
    rig: Rig, spotler: SpotlerPlatform, spotler_app: SpotlerSandbox, monkeypatch: pytest.MonkeyPatch,
    operation: str, score: int | None,
) -> None:
    from connector import errors

    calls = {"n": 0}
    real_post = rig.crm.post

    def flaky_post(**kwargs: str) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise errors.Unavailable("Timeline is down", http_status=503)
        real_post(**kwargs)

    monkeypatch.setattr(rig.crm, "post", flaky_post)
    job = rig.queue(operation=operation, tags="Lead", score=score, target_id="C-1")
    sent = spotler.session.requests_sent
    assert rig.drain().succeeded == 1
    assert [a.outcome for a in rig.store.attempts(job.id)] == ["retrying", "succeeded"]
    assert spotler_app.scores("C-1") == {"Lead": score or 0}  # applied once
    assert spotler_app.change_count() == 1
    assert len(rig.crm.timeline("contact", "C-1")) == 1
    # The retry sent nothing to the platform: one attempt's requests (an increment reads the score first).
    assert spotler.session.requests_sent - sent == {"increase_score": 2, "add_tag": 1}[operation]


def test_an_increment_retried_by_hand_after_a_later_job_ran_is_applied(
    rig: Rig, spotler_server: SandboxServer, spotler_app: SpotlerSandbox
) -> None:
    rig.queue(operation="set_score", tags="Lead", score=5, target_id="C-1")
    rig.drain()
    spotler_server.injector.script(None, "503", "503", "503", "503")  # the read passes, every change fails
    first = rig.queue(operation="increase_score", tags="Lead", score=10, target_id="C-1")
    assert rig.drain().failed == 1
    assert rig.store.get(first.id).score_before == 5
    rig.queue(operation="increase_score", tags="Lead", score=10, target_id="C-1")  # runs while the first is failed
    rig.drain()
    assert spotler_app.scores("C-1") == {"Lead": 15}
    rig.store.retry(first.id, Actor("ann", "cli"))
    assert rig.drain().succeeded == 1
    # 15 = 5 + 10 must not be taken for "the first job's change was applied": it was the second job's.
    assert spotler_app.scores("C-1") == {"Lead": 25}


def _add_tag_through(
    faults: tuple[str, ...], retry: RetrySettings, tmp_path: Path, store: SqliteJobStore, spotler: SpotlerPlatform,
    spotler_server: SandboxServer, clock: FakeClock, **rig_args: Any,
) -> tuple[Job, DrainReport]:
    """One Add Tag drained by a rig with `retry`, the platform answering its first requests with `faults`."""
    rig = make_rig(tmp_path, store, spotler, clock, retry=retry, **rig_args)
    try:
        spotler_server.injector.script(*faults)
        job = rig.queue(operation="add_tag", tags="VIP", target_id="C-1")
        return job, rig.drain()
    finally:
        rig.close()


def test_a_single_attempt_budget_says_attempt_in_the_singular(
    tmp_path: Path, store: SqliteJobStore, spotler: SpotlerPlatform, spotler_server: SandboxServer, clock: FakeClock
) -> None:
    job, report = _add_tag_through(("503",), RetrySettings(max_attempts=1), tmp_path, store, spotler, spotler_server,
                                   clock)
    assert report.failed == 1
    assert store.get(job.id).message.startswith("Gave up after 1 attempt, the most retry.max_attempts allows: ")


def test_a_wait_of_exactly_inline_wait_max_is_waited_inline(
    tmp_path: Path, store: SqliteJobStore, spotler: SpotlerPlatform, spotler_server: SandboxServer, clock: FakeClock
) -> None:
    job, report = _add_tag_through(("503",), RetrySettings(backoff_initial=2, inline_wait_max=2, jitter=0), tmp_path,
                                   store, spotler, spotler_server, clock)
    assert report.succeeded == 1  # in the same drain, not put back to pending
    assert clock.slept == [2.0]
    assert [a.outcome for a in store.attempts(job.id)] == ["retrying", "succeeded"]


@pytest.mark.parametrize(("waited", "left"), [(120.0, 180.0), (300.0, 0.0)])
def test_a_stop_during_an_inline_wait_leaves_the_job_the_rest_of_it(
    tmp_path: Path, store: SqliteJobStore, spotler: SpotlerPlatform, spotler_server: SandboxServer, clock: FakeClock,
    waited: float, left: float,
) -> None:
    stop = threading.Event()

    def stopped_after(seconds: float) -> None:  # `waited` seconds into the wait, a SIGTERM
        clock.advance(waited)
        stop.set()

    job, report = _add_tag_through(("503",), RetrySettings(backoff_initial=300, inline_wait_max=600, jitter=0),
                                   tmp_path, store, spotler, spotler_server, clock, sleep=stopped_after, stop=stop)
    assert report.succeeded == 0
    back = store.get(job.id)
    assert (back.status, back.attempts, back.lease_owner) == (JobStatus.PENDING, 1, None)
    assert back.next_attempt_at == clock() + left


def test_backoff_doubles_up_to_its_cap(
    tmp_path: Path, store: SqliteJobStore, spotler: SpotlerPlatform, spotler_server: SandboxServer, clock: FakeClock
) -> None:
    retry = RetrySettings(max_attempts=5, backoff_initial=1, backoff_max=3, jitter=0, inline_wait_max=60)
    _, report = _add_tag_through(("503",) * 4, retry, tmp_path, store, spotler, spotler_server, clock)
    assert report.succeeded == 1
    assert clock.slept == [1.0, 2.0, 3.0, 3.0]


# --- the retry budget: time first, attempts second -------------------------------------------------------------


def _drain_until_final(rig: Rig, clock: FakeClock) -> None:
    """Drain, moving the clock to each retry that comes due, until nothing is left waiting."""
    while True:
        report = rig.drain()
        if not report.retrying:
            return
        assert report.next_retry_at is not None
        clock.advance(max(0.0, report.next_retry_at - clock()))


def _waits(rig: Rig, job_id: str) -> list[float]:
    """The time between one try's start and the next's."""
    starts = [a.started_at for a in rig.store.attempts(job_id)]
    return [later - earlier for earlier, later in itertools.pairwise(starts)]


@pytest.mark.parametrize(("max_age", "tries"), [(10, 4), (11, 5)])
def test_transient_errors_are_retried_until_the_time_budget_runs_out(
    tmp_path: Path, store: SqliteJobStore, spotler: SpotlerPlatform, spotler_server: SandboxServer, clock: FakeClock,
    max_age: float, tries: int,
) -> None:
    spotler_server.injector.faults = Faults(error_rate=1.0)  # down for good
    retry = RetrySettings(max_age=max_age, max_attempts=100, backoff_initial=1, backoff_max=4, jitter=0,
                          inline_wait_max=60)
    rig = make_rig(tmp_path, store, spotler, clock, retry=retry)
    try:
        job = rig.queue(operation="add_tag", tags="VIP", target_id="C-1")
        assert rig.drain().failed == 1
    finally:
        rig.close()
    # Tries at 0, 1, 3, 7 and 11 s, as long as each starts within the budget (a try at exactly 11 s is within 11 s).
    waits = [1.0, 2.0, 4.0, 4.0][:tries - 1]
    assert clock.slept == waits
    done = store.get(job.id)
    assert (done.status, done.result_code, done.attempts) == (JobStatus.FAILED, "UNAVAILABLE", tries)
    assert done.message.startswith(f"Gave up after {sum(waits):.0f} s and {tries} attempts, the longest "
                                   f"retry.max_age ({max_age} s) allows: ")
    assert [a.outcome for a in store.attempts(job.id)] == ["retrying"] * (tries - 1) + ["failed"]


def test_the_time_budget_counts_from_the_first_try_across_claims_and_anew_after_a_manual_retry(
    tmp_path: Path, store: SqliteJobStore, spotler: SpotlerPlatform, spotler_server: SandboxServer, clock: FakeClock
) -> None:
    spotler_server.injector.faults = Faults(error_rate=1.0)
    # Every wait puts the job back to pending: each try is a claim of its own, and the budget's start is read back.
    retry = RetrySettings(max_age=600, max_attempts=100, backoff_initial=60, backoff_max=240, jitter=0,
                          inline_wait_max=0)
    rig = make_rig(tmp_path, store, spotler, clock, retry=retry)
    try:
        job = rig.queue(operation="add_tag", tags="VIP", target_id="C-1")
        clock.advance(3600)  # queued an hour before the runner first gets to it: the budget starts with the try
        _drain_until_final(rig, clock)
        assert _waits(rig, job.id) == [60.0, 120.0, 240.0]  # tries at 0, 1, 3 and 7 min; the next, 11, is too late
        done = store.get(job.id)
        assert done.message.startswith("Gave up after 7 min and 4 attempts, the longest retry.max_age (10 min) "
                                       "allows: ")
        clock.advance(86_400)
        rig.store.retry(job.id, Actor("ann", "cli"))
        _drain_until_final(rig, clock)
    finally:
        rig.close()
    # A day later, retried by hand: a budget of its own, not "a day past the first try".
    assert store.get(job.id).message.startswith("Gave up after 7 min and 4 attempts")
    assert _waits(rig, job.id)[4:] == [60.0, 120.0, 240.0]


def test_with_the_default_settings_the_time_budget_ends_retrying_not_the_attempt_cap(
    tmp_path: Path, store: SqliteJobStore, spotler: SpotlerPlatform, spotler_server: SandboxServer, clock: FakeClock
) -> None:
    spotler_server.injector.faults = Faults(error_rate=1.0)
    rig = make_rig(tmp_path, store, spotler, clock, retry=RetrySettings(jitter=0))  # the defaults, without chance
    try:
        job = rig.queue(operation="add_tag", tags="VIP", target_id="C-1")
        _drain_until_final(rig, clock)
    finally:
        rig.close()
    # Waits double from 1 s to the 15-minute cap and stay there, until the next try would fall past 24 h.
    assert _waits(rig, job.id) == [2.0 ** n for n in range(10)] + [900.0] * 94
    done = store.get(job.id)
    assert (done.status, done.attempts) == (JobStatus.FAILED, 105)
    assert done.message.startswith("Gave up after 23 h 47 min and 105 attempts, the longest retry.max_age (24 h) "
                                   "allows: ")


def test_the_attempt_cap_ends_retrying_first_when_the_waits_are_short(
    tmp_path: Path, store: SqliteJobStore, spotler: SpotlerPlatform, spotler_server: SandboxServer, clock: FakeClock
) -> None:
    spotler_server.injector.faults = Faults(error_rate=1.0)
    retry = RetrySettings(max_attempts=6, backoff_initial=1, backoff_max=1, jitter=0)  # a day's budget: never reached
    job, report = _add_tag_through((), retry, tmp_path, store, spotler, spotler_server, clock)
    assert report.failed == 1
    assert clock.slept == [1.0] * 5
    assert store.get(job.id).message.startswith("Gave up after 6 attempts, the most retry.max_attempts allows: ")
    assert [a.outcome for a in store.attempts(job.id)] == ["retrying"] * 5 + ["failed"]


def test_an_attempt_log_that_lost_its_lines_counts_the_budget_from_this_claim(
    tmp_path: Path, store: SqliteJobStore, spotler: SpotlerPlatform, spotler_server: SandboxServer, clock: FakeClock
) -> None:
    """The budget of a job put back to pending starts at its oldest counted line; with none left (a Dataverse log
    edited by hand), at the try under way: a job is never failed for a start it cannot read."""
    spotler_server.injector.faults = Faults(error_rate=1.0)
    retry = RetrySettings(max_age=600, backoff_initial=60, jitter=0, inline_wait_max=0)
    rig = make_rig(tmp_path, store, spotler, clock, retry=retry)
    try:
        job = rig.queue(operation="add_tag", tags="VIP", target_id="C-1")
        assert rig.drain().retrying == 1
        with sqlite3.connect(tmp_path / "jobs.db") as db:
            db.execute("DELETE FROM attempts WHERE job_id = ?", (job.id,))
        clock.advance(3600)  # an hour after the first try: its budget would be spent
        assert rig.drain().retrying == 1
    finally:
        rig.close()
    back = store.get(job.id)
    assert (back.status, back.attempts) == (JobStatus.PENDING, 2)


def test_a_permanent_error_fails_at_once_whatever_the_budget(rig: Rig) -> None:
    rig.executor.policy = RetrySettings()  # a day and 200 attempts to spend
    job = rig.queue(operation="set_score", tags="Lead", score=5, target_id="NOBODY")
    assert rig.drain().failed == 1
    assert _outcomes(rig, job.id) == [("failed", "CONTACT_NOT_FOUND", 404)]
    assert rig.clock.slept == []


def test_a_429_waits_its_retry_after_or_the_backoff_whichever_is_longer(
    rig: Rig, spotler_server: SandboxServer, clock: FakeClock
) -> None:
    rig.executor.policy = RetrySettings(max_attempts=10, backoff_initial=1, backoff_max=900, jitter=0,
                                        inline_wait_max=60)
    spotler_server.injector.faults = Faults(retry_after=3)
    spotler_server.injector.script("429", "503", "503", "429")
    rig.queue(operation="add_tag", tags="VIP", target_id="C-1")
    assert rig.drain().succeeded == 1
    # The first 429 asks for more than the backoff's 1 s; by the fourth try the backoff (8 s) is the longer. (The
    # brake's pause of 3 s is over when the job's own wait is: it adds no sleep of its own.)
    assert clock.slept == [3.0, 2.0, 4.0, 8.0]
