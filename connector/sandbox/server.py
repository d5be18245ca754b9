"""A small HTTP server for the emulators: routing, JSON, state on disk, and injected faults.

Each emulator (Spotler, Mautic, Dataverse) is an `App`: a list of routes whose handlers take a `Request` and
return a `Response`. `SandboxServer` serves an app on loopback in a background thread. The `Faults` of the
server decide, per request, whether it is slowed down, throttled, answered with a server error, reset, left
without an answer, or applied and then dropped, so that the real adapters can be tested against a hostile
network without any change to them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import re
import socket
import sqlite3
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from pydantic import BaseModel, Field

log = logging.getLogger(__name__)


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    url: str
    params: dict[str, str] = field(default_factory=dict)

    def header(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name.lower(), default)

    def json(self) -> Any:
        if not self.body:
            return None
        return json.loads(self.body)

    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default


@dataclass
class Response:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None

    def encode(self) -> bytes:
        if self.raw is not None:
            return self.raw
        if self.body is None:
            return b""
        return json.dumps(self.body).encode()


Handler = Callable[[Request], Response]


class HttpError(Exception):
    """Raised by a handler to answer with an error response."""

    def __init__(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        super().__init__(status)
        self.response = Response(status, body, headers or {})


class App:
    """Routes of one emulator. Subclasses register handlers with `route` and keep their state in `db`."""

    name = "sandbox"

    def __init__(self) -> None:
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []
        self.mutating = {"POST", "PUT", "PATCH", "DELETE"}

    def route(self, method: str, pattern: str, handler: Handler) -> None:
        regex = re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", pattern) + "$")
        self._routes.append((method, regex, handler))

    def authenticate(self, request: Request) -> Response | None:
        """An error response when the request's credentials are wrong; None when they are fine."""
        return None

    def not_found(self, request: Request) -> Response:
        return Response(404, {"message": f"No route for {request.method} {request.path}"})

    def cost(self, request: Request) -> int:
        """How many requests `request` counts for toward the rate limit."""
        return 1

    def too_many(self, request: Request, faults: Faults) -> Response:
        """The answer past the rate limit (the server adds the Retry-After)."""
        return Response(429, {"message": "Too many requests"})

    def limit_headers(self, request: Request, budget: Budget | None) -> dict[str, str]:
        """Headers that tell the client what is left of its limits (`budget`: None without a windowed limit)."""
        return {}

    def dispatch(self, request: Request) -> Response:
        denied = self.authenticate(request)
        if denied is not None:
            return denied
        allowed = False
        for method, regex, handler in self._routes:
            match = regex.match(request.path)
            if not match:
                continue
            allowed = True
            if method != request.method:
                continue
            request.params = {k: _unquote(v) for k, v in match.groupdict().items()}
            try:
                return handler(request)
            except HttpError as exc:
                return exc.response
        if allowed:
            return Response(405, {"message": f"{request.method} is not allowed on {request.path}"})
        return self.not_found(request)


def _unquote(value: str) -> str:
    from urllib.parse import unquote

    return unquote(value)


class Store:
    """SQLite state of one emulator, on disk so that it survives restarts. One connection per thread."""

    def __init__(self, path: Path, schema: str) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._write_lock = threading.Lock()
        # executescript manages its own transaction.
        self._connection().executescript(schema)

    def _connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    @contextmanager
    def atomic(self) -> Iterator[sqlite3.Connection]:
        conn = self._connection()
        with self._write_lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def read(self) -> sqlite3.Connection:
        return self._connection()


