"""A job store that stops answering (Dynamics 365 returning 5xx) loses nothing and crashes nothing.

Claims that fail are asked again after a pause; a job whose outcome could not be written stays leased until the
lease runs out, then runs again. The Dataverse sandbox's scripted faults decide which request fails.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from config.defaults import STORE_WRITE_TRIES
from config.settings import RetrySettings
from connector.dataverse.client import DataverseClient
from connector.localcrm import LocalCrm
from connector.sandbox.dataverse import DataverseSandbox
from connector.sandbox.server import SandboxServer
from connector.sandbox.spotler import SpotlerSandbox
from connector.spotler import SpotlerPlatform
from jobs.executor import Executor
from jobs.model import JobRequest, JobStatus
from jobs.runner import Runner
from jobs.store.dataverse import DataverseJobStore
from tests.conftest import FakeClock
from tests.integration.dataverse_env import TABLE, make_record

LEASE = 30.0


@pytest.fixture
def rig(
    tmp_path: Path, client: DataverseClient, spotler_app: SpotlerSandbox, spotler_server: SandboxServer,
    make_spotler: Callable[..., SpotlerPlatform], clock: FakeClock,
) -> Iterator[tuple[str, Runner]]:
    """A contact in Dataverse (known to Spotler) and a runner on the Dataverse store, its sleeps not waiting."""
    contact = make_record(client)
    spotler_app.seed_contact(contact)
    spotler = make_spotler(spotler_server.url + "/integrationservice-1.1.0", clock=clock)
    crm = LocalCrm(tmp_path / "timeline.db")
    executor = Executor(spotler, crm, RetrySettings(), clock=clock, sleep=clock.sleep)
    runner = Runner(DataverseJobStore(client, TABLE, clock=clock), executor, workers=2, lease_seconds=LEASE,
                    sleep=clock.sleep)
    yield contact, runner
    runner.close()
    crm.close()


def test_a_claim_the_store_does_not_answer_is_asked_again(
    sandbox: DataverseSandbox, spotler_app: SpotlerSandbox, rig: tuple[str, Runner], clock: FakeClock
) -> None:
    contact, runner = rig
    [job] = runner.store.add([JobRequest.from_input(operation="add_tag", tags="VIP", target_kind="contact",
                                                    target_id=contact)])
    sandbox.server.injector.script("500", "502")  # the first two claims' reads fail
    report = runner.drain()
    assert report.succeeded == 1
    assert clock.slept[:2] == [1.0, 2.0]
    assert runner.store.get(job.id).status is JobStatus.SUCCEEDED


def test_an_outcome_the_store_could_not_record_runs_again_after_the_lease(
    sandbox: DataverseSandbox, spotler_app: SpotlerSandbox, rig: tuple[str, Runner], clock: FakeClock
) -> None:
    contact, runner = rig
    [job] = runner.store.add([JobRequest.from_input(operation="increase_score", tags="Lead", score=7,
                                                    target_kind="contact", target_id=contact)])
    # The claim (two reads and a $batch), the score read before the change and the mark "applied" pass; every
    # write of the outcome fails. (A write that fails inside the attempt is retried with the attempt.)
    sandbox.server.injector.script(None, None, None, None, None, *["500"] * STORE_WRITE_TRIES)
    first = runner.drain()
    assert (first.succeeded, first.failed) == (0, 0)
    assert clock.slept == [0.5, 1.0, 2.0]  # the outcome offered four times, with growing pauses
    assert runner.store.get(job.id).status is JobStatus.RUNNING  # leased, not lost, not failed
    clock.advance(LEASE + 1)
    second = runner.drain()
    assert second.succeeded == 1
    assert [a.outcome for a in runner.store.attempts(job.id)] == ["lease_expired", "succeeded"]
    # The increment ran once: the platform logged one change, and the score is the job's alone.
    changes = [value for tag, what, value in spotler_app.changes_of(contact) if what == "score_changed"]
    assert (changes, spotler_app.scores(contact)) == ([7], {"Lead": 7})


def test_an_outcome_the_store_answers_late_is_offered_again_at_once(
    sandbox: DataverseSandbox, spotler_app: SpotlerSandbox, rig: tuple[str, Runner], clock: FakeClock
) -> None:
    contact, runner = rig
    [job] = runner.store.add([JobRequest.from_input(operation="add_tag", tags="VIP", target_kind="contact",
                                                    target_id=contact)])
    sandbox.server.injector.script(None, None, None, None, "502")  # the claim is three requests
    assert runner.drain().succeeded == 1
    assert runner.store.get(job.id).status is JobStatus.SUCCEEDED

