"""OAuth2 client credentials for Mautic: one token, cached until it nearly expires, refreshed once on a 401."""

from __future__ import annotations

import pytest
import responses
from responses import matchers

from connector import errors
from connector.http import ApiSession
from connector.mautic import MauticOAuth2, MauticPlatform

BASE = "https://mautic.example.com"
TOKEN_URL = BASE + "/oauth/v2/token"
TOKEN_FORM = {"grant_type": "client_credentials", "client_id": "cid", "client_secret": "s3cr3t-value"}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def auth(session: ApiSession, clock: Clock) -> MauticOAuth2:
    return MauticOAuth2(session, token_url=TOKEN_URL, client_id="cid", client_secret="s3cr3t-value", clock=clock)


@pytest.fixture
def mautic(session: ApiSession, auth: MauticOAuth2) -> MauticPlatform:
    return MauticPlatform(session, base_url=BASE, auth=auth)


def token(mocked: responses.RequestsMock, value: str, expires_in: int = 3600) -> responses.BaseResponse:
    return mocked.post(
        TOKEN_URL,
        match=[matchers.urlencoded_params_matcher(TOKEN_FORM)],
        json={"access_token": value, "expires_in": expires_in, "token_type": "bearer", "scope": ""},
    )


def tag_call(mocked: responses.RequestsMock, bearer: str, status: int = 201) -> responses.BaseResponse:
    body = {"tag": {"id": 1, "tag": "T"}} if status < 400 else {"errors": [{"code": 401, "message": "denied"}]}
    return mocked.post(
        BASE + "/api/tags/new",
        match=[matchers.header_matcher({"Authorization": f"Bearer {bearer}"})],
        status=status,
        json=body,
    )


def test_the_token_is_fetched_once_and_sent_as_bearer(
    mautic: MauticPlatform, auth: MauticOAuth2, mocked: responses.RequestsMock
) -> None:
    fetch = token(mocked, "tok-1")
    tag_call(mocked, "tok-1")
    mautic.create_tags(["A", "B", "C"])
    assert fetch.call_count == 1
    assert auth.tokens_fetched == 1
    # The token request itself carries no Authorization header.
    assert "Authorization" not in mocked.calls[0].request.headers


def test_a_token_near_its_expiry_is_replaced(
    mautic: MauticPlatform, clock: Clock, mocked: responses.RequestsMock
) -> None:
    token(mocked, "tok-1", expires_in=120)
    tag_call(mocked, "tok-1")
    mautic.create_tags(["A"])
    clock.now += 61  # past expiry minus the safety margin
    mocked.replace(
        responses.POST,
        TOKEN_URL,
        match=[matchers.urlencoded_params_matcher(TOKEN_FORM)],
        json={"access_token": "tok-2", "expires_in": 3600},
    )
    tag_call(mocked, "tok-2")
    mautic.create_tags(["B"])


def test_a_refused_token_is_replaced_once_and_the_request_sent_again(
    mautic: MauticPlatform, auth: MauticOAuth2, mocked: responses.RequestsMock
) -> None:
    token(mocked, "old")
    refused = tag_call(mocked, "old", status=401)
    mocked.add(
        responses.POST,
        TOKEN_URL,
        match=[matchers.urlencoded_params_matcher(TOKEN_FORM)],
        json={"access_token": "new", "expires_in": 3600},
    )
    accepted = tag_call(mocked, "new")
    # responses serves registered responses for the same URL in order: first "old", then "new".
    mautic.create_tags(["A"])
    assert (refused.call_count, accepted.call_count) == (1, 1)
    assert auth.tokens_fetched == 2


def test_a_second_401_is_an_auth_error(mautic: MauticPlatform, mocked: responses.RequestsMock) -> None:
    token(mocked, "old")
    tag_call(mocked, "old", status=401)
    mocked.add(responses.POST, TOKEN_URL, json={"access_token": "new", "expires_in": 3600})
    tag_call(mocked, "new", status=401)
    with pytest.raises(errors.AuthError) as caught:
        mautic.create_tags(["A"])
    assert caught.value.http_status == 401


def test_refused_client_credentials_are_an_auth_error_without_the_secret(
    mautic: MauticPlatform, mocked: responses.RequestsMock
) -> None:
    mocked.post(
        TOKEN_URL,
        status=400,
        json={"error": "invalid_client", "error_description": "The client credentials are invalid"},
    )
    with pytest.raises(errors.AuthError) as caught:
        mautic.create_tags(["A"])
    assert "The client credentials are invalid" in caught.value.message
    assert "s3cr3t-value" not in caught.value.message
    assert "s3cr3t-value" not in repr(mautic.auth)


def test_a_token_answer_without_a_token_is_transient(mautic: MauticPlatform, mocked: responses.RequestsMock) -> None:
    mocked.post(TOKEN_URL, json={"unexpected": True})
    with pytest.raises(errors.Unavailable, match="without an access token"):
        mautic.create_tags(["A"])
