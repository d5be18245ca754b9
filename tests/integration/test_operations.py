"""Every operation's effect, end to end: store -> runner -> executor -> platform adapter -> sandbox over loopback.

Each test runs once per platform (`platform_case`: Spotler and Mautic) and reads the effect back through the
adapter's `read_scores`, so one test states the semantics for both.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from connector.platform import Contact
from jobs.model import JobStatus
from jobs.store.sqlite import SqliteJobStore
from tests.conftest import FakeClock, PlatformCase
from tests.integration.helpers import Rig, make_rig


@pytest.fixture
def rig(tmp_path: Path, store: SqliteJobStore, platform_case: PlatformCase, clock: FakeClock) -> Iterator[Rig]:
    r = make_rig(tmp_path, store, platform_case.platform, clock)
    yield r
    r.close()


def test_add_tag_tags_the_contact_and_creates_missing_tags(rig: Rig, platform_case: PlatformCase) -> None:
    job = rig.queue(operation="Add Tag", tags="Webinar; VIP", target_id="C-1")
    report = rig.drain()
    assert report.succeeded == 1
    assert platform_case.scores() == {"VIP": 0, "Webinar": 0}
    assert {"VIP", "Webinar"} <= set(platform_case.tag_names())
    done = rig.store.get(job.id)
    assert (done.status, done.result_code) == (JobStatus.SUCCEEDED, "OK")
    assert done.message == "Added tag Webinar, VIP for contact C-1"


def test_tag_only_job_creates_the_tag_without_tagging_anyone(rig: Rig, platform_case: PlatformCase) -> None:
    job = rig.queue(operation="add_tag", tags="Spring campaign", target_kind=None)
    rig.drain()
    assert "Spring campaign" in platform_case.tag_names()
    assert all(platform_case.scores(f"C-{i}") == {} for i in range(1, 6))
    done = rig.store.get(job.id)
    assert (done.status, done.message) == (JobStatus.SUCCEEDED, "Added tag Spring campaign (tag only)")
    assert done.posted_at is None  # no record, no timeline


def test_remove_tag_removes_several_and_a_missing_tag_is_success(rig: Rig, platform_case: PlatformCase) -> None:
    rig.queue(operation="add_tag", tags="A, B, C", target_id="C-1")
    rig.queue(operation="set_score", tags="B", score=9, target_id="C-1")
    removal = rig.queue(operation="Remove Tag", tags="A; B; Never had it", target_id="C-1")
    rig.drain()
    assert platform_case.scores() == {"C": 0}
    assert rig.store.get(removal.id).status is JobStatus.SUCCEEDED


def test_set_score_sets_exactly_including_negative_and_creates_the_tag(rig: Rig, platform_case: PlatformCase) -> None:
    rig.queue(operation="set_score", tags="Lead", score=50, target_id="C-1")
    rig.queue(operation="set_score", tags="Lead", score=-7, target_id="C-1")
    rig.drain()
    assert platform_case.scores() == {"Lead": -7}
    assert "Lead" in platform_case.tag_names()


def test_increase_and_decrease_start_a_missing_tag_at_zero(rig: Rig, platform_case: PlatformCase) -> None:
    rig.queue(operation="increase_score", tags="Lead", score=10, target_id="C-1")
    rig.queue(operation="decrease_score", tags="Lead", score=4, target_id="C-1")
    rig.queue(operation="decrease_score", tags="Churn", score=3, target_id="C-1")
    rig.drain()
    assert platform_case.scores() == {"Churn": -3, "Lead": 6}


def test_remove_score_leaves_no_score_at_all(rig: Rig, platform_case: PlatformCase) -> None:
    rig.queue(operation="set_score", tags="Lead", score=30, target_id="C-1")
    rig.queue(operation="remove_score", tags="Lead", target_id="C-1")
    rig.drain()
    assert "Lead" not in platform_case.scores()


def test_jobs_on_one_key_apply_in_creation_order(rig: Rig, platform_case: PlatformCase) -> None:
    for score in (1, 2, 3, 4, 5, 6, 7, 8, 9, 42):
        rig.queue(operation="set_score", tags="Lead", score=score, target_id="C-2")
    changes = [5, -2, 7, -1, 3, -4, 6, 1, -8, 2]
    for delta in changes:
        rig.queue(operation="increase_score" if delta > 0 else "decrease_score", tags="Engagement",
                  score=abs(delta), target_id="C-2")
    rig.drain()
    assert platform_case.scores("C-2") == {"Lead": 42, "Engagement": sum(changes)}
    # The platform's own log shows the order, which a final sum cannot.
    assert [delta for tag, delta in platform_case.score_changes("C-2") if tag == "Engagement"] == changes


def test_each_success_gets_exactly_one_timeline_post(rig: Rig) -> None:
    first = rig.queue(operation="add_tag", tags="VIP", target_id="C-3")
    second = rig.queue(operation="increase_score", tags="Lead", score=5, target_id="C-3")
    rig.drain()
    # Different tags: the two jobs run side by side, and post in either order.
    posts = {p.job_id: p.text for p in rig.crm.timeline("contact", "C-3")}
    assert sorted(posts) == sorted([first.id, second.id]) and len(rig.crm.timeline("contact", "C-3")) == 2
    assert posts[second.id] == f"Increased score Lead by 5 (job {second.id})"


def test_an_unknown_contact_fails_with_contact_not_found_and_blocks_nothing(
    rig: Rig, platform_case: PlatformCase
) -> None:
    missing = rig.queue(operation="add_tag", tags="VIP", target_id="NOBODY")
    fine = rig.queue(operation="add_tag", tags="VIP", target_id="C-1")
    report = rig.drain()
    assert (report.succeeded, report.failed) == (1, 1)
    failed = rig.store.get(missing.id)
    assert (failed.status, failed.result_code) == (JobStatus.FAILED, "CONTACT_NOT_FOUND")
    # Spotler answers 404; Mautic's search answers 200 with nobody in it.
    assert failed.http_status == {"spotler": 404, "mautic": None}[platform_case.name]
    assert "NOBODY" in failed.message
    assert rig.store.get(fine.id).status is JobStatus.SUCCEEDED
    assert len(rig.store.attempts(missing.id)) == 1  # permanent: no retry


def test_a_job_edited_into_invalid_input_fails_with_a_sentence_and_others_run(
    rig: Rig, platform_case: PlatformCase
) -> None:
    bad = rig.store.add_raw({"operation": "Increase Score", "target_kind": "contact", "target_id": "C-1",
                             "tags": "Lead", "score": "-5"})
    good = rig.queue(operation="increase_score", tags="Lead", score=5, target_id="C-1")
    rig.drain()
    failed = rig.store.get(bad.id)
    assert (failed.status, failed.result_code) == (JobStatus.FAILED, "INVALID_INPUT")
    assert failed.message == (
        "Score is -5; Increase Score needs a number greater than 0. To lower a score, use Decrease Score with 5."
    )
    # Support staff read the same sentence in the job's attempts, with no HTTP status: nothing was sent.
    assert [(a.outcome, a.result_code, a.http_status, a.message, a.started_at, a.ended_at)
            for a in rig.store.attempts(bad.id)] == [
        ("failed", "INVALID_INPUT", None, failed.message, rig.clock(), rig.clock())]
    assert rig.store.get(good.id).status is JobStatus.SUCCEEDED
    assert platform_case.scores() == {"Lead": 5}


def test_a_job_whose_stored_payload_no_longer_reads_fails_with_a_sentence(rig: Rig) -> None:
    job = rig.queue(operation="increase_score", tags="Lead", score=5, target_id="C-1")
    with sqlite3.connect(rig.store.path) as db:  # as a row written by another version of the connector might be
        db.execute("UPDATE jobs SET payload = ? WHERE id = ?", ('{"tags": 5}', job.id))
    assert rig.drain().failed == 1
    failed = rig.store.get(job.id)
    assert (failed.status, failed.result_code, failed.message) == (
        JobStatus.FAILED, "INVALID_INPUT", "The job's input could not be read.")
    assert [(a.outcome, a.result_code) for a in rig.store.attempts(job.id)] == [("failed", "INVALID_INPUT")]


def test_contacts_found_by_email_when_the_crm_gives_no_external_id(platform_case: PlatformCase) -> None:
    platform_case.platform.add_tags(Contact(email="C2@example.com"), ["VIP"], ref="job x")
    assert platform_case.scores("C-2") == {"VIP": 0}


def test_the_timeline_template_fills_every_placeholder(rig: Rig) -> None:
    rig.executor.timeline_template = "{operation}: {tags} {score} | {summary} | job {job_id}"
    job = rig.queue(operation="increase_score", tags="Lead", score=5, target_id="C-1")
    assert rig.drain().succeeded == 1
    [post] = rig.crm.timeline("contact", "C-1")
    # The summary leaves out the record: the post is on its own timeline.
    assert post.text == f"Increase Score: Lead 5 | Increased score Lead by 5 | job {job.id}"


def test_one_tags_score_reads_as_in_all_the_contacts_scores(rig: Rig, platform_case: PlatformCase) -> None:
    """`read_score` (what an increment reads back, in fewer requests where it can) agrees with `read_scores`."""
    from connector.platform import score_in

    rig.queue(operation="set_score", tags="Lead", score=7, target_id="C-1")
    rig.queue(operation="add_tag", tags="VIP", target_id="C-1")
    rig.queue(operation="decrease_score", tags="Churn", score=3, target_id="C-1")
    assert rig.drain().succeeded == 3
    everything = platform_case.platform.read_scores(Contact(external_id="C-1"))
    assert everything == {"Lead": 7, "VIP": 0, "Churn": -3}
    for tag in ("Lead", "lead", "VIP", "Churn", "Absent"):
        assert platform_case.platform.read_score(Contact(external_id="C-1"), tag) == score_in(everything, tag), tag
