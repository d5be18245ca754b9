"""The execution observer: what a run publishes, in order; durable subscribers' records kept with the outcome;
a failing subscriber never changes a job's outcome, and a failing durable one never loses a record silently."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from connector.sandbox.server import SandboxServer
from connector.spotler import SpotlerPlatform
from jobs.model import Job, JobStatus
from jobs.observe import AttemptEnded, AttemptStarted, ChangeApplied, Claimed, Event, Finished, Released
from jobs.scoring.changes import Change, Op
from jobs.store import Effects, Record
from jobs.store.sqlite import SqliteJobStore
from tests.conftest import FakeClock
from tests.integration.helpers import Rig, make_rig


@pytest.fixture
def rig(tmp_path: Path, store: SqliteJobStore, spotler: SpotlerPlatform, clock: FakeClock) -> Iterator[Rig]:
    r = make_rig(tmp_path, store, spotler, clock)
    yield r
    r.close()


def history(job: Job, changes: Sequence[Change]) -> Effects:
    """A durable subscriber: one history record per change a job applied."""
    assert job.request is not None and job.request.target is not None
    target = job.request.target
    return Effects(tuple(Record("history", f"{target.kind.value}:{target.id}|{change.tag}",
                                {"before": change.before, "after": change.after}) for change in changes))


def test_a_run_publishes_claimed_attempts_changes_and_finished_in_order(rig: Rig) -> None:
    events: list[Event] = []
    rig.executor.observer.subscribe(events.append)
    rig.queue(operation="set_score", tags="Lead", score=5, target_id="C-1")
    rig.drain()
    events.clear()
    job = rig.queue(operation="increase_score", tags="Lead", score=10, target_id="C-1")
    rig.drain()
    assert [type(e) for e in events] == [Claimed, AttemptStarted, ChangeApplied, AttemptEnded, Finished]
    assert all(e.job.id == job.id for e in events)
    change = events[2]
    assert isinstance(change, ChangeApplied) and change.change == Change("Lead", Op.ADD, 5, 15, 10)
    ended, finished = events[3], events[4]
    assert isinstance(ended, AttemptEnded) and ended.attempt.outcome == "succeeded" and ended.seconds >= 0
    assert isinstance(finished, Finished) and finished.outcome.status is JobStatus.SUCCEEDED


def test_a_refused_attempt_is_published_and_kept_with_its_times_and_its_reason(
    rig: Rig, spotler_server: SandboxServer
) -> None:
    events: list[Event] = []
    rig.executor.observer.subscribe(events.append)
    spotler_server.injector.script("503")
    job = rig.queue(operation="add_tag", tags="VIP", target_id="C-1")
    assert rig.drain().succeeded == 1
    kept = rig.store.attempts(job.id)
    assert [e.at for e in events if isinstance(e, AttemptStarted)] == [a.started_at for a in kept]
    ended = [e for e in events if isinstance(e, AttemptEnded)]
    assert [e.job.id for e in ended] == [job.id, job.id]
    assert [e.attempt.outcome for e in ended] == [a.outcome for a in kept] == ["retrying", "succeeded"]
    refused = kept[0]
    assert (refused.result_code, refused.http_status) == ("UNAVAILABLE", 503)
    assert refused.message == "Spotler: Service Unavailable"  # what support staff read
    assert refused.ended_at == refused.started_at  # the clock stands still within an attempt here
    assert ended[0].attempt.message == refused.message
    done = kept[1]
    assert (done.message, done.ended_at) == ("Added tag VIP for contact C-1", done.started_at)
    assert [e.seconds for e in ended] == [0.0, 0.0]


def test_effects_of_a_durable_subscriber_are_written_with_the_applied_mark(rig: Rig) -> None:
    rig.executor.observer.subscribe_durable(history)
    rig.queue(operation="set_score", tags="Lead", score=5, target_id="C-1")
    rig.queue(operation="increase_score", tags="Lead", score=10, target_id="C-1")
    rig.queue(operation="decrease_score", tags="Lead", score=3, target_id="C-1")
    rig.drain()
    entries = rig.store.entries("history", "contact:C-1|Lead")
    assert [e.data for e in entries] == [{"before": None, "after": 5}, {"before": 5, "after": 15},
                                         {"before": 15, "after": 12}]


def test_a_failing_subscriber_changes_nothing_for_the_job(rig: Rig) -> None:
    def broken(event: Event) -> None:
        raise RuntimeError("metrics backend down")

    rig.executor.observer.subscribe(broken)
    job = rig.queue(operation="add_tag", tags="VIP", target_id="C-1")
    assert rig.drain().succeeded == 1
    assert rig.store.get(job.id).status is JobStatus.SUCCEEDED


def test_a_failing_durable_subscriber_fails_the_job_and_marks_nothing_applied(rig: Rig) -> None:
    def broken(job: Job, changes: Sequence[Change]) -> Effects:
        raise RuntimeError("a bug in a rule")

    rig.executor.observer.subscribe_durable(broken)
    job = rig.queue(operation="add_tag", tags="VIP", target_id="C-1")
    assert rig.drain().failed == 1
    failed = rig.store.get(job.id)
    assert (failed.status, failed.result_code, failed.applied_at) == (JobStatus.FAILED, "INTERNAL_ERROR", None)
    assert rig.store.entries("history") == []


def test_a_job_given_back_on_shutdown_is_published_as_released(rig: Rig) -> None:
    events: list[Event] = []
    rig.executor.observer.subscribe(events.append)
    job = rig.queue(operation="add_tag", tags="VIP", target_id="C-1")
    (claimed,) = rig.store.claim(rig.runner.owner, 1, 30)
    rig.runner.request_stop()  # the stop comes between the claim and the worker starting the job
    assert rig.runner._run_one(claimed) is None
    assert [type(e) for e in events] == [Released]
    assert rig.store.get(job.id).status is JobStatus.PENDING
