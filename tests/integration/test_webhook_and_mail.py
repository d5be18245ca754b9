"""The webhook client against the loopback receiver, and the mail client against the SMTP sink, over real sockets.

Only the loopback servers answer here; nothing waits for a backoff. The one deliberate wait is a mail server that
never greets, bounded by a 0.3 s client timeout.
"""

from __future__ import annotations

import gc
import http.client
import json
import logging
import socket
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from connector import errors
from connector.http import ApiSession, Brake
from connector.mail import MailClient
from connector.sandbox.smtp import SmtpSink, read_mailbox
from connector.sandbox.webhook import MAX_BODY, WebhookReceiver
from connector.webhook import WebhookClient, verify
from tests.conftest import FakeClock

SECRET = "whsec-integration-8d41e2"
PASSWORD = "smtp-password-0c7a5e"
SENDER = "Connector <connector@example.org>"


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# --- webhooks ---------------------------------------------------------------------------------------------------


@pytest.fixture
def session(clock: FakeClock) -> Iterator[ApiSession]:
    # A 429's pause passes on the fake clock instead of for real.
    brake = Brake("Webhook", clock=clock, sleep=clock.sleep)
    with ApiSession("Webhook", pool_size=2, timeout=(2.0, 5.0), brake=brake) as s:
        yield s


@pytest.fixture
def receiver(clock: FakeClock) -> Iterator[WebhookReceiver]:
    with WebhookReceiver(SECRET, clock=clock) as r:
        yield r


@pytest.fixture
def webhook(session: ApiSession, clock: FakeClock) -> WebhookClient:
    return WebhookClient(session, SECRET, clock=clock)


def test_a_delivery_arrives_signed_and_verifies_on_the_receiving_side(
    webhook: WebhookClient, receiver: WebhookReceiver, clock: FakeClock
) -> None:
    payload = {"job": "4b6ffc7efdb2", "status": "succeeded", "tags": ["Webinar", "VIP"], "score": None}

    webhook.send(receiver.url, payload, ref="4b6ffc7efdb2")

    [delivery] = receiver.received
    assert delivery.verified
    assert delivery.body == payload
    assert delivery.raw == json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
    assert delivery.headers["Content-Type"] == "application/json"
    assert delivery.headers["connector-delivery"] == "4b6ffc7efdb2" == delivery.ref
    signature = delivery.headers["Connector-Signature"]
    assert signature.startswith(f"t={int(clock())},v1=")
    assert not verify("another-secret", signature, delivery.raw, now=clock())
    assert not verify(SECRET, signature, delivery.raw, now=clock() + 301)


def test_a_redelivery_carries_the_same_delivery_header(webhook: WebhookClient, receiver: WebhookReceiver) -> None:
    webhook.send(receiver.url, {"n": 1}, ref="job-1")
    webhook.send(receiver.url, {"n": 1}, ref="job-1")
    assert [d.ref for d in receiver.received] == ["job-1", "job-1"]
    assert all(d.verified for d in receiver.received)


def test_a_receiver_with_another_secret_does_not_verify(
    session: ApiSession, receiver: WebhookReceiver, clock: FakeClock
) -> None:
    WebhookClient(session, "not-the-receivers-secret", clock=clock).send(receiver.url, {"n": 1}, ref="job-1")
    assert receiver.received[0].verified is False


def test_a_500_answer_is_transient(webhook: WebhookClient, receiver: WebhookReceiver) -> None:
    receiver.status = 500
    with pytest.raises(errors.TransientError) as caught:
        webhook.send(receiver.url, {"n": 1}, ref="job-1")
    assert caught.value.http_status == 500
    assert caught.value.result_code == "UNAVAILABLE"
    assert receiver.url in caught.value.message
    assert len(receiver.received) == 1


def test_a_429_answer_is_transient_and_pauses_the_api(
    webhook: WebhookClient, receiver: WebhookReceiver, session: ApiSession
) -> None:
    receiver.status = 429
    with pytest.raises(errors.RateLimited):
        webhook.send(receiver.url, {"n": 1}, ref="job-1")
    assert session.brake.pauses == 1


