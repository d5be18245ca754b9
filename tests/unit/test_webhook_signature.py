"""The webhook signature: what `sign` makes, `verify` accepts, and nothing else."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from connector.webhook import sign, verify

SECRET = "whsec-test-3b9f1c"
BODY = b'{"job":"4b6ffc7efdb2","tags":["Webinar"]}'
T = 1_800_000_000


def test_a_signed_body_verifies() -> None:
    header = sign(SECRET, BODY, timestamp=T)
    assert verify(SECRET, header, BODY, now=T + 5)


def test_the_header_is_the_documented_scheme() -> None:
    expected = hmac.new(SECRET.encode(), f"{T}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert sign(SECRET, BODY, timestamp=T) == f"t={T},v1={expected}"


@pytest.mark.parametrize(
    "body",
    [BODY.replace(b"Webinar", b"webinar"), BODY + b" ", BODY[:-1], b""],
    ids=["changed", "appended", "truncated", "empty"],
)
def test_a_tampered_body_does_not_verify(body: bytes) -> None:
    assert not verify(SECRET, sign(SECRET, BODY, timestamp=T), body, now=T)


def test_another_secret_does_not_verify() -> None:
    assert not verify("another-secret", sign(SECRET, BODY, timestamp=T), BODY, now=T)


def test_a_timestamp_older_than_the_tolerance_is_refused() -> None:
    header = sign(SECRET, BODY, timestamp=T)
    assert verify(SECRET, header, BODY, now=T + 300)
    assert not verify(SECRET, header, BODY, now=T + 301)
    assert verify(SECRET, header, BODY, now=T + 1000, tolerance=1000)


def test_a_timestamp_far_in_the_future_is_refused() -> None:
    header = sign(SECRET, BODY, timestamp=T + 301)
    assert not verify(SECRET, header, BODY, now=T)


def test_a_replayed_signature_with_a_fresh_timestamp_does_not_verify() -> None:
    v1 = sign(SECRET, BODY, timestamp=T).split("v1=")[1]
    assert not verify(SECRET, f"t={T + 600},v1={v1}", BODY, now=T + 600)


def test_any_matching_v1_is_enough_while_a_secret_is_rolled_over() -> None:
    old = sign("old-secret", BODY, timestamp=T).split("v1=")[1]
    new = sign(SECRET, BODY, timestamp=T).split("v1=")[1]
    assert verify(SECRET, f"t={T},v1={old},v1={new}", BODY, now=T)
    assert verify(SECRET, f"t={T}, v1={new}, v0=ignored", BODY, now=T)


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "garbage",
        f"v1={'0' * 64}",
        f"t={T}",
        f"t=,v1={'0' * 64}",
        f"t=abc,v1={'0' * 64}",
        f"t=-{T},v1={'0' * 64}",
        f"t={T},t={T},v1={'0' * 64}",
        f"t={T},v1=not-hex",
        f"t={T},v1={'A' * 64}",
        f"t={T},v1",
        "t=١٨٠٠٠٠٠٠٠٠,v1=" + "0" * 64,  # digits, but not ASCII ones
        f"t={T},v1=é" + "0" * 63,
    ],
)
def test_a_malformed_header_is_refused_without_an_exception(header: str | None) -> None:
    assert verify(SECRET, header, BODY, now=T) is False


@given(header=st.text(max_size=200), body=st.binary(max_size=64))
def test_verify_never_raises(header: str, body: bytes) -> None:
    assert verify(SECRET, header, body, now=T) in (True, False)


@given(body=st.binary(max_size=256), secret=st.text(min_size=1, max_size=40), index=st.integers(min_value=0))
def test_changing_any_byte_breaks_the_signature(body: bytes, secret: str, index: int) -> None:
    header = sign(secret, body, timestamp=T)
    assert verify(secret, header, body, now=T)
    if body:
        i = index % len(body)
        changed = body[:i] + bytes([body[i] ^ 0x01]) + body[i + 1 :]
        assert not verify(secret, header, changed, now=T)
