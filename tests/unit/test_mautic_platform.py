"""The Mautic adapter's exact requests, pinned with `responses`, and its error mapping."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
import responses
from pydantic import SecretStr
from requests.auth import HTTPBasicAuth
from responses import matchers

from config.settings import MauticSettings, SettingsError
from connector import errors
from connector.http import ApiSession
from connector.mautic import MauticOAuth2, MauticPlatform
from connector.platform import Contact

BASE = "https://mautic.example.com"
API = BASE + "/api"
ANN = Contact(external_id="crm-ann", email="ann@example.com")
BASIC = "Basic " + base64.b64encode(b"api-user:api-password").decode()


@pytest.fixture
def mautic(session: ApiSession) -> MauticPlatform:
    return MauticPlatform(session, base_url=BASE + "/api/", auth=HTTPBasicAuth("api-user", "api-password"))


def contact_search(mocked: responses.RequestsMock, email: str, found: dict[str, Any]) -> None:
    mocked.get(
        API + "/contacts",
        match=[
            matchers.query_param_matcher(
                {
                    "search": f'email:"+{email}"',
                    "minimal": "true",
                    "limit": "30",
                    "orderBy": "id",
                    "orderByDir": "asc",
                }
            ),
            matchers.header_matcher({"Authorization": BASIC, "Accept": "application/json"}),
        ],
        json={"total": str(len(found)), "contacts": found},
    )


def record(cid: int, email: str) -> dict[str, Any]:
    return {"id": cid, "fields": {"all": {"id": cid, "email": email}}}


def no_groups(mocked: responses.RequestsMock) -> None:
    mocked.get(
        API + "/points/groups",
        match=[matchers.query_param_matcher({"start": "0", "limit": "200", "orderBy": "id", "orderByDir": "asc"})],
        json={"total": 0, "pointGroups": []},
    )


def test_add_tags_finds_the_contact_by_email_once_and_patches_its_tags(
    mautic: MauticPlatform, mocked: responses.RequestsMock
) -> None:
    contact_search(mocked, "ann@example.com", {"7": record(7, "ann@example.com")})
    edit = mocked.patch(
        API + "/contacts/7/edit",
        match=[
            matchers.json_params_matcher({"tags": ["Webinar", "Trial"]}),
            matchers.header_matcher({"Authorization": BASIC}),
        ],
        json={"contact": {"id": 7}},
    )
    mautic.add_tags(ANN, ["Webinar", "Trial"], ref="job-1")
    mautic.add_tags(ANN, ["Webinar", "Trial"], ref="job-2")
    assert edit.call_count == 2  # the second call used the cached id: no second search


def test_email_lookup_keeps_only_the_exact_address(mautic: MauticPlatform, mocked: responses.RequestsMock) -> None:
    # Mautic's search is a LIKE: `_` matches any character, so near misses come back too.
    contact_search(
        mocked,
        "a_b@example.com",
        {"3": record(3, "axb@example.com"), "9": record(9, "A_B@example.com"), "12": record(12, "a_b@example.com")},
    )
    assert mautic.contact_id(Contact(email="a_b@example.com")) == 9


def test_lookup_by_the_configured_crm_id_field(session: ApiSession, mocked: responses.RequestsMock) -> None:
    mautic = MauticPlatform(session, base_url=BASE, auth=HTTPBasicAuth("u", "p"), contact_field="crm_id")
    mocked.get(
        API + "/contacts",
        match=[
            matchers.query_param_matcher(
                {
                    "where[0][col]": "crm_id",
                    "where[0][expr]": "eq",
                    "where[0][val]": "crm-ann",
                    "minimal": "true",
                    "limit": "30",
                    "orderBy": "id",
                    "orderByDir": "asc",
                }
            )
        ],
        json={"total": "1", "contacts": {"4": {"id": 4, "fields": {"all": {"crm_id": "crm-ann"}}}}},
    )
    assert mautic.contact_id(ANN) == 4


def test_unknown_contact_is_contact_not_found(mautic: MauticPlatform, mocked: responses.RequestsMock) -> None:
    contact_search(mocked, "ann@example.com", {})
    with pytest.raises(errors.NotFound) as caught:
        mautic.add_tags(ANN, ["X"], ref="job-1")
    assert caught.value.result_code == "CONTACT_NOT_FOUND"
    assert caught.value.message == "Mautic has no contact with e-mail address ann@example.com."


def test_a_contact_that_vanishes_after_the_lookup_is_contact_not_found(
    mautic: MauticPlatform, mocked: responses.RequestsMock
) -> None:
    contact_search(mocked, "ann@example.com", {"7": record(7, "ann@example.com")})
    mocked.patch(
        API + "/contacts/7/edit", status=404, json={"errors": [{"code": 404, "message": "Item was not found."}]}
    )
    with pytest.raises(errors.NotFound) as caught:
        mautic.add_tags(ANN, ["X"], ref="job-1")
    assert caught.value.result_code == "CONTACT_NOT_FOUND"
    assert "Item was not found." in caught.value.message


def test_a_contact_without_email_cannot_be_found_by_email(mautic: MauticPlatform) -> None:
    with pytest.raises(errors.InvalidInput, match="no e-mail address"):
        mautic.add_tags(Contact(external_id="crm-1"), ["X"], ref="job-1")


def test_set_score_tags_creates_the_group_and_sets_with_the_job_in_the_points_log(
    mautic: MauticPlatform, mocked: responses.RequestsMock
) -> None:
    contact_search(mocked, "ann@example.com", {"7": record(7, "ann@example.com")})
    mocked.patch(API + "/contacts/7/edit", match=[matchers.json_params_matcher({"tags": ["Lead"]})], json={})
    no_groups(mocked)
    create = mocked.post(
        API + "/points/groups/new",
        match=[matchers.json_params_matcher({"name": "Lead"}, strict_match=False)],
        status=201,
        json={"pointGroup": {"id": 3, "name": "Lead"}},
    )
    setter = mocked.post(
        API + "/contacts/7/points/groups/3/set/-5",
        match=[
            matchers.urlencoded_params_matcher({"eventName": "Connector job job-1", "actionName": "set -5 (Lead)"}),
            matchers.header_matcher({"Authorization": BASIC}),
        ],
        json={"groupScore": {"score": -5, "group": {"id": 3, "name": "Lead"}}},
    )
    mautic.set_score(ANN, "Lead", -5, ref="job-1")
    assert (create.call_count, setter.call_count) == (1, 1)


def test_the_group_map_is_cached_and_matched_case_insensitively_across_pages(
    mautic: MauticPlatform, mocked: responses.RequestsMock
) -> None:
    contact_search(mocked, "ann@example.com", {"7": record(7, "ann@example.com")})
    mocked.patch(API + "/contacts/7/edit", json={})
    mocked.get(
        API + "/points/groups",
        match=[matchers.query_param_matcher({"start": "0", "limit": "200", "orderBy": "id", "orderByDir": "asc"})],
        json={"total": 201, "pointGroups": [{"id": i, "name": f"G{i}"} for i in range(1, 201)]},
    )
    mocked.get(
        API + "/points/groups",
        match=[matchers.query_param_matcher({"start": "200", "limit": "200", "orderBy": "id", "orderByDir": "asc"})],
        json={"total": 201, "pointGroups": {"205": {"id": 205, "name": "lead"}}},
    )
    plus = mocked.post(
        API + "/contacts/7/points/groups/205/plus/4",
        match=[matchers.urlencoded_params_matcher({"eventName": "Connector job j", "actionName": "plus 4 (Lead)"})],
        json={},
    )
    minus = mocked.post(
        API + "/contacts/7/points/groups/205/minus/6",
        match=[matchers.urlencoded_params_matcher({"eventName": "Connector job k", "actionName": "minus 6 (LEAD)"})],
        json={},
    )
    mautic.change_score(ANN, "Lead", 4, ref="j")
    mautic.change_score(ANN, "LEAD", -6, ref="k")
    assert (plus.call_count, minus.call_count) == (1, 1)


def test_remove_tags_zeroes_matching_scores_then_untags(mautic: MauticPlatform, mocked: responses.RequestsMock) -> None:
    contact_search(mocked, "ann@example.com", {"7": record(7, "ann@example.com")})
    mocked.get(
        API + "/contacts/7/points/groups",
        json={
            "total": 3,
            "groupScores": [
                {"score": 12, "group": {"id": 3, "name": "Lead"}},
                {"score": 0, "group": {"id": 4, "name": "Trial"}},
                {"score": 9, "group": {"id": 5, "name": "Other"}},
            ],
        },
    )
    zero = mocked.post(
        API + "/contacts/7/points/groups/3/set/0",
        match=[matchers.urlencoded_params_matcher({"eventName": "Connector job r", "actionName": "set 0 (Lead)"})],
        json={},
    )
    untag = mocked.patch(
        API + "/contacts/7/edit",
        match=[matchers.json_params_matcher({"tags": ["-lead", "-Trial", "-Absent"]})],
        json={},
    )
    mautic.remove_tags(ANN, ["lead", "Trial", "Absent"], ref="r")
    assert (zero.call_count, untag.call_count) == (1, 1)


def test_read_scores_combines_tags_with_group_scores(mautic: MauticPlatform, mocked: responses.RequestsMock) -> None:
    contact_search(mocked, "ann@example.com", {"7": record(7, "ann@example.com")})
    mocked.get(API + "/contacts/7", json={"contact": {"id": 7, "tags": [{"id": 1, "tag": "Lead"}, {"tag": "Plain"}]}})
    mocked.get(
        API + "/contacts/7/points/groups",
        json={
            "total": 2,
            "groupScores": [
                {"score": 15, "group": {"id": 3, "name": "lead"}},
                {"score": 4, "group": {"id": 8, "name": "Not a tag"}},
            ],
        },
    )
    # A group score whose tag is gone still counts: an increase continues from it, and the read-back before a
    # retried increment must see it (else a lost answer would be taken for a change not made).
    assert mautic.read_scores(ANN) == {"Lead": 15, "Plain": 0, "Not a tag": 4}


@pytest.mark.parametrize(("tag", "score"), [("Lead", 15), ("LEAD", 15), ("Not a tag", 4), ("Plain", 0), ("Absent", 0)])
def test_one_tags_score_is_one_request_and_reads_as_read_scores_does(
    mautic: MauticPlatform, mocked: responses.RequestsMock, tag: str, score: int
) -> None:
    """An increment reads its tag's score before every try: one request where read_scores takes two, and each
    request under faults is another chance to fail the try."""
    contact_search(mocked, "ann@example.com", {"7": record(7, "ann@example.com")})
    groups = mocked.get(
        API + "/contacts/7/points/groups",
        json={
            "total": 3,
            "groupScores": [
                {"score": 15, "group": {"id": 3, "name": "lead"}},
                {"score": 2, "group": {"id": 9, "name": "Lead"}},  # same name but for case: the first listed counts
                {"score": 4, "group": {"id": 8, "name": "Not a tag"}},
            ],
        },
    )
    assert mautic.read_score(ANN, tag) == score
    assert groups.call_count == 1
    assert [call.request.method for call in mocked.calls] == ["GET", "GET"]  # the contact search, then the groups


def test_create_tags_posts_each_tag(mautic: MauticPlatform, mocked: responses.RequestsMock) -> None:
    for tag in ("Webinar", "Trial"):
        mocked.post(
            API + "/tags/new",
            match=[matchers.json_params_matcher({"tag": tag})],
            status=201,
            json={"tag": {"id": 1, "tag": tag}},
        )
    mautic.create_tags(["Webinar", "Trial"])


def test_a_tag_starting_with_minus_is_refused_before_any_request(mautic: MauticPlatform) -> None:
    with pytest.raises(errors.InvalidInput, match="starts with '-'"):
        mautic.add_tags(ANN, ["-5% off"], ref="job-1")


def test_a_stale_cached_contact_is_looked_up_again(mautic: MauticPlatform, mocked: responses.RequestsMock) -> None:
    contact_search(mocked, "ann@example.com", {"7": record(7, "ann@example.com")})
    mocked.patch(API + "/contacts/7/edit", json={})
    mautic.add_tags(ANN, ["A"], ref="job-1")
    mocked.patch(
        API + "/contacts/7/edit",
        status=404,
        json={"errors": [{"code": 404, "message": "Item was not found.", "details": []}]},
    )
    contact_search(mocked, "ann@example.com", {"8": record(8, "ann@example.com")})
    moved = mocked.patch(API + "/contacts/8/edit", json={})
    mautic.add_tags(ANN, ["B"], ref="job-2")
    assert moved.call_count == 1


MAUTIC_ERROR = {"errors": [{"code": 0, "message": "Something specific went wrong.", "details": {"tag": ["bad"]}}]}


@pytest.mark.parametrize(
    ("status", "headers", "expected", "code"),
    [
        (400, {}, errors.InvalidInput, "INVALID_INPUT"),
        (401, {}, errors.AuthError, "AUTH_FAILED"),
        (403, {}, errors.AuthError, "AUTH_FAILED"),
        (404, {}, errors.NotFound, "NOT_FOUND"),
        (422, {}, errors.InvalidInput, "INVALID_INPUT"),
        (429, {"Retry-After": "7"}, errors.RateLimited, "RATE_LIMITED"),
        (500, {}, errors.Unavailable, "UNAVAILABLE"),
        (502, {}, errors.Unavailable, "UNAVAILABLE"),
        (503, {"Retry-After": "2"}, errors.Unavailable, "UNAVAILABLE"),
        (504, {}, errors.Unavailable, "UNAVAILABLE"),
    ],
)
def test_error_statuses_land_on_their_branch_with_mauticss_message(
    mautic: MauticPlatform,
    mocked: responses.RequestsMock,
    status: int,
    headers: dict[str, str],
    expected: type[errors.ConnectorError],
    code: str,
) -> None:
    mocked.post(API + "/tags/new", status=status, headers=headers, json=MAUTIC_ERROR)
    with pytest.raises(expected) as caught:
        mautic.create_tags(["Webinar"])
    assert caught.value.result_code == code
    assert caught.value.http_status == status
    assert "Something specific went wrong." in caught.value.message
    if "Retry-After" in headers:
        assert isinstance(caught.value, errors.TransientError)
        assert caught.value.retry_after == float(headers["Retry-After"])


def test_a_429_pauses_every_worker_of_the_api(
    mautic: MauticPlatform, session: ApiSession, mocked: responses.RequestsMock
) -> None:
    mocked.post(API + "/tags/new", status=429, headers={"Retry-After": "3"}, json=MAUTIC_ERROR)
    with pytest.raises(errors.RateLimited):
        mautic.create_tags(["Webinar"])
    assert session.brake.pauses == 1


def test_an_error_body_that_is_not_mauticss_shape_still_gives_a_message(
    mautic: MauticPlatform, mocked: responses.RequestsMock
) -> None:
    mocked.post(API + "/tags/new", status=502, body="<html>Bad gateway</html>")
    with pytest.raises(errors.Unavailable, match="Bad gateway"):
        mautic.create_tags(["Webinar"])


def test_a_success_that_is_not_json_is_transient(mautic: MauticPlatform, mocked: responses.RequestsMock) -> None:
    mocked.post(API + "/tags/new", status=200, body="<html>login</html>")
    with pytest.raises(errors.Unavailable, match="not JSON"):
        mautic.create_tags(["Webinar"])


def test_from_settings_builds_basic_or_oauth2_auth_and_keeps_secrets_out_of_repr(session: ApiSession) -> None:
    basic = MauticPlatform.from_settings(
        MauticSettings(base_url=BASE, username="u", password=SecretStr("basic-secret")), session
    )
    assert isinstance(basic.auth, HTTPBasicAuth)
    oauth = MauticPlatform.from_settings(
        MauticSettings(auth="oauth2", client_id="cid", client_secret=SecretStr("oauth-secret"), contact_field="crm"),
        session,
        base_url="http://127.0.0.1:9999",
    )
    assert isinstance(oauth.auth, MauticOAuth2)
    assert oauth.auth.token_url == "http://127.0.0.1:9999/oauth/v2/token"
    assert oauth.contact_field == "crm"
    for platform in (basic, oauth):
        assert "secret" not in repr(platform) + repr(platform.auth)


def test_oauth2_without_credentials_is_a_settings_problem(session: ApiSession) -> None:
    with pytest.raises(SettingsError, match="client_id"):
        MauticPlatform.from_settings(MauticSettings(base_url=BASE, auth="oauth2"), session)


def test_points_bodies_are_form_encoded(mautic: MauticPlatform, mocked: responses.RequestsMock) -> None:
    contact_search(mocked, "ann@example.com", {"7": record(7, "ann@example.com")})
    mocked.patch(API + "/contacts/7/edit", json={})
    mocked.get(API + "/points/groups", json={"total": 1, "pointGroups": [{"id": 3, "name": "Lead"}]})
    call = mocked.post(API + "/contacts/7/points/groups/3/plus/1", json={})
    mautic.change_score(ANN, "Lead", 1, ref="job-1")
    sent = call.calls[0].request
    assert sent.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert "eventName=Connector+job+job-1" in str(sent.body)
    assert json.loads(mocked.calls[1].request.body or b"{}") == {"tags": ["Lead"]}