def test_a_410_answer_is_permanent_with_its_status(webhook: WebhookClient, receiver: WebhookReceiver) -> None:
    receiver.status = 410
    with pytest.raises(errors.PermanentError) as caught:
        webhook.send(receiver.url, {"n": 1}, ref="job-1")
    assert caught.value.http_status == 410
    assert caught.value.result_code == "INVALID_INPUT"


def test_a_409_answer_is_permanent_not_a_lost_claim(webhook: WebhookClient, receiver: WebhookReceiver) -> None:
    receiver.status = 409
    with pytest.raises(errors.Rejected) as caught:
        webhook.send(receiver.url, {"n": 1}, ref="job-1")
    assert (caught.value.result_code, caught.value.http_status) == ("CONFLICT", 409)


def test_a_redirect_is_not_followed(webhook: WebhookClient, receiver: WebhookReceiver) -> None:
    receiver.status = 307
    with pytest.raises(errors.PermanentError) as caught:
        webhook.send(receiver.url, {"n": 1}, ref="job-1")
    assert (caught.value.result_code, caught.value.http_status) == ("REDIRECTED", 307)
    assert len(receiver.received) == 1


def test_a_refused_connection_is_transient(webhook: WebhookClient) -> None:
    with pytest.raises(errors.TransientError) as caught:
        webhook.send(f"http://127.0.0.1:{closed_port()}/hook", {"n": 1}, ref="job-1")
    assert caught.value.result_code == "NETWORK_ERROR"


@pytest.mark.parametrize("url", ["ftp://hooks.example.com/in", "hooks.example.com/in", "mailto:ops@example.com"])
def test_a_url_that_is_not_http_is_invalid_input(webhook: WebhookClient, receiver: WebhookReceiver, url: str) -> None:
    with pytest.raises(errors.InvalidInput) as caught:
        webhook.send(url, {"n": 1}, ref="job-1")
    assert url in caught.value.message
    assert receiver.received == []


def test_a_job_id_that_would_split_the_header_is_refused(webhook: WebhookClient, receiver: WebhookReceiver) -> None:
    with pytest.raises(errors.InvalidInput):
        webhook.send(receiver.url, {"n": 1}, ref="job-1\r\nX-Injected: 1")
    assert receiver.received == []


def test_credentials_in_the_url_do_not_reach_the_message(webhook: WebhookClient) -> None:
    url = f"http://user:hunter2@127.0.0.1:{closed_port()}/hook?token=abc"
    with pytest.raises(errors.InvalidInput) as caught:
        webhook.send(url.replace("http", "gopher", 1), {"n": 1}, ref="job-1")
    assert "hunter2" not in caught.value.message and "token=abc" not in caught.value.message


def test_the_secret_never_appears_in_errors_or_logs(
    webhook: WebhookClient, receiver: WebhookReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    raised: list[errors.ConnectorError] = []
    webhook.send(receiver.url, {"n": 1}, ref="job-1")
    for status in (500, 410, 401, 302):
        receiver.status = status
        with pytest.raises(errors.ConnectorError) as caught:
            webhook.send(receiver.url, {"n": 1}, ref="job-1")
        raised.append(caught.value)
    for url in (f"http://127.0.0.1:{closed_port()}/hook", "ftp://x.example.com/"):
        with pytest.raises(errors.ConnectorError) as caught:
            webhook.send(url, {"n": 1}, ref="job-1")
        raised.append(caught.value)
    assert caplog.records
    assert SECRET not in caplog.text
    assert all(SECRET not in str(e) and SECRET not in repr(e) for e in raised)
    assert SECRET not in repr(webhook)


def test_the_receiver_refuses_an_oversized_body_before_reading_it(receiver: WebhookReceiver) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", receiver.port, timeout=5)
    try:
        # Only the headers go out: were the receiver to read the announced body, it would wait for it.
        connection.putrequest("POST", "/hook")
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(MAX_BODY + 1))
        connection.endheaders()
        assert connection.getresponse().status == 413
    finally:
        connection.close()
    assert receiver.received == []


