"""Triggers through the runner: a crossing fires once, its actions are jobs that run like any other, and re-arm,
cooldown, several thresholds and cascades behave as the rules file says."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from connector.sandbox.spotler import SpotlerSandbox
from connector.spotler import SpotlerPlatform
from jobs.model import JobRequest, JobStatus, Target, TargetKind
from jobs.scoring.rules import RuleSet, load_rules
from jobs.scoring.triggers import fired_by, firings_of
from jobs.store import JobFilter
from jobs.store.sqlite import SqliteJobStore
from tests.conftest import FakeClock
from tests.integration.helpers import Rig, make_rig

C1 = Target(kind=TargetKind.CONTACT, id="C-1")

RULES = """
[[triggers]]
name = "Prospect"
tag = "Nutrition"
at_least = 3
[[triggers.actions]]
do = "add_tag"
tags = "Prospect"
[[triggers.actions]]
do = "increase_score"
tags = "Sales ready"
score = 50

[[triggers]]
name = "Fan"
tag = "Nutrition"
at_least = 10
rearm = "every_crossing"
cooldown = "1d"
[[triggers.actions]]
do = "add_tag"
tags = "Fan"

[[triggers]]
name = "Hand over"
tag = "Sales ready"
at_least = 50
[[triggers.actions]]
do = "set_score"
tags = "Handed over"
score = 1
"""


@pytest.fixture
def rules(tmp_path: Path) -> RuleSet:
    path = tmp_path / "rules.toml"
    path.write_text(RULES, encoding="utf-8")
    return load_rules(path)


@pytest.fixture
def rig(tmp_path: Path, store: SqliteJobStore, spotler: SpotlerPlatform, clock: FakeClock,
        rules: RuleSet) -> Iterator[Rig]:
    r = make_rig(tmp_path, store, spotler, clock, rules=rules)
    yield r
    r.close()


@contextmanager
def rig_with(rules: str, tmp_path: Path, store: SqliteJobStore, spotler: SpotlerPlatform,
             clock: FakeClock) -> Iterator[Rig]:
    """A rig whose rules file is `rules`, closed after the block."""
    path = tmp_path / "own-rules.toml"
    path.write_text(rules, encoding="utf-8")
    rig = make_rig(tmp_path, store, spotler, clock, rules=load_rules(path))
    try:
        yield rig
    finally:
        rig.close()


def score(rig: Rig, tag: str, n: int, op: str = "increase_score") -> None:
    rig.queue(operation=op, tags=tag, score=n, target_id="C-1")
    rig.drain()
    rig.drain()  # the actions a firing queued, and what they cascade into


def fired(rig: Rig) -> list[tuple[str, int | None, int | None]]:
    return [(f.trigger, f.before, f.after) for f in firings_of(rig.store, C1)]


def test_a_crossing_fires_once_and_its_actions_run_as_jobs_linked_to_it(rig: Rig, spotler_app: SpotlerSandbox) -> None:
    score(rig, "Nutrition", 2)
    assert fired(rig) == []
    score(rig, "Nutrition", 1)
    # Prospect fired; its Sales ready +50 crossed Hand over's threshold: a cascade, each firing once.
    assert fired(rig) == [("Prospect", 2, 3), ("Hand over", 0, 50)]
    assert spotler_app.scores("C-1") == {"Nutrition": 3, "Prospect": 0, "Sales ready": 50, "Handed over": 1}
    jobs = {j.id: j for j in rig.store.list(JobFilter()).jobs}
    assert all(j.status is JobStatus.SUCCEEDED for j in jobs.values())
    (firing,) = [f for f in firings_of(rig.store, C1) if f.trigger == "Prospect"]
    actions = [j for j in jobs.values() if j.request and j.request.request_id in firing.actions]
    assert sorted(j.request.kind.name for j in actions if j.request) == ["add_tag", "increase_score"]
    assert {j.request.origin.job_id for j in actions if j.request} == {firing.job_id}
    assert {j.request.origin.source for j in actions if j.request} == {"trigger"}
    assert jobs[firing.job_id].request.payload.score == 1  # the job whose change crossed the threshold

    score(rig, "Nutrition", 1)
    score(rig, "Nutrition", 5, op="decrease_score")
    score(rig, "Nutrition", 5)  # below 3 and back above it: a `once` trigger does not fire again
    assert [t for t, _, _ in fired(rig)] == ["Prospect", "Hand over"]


def test_a_job_shows_what_its_change_fired_and_the_action_jobs_each_firing_queued(rig: Rig) -> None:
    """What `jobs show` and the console's job page read: only this job's firings, each with its action jobs."""
    score(rig, "Nutrition", 2)
    score(rig, "Nutrition", 1)
    jobs = rig.store.list(JobFilter(limit=20)).jobs
    crossing = next(j for j in jobs if j.request and j.request.kind.name == "increase_score"
                    and j.request.payload.tags == ["Nutrition"] and j.request.payload.score == 1)
    ((firing, action_ids),) = fired_by(rig.store, crossing)
    assert (firing.trigger, firing.before, firing.after, firing.job_id) == ("Prospect", 2, 3, crossing.id)
    actions = {j.id: j for j in jobs if j.request and j.request.request_id in firing.actions}
    assert sorted(action_ids) == sorted(actions) and len(action_ids) == 2
    # The action job whose +50 crossed "Hand over" shows that firing, with its own single action.
    sales = next(j for j in actions.values() if j.request and j.request.kind.name == "increase_score")
    ((cascade, cascade_ids),) = fired_by(rig.store, sales)
    assert (cascade.trigger, len(cascade_ids)) == ("Hand over", 1)
    earlier = next(j for j in jobs if j.request and j.request.payload.tags == ["Nutrition"]
                   and j.request.payload.score == 2)
    assert fired_by(rig.store, earlier) == []  # its change fired nothing
    tag_only = rig.store.add([JobRequest.from_input(operation="add_tag", tags="Spring")])[0]
    assert fired_by(rig.store, tag_only) == []  # no record: nothing to look up
    unreadable = rig.store.add_raw({"operation": "Increase Score", "target_kind": "contact", "target_id": "C-1",
                                    "tags": "Nutrition", "score": -5})
    assert unreadable.request is None and fired_by(rig.store, unreadable) == []  # input that is not valid


def test_each_record_has_its_own_firings(rig: Rig, clock: FakeClock) -> None:
    score(rig, "Nutrition", 3)
    rig.queue(operation="increase_score", tags="Nutrition", score=4, target_id="C-2")
    rig.drain()
    rig.drain()
    # A `once` trigger that fired for C-1 still fires for C-2: once per record, not once in all.
    c2 = Target(kind=TargetKind.CONTACT, id="C-2")
    assert [f.trigger for f in firings_of(rig.store, C1)] == ["Prospect", "Hand over"]
    assert [f.trigger for f in firings_of(rig.store, c2)] == ["Prospect", "Hand over"]
    assert len(firings_of(rig.store)) == 4  # every record's
    prospect = firings_of(rig.store, c2)[0]
    assert (prospect.tag, prospect.at_least, prospect.before, prospect.after, prospect.record, prospect.at) == (
        "Nutrition", 3, 0, 4, "contact:C-2", clock.now)  # an increment reads the score before: 0
    actions = [j for j in rig.store.list(JobFilter()).jobs if j.request and j.request.request_id in prospect.actions]
    assert len(actions) == len(prospect.actions) == 2
    assert {j.request.origin.firing for j in actions if j.request} == {"Prospect|contact:C-2"}


def test_one_change_over_several_thresholds_fires_each_lowest_first(rig: Rig) -> None:
    score(rig, "Nutrition", 12)
    assert [t for t, _, _ in fired(rig)] == ["Prospect", "Fan", "Hand over"]


def test_every_crossing_fires_again_after_a_fall_but_not_within_its_cooldown(rig: Rig, clock: FakeClock) -> None:
    score(rig, "Nutrition", 10)
    score(rig, "Nutrition", 1, op="decrease_score")
    score(rig, "Nutrition", 1)  # crossed again within a day: the cooldown holds it back
    assert [t for t, _, _ in fired(rig)].count("Fan") == 1
    clock.advance(86400)
    score(rig, "Nutrition", 1, op="decrease_score")
    score(rig, "Nutrition", 1)
    assert [t for t, _, _ in fired(rig)].count("Fan") == 2


def test_a_set_score_crosses_from_the_connector_s_view_of_the_score(rig: Rig) -> None:
    score(rig, "Nutrition", 2, op="set_score")
    score(rig, "Nutrition", 5, op="set_score")  # from 2 (the history) to 5
    score(rig, "Nutrition", 6, op="set_score")  # already above: no crossing
    assert fired(rig)[0] == ("Prospect", 2, 5)
    assert [t for t, _, _ in fired(rig)].count("Prospect") == 1



def test_a_set_score_is_judged_on_its_own_tag_s_history_and_never_crosses_from_above(
    rig: Rig, clock: FakeClock
) -> None:
    score(rig, "Nutrition", 2, op="set_score")
    score(rig, "Sales ready", 40, op="set_score")  # another tag of the same record, set since
    score(rig, "Nutrition", 5, op="set_score")  # from Nutrition's own 2 to 5, whatever Sales ready says
    assert fired(rig)[0] == ("Prospect", 2, 5)
    score(rig, "Nutrition", 12, op="set_score")
    clock.advance(2 * 86400)  # past Fan's cooldown: only a new crossing may fire it again
    score(rig, "Nutrition", 13, op="set_score")  # 12 to 13 is no crossing
    assert [t for t, _, _ in fired(rig)] == ["Prospect", "Hand over", "Fan"]


NEUTRAL_RULES = """
[[triggers]]
name = "Forgiven"
tag = "Complaints"
at_least = 0
[[triggers.actions]]
do = "add_tag"
tags = "Forgiven"
"""


def test_a_threshold_at_0_is_crossed_by_a_removal_from_below_on_any_of_the_job_s_tags_but_never_by_adding_a_tag(
    tmp_path: Path, store: SqliteJobStore, spotler: SpotlerPlatform, clock: FakeClock
) -> None:
    with rig_with(NEUTRAL_RULES, tmp_path, store, spotler, clock) as rig:
        score(rig, "Complaints", -4, op="set_score")  # from a missing score (0) down: no crossing
        for operation in ("add_tag", "remove_tag"):
            rig.queue(operation=operation, tags="Newsletter,Complaints", target_id="C-1")
            rig.drain()
            if operation == "add_tag":  # the score stays -4: adding a tag crosses nothing
                rig.drain()
                assert fired(rig) == []
        # The removal takes Complaints from -4 to 0; that it is the job's second tag changes nothing.
        assert [(f.trigger, f.tag, f.before, f.after) for f in firings_of(rig.store, C1)] == [
            ("Forgiven", "Complaints", -4, 0)]


CRM_RULES = """
[[triggers]]
name = "Prospect"
tag = "Nutrition"
at_least = 3
[[triggers.actions]]
do = "update_record"
fields = { statuscode = "Prospect", leadsourcecode = 8 }
[[triggers.actions]]
do = "create_task"
subject = "Call about the nutrition plan"
description = "Reached 3 points of Nutrition Interest."
due_in_days = 2
[[triggers.actions]]
do = "post"
text = "Became a nutrition prospect"
"""


def test_crm_actions_set_fields_create_a_task_and_post_once_each(
    tmp_path: Path, store: SqliteJobStore, spotler: SpotlerPlatform, clock: FakeClock
) -> None:
    with rig_with(CRM_RULES, tmp_path, store, spotler, clock) as rig:
        score(rig, "Nutrition", 3)
        assert rig.crm.fields("contact", "C-1", ["statuscode", "leadsourcecode"]) == {
            "statuscode": "Prospect", "leadsourcecode": 8}
        (task,) = rig.crm.tasks("contact", "C-1")
        assert (task.subject, task.description) == ("Call about the nutrition plan",
                                                    "Reached 3 points of Nutrition Interest.")
        assert task.due == "2027-01-17"  # two days after the firing (the FakeClock's 2027-01-15)
        texts = [p.text for p in rig.crm.timeline("contact", "C-1")]
        assert any(t.startswith("Became a nutrition prospect (job ") for t in texts)
        assert any(t.startswith("Set statuscode to Prospect, leadsourcecode to 8") for t in texts)
        assert any(t.startswith("Created the task 'Call about the nutrition plan' for the owner") for t in texts)
        jobs = rig.store.list(JobFilter()).jobs
        assert sorted(j.request.kind.name for j in jobs if j.request) == [
            "create_task", "increase_score", "post", "update_record"]
        assert all(j.status is JobStatus.SUCCEEDED for j in jobs)


NOTIFY_RULES = """
[[triggers]]
name = "Hot lead"
tag = "Hot lead"
at_least = 100
[[triggers.actions]]
do = "webhook"
url = "{url}"
data = {{ campaign = "spring" }}
[[triggers.actions]]
do = "email"
to = "sales@gym.example, owner@gym.example"
subject = "{{record}} is a hot lead"
body = "{{record}} reached {{score}} on {{tag}} ({{trigger}})."
"""


def test_a_firing_sends_a_signed_webhook_and_an_email_as_jobs(
    tmp_path: Path, store: SqliteJobStore, spotler: SpotlerPlatform, clock: FakeClock
) -> None:
    from connector.http import ApiSession, Brake
    from connector.mail import MailClient
    from connector.sandbox.smtp import SmtpSink
    from connector.sandbox.webhook import WebhookReceiver
    from connector.webhook import WebhookClient

    with (WebhookReceiver("s3cret-hook", clock=clock) as receiver, SmtpSink(tmp_path / "mail") as sink,
          rig_with(NOTIFY_RULES.format(url=receiver.url), tmp_path, store, spotler, clock) as rig,
          ApiSession("Webhook", pool_size=2, timeout=(2.0, 5.0), brake=Brake("Webhook")) as session):
        rig.executor.services.update({
            "webhook": WebhookClient(session, "s3cret-hook", clock=clock),
            "mail": MailClient(sink.host, sink.port, security="none", username=None, password=None,
                               sender="connector@gym.example"),
        })
        score(rig, "Hot lead", 116)
        (delivery,) = receiver.received
        assert delivery.verified
        body = delivery.body
        assert (body["record"], body["tag"], body["score"], body["trigger"], body["data"]) == (
            {"kind": "contact", "id": "C-1"}, "Hot lead", 116, "Hot lead", {"campaign": "spring"})
        assert delivery.headers["Connector-Delivery"] == body["job_id"]
        (mail,) = sink.received
        assert sorted(mail.rcpt_tos) == ["owner@gym.example", "sales@gym.example"]
        assert mail.subject == "contact C-1 is a hot lead"
        assert "contact C-1 reached 116 on Hot lead (Hot lead)." in mail.body
        assert all(j.status is JobStatus.SUCCEEDED for j in rig.store.list(JobFilter()).jobs)

