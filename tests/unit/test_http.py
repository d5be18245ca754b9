"""The boundary: every HTTP status class and every `requests` failure lands on a known branch of our tree."""

from __future__ import annotations

import email.utils
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests
import responses

from config.defaults import CAP_SHARE, LEARNT_SHARE
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


def test_a_cap_on_requests_per_second_spaces_requests_out_a_little_under_it() -> None:
    clock = _Clock()
    brake = Brake("API", max_per_second=4, clock=clock, sleep=clock.sleep)
    for _ in range(5):
        brake.wait()
    assert clock.slept == pytest.approx([0.25 / CAP_SHARE] * 4)


def test_under_a_cap_no_one_second_window_holds_more_requests_than_the_cap() -> None:
    clock = _Clock()
    brake = Brake("API", max_per_second=20, clock=clock, sleep=clock.sleep)
    sent = []
    for _ in range(200):
        brake.wait()
        sent.append(clock.now)
    # Even with each request arriving up to 20 ms late or early at the API's clock.
    for n, at in enumerate(sent):
        assert sum(1 for other in sent[n:] if other - at < 1.0 + 0.02) <= 20


def _sent_for(brake: Brake, clock: _Clock, seconds: float, per_second: float) -> list[float]:
    """Requests sent as fast as `per_second` for `seconds` (or slower, when the brake holds them), each answered
    at once: their times."""
    sent, end = [], clock.now + seconds
    while clock.now < end:
        brake.wait()
        brake.answered()
        sent.append(clock.now)
        clock.now += 1.0 / per_second
    return sent


def test_a_429_after_a_steady_rate_spaces_requests_just_under_it_after_the_pause() -> None:
    clock = _Clock()
    brake = Brake("API", clock=clock, sleep=clock.sleep)
    _sent_for(brake, clock, 2.0, per_second=40)  # workers answered 40 times a second, then a 429
    brake.pause(1.0)
    resumed = clock.now + 1.0
    after = _sent_for(brake, clock, 3.0, per_second=1000)  # every worker ready at once when the pause ends
    assert after[0] == pytest.approx(resumed)
    # No burst: about 40 * 0.97 requests in each second after it, not a thousand.
    first_second = [t for t in after if t < resumed + 1.0]
    assert 37 <= len(first_second) <= 39
    assert brake.learnt == pytest.approx(40 * LEARNT_SHARE, abs=1)


def test_a_429_well_below_the_learnt_rate_is_taken_for_one_at_random() -> None:
    clock = _Clock()
    brake = Brake("API", clock=clock, sleep=clock.sleep)
    _sent_for(brake, clock, 2.0, per_second=40)
    brake.pause(0.0)
    learnt = brake.learnt
    _sent_for(brake, clock, 2.0, per_second=10)  # a quiet spell, then a 429 at random
    brake.pause(0.0)
    assert brake.learnt == learnt


def test_a_429_after_a_few_answers_teaches_no_rate() -> None:
    clock = _Clock()
    brake = Brake("API", clock=clock, sleep=clock.sleep)
    for _ in range(3):
        brake.wait()
        brake.answered()
    brake.pause(1.0)
    assert brake.learnt == 0.0
    for _ in range(10):
        brake.wait()  # the first waits out the pause; after it, nothing holds them
    assert clock.slept == [1.0]


def test_the_learnt_rate_is_forgotten_after_a_minute_without_a_429() -> None:
    clock = _Clock()
    brake = Brake("API", clock=clock, sleep=clock.sleep)
    _sent_for(brake, clock, 2.0, per_second=40)
    brake.pause(0.0)
    clock.now += 59
    assert len(_sent_for(brake, clock, 0.5, per_second=1000)) < 25  # still spaced
    clock.now += 1
    assert len(_sent_for(brake, clock, 0.5, per_second=1000)) > 400  # free again: a raised limit is found


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


def test_a_proxy_set_in_the_environment_is_used_for_every_request(monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment is read once per host; what it says still applies to every request."""
    seen: list[str] = []

    class Proxy(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # a proxy is asked for the whole URL
            seen.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    proxy = ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.server_address[1]}")
    try:
        with ApiSession("API", brake=Brake("API", sleep=lambda _: None)) as session:
            statuses = [session.get("http://api.example.invalid/contact/1").status_code for _ in range(3)]
    finally:
        proxy.shutdown()
        proxy.server_close()
    assert statuses == [200] * 3
    assert seen == ["http://api.example.invalid/contact/1"] * 3