def test_the_receiver_leaves_no_thread_behind(clock: FakeClock) -> None:
    before = set(threading.enumerate())
    with WebhookReceiver(SECRET, clock=clock) as r, ApiSession("Webhook", timeout=(2.0, 5.0)) as s:
        WebhookClient(s, SECRET, clock=clock).send(r.url, {"n": 1}, ref="job-1")
    assert set(threading.enumerate()) <= before


# --- mail -------------------------------------------------------------------------------------------------------


@pytest.fixture
def mailbox(tmp_path: Path) -> Path:
    return tmp_path / "mailbox"


@pytest.fixture
def sink(mailbox: Path) -> Iterator[SmtpSink]:
    with SmtpSink(mailbox, refuse=["nobody@example.com"], defer=["later@example.com"]) as s:
        yield s


def mail_client(sink: SmtpSink, **overrides: object) -> MailClient:
    settings: dict[str, object] = {
        "security": "none", "username": None, "password": None, "sender": SENDER, "timeout": 5.0,
    }
    settings.update(overrides)
    return MailClient(sink.host, sink.port, **settings)  # type: ignore[arg-type]


def test_a_message_arrives_with_its_subject_recipients_and_job(sink: SmtpSink, mailbox: Path) -> None:
    mail_client(sink).send(
        ["ann@example.com", "Bob Example <bob@example.com>"],
        "Job 4b6ffc7efdb2 failed: Webinar not added",
        "The job could not be applied.\nSee the job's attempts.",
        ref="4b6ffc7efdb2",
    )

    [mail] = sink.received
    assert mail.mail_from == "connector@example.org"
    assert mail.rcpt_tos == ("ann@example.com", "bob@example.com")
    assert mail.subject == "Job 4b6ffc7efdb2 failed: Webinar not added"
    assert mail.job == "4b6ffc7efdb2"
    assert mail.body == "The job could not be applied.\nSee the job's attempts.\n"
    assert mail.message_id == "<connector-job-4b6ffc7efdb2@example.org>"
    assert mail.path == mailbox / "0001-4b6ffc7efdb2.eml"
    assert mail.path.is_file()

    [entry] = read_mailbox(mailbox)
    assert entry["file"] == "0001-4b6ffc7efdb2.eml"
    assert entry["from"] == SENDER
    assert entry["to"] == ["ann@example.com", "Bob Example <bob@example.com>"]
    assert entry["subject"] == "Job 4b6ffc7efdb2 failed: Webinar not added"
    assert entry["job_id"] == "4b6ffc7efdb2"
    assert entry["date"][:4].isdigit()


def test_a_resend_is_recognisable_and_the_mailbox_lists_oldest_first(sink: SmtpSink, mailbox: Path) -> None:
    client = mail_client(sink)
    client.send(["ann@example.com"], "First", "1", ref="job-a")
    client.send(["ann@example.com"], "Second", "2", ref="job-b")
    client.send(["ann@example.com"], "First", "1", ref="job-a")

    first, second, again = (m.message_id for m in sink.received)
    assert first == again != second
    assert [e["file"] for e in read_mailbox(mailbox)] == ["0001-job-a.eml", "0002-job-b.eml", "0003-job-a.eml"]
    assert [e["subject"] for e in read_mailbox(mailbox)] == ["First", "Second", "First"]


def test_numbering_continues_after_a_restart(mailbox: Path) -> None:
    for subject in ("one", "two"):
        with SmtpSink(mailbox) as s:
            mail_client(s).send(["ann@example.com"], subject, "text", ref=f"job-{subject}")
    assert [e["file"] for e in read_mailbox(mailbox)] == ["0001-job-one.eml", "0002-job-two.eml"]


def test_an_empty_or_missing_mailbox_lists_nothing(tmp_path: Path) -> None:
    assert read_mailbox(tmp_path / "absent") == []
    assert read_mailbox(tmp_path) == []


def test_a_closed_port_is_transient(sink: SmtpSink) -> None:
    client = MailClient("127.0.0.1", closed_port(), security="none", username=None, password=None, sender=SENDER)
    with pytest.raises(errors.TransientError) as caught:
        client.send(["ann@example.com"], "Subject", "text", ref="job-1")
    assert isinstance(caught.value, errors.NetworkError)
    assert caught.value.result_code == "SMTP_UNREACHABLE"


