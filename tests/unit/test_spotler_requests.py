"""The Spotler adapter's exact requests, pinned with `responses`: signing, paths, bodies, error mapping."""

from __future__ import annotations

import json
from collections.abc import Callable
from urllib.parse import unquote

import pytest
import responses
from oauthlib.common import Request as OAuthRequest
from oauthlib.oauth1.rfc5849 import signature, utils

from connector import errors
from connector.platform import Contact
from connector.spotler import SpotlerPlatform
from tests.conftest import SPOTLER_KEY, SPOTLER_SECRET

BASE = "https://restapi.test/integrationservice-1.1.0"
ANNA = Contact(external_id="C-1", email="anna@example.com")


@pytest.fixture
def spotler(make_spotler: Callable[..., SpotlerPlatform]) -> SpotlerPlatform:
    return make_spotler(BASE)


def _signature_is_valid(call: responses.Call, secret: str = SPOTLER_SECRET) -> bool:
    header = call.request.headers["Authorization"]
    header = header.decode() if isinstance(header, bytes) else header
    params = {k: utils.unescape(v) for k, v in utils.parse_authorization_header(header)}
    assert params["oauth_consumer_key"] == SPOTLER_KEY
    assert params["oauth_signature_method"] == "HMAC-SHA1"
    assert "oauth_token" not in params  # one-legged: no token
    url = call.request.url
    request = OAuthRequest(url, call.request.method, None, {})
    request.params = signature.collect_parameters(
        uri_query=url.partition("?")[2], headers={"Authorization": header}, exclude_oauth_signature=True
    )
    request.signature = params["oauth_signature"]
    return signature.verify_hmac_sha1(request, secret, None)


def _header(call: responses.Call, name: str) -> str:
    value = call.request.headers[name]
    return value.decode() if isinstance(value, bytes) else value


def _json(call: responses.Call) -> object:
    body = call.request.body
    return json.loads(body.decode() if isinstance(body, bytes) else body)


@responses.activate
def test_add_tags_is_signed_and_sends_the_tag_list(spotler: SpotlerPlatform) -> None:
    responses.post(f"{BASE}/contact/C-1/tags", status=204)
    spotler.add_tags(ANNA, ["Webinar", "VIP"], ref="job 1")
    call = responses.calls[0]
    assert _signature_is_valid(call)
    assert not _signature_is_valid(call, secret="another-secret")
    assert _header(call, "Accept") == "application/json"
    assert _header(call, "Content-Type") == "application/json"
    assert _json(call) == {"tags": ["Webinar", "VIP"]}


@responses.activate
def test_tag_names_are_quoted_in_paths(spotler: SpotlerPlatform) -> None:
    responses.delete(f"{BASE}/contact/C-1/tags/Event%20Amsterdam%2F2026", status=204)
    responses.put(f"{BASE}/contact/C-1/tags/Caf%C3%A9%20%26%20more/score", status=200, json={})
    spotler.remove_tags(ANNA, ["Event Amsterdam/2026"], ref="job 1")
    spotler.set_score(ANNA, "Café & more", -4, ref="job 2")
    assert unquote(responses.calls[0].request.path_url.rsplit("/", 1)[1]) == "Event Amsterdam/2026"
    assert _json(responses.calls[1]) == {"score": -4}
    assert all(_signature_is_valid(c) for c in responses.calls)


@responses.activate
def test_score_changes_and_reads(spotler: SpotlerPlatform) -> None:
    responses.post(f"{BASE}/contact/C-1/tags/Lead/score", status=200, json={"name": "Lead", "score": 7})
    responses.get(f"{BASE}/contact/C-1/tags", json={"tags": [{"name": "Lead", "score": 7}, {"name": "VIP"}]})
    spotler.change_score(ANNA, "Lead", -3, ref="job 3")
    assert _json(responses.calls[0]) == {"change": -3}
    assert spotler.read_scores(ANNA) == {"Lead": 7, "VIP": 0}


@responses.activate
def test_a_tag_only_job_creates_the_tag(spotler: SpotlerPlatform) -> None:
    responses.post(f"{BASE}/tag", status=204)
    spotler.create_tags(["Spring campaign"])
    assert _json(responses.calls[0]) == {"name": "Spring campaign"}


