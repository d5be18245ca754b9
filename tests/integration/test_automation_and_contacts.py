"""Start Automation and the contact policies, through the runner: store -> executor -> adapter -> sandbox.

Spotler's automation trigger answers 200 (started), 404 (trigger or contact unknown) or 417 (nothing triggered:
inactive, or the participation limit reached); each ends the job with its own result code and a sentence.
Mautic has no trigger codes, so the job fails at once with NOT_SUPPORTED.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from connector.localcrm import LocalCrm
from connector.platform import Contact
from connector.sandbox.server import SandboxServer
from connector.sandbox.spotler import SpotlerSandbox
from connector.spotler import SpotlerPlatform
from jobs.model import JobStatus
from jobs.store.sqlite import SqliteJobStore
from tests.conftest import FakeClock, PlatformCase
from tests.integration.helpers import Rig, make_rig


@pytest.fixture
def rig(tmp_path: Path, store: SqliteJobStore, spotler: SpotlerPlatform, clock: FakeClock) -> Iterator[Rig]:
    r = make_rig(tmp_path, store, spotler, clock)
    yield r
    r.close()


def _final(rig: Rig, job_id: str) -> tuple[JobStatus, str | None, int | None, str]:
    job = rig.store.get(job_id)
    return job.status, job.result_code, job.http_status, job.message


def test_start_automation_starts_it_and_posts_on_the_timeline(rig: Rig, spotler_app: SpotlerSandbox) -> None:
    spotler_app.seed_automation("welcome")
    job = rig.queue(operation="Start Automation", tags="welcome", target_id="C-1")
    assert rig.drain().succeeded == 1
    assert spotler_app.participations("welcome") == ["C-1"]
    assert _final(rig, job.id) == (JobStatus.SUCCEEDED, "OK", None, "Started automation welcome for contact C-1")
    assert [p.text for p in rig.crm.timeline("contact", "C-1")] == [
        f"Started automation welcome (job {job.id})"
    ]


def test_an_unknown_trigger_fails_at_once_with_trigger_not_found(rig: Rig, spotler_app: SpotlerSandbox) -> None:
    job = rig.queue(operation="start_automation", tags="no-such-trigger", target_id="C-1")
    assert rig.drain().failed == 1
    status, code, http, message = _final(rig, job.id)
    assert (status, code, http) == (JobStatus.FAILED, "TRIGGER_NOT_FOUND", 404)
    assert message == (
        "Spotler has no automation with trigger code 'no-such-trigger'; check the code in the automation's "
        "trigger settings."
    )
    assert len(rig.store.attempts(job.id)) == 1


@pytest.mark.parametrize(
    ("active", "limit", "code", "reason"),
    [
        (False, None, "AUTOMATION_INACTIVE", "the automation is not active"),
        (True, 0, "PARTICIPATION_LIMIT_REACHED",
         "the contact has already taken part as often as the automation allows"),
    ],
)
def test_nothing_triggered_417_fails_with_the_reason(
    rig: Rig, spotler_app: SpotlerSandbox, active: bool, limit: int | None, code: str, reason: str
) -> None:
    spotler_app.seed_automation("welcome", active=active, max_participations=limit)
    job = rig.queue(operation="start_automation", tags="welcome", target_id="C-2")
    assert rig.drain().failed == 1
    assert _final(rig, job.id) == (
        JobStatus.FAILED, code, 417, f"Spotler did not start automation 'welcome' for contact C-2: {reason}."
    )
    assert spotler_app.participations("welcome") == []


def test_an_unknown_contact_is_contact_not_found_by_default(rig: Rig, spotler_app: SpotlerSandbox) -> None:
    spotler_app.seed_automation("welcome")
    job = rig.queue(operation="start_automation", tags="welcome", target_id="NEW-1")
    assert rig.drain().failed == 1
    status, code, http, message = _final(rig, job.id)
    assert (status, code, http) == (JobStatus.FAILED, "CONTACT_NOT_FOUND", 404)
    assert "NEW-1" in message


def test_missing_contacts_are_created_when_configured(
    tmp_path: Path, store: SqliteJobStore, clock: FakeClock, spotler_server: SandboxServer,
    spotler_app: SpotlerSandbox, make_spotler: Callable[..., SpotlerPlatform],
) -> None:
    platform = make_spotler(spotler_server.url + "/integrationservice-1.1.0", clock=clock,
                            create_missing_contacts=True)
    spotler_app.seed_automation("welcome")
    rig = make_rig(tmp_path, store, platform, clock)
    try:
        tagged = rig.queue(operation="add_tag", tags="VIP", target_id="NEW-1")
        started = rig.queue(operation="start_automation", tags="welcome", target_id="NEW-2")
        assert rig.drain().succeeded == 2
    finally:
        rig.close()
    assert spotler_app.scores("NEW-1") == {"VIP": 0}
    assert spotler_app.participations("welcome") == ["NEW-2"]
    assert rig.store.get(tagged.id).result_code == rig.store.get(started.id).result_code == "OK"


def test_mautic_refuses_start_automation_as_not_supported(
    tmp_path: Path, store: SqliteJobStore, clock: FakeClock, mautic_platform: object, mautic_server: SandboxServer,
) -> None:
    from connector.mautic import MauticPlatform

    assert isinstance(mautic_platform, MauticPlatform)
    rig = make_rig(tmp_path, store, mautic_platform, clock)
    try:
        job = rig.queue(operation="start_automation", tags="welcome", target_id="C-1")
        other = rig.queue(operation="add_tag", tags="VIP", target_id="C-1")
        report = rig.drain()
    finally:
        rig.close()
    assert (report.succeeded, report.failed) == (1, 1)
    status, code, http, message = _final(rig, job.id)
    assert (status, code, http) == (JobStatus.FAILED, "NOT_SUPPORTED", None)
    assert message.startswith("Start Automation ('welcome') is a Spotler operation; Mautic has no automation")
    assert len(rig.store.attempts(job.id)) == 1
    assert rig.store.get(other.id).status is JobStatus.SUCCEEDED


class EmailCrm(LocalCrm):
    """A CRM configured to identify records by e-mail address (as `dataverse.identify_as = "email"` does):
    record C-n is known to the platform only as cn@example.com."""

    def identify(self, target_kind: str, target_id: str) -> Contact:
        return Contact(email=f"{target_id.replace('-', '').lower()}@example.com")


def test_jobs_for_records_known_by_email_find_the_contact_by_email(
    tmp_path: Path, store: SqliteJobStore, clock: FakeClock, platform_case: PlatformCase
) -> None:
    rig = make_rig(tmp_path, store, platform_case.platform, clock, crm=EmailCrm(tmp_path / "timeline.db"))
    try:
        tagged = rig.queue(operation="add_tag", tags="VIP", target_id="C-3")
        rig.queue(operation="increase_score", tags="Lead", score=7, target_id="C-3")
        missing = rig.queue(operation="add_tag", tags="VIP", target_id="C-99")
        report = rig.drain()
    finally:
        rig.close()
    assert (report.succeeded, report.failed) == (2, 1)
    assert platform_case.scores("C-3") == {"Lead": 7, "VIP": 0}
    assert rig.store.get(tagged.id).status is JobStatus.SUCCEEDED
    failed = rig.store.get(missing.id)
    assert (failed.status, failed.result_code) == (JobStatus.FAILED, "CONTACT_NOT_FOUND")
    assert "c99@example.com" in failed.message
