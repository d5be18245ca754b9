"""The Dataverse client's exact requests, pinned with `responses`; MSAL is real, its identity provider mocked."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from urllib.parse import unquote

import pytest
import responses
from responses import matchers

from connector import errors
from connector.dataverse import connect
from connector.dataverse.batch import BatchPart
from connector.dataverse.client import DataverseClient, odata_literal
from connector.http import Brake
from tests.conftest import FakeClock

ENV = "https://contoso.crm4.dynamics.com"
API = ENV + "/api/data/v9.2/"
TENANT = "11111111-2222-4333-8444-555555555555"
AUTHORITY = f"https://login.microsoftonline.com/{TENANT}"
TOKEN_URL = f"{AUTHORITY}/oauth2/v2.0/token"
CLIENT_ID = "22222222-3333-4444-8555-666666666666"
SECRET = "s3cr3t-value-that-must-never-leak"
ROW = "00000000-0000-4000-8000-000000000001"


def discovery(rsps: responses.RequestsMock) -> None:
    # MSAL asks Microsoft for the host's aliases when it looks for tokens of a known cloud.
    rsps.get(re.compile(r"https://login\.microsoftonline\.com/common/discovery/instance.*"), json={
        "tenant_discovery_endpoint": f"{AUTHORITY}/v2.0/.well-known/openid-configuration",
        "metadata": [{"preferred_network": "login.microsoftonline.com", "preferred_cache": "login.windows.net",
                      "aliases": ["login.microsoftonline.com", "login.windows.net"]}],
    })


def identity(rsps: responses.RequestsMock, *tokens: str) -> None:
    discovery(rsps)
    rsps.get(
        f"{AUTHORITY}/v2.0/.well-known/openid-configuration",
        json={
            "issuer": f"{AUTHORITY}/v2.0",
            "authorization_endpoint": f"{AUTHORITY}/oauth2/v2.0/authorize",
            "token_endpoint": TOKEN_URL,
        },
    )
    for token in tokens:
        rsps.post(TOKEN_URL, json={"token_type": "Bearer", "expires_in": 3599, "access_token": token})


@pytest.fixture
def rsps() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


@pytest.fixture
def client(clock: FakeClock) -> Iterator[DataverseClient]:
    c = connect(
        environment_url=ENV, tenant_id=TENANT, client_id=CLIENT_ID, client_secret=SECRET,
        brake=Brake("Dataverse", clock=clock, sleep=clock.sleep), sleep=clock.sleep,
    )
    yield c
    c.close()


def api_calls(rsps: responses.RequestsMock) -> list[responses.Call]:
    return [call for call in rsps.calls if call.request.url.startswith(ENV)]


def token_calls(rsps: responses.RequestsMock) -> list[responses.Call]:
    return [call for call in rsps.calls if call.request.url == TOKEN_URL]


# -- headers and auth -------------------------------------------------------------------------------------


def test_every_request_carries_the_odata_headers_and_the_bearer_token(rsps, client):
    identity(rsps, "token-1")
    rsps.get(f"{API}contacts({ROW})", json={"contactid": ROW})
    rsps.post(f"{API}contacts", status=204, headers={"OData-EntityId": f"{API}contacts({ROW})"})

    client.get("contacts", ROW)
    client.create("contacts", {"firstname": "Ann"})

    get, post = (c.request for c in api_calls(rsps))
    for request in (get, post):
        assert request.headers["Accept"] == "application/json"
        assert request.headers["OData-MaxVersion"] == "4.0"
        assert request.headers["OData-Version"] == "4.0"
        assert request.headers["If-None-Match"] == "null"
        assert request.headers["Authorization"] == "Bearer token-1"
    assert "Content-Type" not in get.headers
    assert post.headers["Content-Type"] == "application/json"
    assert json.loads(post.body) == {"firstname": "Ann"}
    # MSAL served the second request from its cache.
    assert len(token_calls(rsps)) == 1


def test_token_request_is_client_credentials_for_the_environment_scope(rsps, client):
    identity(rsps, "token-1")
    rsps.get(f"{API}contacts({ROW})", json={"contactid": ROW})
    client.get("contacts", ROW)
    form = dict(pair.split("=", 1) for pair in token_calls(rsps)[0].request.body.split("&"))
    assert form["grant_type"] == "client_credentials"
    assert unquote(form["scope"]) == f"{ENV}/.default"
    assert form["client_id"] == CLIENT_ID


def test_a_401_fetches_one_fresh_token_and_resends_once(rsps, client):
    identity(rsps, "token-1", "token-2")
    url = f"{API}contacts({ROW})"
    rsps.get(url, status=401, json={"error": {"code": "", "message": "expired"}},
             match=[matchers.header_matcher({"Authorization": "Bearer token-1"})])
    rsps.get(url, json={"contactid": ROW}, match=[matchers.header_matcher({"Authorization": "Bearer token-2"})])

    assert client.get("contacts", ROW)["contactid"] == ROW

    assert [c.request.headers["Authorization"] for c in api_calls(rsps)] == ["Bearer token-1", "Bearer token-2"]
    assert len(token_calls(rsps)) == 2


def test_a_second_401_is_an_auth_error_that_tells_the_operator_what_to_check(rsps, client):
    identity(rsps, "token-1", "token-2", "token-3")
    rsps.get(f"{API}contacts({ROW})", status=401, json={"error": {"code": "", "message": "Not authorized"}})

    with pytest.raises(errors.AuthError) as caught:
        client.get("contacts", ROW)

    assert len(api_calls(rsps)) == 2
    assert len(token_calls(rsps)) == 2
    assert "application user" in caught.value.message
    assert "security role" in caught.value.message
    assert caught.value.http_status == 401


def test_a_403_is_an_auth_error_naming_the_security_role(rsps, client):
    identity(rsps, "token-1")
    rsps.get(f"{API}contacts({ROW})", status=403,
             json={"error": {"code": "0x80040220", "message": "Principal user is missing prvReadContact privilege"}})
    with pytest.raises(errors.AuthError, match="security role") as caught:
        client.get("contacts", ROW)
    assert "prvReadContact" in caught.value.message


def test_a_refused_token_is_an_auth_error_without_the_secret(rsps, client):
    discovery(rsps)
    rsps.get(f"{AUTHORITY}/v2.0/.well-known/openid-configuration",
             json={"authorization_endpoint": f"{AUTHORITY}/oauth2/v2.0/authorize", "token_endpoint": TOKEN_URL})
    rsps.post(TOKEN_URL, status=401, json={"error": "invalid_client",
                                           "error_description": "AADSTS7000215: Invalid client secret provided."})
    with pytest.raises(errors.AuthError) as caught:
        client.get("contacts", ROW)
    assert "AADSTS7000215" in caught.value.message
    assert SECRET not in caught.value.message
    assert SECRET not in repr(client.session.auth)
    assert api_calls(rsps) == []


# -- queries ----------------------------------------------------------------------------------------------


def test_query_sends_select_filter_orderby_top_and_follows_next_link_as_given(rsps, client):
    identity(rsps, "token-1")
    next_link = f"{API}contacts?$select=fullname&$skiptoken=%3Ccookie%20pagenumber=%222%22%20/%3E"
    rsps.get(re.compile(re.escape(API) + r"contacts\?\$select=fullname,emailaddress1.*"),
             json={"value": [{"fullname": "A"}, {"fullname": "B"}], "@odata.nextLink": next_link})
    rsps.get(next_link, json={"value": [{"fullname": "C"}]})

    rows = list(client.query("contacts", select=["fullname", "emailaddress1"], filter="statecode eq 0",
                             orderby="fullname asc", top=50, page_size=2))

    assert [r["fullname"] for r in rows] == ["A", "B", "C"]
    first, second = (c.request for c in api_calls(rsps))
    assert first.url == (f"{API}contacts?$select=fullname,emailaddress1&$filter=statecode%20eq%200"
                         f"&$orderby=fullname%20asc&$top=50")
    assert second.url == next_link
    assert first.headers["Prefer"] == second.headers["Prefer"] == "odata.maxpagesize=2"


def test_a_user_typed_value_cannot_change_the_query(rsps, client):
    identity(rsps, "token-1")
    rsps.get(re.compile(re.escape(API) + "contacts.*"), json={"value": []})
    hostile = "O'Brien' or true or lastname eq '&$top=1#"

    list(client.query("contacts", filter=f"lastname eq {odata_literal(hostile)}"))

    url = api_calls(rsps)[0].request.url
    query = url.split("?", 1)[1]
    assert query.count("&") == 0  # one parameter: the & of the value is encoded
    assert "#" not in url
    assert unquote(query) == "$filter=lastname eq 'O''Brien'' or true or lastname eq ''&$top=1#'"


@pytest.mark.parametrize(
    ("value", "literal"),
    [
        ("Webinar", "'Webinar'"),
        ("O'Brien", "'O''Brien'"),
        ("''", "''''''"),
        (None, "null"),
        (True, "true"),
        (10, "10"),
        (-3, "-3"),
    ],
)
def test_odata_literal(value, literal):
    assert odata_literal(value) == literal


def test_page_size_over_5000_is_refused_before_sending(client):
    with pytest.raises(ValueError, match="5000"):
        list(client.query("contacts", page_size=5001))


def test_a_row_id_that_is_not_a_guid_never_reaches_the_url(client):
    with pytest.raises(errors.InvalidInput):
        client.get("contacts", "x) or (1")


# -- writes -----------------------------------------------------------------------------------------------


def test_create_returns_the_id_from_odata_entity_id(rsps, client):
    identity(rsps, "token-1")
    rsps.post(f"{API}contacts", status=204, headers={"OData-EntityId": f"{API}contacts({ROW.upper()})"})
    assert client.create("contacts", {"firstname": "Ann"}) == ROW


def test_create_returning_asks_for_the_representation(rsps, client):
    identity(rsps, "token-1")
    rsps.post(f"{API}contacts?$select=contactid,firstname", status=201,
              json={"@odata.etag": 'W/"1"', "contactid": ROW, "firstname": "Ann"})
    row = client.create_returning("contacts", {"firstname": "Ann"}, select=["contactid", "firstname"])
    assert row["@odata.etag"] == 'W/"1"'
    assert api_calls(rsps)[0].request.headers["Prefer"] == "return=representation"


def test_update_sends_if_match_with_the_etag_and_a_412_is_a_conflict(rsps, client):
    identity(rsps, "token-1")
    url = f"{API}cr_connectorjobs({ROW})"
    rsps.patch(url, status=204)
    rsps.patch(url, status=412, json={"error": {"code": "0x80060882", "message": "The version of the existing "
                                                "record doesn't match the RowVersion property provided."}})

    client.update("cr_connectorjobs", ROW, {"cr_leaseowner": "runner-a"}, etag='W/"41"')
    with pytest.raises(errors.Conflict) as caught:
        client.update("cr_connectorjobs", ROW, {"cr_leaseowner": "runner-b"}, etag='W/"41"')

    first = api_calls(rsps)[0].request
    assert first.method == "PATCH"
    assert first.headers["If-Match"] == 'W/"41"'
    assert json.loads(first.body) == {"cr_leaseowner": "runner-a"}
    assert caught.value.http_status == 412


def test_update_defaults_to_if_match_star_so_it_never_creates_a_row(rsps, client):
    identity(rsps, "token-1")
    rsps.patch(f"{API}contacts({ROW})", status=404,
               json={"error": {"code": "0x80040217", "message": f"contact With Id = {ROW} Does Not Exist"}})
    with pytest.raises(errors.NotFound, match="Does Not Exist"):
        client.update("contacts", ROW, {"firstname": "Ann"})
    assert api_calls(rsps)[0].request.headers["If-Match"] == "*"


# -- errors -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (400, "0x80044331", errors.InvalidInput),
        (400, "0x80040217", errors.NotFound),
        (404, "0x8006088a", errors.NotFound),
        (404, "", errors.NotFound),
        (409, "", errors.Conflict),
        (412, "0x80060882", errors.Conflict),
        (500, "", errors.Unavailable),
        (502, "", errors.Unavailable),
        (504, "", errors.Unavailable),
    ],
)
def test_error_statuses_land_on_known_branches(rsps, client, status, code, expected):
    identity(rsps, "token-1")
    rsps.get(f"{API}contacts({ROW})", status=status, json={"error": {"code": code, "message": "Dataverse says no"}})
    with pytest.raises(expected) as caught:
        client.get("contacts", ROW)
    assert "Dataverse says no" in caught.value.message
    assert len(api_calls(rsps)) == 1  # 500/502/504 may have been applied: not resent here


def test_a_429_waits_for_retry_after_then_succeeds(rsps, client, clock):
    identity(rsps, "token-1")
    url = f"{API}contacts({ROW})"
    rsps.get(url, status=429, headers={"Retry-After": "7"},
             json={"error": {"code": "0x80072322", "message": "Number of requests exceeded the limit"}})
    rsps.get(url, json={"contactid": ROW})

    assert client.get("contacts", ROW)["contactid"] == ROW

    assert len(api_calls(rsps)) == 2
    assert clock.slept == [7.0]
    assert client.session.brake.pauses == 1


def test_a_503_with_retry_after_pauses_every_worker_then_succeeds(rsps, client, clock):
    identity(rsps, "token-1")
    url = f"{API}contacts({ROW})"
    rsps.get(url, status=503, headers={"Retry-After": "2"})
    rsps.get(url, json={"contactid": ROW})
    client.get("contacts", ROW)
    assert clock.slept == [2.0]


def test_a_long_retry_after_is_not_waited_for_inline(rsps, client, clock):
    identity(rsps, "token-1")
    rsps.get(f"{API}contacts({ROW})", status=429, headers={"Retry-After": "300"},
             json={"error": {"code": "0x80072321", "message": "Combined execution time exceeded"}})
    with pytest.raises(errors.RateLimited) as caught:
        client.get("contacts", ROW)
    assert caught.value.retry_after == 300.0
    assert len(api_calls(rsps)) == 1
    assert clock.slept == []


def test_repeated_429s_give_up_after_the_retry_budget(rsps, client, clock):
    identity(rsps, "token-1")
    rsps.get(f"{API}contacts({ROW})", status=429, headers={"Retry-After": "1"})
    with pytest.raises(errors.RateLimited):
        client.get("contacts", ROW)
    assert len(api_calls(rsps)) == client.retries + 1


# -- $batch -----------------------------------------------------------------------------------------------

BATCH_RESPONSE = (
    "--batchresponse_1\r\n"
    "Content-Type: multipart/mixed; boundary=changesetresponse_2\r\n"
    "\r\n"
    "--changesetresponse_2\r\n"
    "Content-Type: application/http\r\n"
    "Content-Transfer-Encoding: binary\r\n"
    "Content-ID: 1\r\n"
    "\r\n"
    "HTTP/1.1 204 No Content\r\n"
    f"OData-EntityId: {API}contacts({ROW})\r\n"
    "\r\n"
    "\r\n"
    "--changesetresponse_2\r\n"
    "Content-Type: application/http\r\n"
    "Content-Transfer-Encoding: binary\r\n"
    "Content-ID: 2\r\n"
    "\r\n"
    "HTTP/1.1 412 Precondition Failed\r\n"
    "Content-Type: application/json; odata.metadata=minimal\r\n"
    "\r\n"
    '{"error":{"code":"0x80060882","message":"version mismatch"}}\r\n'
    "--changesetresponse_2--\r\n"
    "--batchresponse_1--\r\n"
)


def test_batch_with_a_change_set_builds_the_multipart_body_and_parses_the_answer(rsps, client):
    identity(rsps, "token-1")
    rsps.post(f"{API}$batch", body=BATCH_RESPONSE,
              content_type="multipart/mixed; boundary=batchresponse_1")

    results = client.batch([
        BatchPart("POST", "contacts", body={"firstname": "Ann"}),
        BatchPart("PATCH", f"contacts({ROW})", body={"lastname": "Smith"}, headers={"If-Match": 'W/"3"'}),
    ], changeset=True)

    request = api_calls(rsps)[0].request
    boundary = re.fullmatch(r"multipart/mixed; boundary=(batch_[0-9a-f-]{36})", request.headers["Content-Type"])
    assert boundary
    body = request.body.decode()
    changeset = re.search(r"boundary=(changeset_[0-9a-f-]{36})", body).group(1)
    expected = (
        f"--{boundary.group(1)}\r\n"
        f"Content-Type: multipart/mixed; boundary={changeset}\r\n"
        "\r\n"
        f"--{changeset}\r\n"
        "Content-Type: application/http\r\n"
        "Content-Transfer-Encoding: binary\r\n"
        "Content-ID: 1\r\n"
        "\r\n"
        f"POST {API}contacts HTTP/1.1\r\n"
        "Content-Type: application/json\r\n"
        "\r\n"
        '{"firstname": "Ann"}\r\n'
        f"--{changeset}\r\n"
        "Content-Type: application/http\r\n"
        "Content-Transfer-Encoding: binary\r\n"
        "Content-ID: 2\r\n"
        "\r\n"
        f"PATCH {API}contacts({ROW}) HTTP/1.1\r\n"
        'If-Match: W/"3"\r\n'
        "Content-Type: application/json\r\n"
        "\r\n"
        '{"lastname": "Smith"}\r\n'
        f"--{changeset}--\r\n"
        "\r\n"
        f"--{boundary.group(1)}--\r\n"
    )
    assert body == expected
    assert "Prefer" not in request.headers
    assert [(r.status, r.content_id) for r in results] == [(204, "1"), (412, "2")]
    assert results[0].header("odata-entityid") == f"{API}contacts({ROW})"
    assert isinstance(client.batch_error(results[1]), errors.Conflict)


@pytest.mark.parametrize("answers", [0, 1])
def test_a_change_set_answered_short_with_no_failure_is_an_unknown_outcome(rsps, client, answers):
    identity(rsps, "token-1")
    part = "--b\r\nContent-Type: application/http\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n\r\n"
    rsps.post(f"{API}$batch", body=part * answers + "--b--\r\n", content_type="multipart/mixed; boundary=b")
    with pytest.raises(errors.Unavailable) as unknown:
        client.batch([BatchPart("POST", "contacts", body={"lastname": "A"}),
                      BatchPart("POST", "contacts", body={"lastname": "B"})], changeset=True)
    assert unknown.value.message == (f"Dataverse answered a change set of 2 requests with {answers} answers and no "
                                     "failure; its outcome is unknown.")


def test_batch_without_change_set_can_continue_on_error(rsps, client):
    identity(rsps, "token-1")
    answer = "--b\r\nContent-Type: application/http\r\n\r\nHTTP/1.1 200 OK\r\n\r\n{}\r\n--b--\r\n"
    rsps.post(f"{API}$batch", body=answer, content_type="multipart/mixed; boundary=b")
    client.batch([BatchPart("GET", "contacts?$select=fullname")], continue_on_error=True)
    request = api_calls(rsps)[0].request
    assert request.headers["Prefer"] == "odata.continue-on-error"
    body = request.body.decode()
    assert "changeset_" not in body
    assert f"GET {API}contacts?$select=fullname HTTP/1.1\r\nAccept: application/json\r\n" in body


def test_a_change_set_cannot_hold_a_get(client):
    with pytest.raises(ValueError, match="GET"):
        client.batch([BatchPart("GET", "contacts")], changeset=True)
