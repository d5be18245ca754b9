"""The Dataverse CRM against the sandbox, and the whole path of a job row: runner, platform, row, timeline."""

from __future__ import annotations

import json
import threading

import pytest

from config.settings import RetrySettings
from connector import errors
from connector.dataverse.crm import DataverseCrm
from connector.platform import Contact
from connector.sandbox.server import Faults
from jobs.app import make_observer
from jobs.executor import Executor
from jobs.model import JobRequest, JobStatus, Target, TargetKind
from jobs.runner import Runner
from jobs.scoring.history import history_of
from jobs.scoring.rules import load_rules
from jobs.scoring.triggers import firings_of
from jobs.store.dataverse import DataverseJobStore
from tests.integration.dataverse_env import TABLE, client_for, make_record

JOB = "5d3a0b7e9c21"


def drain_with_two_runners(client, sandbox, make_spotler, spotler_server, clock) -> None:
    """Two runners, each with its own Dataverse client (as two hosts would), drain the job table at once."""
    runners = []
    with client_for(sandbox) as second:
        for dv in (client, second):
            store = DataverseJobStore(dv, TABLE, clock=clock)
            platform = make_spotler(spotler_server.url + "/integrationservice-1.1.0", clock=clock)
            executor = Executor(platform, DataverseCrm(dv), RetrySettings(), clock=clock, sleep=clock.sleep)
            runners.append(Runner(store, executor, workers=4, lease_seconds=300))
        threads = [threading.Thread(target=runner.drain) for runner in runners]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        for runner in runners:
            runner.close()


@pytest.mark.parametrize("kind", ["contact", "lead", "account"])
def test_a_post_is_written_once_per_job_even_when_retried(client, kind):
    record = make_record(client, kind)
    crm = DataverseCrm(client, timeline="post")

    crm.post(target_kind=kind, target_id=record, job_id=JOB, text=f"Added tag Webinar (job {JOB})")
    crm.post(target_kind=kind, target_id=record, job_id=JOB, text=f"Added tag Webinar (job {JOB})")
    crm.post(target_kind=kind, target_id=record, job_id="other-job", text="Added tag Trial")

    rows = list(client.query("posts", filter=f"_regardingobjectid_value eq {record}"))
    assert len(rows) == 2
    assert {(r["source"], r["type"]) for r in rows} == {(1, 7)}
    timeline = crm.timeline(kind, record)
    assert [(p.job_id, p.text) for p in timeline] == [
        (JOB, f"Added tag Webinar (job {JOB})"), ("other-job", "Added tag Trial (job other-job)")]
    assert timeline[0].target_kind == kind


def test_a_job_id_that_is_a_prefix_of_another_does_not_count_as_posted(client):
    record = make_record(client)
    crm = DataverseCrm(client)
    crm.post(target_kind="contact", target_id=record, job_id="12", text="first")
    crm.post(target_kind="contact", target_id=record, job_id="1", text="second")
    assert [p.job_id for p in crm.timeline("contact", record)] == ["12", "1"]


def test_notes_when_configured(client):
    record = make_record(client)
    crm = DataverseCrm(client, timeline="annotation", note_subject="Spotler")
    crm.post(target_kind="contact", target_id=record, job_id=JOB, text="Set score Lead to 10 for O'Brien")
    crm.post(target_kind="contact", target_id=record, job_id=JOB, text="Set score Lead to 10 for O'Brien")
    notes = list(client.query("annotations", filter=f"_objectid_value eq {record}"))
    assert [(n["subject"], n["notetext"]) for n in notes] == [(f"Spotler (job {JOB})",
                                                               "Set score Lead to 10 for O'Brien")]
    assert [p.job_id for p in crm.timeline("contact", record)] == [JOB]
    assert list(client.query("posts")) == []


def test_identify_by_crm_id_needs_no_request(client, sandbox):
    before = sandbox.app.api_requests
    assert DataverseCrm(client).identify("contact", "C-1") == Contact(external_id="C-1")
    assert sandbox.app.api_requests == before


def test_identify_by_a_configured_column(client):
    crm = DataverseCrm(client, identify_column="emailaddress1", identify_as="email")
    ann = make_record(client, emailaddress1="ann@example.com")
    nobody = make_record(client)
    assert crm.identify("contact", ann) == Contact(email="ann@example.com")
    with pytest.raises(errors.NotFound, match="no emailaddress1"):
        crm.identify("contact", nobody)
    with pytest.raises(errors.NotFound):
        crm.identify("contact", "00000000-0000-4000-8000-0000000000ff")


