"""Writes of jobs running at once share a `$batch`, each in a change set of its own (`connector.dataverse.changesets`):
fewer round trips, and no write fails or succeeds because of another one."""

from __future__ import annotations

import threading
from pathlib import Path

from connector import errors
from connector.dataverse.batch import BatchPart
from connector.dataverse.changesets import send_change_sets, shared_writes
from connector.dataverse.crm import DataverseCrm
from connector.sandbox.server import Faults
from jobs.model import JobRequest, JobStatus
from jobs.store import Outcome
from jobs.store.dataverse import DataverseJobStore
from tests.integration.dataverse_env import TABLE, client_for, make_record, running_sandbox

ENTITY = TABLE.entity_set
WORKERS = 12


def at_once(count: int, work) -> list[BaseException]:
    """Run work(i) on `count` threads released together; the errors they raised."""
    start = threading.Barrier(count)
    failures: list[BaseException] = []

    def run(i: int) -> None:
        start.wait()
        try:
            work(i)
        except BaseException as exc:  # the test reads them
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return failures


def http_requests(client) -> list[str]:
    """The HTTP requests the client sends from now on (a `$batch` is one), as `METHOD path`."""
    sent: list[str] = []
    client.session.hooks["response"].append(
        lambda response, *args, **kwargs: sent.append(f"{response.request.method} {response.request.path_url}"))
    return sent


def test_outcomes_and_posts_of_jobs_running_at_once_leave_together(tmp_path: Path):
    # Latency keeps the first write on the wire while the others arrive: they must wait and leave in one request.
    with running_sandbox(tmp_path, faults=Faults(latency_ms=150)) as sandbox, client_for(sandbox) as client:
        contact = make_record(client)
        store = DataverseJobStore(client, TABLE)
        crm = DataverseCrm(client)
        jobs = store.add([JobRequest.from_input(operation="add_tag", tags=f"T{i}", target_kind="contact",
                                                target_id=contact) for i in range(WORKERS)])
        assert len(store.claim("runner-a", WORKERS, 60.0)) == WORKERS
        writes = shared_writes(client)
        writes.parallel = 1  # one request on the wire at a time: every write that comes meanwhile waits for it
        sent = http_requests(client)

        def finish(i: int) -> None:
            crm.post(target_kind="contact", target_id=contact, job_id=jobs[i].id, text=f"Added T{i}",
                     may_exist=False)
            store.finish("runner-a", jobs[i].id, Outcome(JobStatus.SUCCEEDED, "OK", f"Added T{i}", posted=True))

        assert at_once(WORKERS, finish) == []
        sent = sent[:]
        assert all(store.get(job.id).status is JobStatus.SUCCEEDED for job in jobs)
        assert len(crm.timeline("contact", contact)) == WORKERS
        # 24 writes; without grouping, 24 requests; here the first alone, then the others in a few.
        assert len(sent) <= 6, sent
        assert writes.writes == 2 * WORKERS and writes.requests == len(sent)


def test_a_row_changed_under_one_write_does_not_fail_the_others(tmp_path: Path):
    with running_sandbox(tmp_path, faults=Faults(latency_ms=150)) as sandbox, client_for(sandbox) as client:
        contact = make_record(client)
        store = DataverseJobStore(client, TABLE)
        jobs = store.add([JobRequest.from_input(operation="add_tag", tags=f"T{i}", target_kind="contact",
                                                target_id=contact) for i in range(WORKERS)])
        store.claim("runner-a", WORKERS, 60.0)
        # A CRM user edits one running row: the runner's ETag for it is stale, its write gets a 412 in the batch.
        client.update(ENTITY, jobs[3].id, {"cr_message": "a user typed here"})
        sent = http_requests(client)

        def finish(i: int) -> None:
            store.finish("runner-a", jobs[i].id, Outcome(JobStatus.SUCCEEDED, "OK", "done"))

        assert at_once(WORKERS, finish) == []
        sent = sent[:]
        assert [store.get(job.id).status for job in jobs] == [JobStatus.SUCCEEDED] * WORKERS
        # Grouped all the same: the stale one was read again and written again, alone or with others.
        assert len(sent) < WORKERS, sent


def test_each_change_set_is_answered_on_its_own(client):
    first, second = make_record(client, lastname="First"), make_record(client, lastname="Second")
    stale = 'W/"999999"'
    sets = [
        [BatchPart("PATCH", f"contacts({first})", body={"lastname": "Changed"}, headers={"If-Match": stale})],
        [BatchPart("PATCH", f"contacts({second})", body={"lastname": "Changed"}, headers={"If-Match": "*"}),
         BatchPart("POST", "annotations", body={"subject": "kept with it", "notetext": "x",
                                                "objectid_contact@odata.bind": f"/contacts({second})"})],
    ]
    answers = send_change_sets(client, sets)
    assert [[result.status for result in answer] for answer in answers] == [[412], [204, 204]]
    assert client.get("contacts", first)["lastname"] == "First"
    assert client.get("contacts", second)["lastname"] == "Changed"
    assert isinstance(client.batch_error(answers[0][0]), errors.Conflict)


def test_a_batch_refused_whole_fails_every_write_in_it(tmp_path: Path):
    # Every request throttled: each caller sees the 429 as its own error, none waits forever.
    faults = Faults(latency_ms=100)
    with running_sandbox(tmp_path, faults=faults) as sandbox, client_for(sandbox) as client:
        contact = make_record(client)
        store = DataverseJobStore(client, TABLE)
        jobs = store.add([JobRequest.from_input(operation="add_tag", tags=f"T{i}", target_kind="contact",
                                                target_id=contact) for i in range(4)])
        store.claim("runner-a", 4, 60.0)
        client.retries = 0
        sandbox.server.injector.script(*["500"] * 4)

        def finish(i: int) -> None:
            store.finish("runner-a", jobs[i].id, Outcome(JobStatus.SUCCEEDED, "OK", "done"))

        failures = at_once(4, finish)
        assert len(failures) == 4
        assert all(isinstance(exc, errors.TransientError) for exc in failures)


def test_a_lone_write_is_a_plain_patch(client):
    contact = make_record(client)
    store = DataverseJobStore(client, TABLE)
    job = store.add([JobRequest.from_input(operation="add_tag", tags="A", target_kind="contact",
                                           target_id=contact)])[0]
    store.claim("runner-a", 1, 60.0)
    sent = http_requests(client)
    store.finish("runner-a", job.id, Outcome(JobStatus.SUCCEEDED, "OK", "done"))
    assert [request.split()[0] for request in sent] == ["PATCH"]
