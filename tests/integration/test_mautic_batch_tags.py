"""Tag edits of jobs running at once share `PATCH /api/contacts/batch/edit` requests (`MauticPlatform.tag_edits`,
group commit as in `connector.groupcommit`): the real adapter against the Mautic sandbox over loopback.

To make a group without relying on timing, the first edit's answer is held on the wire (a response hook waits on a
gate) with one request allowed on the wire; the edits that come meanwhile queue, and leave together once it is
released."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from requests.auth import HTTPBasicAuth

from config.settings import MauticSettings, RetrySettings
from connector import errors
from connector.http import ApiSession, Brake
from connector.mautic import BATCH_MAX, MauticPlatform
from connector.platform import Contact
from connector.sandbox.mautic import MauticSandbox
from connector.sandbox.server import Faults, SandboxServer
from jobs.model import JobRequest, JobStatus
from jobs.store import JobFilter
from jobs.store.sqlite import SqliteJobStore
from tests.conftest import FakeClock
from tests.grouping import DEADLINE, behind_a_held_write
from tests.integration.helpers import make_rig

USER, PASSWORD = "sandbox", "sandbox-password"
HELD = Contact(external_id="held")


@pytest.fixture
def sandbox(tmp_path: Path) -> MauticSandbox:
    app = MauticSandbox(tmp_path / "mautic.sqlite3", username=USER, password=PASSWORD, contact_field="crm_id")
    app.seed_contact("held@example.com", external_id="held")
    return app


@pytest.fixture
def server(sandbox: MauticSandbox) -> Iterator[SandboxServer]:
    with SandboxServer(sandbox) as running:
        yield running


@pytest.fixture
def session() -> Iterator[ApiSession]:
    with ApiSession("Mautic", pool_size=64, timeout=(2.0, 2.0), brake=Brake("Mautic", sleep=lambda _: None)) as api:
        yield api


def platform(server: SandboxServer, session: ApiSession, *, batch: bool = True) -> MauticPlatform:
    return MauticPlatform(session, base_url=server.url, auth=HTTPBasicAuth(USER, PASSWORD), contact_field="crm_id",
                          batch_tag_edits=batch)


@pytest.fixture
def mautic(server: SandboxServer, session: ApiSession) -> MauticPlatform:
    return platform(server, session)


def seed(sandbox: MauticSandbox, count: int) -> list[Contact]:
    for i in range(count):
        sandbox.seed_contact(f"c{i}@example.com", external_id=f"C-{i}")
    return [Contact(external_id=f"C-{i}") for i in range(count)]


def known(mautic: MauticPlatform, sandbox: MauticSandbox, count: int) -> list[Contact]:
    """`count` contacts in Mautic, each looked up once, so that the requests a test records are edits only."""
    contacts = seed(sandbox, count)
    for contact in contacts:
        mautic.contact_id(contact)
    return contacts


class Wire:
    """Records the requests a session sends (method, path, JSON body) and holds the answer of the first tag edit
    of contact `held` until `release`."""

    def __init__(self, session: ApiSession, held: int) -> None:
        self.sent: list[tuple[str, str, Any]] = []
        self.holding = threading.Event()
        self._gate = threading.Event()
        self._held_path = f"/api/contacts/{held}/edit"
        self._lock = threading.Lock()
        session.hooks["response"].append(self._hook)

    def _hook(self, response: requests.Response, *args: Any, **kwargs: Any) -> requests.Response:
        request = response.request
        path = urlsplit(request.url).path
        body = json.loads(request.body) if request.body else None
        with self._lock:
            self.sent.append((str(request.method), path, body))
            hold = path == self._held_path and not self.holding.is_set()
            if hold:
                self.holding.set()
        if hold:
            assert self._gate.wait(DEADLINE)
        return response

    def release(self) -> None:
        self._gate.set()

    def batches(self) -> list[list[dict[str, Any]]]:
        return [body for method, path, body in self.sent if (method, path) == ("PATCH", "/api/contacts/batch/edit")]


def behind_a_held_edit(mautic: MauticPlatform, sandbox: MauticSandbox, session: ApiSession,
                       edits: list[Callable[[], None]]) -> tuple[Wire, dict[int, Any]]:
    """The held contact's edit on the wire (one request allowed), then `edits` queued behind it, then released.
    Every contact is looked up before, so the requests recorded are the edits alone. The answers: None or the
    error each edit raised."""
    assert mautic.tag_edits is not None
    wire = Wire(session, mautic.contact_id(HELD))
    first, answered = behind_a_held_write(
        mautic.tag_edits, lambda: mautic.add_tags(HELD, ["Held"], ref="held"), wire.holding, wire.release, edits)
    assert first is None
    return wire, dict(enumerate(answered))


def add(mautic: MauticPlatform, contact: Contact, *tags: str) -> Callable[[], None]:
    return lambda: mautic.add_tags(contact, list(tags), ref="job")


def test_edits_that_come_while_one_is_on_the_wire_leave_together_in_one_batch(
    mautic: MauticPlatform, sandbox: MauticSandbox, session: ApiSession
) -> None:
    contacts = known(mautic, sandbox, 30)
    wire, answers = behind_a_held_edit(mautic, sandbox, session, [add(mautic, c, "Webinar") for c in contacts])
    assert answers == dict.fromkeys(range(30))
    # 31 edits in 2 requests: the held one alone, as the plain contact edit call, and the 30 that waited in one.
    assert [(method, path) for method, path, _ in wire.sent] == [
        ("PATCH", f"/api/contacts/{mautic.contact_id(HELD)}/edit"), ("PATCH", "/api/contacts/batch/edit")]
    (batch,) = wire.batches()
    assert sorted(item["id"] for item in batch) == sorted(mautic.contact_id(c) for c in contacts)
    assert all(item["tags"] == ["Webinar"] for item in batch)
    assert all(sandbox.tags_of(mautic.contact_id(c)) == ["Webinar"] for c in contacts)
    assert (mautic.tag_edits.requests, mautic.tag_edits.writes) == (2, 31)  # type: ignore[union-attr]
    assert (sandbox.batch_edits, sandbox.batch_contacts) == (1, 30)


def test_a_lone_edit_is_the_plain_contact_edit_call(
    mautic: MauticPlatform, sandbox: MauticSandbox, session: ApiSession
) -> None:
    (ann,) = seed(sandbox, 1)
    cid = mautic.contact_id(ann)
    wire = Wire(session, held=-1)
    mautic.add_tags(ann, ["Webinar", "VIP"], ref="job-1")
    mautic.remove_tags(ann, ["VIP"], ref="job-2")
    edits = [(method, path, body) for method, path, body in wire.sent if method == "PATCH"]
    assert edits == [("PATCH", f"/api/contacts/{cid}/edit", {"tags": ["Webinar", "VIP"]}),
                     ("PATCH", f"/api/contacts/{cid}/edit", {"tags": ["-VIP"]})]
    assert sandbox.tags_of(cid) == ["Webinar"]
    assert sandbox.batch_edits == 0


def test_a_contact_gone_from_a_batch_fails_its_job_only_as_the_single_edit_would(
    server: SandboxServer, mautic: MauticPlatform, sandbox: MauticSandbox, session: ApiSession
) -> None:
    contacts = known(mautic, sandbox, 5)
    gone = contacts[2]
    single = platform(server, session, batch=False)
    gone_id = single.contact_id(gone)
    sandbox.delete_contact(gone_id)
    with pytest.raises(errors.NotFound) as alone:
        single.add_tags(gone, ["Webinar"], ref="job")

    wire, answers = behind_a_held_edit(mautic, sandbox, session, [add(mautic, c, "Webinar") for c in contacts])
    failed = answers.pop(2)
    assert answers == {0: None, 1: None, 3: None, 4: None}
    # The same error, found the same way: the cached id answered 404 in the batch, the contact was looked up again,
    # and Mautic has no contact with that CRM id any more.
    assert (type(failed), failed.result_code, failed.message, failed.http_status) == (
        type(alone.value), "CONTACT_NOT_FOUND", alone.value.message, alone.value.http_status)
    assert failed.message == "Mautic has no contact with crm_id C-2."
    (batch,) = wire.batches()
    assert gone_id in [item["id"] for item in batch]
    for contact in contacts[:2] + contacts[3:]:
        assert sandbox.tags_of(mautic.contact_id(contact)) == ["Webinar"]


def test_a_contact_merged_away_from_a_batch_is_looked_up_again_and_edited(
    mautic: MauticPlatform, sandbox: MauticSandbox, session: ApiSession
) -> None:
    contacts = known(mautic, sandbox, 3)
    old = mautic.contact_id(contacts[1])
    sandbox.delete_contact(old)
    new = sandbox.seed_contact("c1@example.com", external_id="C-1")
    wire, answers = behind_a_held_edit(mautic, sandbox, session, [add(mautic, c, "Webinar") for c in contacts])
    assert answers == dict.fromkeys(range(3))
    assert sandbox.tags_of(new) == ["Webinar"]
    assert mautic.contact_id(contacts[1]) == new
    assert [item["id"] for item in wire.batches()[0]].count(old) == 1


@pytest.mark.parametrize("fault", ["429", "503", "reset", "drop"])
def test_a_batch_that_fails_whole_fails_every_edit_in_it_as_the_single_edit_would(
    server: SandboxServer, mautic: MauticPlatform, sandbox: MauticSandbox, session: ApiSession, fault: str
) -> None:
    contacts = seed(sandbox, 4)
    for contact in [HELD, *contacts]:
        mautic.contact_id(contact)
    server.injector.script(fault)
    with pytest.raises(errors.TransientError) as alone:
        mautic.add_tags(contacts[0], ["Webinar"], ref="job")
    server.injector.script(None, fault)  # the held edit goes through; the batch meets the fault
    before = server.injector.requests
    _, answers = behind_a_held_edit(mautic, sandbox, session, [add(mautic, c, "Webinar") for c in contacts])
    assert server.injector.requests - before == 2  # the held edit, and one request for the four others
    assert len(answers) == 4
    for failed in answers.values():
        assert (type(failed), failed.result_code, failed.http_status) == (
            type(alone.value), alone.value.result_code, alone.value.http_status)
        assert failed.retry_after == alone.value.retry_after


def test_a_contact_is_never_twice_in_one_batch(
    mautic: MauticPlatform, sandbox: MauticSandbox, session: ApiSession
) -> None:
    a, b, c = seed(sandbox, 3)
    for contact in (a, b, c):
        mautic.contact_id(contact)
    edits = [add(mautic, a, "T1"), add(mautic, a, "T2"), add(mautic, a, "T3"), add(mautic, b, "T1"),
             add(mautic, c, "T1")]
    wire, answers = behind_a_held_edit(mautic, sandbox, session, edits)
    assert answers == dict.fromkeys(range(5))
    for batch in wire.batches():
        ids = [item["id"] for item in batch]
        assert len(ids) == len(set(ids)), batch
    # The held edit, a batch of a, b and c, then a's other two edits, each in a request of its own.
    assert len(wire.sent) == 4
    assert len(wire.batches()) == 1 and len(wire.batches()[0]) == 3
    assert sandbox.tags_of(mautic.contact_id(a)) == ["T1", "T2", "T3"]
    assert sandbox.tags_of(mautic.contact_id(b)) == sandbox.tags_of(mautic.contact_id(c)) == ["T1"]


def test_a_batch_carries_at_most_200_contacts(
    mautic: MauticPlatform, sandbox: MauticSandbox, session: ApiSession
) -> None:
    contacts = known(mautic, sandbox, BATCH_MAX + 1)
    wire, answers = behind_a_held_edit(mautic, sandbox, session, [add(mautic, c, "Webinar") for c in contacts])
    assert answers == dict.fromkeys(range(BATCH_MAX + 1))
    # 200 in the batch; the one beyond goes next, alone, as the plain contact edit call.
    assert [len(batch) for batch in wire.batches()] == [BATCH_MAX]
    assert len(wire.sent) == 3 and wire.sent[-1][1].endswith("/edit") and wire.sent[-1][1] != wire.sent[1][1]
    assert all(sandbox.tags_of(mautic.contact_id(c)) == ["Webinar"] for c in contacts)


def test_with_the_setting_off_every_edit_is_its_own_request(
    server: SandboxServer, sandbox: MauticSandbox, session: ApiSession
) -> None:
    contacts = seed(sandbox, 12)
    settings = MauticSettings(base_url=server.url, username=USER, password=PASSWORD, contact_field="crm_id",
                              batch_tag_edits=False)
    mautic = MauticPlatform.from_settings(settings, session)
    assert mautic.tag_edits is None
    for contact in contacts:
        mautic.contact_id(contact)
    wire = Wire(session, held=-1)
    start = threading.Barrier(len(contacts))

    def run(contact: Contact) -> None:
        start.wait()
        mautic.add_tags(contact, ["Webinar"], ref="job")

    threads = [threading.Thread(target=run, args=(c,)) for c in contacts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE)
    assert sorted(path for _, path, _ in wire.sent) == sorted(
        f"/api/contacts/{mautic.contact_id(c)}/edit" for c in contacts)
    assert sandbox.batch_edits == 0
    assert all(sandbox.tags_of(mautic.contact_id(c)) == ["Webinar"] for c in contacts)
    assert MauticPlatform.from_settings(settings.model_copy(update={"batch_tag_edits": True}), session).tag_edits


def test_a_drain_of_hundreds_of_tag_jobs_shares_requests_and_ends_with_the_right_tags(
    tmp_path: Path, sandbox: MauticSandbox, store: SqliteJobStore, clock: FakeClock
) -> None:
    contacts = 60
    for i in range(contacts):
        sandbox.seed_contact(f"c{i}@example.com", external_id=f"C-{i}")
    # Latency keeps requests on the wire while other workers' edits come: they must wait and leave together.
    with SandboxServer(sandbox, faults=Faults(latency_ms=20)) as running, \
            ApiSession("Mautic", pool_size=16, brake=Brake("Mautic", clock=clock, sleep=clock.sleep)) as session:
        mautic = platform(running, session)
        rig = make_rig(tmp_path, store, mautic, clock, RetrySettings(), workers=16)
        try:
            plan = [("add_tag", tag) for tag in ("T0", "T1", "T2")] + [("remove_tag", "T1"), ("add_tag", "T3")]
            for operation, tag in plan:
                store.add([JobRequest.from_input(operation=operation, tags=tag, target_kind="contact",
                                                 target_id=f"C-{i}") for i in range(contacts)])
            report = rig.drain()
        finally:
            rig.close()
        edits = mautic.tag_edits
        assert edits is not None
    jobs = store.list(JobFilter(limit=1000)).jobs
    assert len(jobs) == len(plan) * contacts == 300
    assert {job.status for job in jobs} == {JobStatus.SUCCEEDED}, report
    for i in range(contacts):
        cid = sandbox.contact_id(f"C-{i}")
        assert cid is not None and sandbox.tags_of(cid) == ["T0", "T2", "T3"]
    # 300 tag edits in fewer requests than edits: grouped while others were on the wire.
    assert edits.writes == 300
    assert edits.requests < edits.writes
    assert sandbox.batch_edits > 0