def test_a_post_on_a_missing_record_is_a_permanent_error(client):
    crm = DataverseCrm(client)
    with pytest.raises(errors.NotFound):
        crm.post(target_kind="contact", target_id="00000000-0000-4000-8000-0000000000ff", job_id=JOB, text="x")


def test_a_job_row_created_through_the_web_api_is_applied_posted_and_closed(client, sandbox, spotler_app,
                                                                           make_spotler, spotler_server, clock):
    """The issue's "done when": a row a CRM user creates runs on the platform, shows OK, and posts a line."""
    contact = make_record(client, emailaddress1="ann@example.com")
    spotler_app.seed_contact(contact, "ann@example.com")
    row_id = client.create(TABLE.entity_set, {
        "cr_operation": 100000003, "cr_tags": "Webinar", "cr_score": 10,
        "cr_Contact@odata.bind": f"/contacts({contact})",
    })
    store = DataverseJobStore(client, TABLE, clock=clock)
    platform = make_spotler(spotler_server.url + "/integrationservice-1.1.0", clock=clock)
    crm = DataverseCrm(client)
    runner = Runner(store, Executor(platform, crm, RetrySettings(), clock=clock, sleep=clock.sleep),
                    workers=2, lease_seconds=30)
    try:
        report = runner.drain()
    finally:
        runner.close()

    assert report.succeeded == 1
    row = client.get(TABLE.entity_set, row_id)
    assert row["statuscode"] == TABLE.status_reasons.succeeded
    assert row["cr_resultcode"] == "OK"
    assert row["cr_attempts"] == 1
    assert row["cr_attemptlog"].startswith("#1 | ")
    assert spotler_app.scores(contact) == {"Webinar": 10}
    [post] = crm.timeline("contact", contact)
    assert post.job_id == row_id
    assert "Webinar" in post.text
    assert store.get(row_id).status is JobStatus.SUCCEEDED


def test_two_runners_on_one_table_apply_each_job_once(client, sandbox, spotler_app, make_spotler, spotler_server,
                                                      clock):
    contacts = [make_record(client, lastname=f"P{i}") for i in range(4)]
    for contact in contacts:
        spotler_app.seed_contact(contact)
    parts = []
    for i in range(24):
        parts.append({"cr_operation": 100000003, "cr_tags": f"Score {i % 3}", "cr_score": 1,
                      "cr_Contact@odata.bind": f"/contacts({contacts[i % 4]})"})
    for row in parts:
        client.create(TABLE.entity_set, row)
    changes_before = spotler_app.change_count()

    drain_with_two_runners(client, sandbox, make_spotler, spotler_server, clock)

    # Increments are not idempotent: each applied twice would show in the scores and the change log.
    assert spotler_app.change_count() - changes_before == 24
    for i, contact in enumerate(contacts):
        expected: dict[str, int] = {}
        for j in range(24):
            if j % 4 == i:
                expected[f"Score {j % 3}"] = expected.get(f"Score {j % 3}", 0) + 1
        assert spotler_app.scores(contact) == expected
    assert DataverseJobStore(client, TABLE).counts() == {"succeeded": 24}
    for contact in contacts:
        assert len(DataverseCrm(client).timeline("contact", contact)) == 6


def test_on_a_first_try_the_crm_writes_without_looking(client):
    record = make_record(client)
    crm = DataverseCrm(client)
    crm.post(target_kind="contact", target_id=record, job_id=JOB, text="first", may_exist=False)
    # Had it looked, it would have found the first post; a first try never looks (one request saved per job).
    crm.post(target_kind="contact", target_id=record, job_id=JOB, text="again", may_exist=False)
    assert len(crm.timeline("contact", record)) == 2


def test_a_runner_that_died_after_posting_does_not_post_twice(client, spotler_app, make_spotler, spotler_server,
                                                             clock):
    contact = make_record(client)
    spotler_app.seed_contact(contact)
    row_id = client.create(TABLE.entity_set, {"cr_operation": 100000000, "cr_tags": "Webinar",
                                              "cr_Contact@odata.bind": f"/contacts({contact})"})
    store = DataverseJobStore(client, TABLE, clock=clock)
    crm = DataverseCrm(client)
    # What a runner leaves when it dies between the post and the job's outcome: applied, posted, still running.
    [job] = store.claim("dead-runner", 1, 10)
    store.save_progress("dead-runner", job.id, applied=True)
    crm.post(target_kind="contact", target_id=contact, job_id=job.id, text=f"Added tag Webinar (job {job.id})",
             may_exist=False)
    clock.advance(11)
    platform = make_spotler(spotler_server.url + "/integrationservice-1.1.0", clock=clock)
    runner = Runner(store, Executor(platform, crm, RetrySettings(), clock=clock, sleep=clock.sleep),
                    workers=2, lease_seconds=30)
    try:
        assert runner.drain().succeeded == 1
    finally:
        runner.close()
    assert len(crm.timeline("contact", contact)) == 1
    assert [a.outcome for a in store.attempts(row_id)] == ["lease_expired", "succeeded"]


