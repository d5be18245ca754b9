"""What only the Dataverse job store has: the columns CRM users see on the job row, rows users edit, the choice
and text operation columns, the connector's own kinds kept as JSON, audit lines in the attempt log, and how a
throttled `$batch` is reported. Every guarantee of the store contract is in `tests/contract`."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from config.settings import DataverseTableSettings, RetrySettings
from connector import errors
from connector.dataverse.client import DataverseClient
from connector.platform import Contact
from jobs.executor import Executor
from jobs.model import Attempt, InvalidJob, JobRequest, JobStatus
from jobs.store import Actor, Effects, JobFilter, Outcome, Record, StoreError
from jobs.store.dataverse import (
    ATTEMPT_LOG_MAX,
    CLAIM_WINDOW_MIN,
    CLAIM_WINDOW_PER_JOB,
    MESSAGE_MAX,
    DataverseJobStore,
    append_to_log,
)
from tests.conftest import FakeClock
from tests.integration.dataverse_env import TABLE, client_for, make_record, running_sandbox

ENTITY = TABLE.entity_set


@pytest.fixture
def dv_store(client: DataverseClient, clock: FakeClock) -> DataverseJobStore:
    return DataverseJobStore(client, TABLE, clock=clock)


@pytest.fixture
def contact(client: DataverseClient) -> str:
    return make_record(client, emailaddress1="ann@example.com")


@pytest.fixture
def queue(dv_store: DataverseJobStore, contact: str) -> Callable[..., Any]:
    def make(**fields: Any) -> Any:
        fields = {"operation": "add_tag", "tags": "Webinar", "target_kind": "contact", "target_id": contact,
                  **fields}
        return dv_store.add([JobRequest.from_input(**fields)])[0]

    return make


def test_runner_columns_are_readable_on_the_row(dv_store, queue, client):
    job = queue()
    dv_store.claim("runner-a", 1, 30.0)
    dv_store.finish("runner-a", job.id, Outcome(JobStatus.SUCCEEDED, "OK", "Added tag Webinar"))
    row = client.get(ENTITY, job.id)
    assert (row["statuscode"], row["statecode"]) == (2, 1)
    assert row["cr_resultcode"] == "OK"
    assert row["cr_message"] == "Added tag Webinar"


def test_the_row_shows_when_the_last_attempt_ended(dv_store, queue, client, clock):
    job = queue()
    dv_store.claim("runner-a", 1, 30.0)
    started = clock.now
    clock.advance(4)  # a slow answer: the attempt ends four seconds after it started
    dv_store.record_attempt("runner-a", Attempt(job_id=job.id, started_at=started, ended_at=clock.now,
                                                outcome="retrying", result_code="UNAVAILABLE", http_status=503))
    ended = datetime.fromtimestamp(math.ceil(clock.now), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    row = client.get(ENTITY, job.id)
    assert row["cr_lastattemptat"] == ended
    assert row["cr_attemptlog"].splitlines()[0].startswith("#1 | ")  # the log's first line, not a blank one


def test_a_full_attempt_log_drops_its_oldest_whole_lines(dv_store, queue, client, clock):
    job = queue()
    dv_store.claim("runner-a", 1, 30.0)

    def attempt(message: str) -> None:
        dv_store.record_attempt("runner-a", Attempt(job_id=job.id, started_at=clock.now, outcome="retrying",
                                                    result_code="UNAVAILABLE", message=message))

    for n in range(1, 46):  # each line about 500 characters: 45 of them are more than the column holds
        attempt(f"try {n} " + "x" * 420)
    log = client.get(ENTITY, job.id)["cr_attemptlog"]
    # As many of the newest whole lines as fit: what was dropped is at most one line and its line break.
    assert ATTEMPT_LOG_MAX - max(map(len, log.splitlines())) - 1 <= len(log) <= ATTEMPT_LOG_MAX
    kept = dv_store.attempts(job.id)
    assert [a.number for a in kept] == list(range(46 - len(kept), 46)) and len(kept) < 45
    assert len(log.splitlines()) == len(kept)  # every line kept is whole: none is cut at its start
    assert all(a.message == f"try {a.number} " + "x" * 420 for a in kept)
    attempt("y" * 30_000)  # longer than the whole log: its message is clipped, so its line fits
    assert dv_store.attempts(job.id)[-1].message == "y" * (MESSAGE_MAX - 1) + "…"
    assert dv_store.get(job.id).attempts == 46


def test_an_attempt_log_exactly_at_its_size_keeps_every_line():
    first = "#1 | " + "a" * 100
    second = "#2 | " + "b" * (ATTEMPT_LOG_MAX - len(first) - 1 - 5)
    assert append_to_log(first, second) == f"{first}\n{second}"
    assert append_to_log(first, second + "b") == second + "b"


def test_a_write_with_firings_looks_up_only_those_firings(client, clock, contact, sandbox):
    store = DataverseJobStore(client, TABLE, clock=clock, page_size=2)
    jobs = store.add([JobRequest.from_input(operation="add_tag", tags=t, target_kind="contact", target_id=contact)
                      for t in ("A", "B")])
    store.claim("runner-a", 2, 30.0)
    history = tuple(Record("history", "contact:c-1|a", {"n": n}) for n in range(6))
    store.save_progress("runner-a", jobs[0].id, applied=True, effects=Effects(history))
    firings = tuple(Record("firings", "contact:c-1", {"trigger": t}, unique=f"{t}|contact:c-1") for t in "TU")
    before = sandbox.app.api_requests
    store.save_progress("runner-a", jobs[1].id, applied=True, effects=Effects(firings))
    # One query for the two firings' rows (not a page through every entry), one change set.
    assert sandbox.app.api_requests - before == 2
    assert [e.data["trigger"] for e in store.entries("firings")] == ["T", "U"]


def test_a_user_editing_a_running_job_does_not_lose_the_lease(dv_store, queue, client):
    job = queue()
    dv_store.claim("runner-a", 10, 30.0)
    client.update(ENTITY, job.id, {"cr_message": "a user typed here"})
    dv_store.finish("runner-a", job.id, Outcome(JobStatus.SUCCEEDED, "OK", "done"))
    assert dv_store.get(job.id).status is JobStatus.SUCCEEDED


def test_add_is_all_or_nothing(dv_store, contact, client):
    good = JobRequest.from_input(operation="add_tag", tags="A", target_kind="contact", target_id=contact)
    missing = JobRequest.from_input(operation="add_tag", tags="B", target_kind="contact",
                                    target_id="00000000-0000-4000-8000-0000000000ff")
    with pytest.raises(StoreError, match="Does Not Exist"):
        dv_store.add([good, missing])
    assert dv_store.list(JobFilter()).jobs == []
    # Not a GUID: the user's input, refused with a sentence (the CLI's exit code 2), nothing written.
    with pytest.raises(InvalidJob, match="is not a Dataverse row id; jobs in Dataverse point at records by their"):
        dv_store.add([JobRequest.from_input(operation="add_tag", tags="A", target_kind="contact", target_id="C-1")])
    assert dv_store.list(JobFilter()).jobs == []


def test_a_row_edited_into_something_invalid_is_read_not_rejected(dv_store, queue, client, spotler, clock):
    job = queue(operation="increase_score", tags="Lead score", score=5)
    client.update(ENTITY, job.id, {"cr_score": -5})  # a careless user on the job form

    back = dv_store.get(job.id)
    assert back.request is None
    assert back.raw["score"] == -5

    [claimed] = dv_store.claim("runner-a", 10, 30.0)
    executor = Executor(spotler, _NoCrm(), RetrySettings(), clock=clock, sleep=clock.sleep)
    assert executor.execute(claimed, dv_store, "runner-a") is JobStatus.FAILED

    row = client.get(ENTITY, job.id)
    assert row["cr_resultcode"] == "INVALID_INPUT"
    assert "Decrease Score" in row["cr_message"]
    assert row["statuscode"] == TABLE.status_reasons.failed


def test_a_choice_value_the_mapping_lacks_is_invalid_input(dv_store, queue, client):
    job = queue()
    client.update(ENTITY, job.id, {"cr_operation": 100000099})
    back = dv_store.get(job.id)
    assert back.request is None
    assert back.raw["operation"] == "100000099"


def test_a_text_operation_column_works_too(tmp_path, clock):
    table = DataverseTableSettings(operation_values={}, sequence="")
    with running_sandbox(tmp_path, table=table) as sandbox, client_for(sandbox) as client:
        store = DataverseJobStore(client, table, clock=clock)
        contact = make_record(client)
        job = store.add([JobRequest.from_input(operation="Set Score", tags="X", score=3, target_kind="contact",
                                               target_id=contact)])[0]
        assert client.get(table.entity_set, job.id)["cr_operation"] == "set_score"
        assert store.get(job.id).request == job.request


class _NoCrm:
    """A CRM the invalid-input path must never reach."""

    name = "none"

    def identify(self, target_kind: str, target_id: str) -> Contact:
        raise AssertionError("an invalid job must not be looked up")

    def post(self, *, target_kind: str, target_id: str, job_id: str, text: str, may_exist: bool = True) -> None:
        raise AssertionError("an invalid job must not be posted")

    def timeline(self, target_kind: str, target_id: str) -> list[Any]:
        return []




def test_a_kind_of_the_connector_s_own_is_kept_as_json_beside_the_form_columns(dv_store, contact, client):
    table = DataverseTableSettings(operation_values={"add_tag": 100000000})  # only Add Tag is on the form here
    store = DataverseJobStore(client, table)
    job = store.add([JobRequest.from_input(operation="set_score", tags="Lead", score=3, target_kind="contact",
                                           target_id=contact)])[0]
    row = client.get(ENTITY, job.id)
    assert row.get("cr_operation") is None
    assert json.loads(row["cr_payload"]) == {"operation": "set_score", "tags": "Lead", "score": 3}
    assert row["_cr_contact_value"] == contact
    back = store.get(job.id)
    assert back.request == job.request
    # The same job on the form: the operation and the Tag and Score columns, no JSON.
    on_form = dv_store.add([job.request])[0]
    row = client.get(ENTITY, on_form.id)
    assert (row["cr_operation"], row["cr_tags"], row["cr_score"], row.get("cr_payload")) == \
        (TABLE.operation_values["set_score"], "Lead", 3, None)


def test_retries_and_cancels_by_hand_are_lines_of_the_attempt_log(dv_store, queue, client):
    job = queue()
    dv_store.claim("runner-a", 1, 30.0)
    dv_store.finish("runner-a", job.id, Outcome(JobStatus.FAILED, "NOT_FOUND", "No contact."))
    dv_store.retry(job.id, Actor("ann@contoso.com", "cli"))
    dv_store.cancel(job.id, Actor("bob | ops", "console"))
    log = client.get(ENTITY, job.id)["cr_attemptlog"].splitlines()
    assert [line.split(" | ", 1)[1] for line in log] == [
        "retry | ann@contoso.com | cli", "cancel | bob / ops | console"]
    assert [(e.action, e.who, e.via) for e in dv_store.audit(job.id)] == [
        ("retry", "ann@contoso.com", "cli"), ("cancel", "bob / ops", "console")]
    assert dv_store.attempts(job.id) == []  # audit lines are not attempts


def test_counts_are_one_aggregate_query_and_page_through_past_the_aggregate_limit(
    dv_store, queue, client, sandbox, monkeypatch
):
    for tag in ("A", "B", "C"):
        queue(tags=tag)
    dv_store.claim("runner-a", 1, 30.0)
    before = sandbox.app.api_requests
    assert dv_store.counts() == {"running": 1, "pending": 2}
    assert sandbox.app.api_requests - before == 1
    monkeypatch.setattr("connector.sandbox.dataverse.AGGREGATE_LIMIT", 2)
    assert dv_store.counts() == {"running": 1, "pending": 2}  # refused by the server, counted page by page


def test_a_list_by_a_record_id_that_is_no_guid_says_so_instead_of_finding_nothing(dv_store, queue):
    queue()
    with pytest.raises(errors.InvalidInput, match="'C-1001' is not a Dataverse row id"):
        dv_store.list(JobFilter(target_id="C-1001"))


# --- claims at scale: a window of the oldest due rows, never the whole backlog ---------------------------------


def _listing_requests(client: DataverseClient) -> list[tuple[str, int]]:
    """The GETs of the jobs table the client sends from now on, each with the rows it read (a response hook on
    its `requests` session)."""
    seen: list[tuple[str, int]] = []

    def hook(response: Any, *args: Any, **kwargs: Any) -> None:
        if response.request.method == "GET" and f"/{ENTITY}?" in response.url:
            seen.append((response.url, len(response.json()["value"])))

    client.session.hooks["response"].append(hook)
    return seen


@pytest.mark.parametrize("backlog", [50, 5000])
def test_a_claim_reads_at_most_two_pages_of_the_backlog_however_long_it_is(client, clock, backlog):
    store = DataverseJobStore(client, TABLE, clock=clock)
    contacts = [make_record(client, lastname=f"C{n}") for n in range(10)]
    # Ten jobs per key, the keys taking turns: the first 500 rows hold 50 keys, each with its first job there.
    requests = [JobRequest.from_input(operation="add_tag", tags=f"T{n % 50}", target_kind="contact",
                                      target_id=contacts[n % 10]) for n in range(backlog)]
    created = [job.id for start in range(0, backlog, 1000) for job in store.add(requests[start:start + 1000])]
    clock.advance(1)
    listed = _listing_requests(client)
    claimed = store.claim("runner-a", 200, 30.0)
    # The oldest job of each key, and nothing behind one.
    assert sorted(job.id for job in claimed) == sorted(created[:50])
    window_pages = [url for url, _ in listed if "orderby" in url]
    assert len(window_pages) <= 2 and len(listed) <= 5, listed  # the running and retrying rows: one query each
    assert sum(rows for _, rows in listed) <= 2 * 2000  # two windows of ten rows per job the claim may take


def test_a_window_smaller_than_the_backlog_keeps_every_key_in_creation_order(client, clock):
    store = DataverseJobStore(client, TABLE, clock=clock, claim_window=4)
    contacts = [make_record(client, lastname=f"C{n}") for n in range(3)]
    rng = random.Random(5)
    jobs = []
    for n in range(60):
        clock.advance(rng.choice([0, 0, 1]))  # rows created in the same second are ordered by the autonumber
        tag, who = rng.choice(["A", "B", "C", "D"]), rng.choice(contacts)
        (job,) = store.add([JobRequest.from_input(operation="increase_score", tags=tag, score=n + 1,
                                                  target_kind="contact", target_id=who)])
        jobs.append((job.id, (who, tag)))
    clock.advance(1)
    order = {job_id: n for n, (job_id, _) in enumerate(jobs)}
    ran: dict[tuple[str, str], list[int]] = {}
    for _ in range(300):
        if sum(len(v) for v in ran.values()) == len(jobs):
            break
        claimed = store.claim("runner-a", 3, 30.0)
        for job in claimed:
            key = next(k for job_id, k in jobs if job_id == job.id)
            ran.setdefault(key, []).append(order[job.id])
            if rng.random() < 0.2:  # some fail for a while: their key waits for them
                store.finish("runner-a", job.id, Outcome(JobStatus.PENDING, "UNAVAILABLE", "Retrying.",
                                                         next_attempt_at=clock.now + 2))
                ran[key].pop()
            else:
                store.finish("runner-a", job.id, Outcome(JobStatus.SUCCEEDED, "OK", "Done."))
        clock.advance(1)
    assert sum(len(v) for v in ran.values()) == len(jobs)
    for key, numbers in ran.items():
        assert numbers == sorted(numbers), key


def test_a_claim_reads_the_next_window_only_while_it_has_found_too_few_jobs(client, clock):
    store = DataverseJobStore(client, TABLE, clock=clock, claim_window=4)
    contacts = [make_record(client, lastname=f"C{n}") for n in range(6)]

    def queue(contact: str, tag: str) -> str:
        clock.advance(1)
        return store.add([JobRequest.from_input(operation="add_tag", tags=tag, target_kind="contact",
                                                target_id=contact)])[0].id

    def windows_read(claim: Callable[[], Any]) -> tuple[Any, int]:
        listed = _listing_requests(client)
        found = claim()
        return found, len([url for url, _ in listed if "orderby" in url])

    # Four free keys fill the first window: enough for a claim of four, and no second window is read.
    free = [queue(contacts[n], "B") for n in range(4)]
    queue(contacts[4], "B")
    clock.advance(1)
    claimed, windows = windows_read(lambda: store.claim("runner-a", 4, 30.0))
    assert ([j.id for j in claimed], windows) == (free, 1)
    for job in claimed:
        store.finish("runner-a", job.id, Outcome(JobStatus.SUCCEEDED, "OK", "Done."))
    # Now the first window holds the job left and three more of its key; the next one the jobs of other keys.
    held = [queue(contacts[4], "B") for _ in range(3)]
    others = [queue(contacts[n], "A") for n in (0, 5)]
    clock.advance(1)
    claimed, windows = windows_read(lambda: store.claim("runner-a", 10, 30.0))
    assert len(claimed) == 3 and set(others) <= {j.id for j in claimed} and not set(held) & {j.id for j in claimed}
    assert windows == 2


def test_a_table_whose_pending_jobs_are_inactive_rows_still_has_them_claimed(tmp_path, clock):
    """A status mapping is the organisation's: pending jobs may be kept as inactive rows with a reason of their
    own. Claims find them by that reason."""
    reasons = DataverseTableSettings().status_reasons.model_copy(
        update={"pending": 100_000_009, "pending_state": 1})
    table = DataverseTableSettings(status_reasons=reasons)
    with running_sandbox(tmp_path / "own", table=table) as sandbox, client_for(sandbox) as own:
        store = DataverseJobStore(own, table, clock=clock)
        contact = make_record(own)
        (job,) = store.add([JobRequest.from_input(operation="add_tag", tags="VIP", target_kind="contact",
                                                  target_id=contact)])
        clock.advance(1)
        assert [j.id for j in store.claim("runner-a", 5, 30.0)] == [job.id]


def _queue_backlog(client: DataverseClient, store: DataverseJobStore, size: int) -> tuple[list[str], list[set[Any]]]:
    """`size` add_tag jobs on 200 keys (25 contacts, 8 tags) taking turns at random, one in ten on two tags, queued
    1,000 at a time: their ids in creation order and each one's keys."""
    rng = random.Random(11)
    contacts = [make_record(client, lastname=f"C{n}") for n in range(25)]
    keys_of: list[set[Any]] = []
    requests = []
    for _ in range(size):
        contact, tags = rng.choice(contacts), rng.sample([f"T{t}" for t in range(8)], 2 if rng.random() < 0.1 else 1)
        keys_of.append({(contact, tag) for tag in tags})
        requests.append(JobRequest.from_input(operation="add_tag", tags="; ".join(tags), target_kind="contact",
                                              target_id=contact))
    ids = [job.id for start in range(0, size, 1000) for job in store.add(requests[start:start + 1000])]
    return ids, keys_of