class Faults(BaseModel):
    """What goes wrong on purpose. Rates are fractions of requests (0.0 to 1.0); latencies in milliseconds."""

    latency_ms: float = Field(0.0, ge=0)
    jitter_ms: float = Field(0.0, ge=0)
    rate_limit: float | None = Field(None, gt=0, description="requests per second (or per rate_window) before "
                                     "answering 429")
    rate_window: float | None = Field(None, gt=0, description="seconds of the sliding window rate_limit counts "
                                      "over, as Dataverse's five minutes; unset: one second. With a window, the "
                                      "Dataverse sandbox says on each answer what is left of the limit")
    retry_after: float = Field(1.0, ge=0, description="seconds in the Retry-After of a 429")
    throttle_rate: float = Field(0.0, ge=0, le=1, description="429 answers at random, whatever the request rate")
    error_rate: float = Field(0.0, ge=0, le=1, description="500 / 502 / 503 answers")
    reset_rate: float = Field(0.0, ge=0, le=1, description="connection reset before the request is read")
    timeout_rate: float = Field(0.0, ge=0, le=1, description="no answer at all, the change not made")
    drop_rate: float = Field(0.0, ge=0, le=1, description="change made, then the connection dropped")
    hang_seconds: float = Field(35.0, ge=0, description="how long an unanswered request is held open")
    seed: int | None = None

    @property
    def any(self) -> bool:
        return bool(
            self.latency_ms or self.jitter_ms or self.rate_limit or self.error_rate or self.reset_rate
            or self.timeout_rate or self.drop_rate or self.throttle_rate
        )


@dataclass(frozen=True)
class Budget:
    """What is left of a windowed rate limit: requests, and seconds of the handlers' combined execution time."""

    requests_left: float
    limit: float
    window: float
    seconds_executed: float


class FaultInjector:
    """Draws, per request, which fault (if any) it gets. Thread-safe; seeded for repeatable tests."""

    def __init__(self, faults: Faults, clock: Callable[[], float] = time.monotonic) -> None:
        self.faults = faults
        self._random = random.Random(faults.seed)
        self._lock = threading.Lock()
        self._clock = clock
        # (when, how many requests it counted for) of the requests let through within the window
        self._recent: deque[tuple[float, int]] = deque()
        self._recent_count = 0
        # (when, seconds) the handlers took within the window
        self._executed: deque[tuple[float, float]] = deque()
        self._executed_seconds = 0.0
        self._script: deque[str | None] = deque()
        self.counts: dict[str, int] = {}
        self.requests = 0  # every request drawn for, faulty or not: what a benchmark divides by

    def script(self, *faults: str | None) -> None:
        """Faults for the next requests, in order (None: answer normally), before any random draw."""
        with self._lock:
            self._script.extend(faults)

    def _count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    def _age(self, now: float) -> None:
        window = self.faults.rate_window or 1.0
        while self._recent and now - self._recent[0][0] > window:
            self._recent_count -= self._recent.popleft()[1]
        while self._executed and now - self._executed[0][0] > window:
            self._executed_seconds -= self._executed.popleft()[1]

    def executed(self, seconds: float) -> None:
        """A handler took `seconds` to answer: what a windowed limit reports as execution time spent."""
        if not (self.faults.rate_limit and self.faults.rate_window):
            return
        with self._lock:
            now = self._clock()
            self._age(now)
            self._executed.append((now, seconds))
            self._executed_seconds += seconds

    def budget(self) -> Budget | None:
        """What is left of the windowed rate limit; None without one."""
        f = self.faults
        if not (f.rate_limit and f.rate_window):
            return None
        with self._lock:
            self._age(self._clock())
            return Budget(max(0.0, f.rate_limit - self._recent_count), f.rate_limit, f.rate_window,
                          max(0.0, self._executed_seconds))

    def draw(self, mutating: bool, cost: int = 1) -> tuple[float, str | None]:
        """(delay in seconds, fault): fault is None, '429', '500', '502', '503', 'reset', 'timeout' or 'drop'.
        `cost` is how many requests this one counts for toward the rate limit."""
        f = self.faults
        with self._lock:
            self.requests += 1
            delay = (f.latency_ms + self._random.uniform(0, f.jitter_ms)) / 1000.0
            if self._script:
                scripted = self._script.popleft()
                if scripted is not None:
                    self._count(scripted)
                return delay, scripted
            if f.rate_limit and cost:
                now = self._clock()
                self._age(now)
                if self._recent_count + cost - 1 >= f.rate_limit:
                    self._count("429")
                    return delay, "429"
                self._recent.append((now, cost))
                self._recent_count += cost
            roll = self._random.random()
            for name, rate in (
                ("429", f.throttle_rate),
                ("error", f.error_rate),
                ("reset", f.reset_rate),
                ("timeout", f.timeout_rate),
                ("drop", f.drop_rate if mutating else 0.0),
            ):
                if roll < rate:
                    fault = self._random.choice(["500", "502", "503"]) if name == "error" else name
                    self._count(fault)
                    return delay, fault
                roll -= rate
            return delay, None


