"""Signed webhooks: a JSON body POSTed to a URL, signed so the receiver can tell it came from us, unchanged.

The signature follows Stripe's scheme. Every delivery carries

    Connector-Signature: t=1800000000,v1=<64 hex digits>
    Connector-Delivery: <job id>

where `v1` is the hex HMAC-SHA256, keyed with the shared secret, of the ASCII timestamp, a dot, and the raw body
bytes exactly as sent (`b"1800000000." + body`). The timestamp is inside the signed text, so a captured delivery
cannot be replayed with a fresh one. A receiver verifies it like this (`verify` below does the same, defensively):

    def verify(secret, header, body, *, now, tolerance=300):
        fields = dict(item.strip().split("=", 1) for item in header.split(",") if "=" in item)
        t = int(fields["t"])
        expected = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
        return abs(now - t) <= tolerance and hmac.compare_digest(expected, fields["v1"])

The receiver must hash the bytes it received before parsing them: parsed and re-serialised JSON is not
byte-identical. `verify` below also accepts several `v1` values in one header (for rolling the secret over: one
matching value is enough), refuses a timestamp further than `tolerance` seconds from its clock in either direction,
and answers False, never an exception, for a missing or malformed header.

A delivery whose answer was lost is sent again with the same `Connector-Delivery`: a receiver that has seen that
value can answer 2xx and drop it.

Outcomes of `WebhookClient.send`, all through `connector.http` (result codes in brackets):

- 2xx: delivered.
- 429 [RATE_LIMITED], 500/502/503/504 and other 5xx [UNAVAILABLE], 408 [OUTCOME_UNKNOWN], no connection
  [NETWORK_ERROR], no answer in time or a dropped connection [OUTCOME_UNKNOWN]: transient, retried.
- 401/403 [AUTH_FAILED], 404 [NOT_FOUND], other 4xx such as 400 or 410 [INVALID_INPUT], 501/505 [REJECTED]:
  permanent, as `error_for_status` decides. 409/412 [CONFLICT] are permanent `Rejected` here: for a webhook they
  are the receiver's refusal, not a lost claim on a row of ours.
- 3xx [REDIRECTED]: permanent. Redirects are not followed, because a 301/302/303 turns the POST into a GET without
  the body and signature; the job's message names the new location so the URL can be corrected.
- A URL that is not http(s), a payload that cannot be written as JSON, a job id unfit for a header
  [INVALID_INPUT]: permanent, and nothing is sent.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from connector import errors
from connector.http import ApiSession, error_for_status

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "Connector-Signature"
DELIVERY_HEADER = "Connector-Delivery"
DEFAULT_TOLERANCE = 300

_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")
_HEADER_SAFE = re.compile(r"[\x21-\x7e]+")  # visible ASCII: no space, no CR/LF that could split a header
_ANSWER_CHARS = 200


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The hex `v1` value for a body sent at `timestamp` (unix seconds)."""
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, *, timestamp: int) -> str:
    """The `Connector-Signature` header value for a body sent at `timestamp`."""
    return f"t={timestamp},v1={signature(secret, timestamp, body)}"


def verify(
    secret: str, header: str | None, body: bytes, *, now: float, tolerance: float = DEFAULT_TOLERANCE
) -> bool:
    """Whether `header` signs exactly `body` with `secret` at a time within `tolerance` seconds of `now`."""
    parsed = _parse(header)
    if parsed is None:
        return False
    timestamp, candidates = parsed
    if abs(now - timestamp) > tolerance:
        return False
    expected = signature(secret, timestamp, body).encode()
    # Every candidate is compared, so the time taken does not depend on which one matched.
    matches = [hmac.compare_digest(expected, candidate.encode()) for candidate in candidates]
    return any(matches)


def _parse(header: str | None) -> tuple[int, list[str]] | None:
    if not header:
        return None
    timestamps: list[str] = []
    candidates: list[str] = []
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            return None
        if key == "t":
            timestamps.append(value)
        elif key == "v1" and _HEX_DIGEST.fullmatch(value):
            candidates.append(value)
        # Other keys (a future v2, Stripe's v0) are ignored, so a receiver survives a new scheme being added.
    if len(timestamps) != 1 or not timestamps[0].isascii() or not timestamps[0].isdigit() or not candidates:
        return None
    return int(timestamps[0]), candidates


def shown_url(url: str) -> str:
    """The URL as it may appear in a job's message or a log: without user info, query or fragment."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return repr(url[:80])
    if not parts.scheme or not host:
        return repr(url[:80])
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class WebhookClient:
    """POSTs signed JSON deliveries. Thread-safe: it shares one pooled `ApiSession` between workers."""

    def __init__(self, session: ApiSession, secret: str, *, clock: Callable[[], float] = time.time) -> None:
        if not secret:
            raise ValueError("The webhook secret is empty; receivers could not verify any delivery.")
        self.session = session
        self._secret = secret
        self._clock = clock

    def __repr__(self) -> str:
        return f"WebhookClient(api={self.session.api!r})"

    def send(self, url: str, payload: dict[str, Any], *, ref: str) -> None:
        """Deliver `payload` to `url` once; `ref` (the job id) goes in `Connector-Delivery`."""
        where = shown_url(url)
        _check_url(url, where)
        if not _HEADER_SAFE.fullmatch(ref):
            raise errors.InvalidInput(
                f"Job id {ref!r} cannot be sent in the {DELIVERY_HEADER} header: it must be printable ASCII without "
                "spaces."
            )
        try:
            body = json.dumps(payload, separators=(",", ":"), sort_keys=True, allow_nan=False).encode()
        except (TypeError, ValueError) as exc:
            raise errors.InvalidInput(f"The webhook body for {where} is not valid JSON: {exc}.") from exc
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(self._secret, body, timestamp=int(self._clock())),
            DELIVERY_HEADER: ref,
        }
        response = self.session.post(url, data=body, headers=headers, allow_redirects=False)
        status = response.status_code
        if 200 <= status < 300:
            log.debug("Webhook delivery %s to %s: HTTP %d", ref, where, status)
            return
        if 300 <= status < 400:
            location = response.headers.get("Location")
            target = f" to {shown_url(location)}" if location else ""
            raise errors.Rejected(
                f"The webhook at {where} redirected{target} (HTTP {status}); redirects are not followed, so the "
                "webhook URL must be changed to the final address.",
                result_code="REDIRECTED",
                http_status=status,
            )
        answer = re.sub(r"\s+", " ", response.text).strip()[:_ANSWER_CHARS]
        message = f"The webhook at {where} answered HTTP {status}" + (f": {answer}" if answer else ".")
        error = error_for_status(response, message)
        if isinstance(error, errors.Conflict):
            raise errors.Rejected(error.message, result_code=error.result_code, http_status=status)
        raise error


def _check_url(url: str, where: str) -> None:
    try:
        parts = urlsplit(url)
        host = parts.hostname
        _ = parts.port  # a port that is not a number raises here, not as a transient error inside requests
    except ValueError as exc:
        raise errors.InvalidInput(f"The webhook URL {where} is not a valid URL: {exc}.") from exc
    if parts.scheme.lower() not in ("http", "https"):
        raise errors.InvalidInput(f"The webhook URL {where} is not an http:// or https:// URL.")
    if not host:
        raise errors.InvalidInput(f"The webhook URL {where} names no host.")
