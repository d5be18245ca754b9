"""A change that is harmless to apply again (an idempotent kind) is marked applied, with its effects (score history,
trigger firings, the jobs they queue), in the write of the job's outcome: one store write per job fewer. What a
user relies on stays: the change is kept in the history once, the timeline shows one post, and a job whose post
failed is not applied again when retried."""

from __future__ import annotations

from typing import Any

import pytest

from config import defaults
from config.settings import RetrySettings
from connector.dataverse.crm import DataverseCrm
from connector.platform import Contact
from connector.sandbox.spotler import SpotlerSandbox
from connector.spotler import SpotlerPlatform
from jobs.app import make_observer
from jobs.executor import Executor
from jobs.model import JobRequest, JobStatus, Target, TargetKind
from jobs.runner import Runner
from jobs.scoring.history import history_of
from jobs.scoring.rules import RuleSet
from jobs.store import Actor, Outcome, StoreUnavailable
from jobs.store.sqlite import SqliteJobStore
from tests.conftest import FakeClock
from tests.integration.dataverse_env import make_record

LEASE = 30.0


class CountingStore:
    """The SQLite store, counting the runner's writes; `dying` finishes fail as a store that stopped answering."""

    def __init__(self, store: SqliteJobStore, dying: int = 0) -> None:
        self._store = store
        self.dying = dying
        self.progress: list[dict[str, Any]] = []
        self.finishes = 0

    def save_progress(self, owner: str, job_id: str, **marks: Any) -> None:
        self.progress.append({k: v for k, v in marks.items() if v is not None and v is not False})
        self._store.save_progress(owner, job_id, **marks)

    def finish(self, owner: str, job_id: str, outcome: Outcome) -> None:
        self.finishes += 1
        if self.dying:
            self.dying -= 1
            raise StoreUnavailable("The job store answered 503.")
        self._store.finish(owner, job_id, outcome)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def runner(store: Any, platform: SpotlerPlatform, crm: Any, clock: FakeClock, owner: str) -> Runner:
    executor = Executor(platform, crm, RetrySettings(), clock=clock, sleep=clock.sleep,
                        observer=make_observer(RuleSet(), store, clock))
    return Runner(store, executor, workers=2, ahead=0, lease_seconds=LEASE, owner=owner, sleep=clock.sleep)


@pytest.fixture
def contact(client: Any, spotler_app: SpotlerSandbox) -> str:
    """A contact in Dynamics 365 (where the posts go) and on the platform, under the same id."""
    contact = make_record(client)
    spotler_app.seed_contact(contact, "ann@example.com")
    return contact


def test_a_tag_is_marked_applied_by_its_outcome_and_an_increment_before_its_post(
    store: SqliteJobStore, spotler: SpotlerPlatform, client: Any, clock: FakeClock, contact: str,
) -> None:
    counted = CountingStore(store)
    tag, increment = store.add([
        JobRequest.from_input(operation="add_tag", tags="Webinar", target_kind="contact", target_id=contact),
        JobRequest.from_input(operation="increase_score", tags="Lead", score=5, target_kind="contact",
                              target_id=contact),
    ])
    run = runner(counted, spotler, DataverseCrm(client), clock, "runner-a")
    try:
        assert run.drain().succeeded == 2
    finally:
        run.close()
    # The increment keeps its reading and its applied mark before posting: applying it twice would be wrong.
    assert counted.progress == [{"score_before": 0}, {"applied": True, "effects": counted.progress[1]["effects"]}]
    assert counted.finishes == 2
    assert all(store.get(job.id).applied_at is not None for job in (tag, increment))
    history = history_of(store, Target(kind=TargetKind.CONTACT, id=contact))
    assert sorted((entry.job_id, entry.change.tag) for entry in history) == sorted(
        [(tag.id, "Webinar"), (increment.id, "Lead")])


def test_a_runner_dying_before_the_outcome_leaves_one_change_in_the_history_and_one_post(
    store: SqliteJobStore, spotler: SpotlerPlatform, spotler_app: SpotlerSandbox, client: Any, clock: FakeClock,
    contact: str,
) -> None:
    crm = DataverseCrm(client)
    (job,) = store.add([JobRequest.from_input(operation="add_tag", tags="Webinar", target_kind="contact",
                                              target_id=contact)])
    # The first runner applies the tag and posts, then cannot write the outcome: the job keeps its lease.
    first = runner(CountingStore(store, dying=defaults.STORE_WRITE_TRIES), spotler, crm, clock, "runner-a")
    try:
        first.drain()
    finally:
        first.close()
    held = store.get(job.id)
    assert (held.status, held.applied_at) == (JobStatus.RUNNING, None)
    assert [post.job_id for post in crm.timeline("contact", contact)] == [job.id]
    clock.advance(LEASE + 1)
    second = runner(store, spotler, crm, clock, "runner-b")
    try:
        assert second.drain().succeeded == 1
    finally:
        second.close()
    done = store.get(job.id)
    assert (done.status, done.attempts) == (JobStatus.SUCCEEDED, 2)  # the first runner's try, and the second's
    assert done.applied_at is not None
    assert spotler_app.scores(contact) == {"Webinar": 0}
    # The second run applied the tag again (harmless), looked for the post before writing one, and kept the change.
    assert [post.job_id for post in crm.timeline("contact", contact)] == [job.id]
    assert [entry.job_id for entry in history_of(store, Target(kind=TargetKind.CONTACT, id=contact))] == [job.id]


def test_a_tag_whose_post_was_refused_is_marked_applied_and_not_applied_again_when_retried(
    store: SqliteJobStore, spotler: SpotlerPlatform, spotler_app: SpotlerSandbox, client: Any, clock: FakeClock,
) -> None:
    missing = "6f9a1c2e-0000-4000-8000-00000000beef"
    spotler_app.seed_contact(missing, "late@example.com")
    crm = DataverseCrm(client)
    (job,) = store.add([JobRequest.from_input(operation="add_tag", tags="Webinar", target_kind="contact",
                                              target_id=missing)])
    run = runner(store, spotler, crm, clock, "runner-a")
    try:
        run.drain()
        failed = store.get(job.id)
        assert (failed.status, failed.result_code) == (JobStatus.FAILED, "TIMELINE_FAILED")
        assert failed.applied_at is not None  # written with the outcome
        client.create("contacts", {"contactid": missing, "lastname": "Late"})
        # Someone removes the tag meanwhile: a second apply would add it back.
        spotler.remove_tags(Contact(external_id=missing), ["Webinar"], ref="someone")
        store.retry(job.id, Actor("ann", "cli"))
        assert run.drain().succeeded == 1
    finally:
        run.close()
    assert spotler_app.scores(missing) == {}
    assert [post.job_id for post in crm.timeline("contact", missing)] == [job.id]
    assert [entry.job_id for entry in history_of(store, Target(kind=TargetKind.CONTACT, id=missing))] == [job.id]