def test_a_server_that_never_greets_is_transient() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        client = MailClient(
            "127.0.0.1", silent.getsockname()[1], security="none", username=None, password=None, sender=SENDER,
            timeout=0.3,
        )
        with pytest.raises(errors.TransientError) as caught:
            client.send(["ann@example.com"], "Subject", "text", ref="job-1")
    assert caught.value.result_code == "SMTP_UNREACHABLE"
    assert "in time" in caught.value.message


def test_a_recipient_refused_with_550_is_rejected(sink: SmtpSink) -> None:
    with pytest.raises(errors.Rejected) as caught:
        mail_client(sink).send(["nobody@example.com"], "Subject", "text", ref="job-1")
    assert caught.value.result_code == "SMTP_RECIPIENTS_REFUSED"
    assert "nobody@example.com (550" in caught.value.message
    assert sink.received == []


def test_a_recipient_refused_among_others_is_rejected_and_says_who_got_it(sink: SmtpSink) -> None:
    with pytest.raises(errors.Rejected) as caught:
        mail_client(sink).send(["ann@example.com", "nobody@example.com"], "Subject", "text", ref="job-1")
    assert caught.value.result_code == "SMTP_RECIPIENTS_REFUSED"
    assert "went to ann@example.com" in caught.value.message
    assert [m.rcpt_tos for m in sink.received] == [("ann@example.com",)]


def test_a_4xx_answer_is_transient(sink: SmtpSink) -> None:
    with pytest.raises(errors.Unavailable) as caught:
        mail_client(sink).send(["later@example.com"], "Subject", "text", ref="job-1")
    assert caught.value.result_code == "SMTP_UNAVAILABLE"
    assert sink.received == []


def test_a_refused_login_is_an_auth_error_without_the_password(
    mailbox: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with SmtpSink(mailbox, credentials=("connector", PASSWORD)) as s:
        mail_client(s, username="connector", password=PASSWORD).send(["ann@example.com"], "In", "text", ref="job-1")
        wrong = mail_client(s, username="connector", password=PASSWORD[::-1])
        with pytest.raises(errors.AuthError) as caught:
            wrong.send(["ann@example.com"], "Out", "text", ref="job-2")
        assert [m.subject for m in s.received] == ["In"]
    assert caught.value.result_code == "SMTP_AUTH_FAILED"
    for text in (str(caught.value), repr(caught.value), repr(wrong), caplog.text):
        assert PASSWORD not in text and PASSWORD[::-1] not in text


def test_starttls_on_a_server_without_it_is_permanent(sink: SmtpSink) -> None:
    with pytest.raises(errors.PermanentError) as caught:
        mail_client(sink, security="starttls").send(["ann@example.com"], "Subject", "text", ref="job-1")
    assert "STARTTLS" in caught.value.message


@pytest.mark.parametrize(
    ("to", "subject", "ref"),
    [
        ([], "Subject", "job-1"),
        (["not an address"], "Subject", "job-1"),
        (["ann@example.com"], "A\nBcc: x@y.z", "job-1"),
        (["ann@example.com"], "Subject", "job 1"),
    ],
    ids=["no-recipient", "bad-address", "header-injection", "job-id-with-space"],
)
def test_a_message_that_cannot_be_built_is_invalid_input(
    sink: SmtpSink, to: list[str], subject: str, ref: str
) -> None:
    with pytest.raises(errors.InvalidInput):
        mail_client(sink).send(to, subject, "text", ref=ref)
    assert sink.received == []


def test_stopping_the_sink_leaves_no_thread_and_no_warning(mailbox: Path) -> None:
    before = set(threading.enumerate())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with SmtpSink(mailbox) as s:
            mail_client(s).send(["ann@example.com"], "Subject", "text", ref="job-1")
            # Clients still connected when the sink stops: one greeted, one not yet even accepted.
            idle = socket.create_connection((s.host, s.port), timeout=5)
            assert idle.recv(100).startswith(b"220 ")
            late = socket.create_connection((s.host, s.port), timeout=5)
        idle.close()
        late.close()
        gc.collect()
    assert set(threading.enumerate()) <= before
    assert [str(w.message) for w in caught] == []
