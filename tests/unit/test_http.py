"""The boundary: every HTTP status class and every `requests` failure lands on a known branch of our tree."""

from __future__ import annotations

import email.utils

import pytest
import requests
import responses

from connector import errors
from connector.http import ApiSession, Brake, Redactor, error_for_status, parse_retry_after, translate_exceptions


def _response(status: int, headers: dict[str, str] | None = None) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response.headers.update(headers or {})
    return response


@pytest.mark.parametrize(
    ("status", "branch", "code"),
    [
        (400, errors.InvalidInput, "INVALID_INPUT"),
        (401, errors.AuthError, "AUTH_FAILED"),
        (403, errors.AuthError, "AUTH_FAILED"),
        (404, errors.NotFound, "NOT_FOUND"),
        (408, errors.OutcomeUnknown, "OUTCOME_UNKNOWN"),
        (409, errors.Conflict, "CONFLICT"),
        (412, errors.Conflict, "CONFLICT"),
        (417, errors.InvalidInput, "INVALID_INPUT"),
        (422, errors.InvalidInput, "INVALID_INPUT"),
        (429, errors.RateLimited, "RATE_LIMITED"),
        (500, errors.Unavailable, "UNAVAILABLE"),
        (502, errors.Unavailable, "UNAVAILABLE"),
        (503, errors.Unavailable, "UNAVAILABLE"),
        (504, errors.Unavailable, "UNAVAILABLE"),
        (599, errors.Unavailable, "UNAVAILABLE"),
        (501, errors.Rejected, "REJECTED"),
    ],
)
def test_every_status_class_lands_on_a_known_branch(status: int, branch: type, code: str) -> None:
    error = error_for_status(_response(status), "the API's words")
    assert type(error) is branch
    assert error.result_code == code
    assert error.http_status == status
    assert error.message == "the API's words"


def test_transient_and_permanent_are_the_two_branches_the_runner_needs() -> None:
    transient = {408, 429} | (set(range(500, 600)) - {501, 505})
    for status in range(400, 600):
        error = error_for_status(_response(status), "x")
        if status in transient:
            assert isinstance(error, errors.TransientError), status
        elif status not in (409, 412):
            assert isinstance(error, errors.PermanentError), status


def test_retry_after_in_seconds_and_as_an_http_date() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("0.5") == 0.5
    now = 1_800_000_000.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after(date, now=now) == pytest.approx(30.0)
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0.0
    assert parse_retry_after("99999") == 600.0  # capped
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_a_429_carries_its_retry_after() -> None:
    error = error_for_status(_response(429, {"Retry-After": "12"}), "slow down")
    assert isinstance(error, errors.RateLimited)
    assert error.retry_after == 12.0


def test_connection_refused_is_a_network_error_not_an_unknown_outcome() -> None:
    with pytest.raises(errors.NetworkError), translate_exceptions("API"):
        requests.get("http://127.0.0.1:9/", timeout=2)


@pytest.mark.parametrize(
    ("exception", "branch"),
    [
        (requests.exceptions.ConnectTimeout("connect"), errors.NetworkError),
        (requests.exceptions.ReadTimeout("read"), errors.OutcomeUnknown),
        (requests.exceptions.ConnectionError("Connection aborted.', ConnectionResetError(104)"), errors.OutcomeUnknown),
        (requests.exceptions.SSLError("bad cert"), errors.NetworkError),
        (requests.exceptions.TooManyRedirects("loop"), errors.NetworkError),
    ],
)
def test_requests_failures_are_translated(exception: Exception, branch: type) -> None:
    with pytest.raises(branch) as caught, translate_exceptions("API"):
        raise exception
    assert caught.value.__cause__ is exception


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_a_pause_holds_every_caller_of_the_brake() -> None:
    clock = _Clock()
    brake = Brake("API", clock=clock, sleep=clock.sleep)
    brake.wait()
    assert clock.slept == []
    brake.pause(5.0)
    brake.wait()
    assert clock.slept == [5.0]
    brake.wait()  # the pause is over for everyone
    assert clock.slept == [5.0]


def test_a_cap_on_requests_per_second_spaces_requests_out() -> None:
    clock = _Clock()
    brake = Brake("API", max_per_second=4, clock=clock, sleep=clock.sleep)
    for _ in range(5):
        brake.wait()
    assert clock.slept == [0.25, 0.25, 0.25, 0.25]


@responses.activate
def test_a_429_through_the_session_pauses_its_brake() -> None:
    clock = _Clock()
    brake = Brake("API", clock=clock, sleep=clock.sleep)
    responses.get("http://api.test/x", status=429, headers={"Retry-After": "3"})
    responses.get("http://api.test/x", status=200)
    with ApiSession("API", brake=brake) as session:
        assert session.get("http://api.test/x").status_code == 429
        assert session.get("http://api.test/x").status_code == 200
    assert clock.slept == [3.0]
    assert brake.pauses == 1


@responses.activate
@pytest.mark.parametrize(("header", "paused"), [({"Retry-After": "0"}, []), ({}, [1.0]),
                                                ({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, [])])
def test_a_429_pauses_its_api_for_the_retry_after_and_no_longer(header: dict[str, str], paused: list[float]) -> None:
    """Retry-After 0 (or a date already past) lets the next request go at once; without one, a second."""
    clock = _Clock()
    brake = Brake("API", clock=clock, sleep=clock.sleep)
    responses.get("http://api.test/x", status=429, headers=header)
    responses.get("http://api.test/x", status=200)
    with ApiSession("API", brake=brake) as session:
        assert session.get("http://api.test/x").status_code == 429
        assert session.get("http://api.test/x").status_code == 200
    assert clock.slept == paused


def test_redactor_masks_secrets_in_log_text() -> None:
    redactor = Redactor(["s3cr3t-value", ""])
    assert redactor.redact("token=s3cr3t-value; other") == "token=***; other"


def test_a_pause_is_capped_like_every_retry_after() -> None:
    clock = _Clock()
    brake = Brake("API", max_pause=2.0, clock=clock, sleep=clock.sleep)
    brake.pause(600.0)
    brake.wait()
    assert clock.slept == [2.0]


def test_a_stopping_connector_does_not_sit_out_a_pause() -> None:
    import threading

    from connector.errors import RateLimited

    stop = threading.Event()
    clock = _Clock()

    def sleep(seconds: float) -> None:
        stop.set()  # the signal arrives while the workers wait
        clock.sleep(1.0)

    brake = Brake("API", clock=clock, sleep=sleep, stop=stop)
    brake.pause(25.0)
    with pytest.raises(RateLimited, match="the connector is stopping"):
        brake.wait()
    assert clock.slept == [1.0]


def test_redactor_masks_secrets_in_tracebacks() -> None:
    import logging

    redactor = Redactor(["s3cr3t-value"])
    try:
        raise ValueError("token s3cr3t-value refused")
    except ValueError:
        import sys

        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
    redactor.filter(record)
    text = logging.Formatter().format(record)
    assert "s3cr3t-value" not in text
    assert "token *** refused" in text