@pytest.mark.parametrize("kind", ["contact", "lead", "account"])
def test_a_task_for_the_record_s_owner_is_created_once_per_job(client, kind):
    owner = client.create("systemusers", {"fullname": "Sam Sales", "internalemailaddress": "sam@gym.example"})
    record = make_record(client, kind, **{"ownerid@odata.bind": f"/systemusers({owner})"})
    crm = DataverseCrm(client)
    for _ in range(2):  # a retry after a lost answer
        crm.create_task(kind, record, subject="Call back", description="Reached 3 points.", due="2027-01-17",
                        ref=JOB)
    rows = list(client.query("tasks", filter=f"_regardingobjectid_value eq {record}"))
    assert len(rows) == 1
    assert (rows[0]["subject"], rows[0]["scheduledend"], rows[0]["_ownerid_value"]) == ("Call back", "2027-01-17",
                                                                                         owner)
    (task,) = crm.tasks(kind, record)
    assert (task.job_id, task.owner, task.description) == (JOB, owner, f"Reached 3 points. (job {JOB})")


def test_updating_a_record_sets_its_fields_and_never_creates_one(client):
    record = make_record(client, "lead")
    crm = DataverseCrm(client)
    crm.update_record("lead", record, {"subject": "Prospect"}, ref=JOB)
    assert crm.fields("lead", record, ["subject"]) == {"subject": "Prospect"}
    gone = "00000000-0000-4000-8000-0000000000ff"
    with pytest.raises(errors.NotFound):
        crm.update_record("lead", gone, {"subject": "Prospect"}, ref=JOB)
    assert not list(client.query("leads", filter=f"leadid eq {gone}"))


def test_a_crossing_on_dynamics_365_updates_the_record_and_creates_the_owner_s_task(
    client, sandbox, spotler_app, make_spotler, spotler_server, clock, tmp_path
):
    """The whole scoring path with Dynamics 365 as job store and CRM: a job row crosses a threshold, the firing and
    its history are in the entries table, the action jobs are rows of the job table, and the record update and the
    task are there to see through the Web API."""
    owner = client.create("systemusers", {"fullname": "Sam Sales"})
    lead = make_record(client, "lead", **{"ownerid@odata.bind": f"/systemusers({owner})"})
    spotler_app.seed_contact(lead, "lee@example.com")
    (tmp_path / "rules.toml").write_text(
        '[[triggers]]\nname = "Prospect"\ntag = "Nutrition Interest"\nat_least = 3\n'
        '[[triggers.actions]]\ndo = "update_record"\nfields = { subject = "Nutrition prospect" }\n'
        '[[triggers.actions]]\ndo = "create_task"\nsubject = "Call about nutrition"\ndue_in_days = 1\n',
        encoding="utf-8")
    client.create(TABLE.entity_set, {"cr_operation": 100000003, "cr_tags": "Nutrition Interest", "cr_score": 3,
                                     "cr_Lead@odata.bind": f"/leads({lead})"})
    store = DataverseJobStore(client, TABLE, clock=clock)
    crm = DataverseCrm(client)
    platform = make_spotler(spotler_server.url + "/integrationservice-1.1.0", clock=clock)
    observer = make_observer(load_rules(tmp_path / "rules.toml"), store, clock)
    runner = Runner(store, Executor(platform, crm, RetrySettings(), clock=clock, sleep=clock.sleep, observer=observer),
                    workers=2, lease_seconds=30)
    try:
        assert runner.drain().succeeded == 3  # the job, and the two actions it queued as rows of the job table
    finally:
        runner.close()

    (firing,) = firings_of(store, Target(kind=TargetKind.LEAD, id=lead))
    assert (firing.trigger, firing.before, firing.after) == ("Prospect", 0, 3)
    assert [e.change.delta for e in history_of(store, Target(kind=TargetKind.LEAD, id=lead))] == [3]
    assert client.get("leads", lead, select=["subject"])["subject"] == "Nutrition prospect"
    (task,) = list(client.query("tasks", filter=f"_regardingobjectid_value eq {lead}"))
    assert (task["subject"], task["_ownerid_value"]) == ("Call about nutrition", owner)
    rows = list(client.query(TABLE.entity_set, select=["cr_payload", "cr_origin", "statuscode"],
                             filter="cr_payload ne null"))
    assert len(rows) == 2 and {r["statuscode"] for r in rows} == {TABLE.status_reasons.succeeded}
    assert {json.loads(r["cr_origin"])["trigger"] for r in rows} == {"Prospect"}


