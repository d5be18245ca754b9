"""The Dataverse job store's claims on the wire: two reads (the oldest due rows, and the rows that could hold them
back), then conditional PATCHes with If-Match in a $batch."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from urllib.parse import unquote

import pytest
import responses

from config.defaults import DATAVERSE_WRITE_TRIES
from config.settings import DataverseTableSettings
from connector.dataverse import connect
from connector.http import Brake
from jobs.model import Attempt, JobRequest, JobStatus
from jobs.store import Effects, LeaseLost, Outcome, Record, StoreError, StoreUnavailable
from jobs.store.dataverse import DataverseJobStore, format_attempt, parse_attempt_log
from tests.conftest import FakeClock
from tests.unit.test_dataverse_client import API, CLIENT_ID, ENV, SECRET, TENANT, api_calls, identity

CONTACT = "aaaaaaaa-0000-4000-8000-000000000001"
JOB_A = "10000000-0000-4000-8000-00000000000a"
JOB_B = "10000000-0000-4000-8000-00000000000b"
JOB_C = "10000000-0000-4000-8000-00000000000c"
JOB_D = "10000000-0000-4000-8000-00000000000d"


def row(job_id: str, etag: int, tag: str, *, status: int = 1, owner: str | None = None,
        expires: str | None = None, seq: str = "0000000001") -> dict:
    return {
        "@odata.etag": f'W/"{etag}"', "cr_connectorjobid": job_id, "statuscode": status,
        "statecode": 0, "createdon": "2027-01-15T08:00:00Z", "modifiedon": "2027-01-15T08:00:00Z",
        "cr_sequence": seq, "cr_operation": 100000000, "cr_tags": tag, "cr_score": None,
        "_cr_contact_value": CONTACT, "_cr_lead_value": None, "_cr_account_value": None, "cr_attempts": 0,
        "cr_leaseowner": owner, "cr_leaseexpiresat": expires, "cr_attemptlog": None,
    }


@pytest.fixture
def rsps() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


@pytest.fixture
def store(clock: FakeClock) -> Iterator[DataverseJobStore]:
    client = connect(environment_url=ENV, tenant_id=TENANT, client_id=CLIENT_ID, client_secret=SECRET,
                     brake=Brake("Dataverse", clock=clock, sleep=clock.sleep), sleep=clock.sleep)
    yield DataverseJobStore(client, DataverseTableSettings(), clock=clock)
    client.close()


def batch_answer(*parts: tuple[int, dict | None]) -> str:
    lines = []
    for status, body in parts:
        phrase = {200: "OK", 412: "Precondition Failed", 204: "No Content", 429: "Too Many Requests",
                  503: "Service Unavailable", 400: "Bad Request"}[status]
        extra = ["Retry-After: 7"] if status == 429 else []
        lines += ["--batchresponse_x", "Content-Type: application/http", "Content-Transfer-Encoding: binary", "",
                  f"HTTP/1.1 {status} {phrase}", "Content-Type: application/json", *extra, "",
                  json.dumps(body or {})]
    lines += ["--batchresponse_x--", ""]
    return "\r\n".join(lines)


def test_claim_reads_the_due_window_and_what_could_hold_it_back_then_patches_each_offer_and_skips_a_412(
    rsps, store, clock
):
    identity(rsps, "token-1")
    due = [
        row(JOB_A, 5, "Webinar", seq="0000000001"),
        row(JOB_B, 6, "Newsletter", seq="0000000002"),
        row(JOB_D, 8, "trial", seq="0000000004"),
    ]
    # running under a live lease: its key blocks the later job D
    running = [row(JOB_C, 7, "Trial", status=100000001, owner="runner-x", expires="2027-02-01T00:00:00Z",
                   seq="0000000003")]
    rsps.get(re.compile(re.escape(API) + r"cr_connectorjobs\?.*(\$|%24)orderby=.*"), json={"value": due})
    rsps.get(re.compile(re.escape(API) + r"cr_connectorjobs\?(?!.*(\$|%24)orderby).*"), json={"value": running})
    claimed_b = {**row(JOB_B, 9, "Newsletter"), "statuscode": 100000001, "cr_leaseowner": "runner-a"}
    # A was taken by another runner between the read and the PATCH; B is ours.
    rsps.post(f"{API}$batch", body=batch_answer((412, {"error": {"code": "0x80060882", "message": "mismatch"}}),
                                                (200, claimed_b)),
              content_type="multipart/mixed; boundary=batchresponse_x")

    jobs = store.claim("runner-a", 10, 60.0)

    assert [job.id for job in jobs] == [JOB_B]
    assert jobs[0].status is JobStatus.RUNNING
    window, others, batch = (call.request for call in api_calls(rsps))
    window_query = unquote(window.url)
    assert "$orderby=createdon asc,cr_sequence asc,cr_connectorjobid asc" in window_query
    assert "$select=cr_connectorjobid,statecode,statuscode," in window_query  # every column the job needs
    assert "and (cr_nextattemptat le 2027-01-15T08:00:00Z or cr_nextattemptat eq null)" in window_query
    assert window.headers["Prefer"] == "odata.maxpagesize=100"  # ten rows per job the claim may take
    assert ("$filter=statuscode eq 100000001 or ((statuscode eq 1 or (statecode eq 0 and statuscode ne 100000001)) "
            "and cr_nextattemptat gt 2027-01-15T08:00:00Z and createdon le 2027-01-15T08:00:00Z)"
            ) in unquote(others.url)
    assert batch.headers["Prefer"] == "odata.continue-on-error"
    body = batch.body.decode()
    patches = re.findall(r"PATCH (\S+) HTTP/1.1\r\n(.*?)\r\n\r\n(.*?)\r\n", body, re.S)
    assert [p[0].split("?")[0] for p in patches] == [f"{API}cr_connectorjobs({JOB_A})",
                                                     f"{API}cr_connectorjobs({JOB_B})"]
    assert all(p[0].split("?")[1].startswith("$select=cr_connectorjobid,") for p in patches)  # the row comes back
    assert 'If-Match: W/"5"' in patches[0][1]
    assert 'If-Match: W/"6"' in patches[1][1]
    assert "Prefer: return=representation" in patches[0][1]
    change = json.loads(patches[0][2])
    assert change["statuscode"] == 100000001
    assert change["statecode"] == 0
    assert change["cr_leaseowner"] == "runner-a"
    assert change["cr_leaseexpiresat"] == "2027-01-15T08:01:00Z"  # clock.now + 60 s


def test_a_claim_refused_for_one_job_takes_the_others(rsps, store, caplog):
    identity(rsps, "token-1")
    rsps.get(re.compile(re.escape(API) + r"cr_connectorjobs\?.*"),
             json={"value": [row(JOB_A, 5, "Webinar"), row(JOB_B, 6, "Newsletter", seq="0000000002")]})
    claimed_b = {**row(JOB_B, 9, "Newsletter"), "statuscode": 100000001, "cr_leaseowner": "runner-a"}
    refusal = {"error": {"code": "0x80040265", "message": "A plug-in refused the update"}}
    rsps.post(f"{API}$batch", body=batch_answer((400, refusal), (200, claimed_b)),
              content_type="multipart/mixed; boundary=batchresponse_x")
    assert [job.id for job in store.claim("runner-a", 10, 60.0)] == [JOB_B]
    assert f"job {JOB_A}: claim refused: " in caplog.text and "A plug-in refused the update" in caplog.text


def test_a_claim_answered_short_takes_the_jobs_it_was_told_of(rsps, store):
    identity(rsps, "token-1")
    rsps.get(re.compile(re.escape(API) + r"cr_connectorjobs\?.*"),
             json={"value": [row(JOB_A, 5, "Webinar"), row(JOB_B, 6, "Newsletter", seq="0000000002")]})
    claimed_a = {**row(JOB_A, 9, "Webinar"), "statuscode": 100000001, "cr_leaseowner": "runner-a"}
    rsps.post(f"{API}$batch", body=batch_answer((200, claimed_a)),
              content_type="multipart/mixed; boundary=batchresponse_x")
    # B's answer was lost: if B was claimed, its lease runs out and another claim takes it.
    assert [job.id for job in store.claim("runner-a", 10, 60.0)] == [JOB_A]


def test_writes_under_a_lease_use_the_etag_from_the_claim(rsps, store, clock):
    identity(rsps, "token-1")
    rsps.get(re.compile(re.escape(API) + r"cr_connectorjobs\?.*"), json={"value": [row(JOB_A, 5, "Webinar")]})
    claimed = {**row(JOB_A, 9, "Webinar"), "statuscode": 100000001, "cr_leaseowner": "runner-a"}
    rsps.post(f"{API}$batch", body=batch_answer((200, claimed)),
              content_type="multipart/mixed; boundary=batchresponse_x")
    renewed = {**claimed, "@odata.etag": 'W/"10"'}
    rsps.patch(re.compile(re.escape(f"{API}cr_connectorjobs({JOB_A})") + ".*"), json=renewed)

    store.claim("runner-a", 10, 60.0)
    assert store.renew("runner-a", [JOB_A], 60.0) == []
    store.record_attempt("runner-a", Attempt(job_id=JOB_A, started_at=clock.now, ended_at=clock.now + 1,
                                             outcome="succeeded", result_code="OK", message="Added tag"))

    renew, record = (call.request for call in api_calls(rsps)[3:])
    assert renew.headers["If-Match"] == 'W/"9"'
    assert record.headers["If-Match"] == 'W/"10"'
    written = json.loads(record.body)
    assert written["cr_attempts"] == 1
    assert written["cr_attemptlog"].startswith("#1 | 2027-01-15T08:00:00.000Z | 2027-01-15T08:00:01.000Z | succeeded")


def test_a_412_on_a_write_rereads_and_gives_up_when_another_runner_holds_the_job(rsps, store, clock):
    identity(rsps, "token-1")
    rsps.get(re.compile(re.escape(API) + r"cr_connectorjobs\?.*"), json={"value": [row(JOB_A, 5, "Webinar")]})
    claimed = {**row(JOB_A, 9, "Webinar"), "statuscode": 100000001, "cr_leaseowner": "runner-a"}
    rsps.post(f"{API}$batch", body=batch_answer((200, claimed)),
              content_type="multipart/mixed; boundary=batchresponse_x")
    rsps.patch(re.compile(re.escape(f"{API}cr_connectorjobs({JOB_A})") + ".*"), status=412,
               json={"error": {"code": "0x80060882", "message": "mismatch"}})
    taken = {**claimed, "@odata.etag": 'W/"11"', "cr_leaseowner": "runner-b"}
    rsps.get(re.compile(re.escape(f"{API}cr_connectorjobs({JOB_A})") + ".*"), json=taken)

    store.claim("runner-a", 10, 60.0)
    with pytest.raises(LeaseLost, match=f"^Job {JOB_A} is no longer held by runner-a.$"):
        store.finish("runner-a", JOB_A, Outcome(JobStatus.SUCCEEDED, "OK", "done"))
    assert [c.request.method for c in api_calls(rsps)] == ["GET", "GET", "POST", "PATCH", "GET"]


def claimed_by_runner_a(rsps: responses.RequestsMock) -> dict:
    identity(rsps, "token-1")
    rsps.get(re.compile(re.escape(API) + r"cr_connectorjobs\?.*"), json={"value": [row(JOB_A, 5, "Webinar")]})
    claimed = {**row(JOB_A, 9, "Webinar"), "statuscode": 100000001, "cr_leaseowner": "runner-a"}
    rsps.post(f"{API}$batch", body=batch_answer((200, claimed)),
              content_type="multipart/mixed; boundary=batchresponse_x")
    return claimed


def test_a_row_that_changes_under_every_write_is_given_up_after_a_few_tries(rsps, store):
    claimed = claimed_by_runner_a(rsps)
    job_url = re.compile(re.escape(f"{API}cr_connectorjobs({JOB_A})") + ".*")
    rsps.patch(job_url, status=412, json={"error": {"code": "0x80060882", "message": "mismatch"}})
    rsps.get(job_url, json={**claimed, "@odata.etag": 'W/"12"'})  # someone keeps editing it; it stays ours

    store.claim("runner-a", 10, 60.0)
    with pytest.raises(LeaseLost, match=f"^Job {JOB_A} kept changing under runner-a; giving it up.$"):
        store.finish("runner-a", JOB_A, Outcome(JobStatus.SUCCEEDED, "OK", "done"))
    writes = [c.request.method for c in api_calls(rsps)][3:]
    assert writes == ["PATCH"] + ["GET", "PATCH"] * (DATAVERSE_WRITE_TRIES - 1)


def test_a_row_deleted_while_held_is_a_lost_lease(rsps, store):
    claimed_by_runner_a(rsps)
    job_url = re.compile(re.escape(f"{API}cr_connectorjobs({JOB_A})") + ".*")
    rsps.patch(job_url, status=412, json={"error": {"code": "0x80060882", "message": "mismatch"}})
    rsps.get(job_url, status=404, json={"error": {"code": "0x80040217", "message": "Does Not Exist"}})

    store.claim("runner-a", 10, 60.0)
    with pytest.raises(LeaseLost, match=f"^Job {JOB_A} no longer exists.$"):
        store.finish("runner-a", JOB_A, Outcome(JobStatus.SUCCEEDED, "OK", "done"))


def test_attempt_log_lines_round_trip():
    attempt = Attempt(job_id=JOB_A, started_at=1_800_000_000.25, ended_at=1_800_000_002.5, outcome="retrying",
                      result_code="RATE_LIMITED", http_status=429, message="Too many\nrequests | slow down")
    line = format_attempt(attempt, 3)
    assert line == ("#3 | 2027-01-15T08:00:00.250Z | 2027-01-15T08:00:02.500Z | retrying | RATE_LIMITED | 429 | "
                    "Too many requests | slow down")
    text = "a note a person typed\n" + line
    [back] = parse_attempt_log(JOB_A, text)
    assert back.model_dump() == {**attempt.model_dump(), "number": 3, "message": "Too many requests | slow down"}


@pytest.mark.parametrize(("status", "error"), [(429, StoreUnavailable), (503, StoreUnavailable), (400, StoreError)])
def test_a_change_set_refused_by_a_busy_service_is_worth_asking_again(rsps, store, status, error):
    # Dataverse answers a throttled or unavailable $batch inside it: that is transient, not a refusal.
    identity(rsps, "token-1")
    refusal = {"error": {"code": "0x80072322", "message": "Number of requests exceeded the limit"}}
    rsps.post(f"{API}$batch", body=batch_answer((status, refusal)),
              content_type="multipart/mixed; boundary=batchresponse_x")
    with pytest.raises(error) as caught:
        store.add([JobRequest.from_input(operation="add_tag", tags="Webinar")])
    assert isinstance(caught.value, StoreError)
    assert caught.value.http_status == status
    assert caught.value.message.startswith("Dataverse refused the jobs: Dataverse ")
    assert caught.value.message.endswith(": Number of requests exceeded the limit")
    assert isinstance(caught.value, StoreUnavailable) == (status != 400)
    if status == 429:
        assert caught.value.retry_after == 7  # type: ignore[attr-defined]


@pytest.mark.parametrize(("status", "error"), [(429, StoreUnavailable), (400, StoreError)])
def test_the_applied_mark_and_its_effects_are_one_conditional_change_set(rsps, store, status, error):
    claimed_by_runner_a(rsps)
    refusal = {"error": {"code": "0x80072322", "message": "Number of requests exceeded the limit"}}
    rsps.post(f"{API}$batch", body=batch_answer((status, refusal)),
              content_type="multipart/mixed; boundary=batchresponse_x")
    store.claim("runner-a", 10, 60.0)
    effects = Effects((Record("history", "contact:c-1|webinar", {"after": 1}),))
    with pytest.raises(error) as caught:
        store.save_progress("runner-a", JOB_A, applied=True, effects=effects)

    assert caught.value.message.startswith(f"Dataverse refused job {JOB_A}'s outcome: Dataverse ")
    assert caught.value.message.endswith(": Number of requests exceeded the limit")
    assert (caught.value.http_status, getattr(caught.value, "retry_after", None)) == (
        status, 7 if status == 429 else None)
    body = api_calls(rsps)[-1].request.body.decode()
    assert "Content-Type: multipart/mixed; boundary=changeset_" in body  # all or nothing
    mark = body[body.index(f"PATCH {API}cr_connectorjobs({JOB_A})?$select=cr_connectorjobid,"):]
    assert mark.index('If-Match: W/"9"') < mark.index("PATCH", 1)  # only while the row is as the claim left it
    assert "cr_connectorentries(" in mark  # the history record, after the mark