@pytest.mark.parametrize("backlog", [50, pytest.param(50_000, marks=pytest.mark.slow)])
def test_two_runners_keep_every_key_in_order_and_claims_read_the_same_however_long_the_backlog(
    client, sandbox, clock, backlog
):
    """Two runners take turns claiming behind a backlog of 50 or 50,000 rows, each claiming while the other's
    jobs run; some jobs fail for a while and wait for a retry, holding their keys. Every key's jobs run in creation
    order, never two at once, and every claim reads at most two windows and the rows that could hold them back."""
    rng = random.Random(7)
    limit, to_run = 20, min(backlog, 3_000)
    window = max(CLAIM_WINDOW_MIN, CLAIM_WINDOW_PER_JOB * limit)
    with client_for(sandbox) as other_client:
        runners = {"runner-a": DataverseJobStore(client, TABLE, clock=clock),
                   "runner-b": DataverseJobStore(other_client, TABLE, clock=clock)}
        ids, keys_of = _queue_backlog(client, runners["runner-a"], backlog)
        number = {job_id: n for n, job_id in enumerate(ids)}  # a job's place in creation order
        listed = {name: _listing_requests(runner.client) for name, runner in runners.items()}
        held: dict[str, list[int]] = {name: [] for name in runners}  # each runner's running jobs
        ran: list[int] = []  # the jobs that succeeded, in the order they did
        failures: dict[int, int] = {}
        retrying: set[int] = set()
        turn = 0
        while len(ran) < to_run:
            assert turn < 2_000, "the runners stopped finding the jobs left"
            clock.advance(1)
            name = ("runner-a", "runner-b")[turn % 2]
            runner, turn = runners[name], turn + 1
            for n in held.pop(name):  # this runner's jobs end; the other runner's still run
                if failures.get(n, 0) < 2 and rng.random() < 0.15:  # fails for a while: its keys wait
                    failures[n] = failures.get(n, 0) + 1
                    retrying.add(n)
                    runner.finish(name, ids[n], Outcome(JobStatus.PENDING, "UNAVAILABLE", "Retrying.",
                                                        next_attempt_at=clock.now + rng.randint(2, 5)))
                else:
                    runner.finish(name, ids[n], Outcome(JobStatus.SUCCEEDED, "OK", "Done."))
                    retrying.discard(n)
                    ran.append(n)
            running = {key for jobs in held.values() for n in jobs for key in keys_of[n]}
            before = len(listed[name])
            held[name] = sorted(number[job.id] for job in runner.claim(name, limit, 30.0))
            for n in held[name]:
                assert not keys_of[n] & running, f"job {n} claimed while a job of its key runs"
                running |= keys_of[n]
            this_claim = listed[name][before:]
            assert len([url for url, _ in this_claim if "orderby" in url]) <= 2 and len(this_claim) <= 5, this_claim
            # Two windows at most, and beside them the rows that could hold them back: the other runner's
            # running jobs and the jobs waiting for a retry. Nothing here depends on the backlog.
            assert sum(rows for _, rows in this_claim) <= 2 * window + limit + len(retrying), turn

    queued: dict[Any, list[int]] = {}
    succeeded: dict[Any, list[int]] = {}
    for jobs, per_key in ((range(backlog), queued), (ran, succeeded)):
        for n in jobs:
            for key in keys_of[n]:
                per_key.setdefault(key, []).append(n)
    for key, numbers in succeeded.items():  # each key's first jobs, one after the other in creation order
        assert numbers == queued[key][:len(numbers)], key
    assert len(succeeded) > min(150, backlog // 2)
