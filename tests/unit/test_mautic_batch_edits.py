"""Mautic batch tag edits, pinned with `responses`: the exact `PATCH /api/contacts/batch/edit` request, and each
item of its answer read as the contact edit call's own answer would be (Mautic writes the per-item arrays as JSON
lists or as objects keyed by position, depending on gaps).

A group is made without timing: the first edit's answer is held on the wire (its callback waits on a gate) with
one request allowed on the wire, the others queue behind it and leave together when it is released."""

from __future__ import annotations

import functools
import json
import threading
from typing import Any

import pytest
import requests
import responses
from requests.auth import HTTPBasicAuth
from responses import matchers

from connector import errors
from connector.http import ApiSession
from connector.mautic import MauticPlatform
from connector.platform import Contact
from tests.grouping import DEADLINE, behind_a_held_write

BASE = "https://mautic.example.com"
API = BASE + "/api"
BATCH = API + "/contacts/batch/edit"
NOT_FOUND = {"errors": [{"code": 404, "message": "Item was not found.", "details": [], "type": None}]}


def contact(cid: int) -> Contact:
    return Contact(email=f"c{cid}@example.com")


def found(mocked: responses.RequestsMock, cid: int) -> None:
    mocked.get(API + "/contacts", match=[matchers.query_param_matcher(
        {"search": f'email:"+c{cid}@example.com"', "minimal": "true", "limit": "30", "orderBy": "id",
         "orderByDir": "asc"})],
        json={"total": "1", "contacts": {str(cid): {"id": cid, "fields": {"all": {"email": f"c{cid}@example.com"}}}}})


@pytest.fixture
def mautic(session: ApiSession) -> MauticPlatform:
    platform = MauticPlatform(session, base_url=BASE, auth=HTTPBasicAuth("u", "p"))
    assert platform.tag_edits is not None
    platform.tag_edits.parallel = 1
    return platform