class SandboxServer:
    """Serves one `App` on 127.0.0.1 in a daemon thread."""

    def __init__(self, app: App, *, port: int = 0, faults: Faults | None = None, tls: Any = None) -> None:
        self.app = app
        self.injector = FaultInjector(faults or Faults())
        self._stopping = threading.Event()
        handler = _make_handler(self)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.httpd.daemon_threads = True
        self.scheme = "http"
        if tls is not None:
            # The handshake runs in the handler thread on first read: done in accept(), one silent client
            # would stall every other connection.
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True, do_handshake_on_connect=False)
            self.scheme = "https"
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def start(self) -> SandboxServer:
        # A short poll interval makes stop() quick; the cost is a few idle wake-ups per second.
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, name=f"sandbox-{self.app.name}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _make_handler(server: SandboxServer) -> type[BaseHTTPRequestHandler]:
    class _Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Headers and body leave in two writes: with Nagle's algorithm on, the body waited for the client's
        # delayed ACK, about 40 ms on every answer with a body, and every latency measured against us was that.
        disable_nagle_algorithm = True

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s %s", server.app.name, format % args)

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            split = urlsplit(self.path)
            request = Request(
                method=self.command,
                path=split.path,
                query=parse_qs(split.query, keep_blank_values=True),
                headers={k.lower(): v for k, v in self.headers.items()},
                body=body,
                url=f"{server.url}{self.path}",
            )
            delay, fault = server.injector.draw(self.command in server.app.mutating, server.app.cost(request))
            if delay:
                time.sleep(delay)
            if fault == "reset":
                self._reset()
                return
            if fault == "timeout":
                server._stopping.wait(server.injector.faults.hang_seconds)
                self._reset()
                return
            if fault == "429":
                throttled = server.app.too_many(request, server.injector.faults)
                throttled.headers["Retry-After"] = f"{server.injector.faults.retry_after:g}"
                self._send(throttled, request)
                return
            if fault in ("500", "502", "503"):
                self._send(Response(int(fault), {"message": HTTPStatus(int(fault)).phrase}))
                return
            started = time.perf_counter()
            try:
                response = server.app.dispatch(request)
            except Exception:
                log.exception("%s sandbox failed on %s %s", server.app.name, self.command, self.path)
                response = Response(500, {"message": "sandbox internal error"})
            server.injector.executed(time.perf_counter() - started)
            if fault == "drop" and response.status < 400:
                self._reset()
                return
            self._send(response, request)

        def _send(self, response: Response, request: Request | None = None) -> None:
            payload = response.encode()
            self.send_response(response.status)
            headers = {"Content-Type": "application/json; charset=utf-8"} if payload and response.raw is None else {}
            headers.update(response.headers)
            if request is not None:
                headers.update(server.app.limit_headers(request, server.injector.budget()))
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if payload and self.command != "HEAD":
                self.wfile.write(payload)

        def _reset(self) -> None:
            # SO_LINGER with a zero timeout makes close() send RST: the client sees "connection reset by peer".
            with contextlib.suppress(OSError):
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

    return _Handler
