"""A webhook receiver on loopback, for the demo and the tests: it records every delivery and checks its signature.

`POST /hook` is recorded (headers, the parsed JSON body, whether `connector.webhook.verify` accepts its
signature) and answered with `status`, which a test may change at any time to make the receiver fail (500) or
refuse (410). A delivery is recorded before it is answered, so it is in `received` when `send` returns. A body
over `MAX_BODY` bytes is answered 413 without being read; any other path is 404.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from requests.structures import CaseInsensitiveDict

from connector.webhook import DELIVERY_HEADER, SIGNATURE_HEADER, verify

log = logging.getLogger(__name__)

PATH = "/hook"
MAX_BODY = 1024 * 1024


@dataclass(frozen=True)
class Delivery:
    """One request the receiver took in."""

    headers: CaseInsensitiveDict[str]
    body: Any  # the parsed JSON, None when the body was not JSON
    raw: bytes
    verified: bool
    answered: int

    @property
    def ref(self) -> str | None:
        """The `Connector-Delivery` header: the job id."""
        return self.headers.get(DELIVERY_HEADER)


class WebhookReceiver:
    """Serves `POST /hook` on 127.0.0.1 (a free port) in a daemon thread."""

    def __init__(self, secret: str, *, status: int = 200, clock: Callable[[], float] = time.time) -> None:
        self.status = status
        self._secret = secret
        # Tests that sign with a fake clock verify with the same one.
        self._clock = clock
        self._lock = threading.Lock()
        self._received: list[Delivery] = []
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"WebhookReceiver(url={self.url if self._httpd else None!r}, status={self.status})"

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("The webhook receiver is not started.")
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{PATH}"

    @property
    def received(self) -> list[Delivery]:
        """A snapshot of the deliveries so far, oldest first."""
        with self._lock:
            return list(self._received)

    def clear(self) -> None:
        with self._lock:
            self._received.clear()

    def start(self) -> WebhookReceiver:
        if self._httpd is not None:
            raise RuntimeError("The webhook receiver is already started.")
        self._httpd = _Server(self)
        # A short poll interval makes stop() quick; the cost is a few idle wake-ups per second.
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="sandbox-webhook", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        httpd, thread, self._httpd, self._thread = self._httpd, self._thread, None, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        if thread is not None:
            thread.join()

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _record(self, headers: CaseInsensitiveDict[str], raw: bytes) -> Delivery:
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        verified = verify(self._secret, headers.get(SIGNATURE_HEADER), raw, now=self._clock())
        delivery = Delivery(headers=headers, body=body, raw=raw, verified=verified, answered=self.status)
        with self._lock:
            self._received.append(delivery)
        return delivery


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, receiver: WebhookReceiver) -> None:
        self.receiver = receiver
        super().__init__(("127.0.0.1", 0), _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up mid-request is normal here; the default prints a traceback on stderr.
        log.debug("webhook receiver: request from %s failed", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    # HTTP/1.0: one request per connection, so no handler thread outlives its answer waiting for a next request.
    protocol_version = "HTTP/1.0"
    # A client that announces a body and never sends it does not hold a thread forever.
    timeout = 10

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("webhook receiver: " + format, *args)

    def do_POST(self) -> None:
        if urlsplit(self.path).path != PATH:
            self._answer(HTTPStatus.NOT_FOUND)
            return
        if self.headers.get("Transfer-Encoding"):
            self._answer(HTTPStatus.LENGTH_REQUIRED)
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0:
            self._answer(HTTPStatus.BAD_REQUEST)
            return
        if length > MAX_BODY:
            self._answer(HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
            return
        raw = self.rfile.read(length)
        headers = CaseInsensitiveDict(dict(self.headers.items()))
        delivery = self.server.receiver._record(headers, raw)
        self._answer(delivery.answered)

    def do_GET(self) -> None:
        self._answer(HTTPStatus.METHOD_NOT_ALLOWED if urlsplit(self.path).path == PATH else HTTPStatus.NOT_FOUND)

    do_PUT = do_PATCH = do_DELETE = do_HEAD = do_GET

    def _answer(self, status: int) -> None:
        text = f"{status} {_phrase(status)}\n".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(text)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(text)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""