def behind_a_held_edit(mautic: MauticPlatform, mocked: responses.RequestsMock,
                       edits: list[tuple[int, list[str]]]) -> dict[int, Any]:
    """Contact 1's edit held on the wire, then `edits` (contact id, tags) queued and released: each edit's None or
    error."""
    gate, holding = threading.Event(), threading.Event()

    def held(request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        holding.set()
        assert gate.wait(DEADLINE)
        return 200, {}, json.dumps({"contact": {"id": 1}})

    # Looked up by each thread before its edit queues, so an id is not cached and a 404 is the item's own answer.
    for cid in {1, *(cid for cid, _ in edits)}:
        found(mocked, cid)
    mocked.add_callback(responses.PATCH, API + "/contacts/1/edit", callback=held)
    assert mautic.tag_edits is not None
    first, answers = behind_a_held_write(
        mautic.tag_edits, functools.partial(mautic.add_tags, contact(1), ["Held"], ref="held"), holding, gate.set,
        [functools.partial(mautic.add_tags, contact(cid), tags, ref="job") for cid, tags in edits])
    assert first is None
    return dict(enumerate(answers))


def alone(session: ApiSession, mocked: responses.RequestsMock, status: int, body: dict[str, Any]) -> Exception:
    """What the contact edit call raises for contact 9 answered `status` and `body`, its id not cached."""
    single = MauticPlatform(session, base_url=BASE, auth=HTTPBasicAuth("u", "p"), batch_tag_edits=False)
    found(mocked, 9)
    mocked.patch(API + "/contacts/9/edit", status=status, json=body)
    with pytest.raises(errors.ConnectorError) as raised:
        single.add_tags(contact(9), ["A"], ref="job")
    return raised.value


def same(error: Any, expected: Exception) -> None:
    assert isinstance(error, errors.ConnectorError) and isinstance(expected, errors.ConnectorError)
    assert (type(error), error.result_code, error.message, error.http_status) == (
        type(expected), expected.result_code, expected.message, expected.http_status)


def test_the_batch_request_is_a_json_array_of_ids_and_tags(
    mautic: MauticPlatform, mocked: responses.RequestsMock
) -> None:
    expected = [{"id": 2, "tags": ["Webinar", "VIP"]}, {"id": 3, "tags": ["Trial"]}]

    def in_any_order(request: requests.PreparedRequest) -> tuple[bool, str]:
        body = json.loads(request.body or b"null")
        sent = sorted(body, key=lambda item: item["id"]) if isinstance(body, list) else body
        return sent == expected, f"sent {body!r}"

    mocked.patch(BATCH, match=[in_any_order, matchers.header_matcher({"Accept": "application/json"})],
                 json={"contacts": [{"id": 2}, {"id": 3}], "statusCodes": [200, 200]})
    assert behind_a_held_edit(mautic, mocked, [(2, ["Webinar", "VIP"]), (3, ["Trial"])]) == {0: None, 1: None}


@pytest.mark.parametrize(("status", "body"), [
    (400, {"errors": [{"code": 400, "message": "tags: This value is not valid.", "details": [], "type": None}]}),
    (404, NOT_FOUND),
    (403, {"errors": [{"code": 403, "message": "You do not have access to the requested area/action.",
                       "details": [], "type": None}]}),
    (422, {"errors": [{"code": 422, "message": "email: This value is not valid.", "details": [], "type": None}]}),
])
@pytest.mark.parametrize("failing", [0, 1])
def test_an_item_refused_fails_its_edit_only_with_the_single_edits_error(
    session: ApiSession, mautic: MauticPlatform, mocked: responses.RequestsMock, status: int, body: dict[str, Any],
    failing: int
) -> None:
    expected = alone(session, mocked, status, body)
    ids = [2, 3, 4]
    (error,) = body["errors"]
    item_error = {"message": error["message"], "code": status, "type": "api"}
    refused: list[int] = []

    def answer(request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        sent = [item["id"] for item in json.loads(request.body or b"[]")]
        refused.append(sent[failing])
        codes = [status if i == failing else 200 for i in range(len(sent))]
        # PHP writes {0: ...} as a list and {1: ...} as an object keyed "1"; `contacts` has a gap where it failed.
        errors_ = [item_error] if failing == 0 else {str(failing): item_error}
        contacts = {str(i): {"id": cid} for i, cid in enumerate(sent) if i != failing}
        return 200, {}, json.dumps({"contacts": contacts, "statusCodes": codes, "errors": errors_})

    mocked.add_callback(responses.PATCH, BATCH, callback=answer)
    answers = behind_a_held_edit(mautic, mocked, [(cid, ["A"]) for cid in ids])
    failed = answers.pop(ids.index(refused[0]))
    assert set(answers.values()) == {None}
    same(failed, expected)


def test_an_item_the_answer_says_nothing_of_is_an_unknown_outcome(
    mautic: MauticPlatform, mocked: responses.RequestsMock
) -> None:
    second: list[int] = []

    def answer(request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        first, last = (item["id"] for item in json.loads(request.body or b"[]"))
        second.append(last)
        return 200, {}, json.dumps({"contacts": [{"id": first}], "statusCodes": [200]})

    mocked.add_callback(responses.PATCH, BATCH, callback=answer)
    answers = behind_a_held_edit(mautic, mocked, [(2, ["A"]), (3, ["A"])])
    unknown = answers.pop([2, 3].index(second[0]))
    assert answers == {1 - [2, 3].index(second[0]): None}
    assert isinstance(unknown, errors.OutcomeUnknown) and unknown.http_status == 200
    assert unknown.message == (f"Mautic's answer to a batch edit says nothing of contact {second[0]}; whether its "
                               "tags changed is unknown.")


@pytest.mark.parametrize(("status", "words", "retry_after"), [(503, "Service Unavailable", 7.0),
                                                           (400, "Request body is not valid JSON.", None)])
def test_a_batch_refused_whole_fails_every_edit_with_the_status_of_the_single_edit(
    session: ApiSession, mautic: MauticPlatform, mocked: responses.RequestsMock, status: int, words: str,
    retry_after: float | None
) -> None:
    body = {"errors": [{"code": status, "message": words, "details": [], "type": None}]}
    expected = alone(session, mocked, status, body)
    mocked.patch(BATCH, status=status, json=body, headers={"Retry-After": "7"} if retry_after else {})
    answers = behind_a_held_edit(mautic, mocked, [(2, ["A"]), (3, ["B"])])
    for failed in answers.values():
        assert (type(failed), failed.result_code, failed.http_status, getattr(failed, "retry_after", None)) == (
            type(expected), expected.result_code, status, retry_after)
        assert failed.message == f"Mautic could not change the tags of 2 contacts in one request: {words}"


def test_an_item_with_an_error_and_no_status_fails_with_the_errors_code(
    session: ApiSession, mautic: MauticPlatform, mocked: responses.RequestsMock
) -> None:
    expected = alone(session, mocked, 404, NOT_FOUND)
    # statusCodes says nothing of the second item; its error object carries the code.
    mocked.patch(BATCH, json={"contacts": [{"id": 2}], "statusCodes": [200],
                              "errors": {"1": {"message": "Item was not found.", "code": 404, "type": "api"}}})
    answers = behind_a_held_edit(mautic, mocked, [(2, ["A"]), (3, ["B"])])
    assert answers[0] is None
    same(answers[1], expected)


def test_an_item_refused_without_an_error_object_fails_as_a_single_edit_answered_without_one(
    session: ApiSession, mautic: MauticPlatform, mocked: responses.RequestsMock
) -> None:
    expected = alone(session, mocked, 422, {})
    mocked.patch(BATCH, json={"contacts": [{"id": 2}], "statusCodes": [200, 422]})
    answers = behind_a_held_edit(mautic, mocked, [(2, ["A"]), (3, ["B"])])
    assert answers[0] is None
    same(answers[1], expected)


def test_a_batch_answered_with_a_page_that_is_not_json_says_which_request(
    mautic: MauticPlatform, mocked: responses.RequestsMock
) -> None:
    mocked.patch(BATCH, body="<html>Log in</html>", status=200)
    answers = behind_a_held_edit(mautic, mocked, [(2, ["A"]), (3, ["B"])])
    for failed in answers.values():
        assert isinstance(failed, errors.Unavailable)
        assert failed.message == ("Mautic answered PATCH /contacts/batch/edit with something that is not JSON (is "
                                  "base_url right?).")


def test_a_mautic_without_the_batch_route_gets_each_edit_alone_from_then_on(
    mautic: MauticPlatform, mocked: responses.RequestsMock
) -> None:
    # An older Mautic reads `batch` as a contact id and answers the contact edit call's 404: nothing was edited.
    batch = mocked.patch(BATCH, status=404, json=NOT_FOUND)
    second = mocked.patch(API + "/contacts/2/edit", match=[matchers.json_params_matcher({"tags": ["A"]})], json={})
    third = mocked.patch(API + "/contacts/3/edit", match=[matchers.json_params_matcher({"tags": ["B"]})], json={})
    assert behind_a_held_edit(mautic, mocked, [(2, ["A"]), (3, ["B"])]) == {0: None, 1: None}
    assert (batch.call_count, second.call_count, third.call_count) == (1, 1, 1)
    assert mautic.tag_edits is None  # later edits never try the batch route again



@pytest.mark.parametrize("status", [404, 405])
def test_batches_queued_when_the_route_turns_out_missing_go_alone_too(
    mautic: MauticPlatform, mocked: responses.RequestsMock, status: int
) -> None:
    # Contacts 2 and 3 twice: two batches queue behind the held edit, the second waiting while the first learns
    # that the route is missing. Neither may fail its jobs for it.
    batch = mocked.patch(BATCH, status=status, json=NOT_FOUND)
    edits = {cid: mocked.patch(API + f"/contacts/{cid}/edit", json={}) for cid in (2, 3)}
    assert behind_a_held_edit(mautic, mocked, [(2, ["A"]), (3, ["B"]), (2, ["C"]), (3, ["D"])]) == dict.fromkeys(
        range(4))
    assert batch.call_count == 1  # the second batch is not asked once the route is known to be missing
    assert [edits[2].call_count, edits[3].call_count] == [2, 2]
    assert mautic.tag_edits is None