@responses.activate
def test_contact_without_external_id_is_found_by_email(spotler: SpotlerPlatform) -> None:
    responses.get(f"{BASE}/contact/search", json=[{"externalId": "X-9", "properties": {"email": "bo@example.com"}}])
    responses.post(f"{BASE}/contact/X-9/tags", status=204)
    spotler.add_tags(Contact(email="bo@example.com"), ["VIP"], ref="job 4")
    assert responses.calls[0].request.params == {"pageSize": "1", "MPSearchQuery": "email=bo@example.com"}
    assert responses.calls[1].request.path_url.endswith("/contact/X-9/tags")


@pytest.mark.parametrize(
    ("status", "body", "branch", "code"),
    [
        (404, {"errorType": "CONTACT_NOT_FOUND", "message": "Given contact not found"}, errors.NotFound,
         "CONTACT_NOT_FOUND"),
        (400, {"errorType": "INVALID_PARAMS", "message": "<ul><li>score must be an integer</li></ul>"},
         errors.InvalidInput, "INVALID_INPUT"),
        (401, {"errorType": "NOT_AUTHORIZED", "message": "Invalid signature"}, errors.AuthError, "AUTH_FAILED"),
        (400, {"errorType": "CONTACT_OPTOUT", "message": "Contact opted out"}, errors.Rejected, "CONTACT_OPTOUT"),
        (500, {"errorType": "BACKEND_EXCEPTION", "message": "backend"}, errors.Unavailable, "UNAVAILABLE"),
        (503, None, errors.Unavailable, "UNAVAILABLE"),
        (429, {"message": "slow down"}, errors.RateLimited, "RATE_LIMITED"),
    ],
)
@responses.activate
def test_error_types_are_mapped(
    spotler: SpotlerPlatform, status: int, body: dict[str, str] | None, branch: type, code: str
) -> None:
    responses.post(f"{BASE}/contact/C-1/tags", status=status, json=body, headers={"Retry-After": "2"})
    with pytest.raises(branch) as caught:
        spotler.add_tags(ANNA, ["VIP"], ref="job 5")
    assert caught.value.result_code == code
    assert caught.value.http_status == status
    assert "<" not in caught.value.message  # HTML lists reduced to their words


@responses.activate
def test_a_missing_contact_is_created_when_configured(make_spotler: Callable[..., SpotlerPlatform]) -> None:
    spotler = make_spotler(BASE, create_missing_contacts=True)
    responses.post(f"{BASE}/contact/C-1/tags", status=404,
                   json={"errorType": "CONTACT_NOT_FOUND", "message": "Given contact not found"})
    responses.post(f"{BASE}/contact", status=204)
    responses.post(f"{BASE}/contact/C-1/tags", status=204)
    spotler.add_tags(ANNA, ["VIP"], ref="job 6")
    assert _json(responses.calls[1]) == {
        "update": False, "purge": False,
        "contact": {"externalId": "C-1", "properties": {"email": "anna@example.com"}},
    }
    assert len(responses.calls) == 3


@pytest.mark.parametrize(
    ("status", "body", "code"),
    [(417, {"result": "AUTOMATION_INACTIVE"}, "AUTOMATION_INACTIVE"),
     (417, {"result": "PARTICIPATION_LIMIT_REACHED"}, "PARTICIPATION_LIMIT_REACHED"),
     (404, {"errorType": "TRIGGER_NOTFOUND", "message": "not found"}, "TRIGGER_NOT_FOUND")],
)
@responses.activate
def test_automation_trigger_outcomes(spotler: SpotlerPlatform, status: int, body: dict[str, str], code: str) -> None:
    responses.post(f"{BASE}/automation/trigger/WELCOME", status=status, json=body)
    with pytest.raises(errors.PermanentError) as caught:
        spotler.start_automation(ANNA, "WELCOME")
    assert caught.value.result_code == code
    assert _json(responses.calls[0]) == {"externalContactId": "C-1"}


def test_the_secret_is_not_in_the_adapters_repr(spotler: SpotlerPlatform) -> None:
    assert SPOTLER_SECRET not in repr(spotler)
    assert SPOTLER_SECRET not in repr(spotler.session.auth)