def test_two_runners_keep_each_key_s_order_through_set_increase_set_sequences(
    client, sandbox, spotler_app, make_spotler, spotler_server, clock
):
    """Sets and increments do not commute: only creation order gives the final scores, and the platform's own log
    shows the order each key's changes arrived in, whichever runner sent them."""
    contacts = [make_record(client, lastname="Q")]  # two keys, many jobs each: runners would love to overlap them
    for contact in contacts:
        spotler_app.seed_contact(contact)
    operations = {"set_score": 100000002, "increase_score": 100000003, "decrease_score": 100000004}
    sequence = [("set_score", 10), ("increase_score", 5), ("set_score", 3), ("decrease_score", 2),
                ("increase_score", 7), ("set_score", 1), ("increase_score", 4)]
    expected: dict[tuple[str, str], list[tuple[str, int]]] = {}
    for round_ in range(2 * len(sequence)):
        for i, contact in enumerate(contacts):
            for tag in ("Lead", "Engagement"):
                operation, n = sequence[(round_ + i) % len(sequence)]
                client.create(TABLE.entity_set, {"cr_operation": operations[operation], "cr_tags": tag, "cr_score": n,
                                                 "cr_Contact@odata.bind": f"/contacts({contact})"})
                logged = ("score_set", n) if operation == "set_score" else \
                    ("score_changed", n if operation == "increase_score" else -n)
                expected.setdefault((contact, tag), []).append(logged)

    # Answers that take between 0 and 30 ms: two jobs of one key sent at once would overtake each other.
    spotler_server.injector.faults = Faults(jitter_ms=30, seed=11)
    drain_with_two_runners(client, sandbox, make_spotler, spotler_server, clock)
    spotler_server.injector.faults = Faults()

    assert DataverseJobStore(client, TABLE).counts() == {"succeeded": 28}
    for (contact, tag), changes in expected.items():
        log = [(what, value) for logged_tag, what, value in spotler_app.changes_of(contact)
               if logged_tag == tag and what in ("score_set", "score_changed")]
        assert log == changes, (contact, tag)


def _drain_one_add_tag(client, sandbox, store, spotler_app, make_spotler, spotler_server, clock,
                       faults: tuple[str | None, ...] = ()) -> tuple[str, str, int]:
    """Queue one Add Tag on a new Dynamics 365 contact (SQLite jobs, Dataverse timeline) and drain it, the
    Dataverse sandbox answering the drain's first requests with `faults`. Returns the job, the contact and the
    number of requests the drain sent to Dataverse."""
    contact = make_record(client)
    spotler_app.seed_contact(contact)
    [job] = store.add([JobRequest.from_input(operation="add_tag", tags="Webinar", target_kind="contact",
                                             target_id=contact)])
    platform = make_spotler(spotler_server.url + "/integrationservice-1.1.0", clock=clock)
    runner = Runner(store, Executor(platform, DataverseCrm(client), RetrySettings(), clock=clock, sleep=clock.sleep),
                    workers=1, lease_seconds=30)
    sandbox.server.injector.script(*faults)
    sent = client.session.requests_sent
    try:
        assert runner.drain().succeeded == 1
    finally:
        runner.close()
    return job.id, contact, client.session.requests_sent - sent


def test_a_first_post_is_one_request_and_marks_the_job_posted(client, sandbox, store, spotler_app, make_spotler,
                                                               spotler_server, clock):
    job_id, contact, sent = _drain_one_add_tag(client, sandbox, store, spotler_app, make_spotler, spotler_server,
                                               clock)
    assert sent == 1  # the note's POST: a first try never looks for one
    assert len(DataverseCrm(client).timeline("contact", contact)) == 1
    assert store.get(job_id).posted_at == clock.now


def test_a_post_whose_answer_was_lost_is_not_written_again_when_retried(client, sandbox, store, spotler_app,
                                                                       make_spotler, spotler_server, clock):
    # The note is written, then the connection drops before the answer.
    job_id, contact, _ = _drain_one_add_tag(client, sandbox, store, spotler_app, make_spotler, spotler_server,
                                            clock, faults=("drop",))
    assert [post.job_id for post in DataverseCrm(client).timeline("contact", contact)] == [job_id]
    assert [a.outcome for a in store.attempts(job_id)] == ["retrying", "succeeded"]
