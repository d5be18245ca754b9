"""A local SMTP server for sandbox mode: every message it accepts becomes a file in a mailbox directory.

`SmtpSink` runs aiosmtpd on 127.0.0.1 (a free port) in a thread with its own event loop. Each accepted message
is written, exactly as received, to `<directory>/<n>-<job id or Message-ID>.eml` (n counts up across restarts)
and kept in `received`. A message is stored before the server answers 250, so it is there when the client's
`send` returns. `refuse` holds recipient addresses the server answers 550 for (a permanent no), `defer` those it
answers 451 for (greylisting, "try later"); `credentials` makes it offer AUTH and check the login (without TLS:
it only listens on loopback). `read_mailbox` lists a mailbox directory for `connector mail list`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import threading
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import getaddresses, parsedate_to_datetime
from pathlib import Path
from typing import Any, cast

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from connector.mail import JOB_HEADER

HOST = "127.0.0.1"

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_NUMBERED = re.compile(r"(\d+)-")


class _QuietLoginData(logging.Filter):
    # aiosmtpd logs its own deprecation of Session.login_data on every successful login; nothing here reads it.
    def filter(self, record: logging.LogRecord) -> bool:
        return "login_data is deprecated" not in record.getMessage()


logging.getLogger("mail.log").addFilter(_QuietLoginData())


@dataclass(frozen=True)
class ReceivedMail:
    """One message the sink accepted."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    subject: str
    job: str | None  # the X-Connector-Job header
    message_id: str | None
    body: str
    path: Path


class SmtpSink:
    """Accepts mail on 127.0.0.1 and stores it under `directory`; see the module docstring."""

    host = HOST

    def __init__(
        self,
        directory: Path,
        *,
        refuse: Iterable[str] = (),
        defer: Iterable[str] = (),
        credentials: tuple[str, str] | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.refuse = {address.lower() for address in refuse}
        self.defer = {address.lower() for address in defer}
        self._credentials = credentials
        self._lock = threading.Lock()
        self._received: list[ReceivedMail] = []
        self._controller: _Controller | None = None

    def __repr__(self) -> str:
        port = self._controller.port if self._controller else None
        return f"SmtpSink(directory={str(self.directory)!r}, port={port})"

    @property
    def port(self) -> int:
        if self._controller is None:
            raise RuntimeError("The SMTP sink is not started.")
        return int(self._controller.port)

    @property
    def received(self) -> list[ReceivedMail]:
        """A snapshot of the messages accepted so far, oldest first."""
        with self._lock:
            return list(self._received)

    def start(self) -> SmtpSink:
        if self._controller is not None:
            raise RuntimeError("The SMTP sink is already started.")
        self.directory.mkdir(parents=True, exist_ok=True)
        kwargs: dict[str, Any] = {}
        if self._credentials is not None:
            # Loopback only: offering AUTH without TLS is what lets the client's login be exercised here.
            kwargs.update(authenticator=self._authenticate, auth_require_tls=False)
        controller = _Controller(_Handler(self), **kwargs)
        try:
            controller.start()
        except BaseException:
            controller.abandon()
            raise
        self._controller = controller
        return self

    def stop(self) -> None:
        controller, self._controller = self._controller, None
        if controller is not None:
            # Joins the server's thread; its event loop and listening socket are closed when it returns.
            controller.stop()

    def __enter__(self) -> SmtpSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- called on the server's thread ----------------------------------------------------------------------

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        assert self._credentials is not None
        username, password = self._credentials
        ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
            username.encode(),
            password.encode(),
        )
        # handled=False: aiosmtpd then answers 535 itself; with the default it would answer nothing at all.
        return AuthResult(success=ok, handled=False)

    def _store(self, envelope: Envelope) -> ReceivedMail:
        raw = envelope.original_content or b""
        message = cast(EmailMessage, BytesParser(policy=policy.default).parsebytes(raw))
        job = _header(message, JOB_HEADER)
        message_id = _header(message, "Message-ID")
        label = _UNSAFE.sub("_", job or (message_id or "").strip("<>") or "message").strip("._")[:80] or "message"
        path = self._write(label, raw)
        part = message.get_body(preferencelist=("plain", "html"))
        mail = ReceivedMail(
            mail_from=envelope.mail_from or "",
            rcpt_tos=tuple(envelope.rcpt_tos),
            subject=_header(message, "Subject") or "",
            job=job,
            message_id=message_id,
            body=cast(EmailMessage, part).get_content().replace("\r\n", "\n") if part is not None else "",
            path=path,
        )
        with self._lock:
            self._received.append(mail)
        return mail

    def _write(self, label: str, raw: bytes) -> Path:
        number = max((_number(p) or 0 for p in self.directory.glob("*.eml")), default=0) + 1
        while True:
            path = self.directory / f"{number:04d}-{label}.eml"
            try:
                # Exclusive create: another sink on the same directory never overwrites a message.
                with path.open("xb") as f:
                    f.write(raw)
                return path
            except FileExistsError:
                number += 1


class _Handler:
    """aiosmtpd's handler hooks, delegating to the sink."""

    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if address.lower() in self.sink.refuse:
            return f"550 5.1.1 <{address}>: mailbox unavailable"
        if address.lower() in self.sink.defer:
            return f"451 4.7.1 <{address}>: greylisted, try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        mail = self.sink._store(envelope)
        return f"250 2.0.0 OK: stored as {mail.path.name}"


class _Controller(Controller):
    """aiosmtpd's threaded controller on a socket bound up front, so that port 0 (a free port) works.

    The stock controller hands host and port to `create_server` and then connects to that port to check the
    server is up, which fails for port 0; a socket bound here knows its port before either happens.
    """

    def __init__(self, handler: _Handler, **smtp_kwargs: Any) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            self._sock.bind((HOST, 0))
        except OSError:
            self._sock.close()
            raise
        self._connections: weakref.WeakSet[SMTP] = weakref.WeakSet()
        # A fixed name spares the reverse DNS lookup aiosmtpd would do for the greeting.
        super().__init__(
            handler, hostname=HOST, port=self._sock.getsockname()[1], server_hostname="localhost", **smtp_kwargs
        )

    def _create_server(self) -> Any:
        # The event loop owns the socket from here: closing the server closes it.
        return self.loop.create_server(self._factory_invoker, sock=self._sock, ssl=self.ssl_context)

    def factory(self) -> SMTP:
        server = super().factory()
        self._connections.add(server)
        return server

    def stop(self, no_assert: bool = False) -> None:
        if self._thread is not None and self.loop.is_running():
            done = asyncio.run_coroutine_threadsafe(self._hang_up(), self.loop)
            done.result(timeout=5)
        super().stop(no_assert=no_assert)

    async def _hang_up(self) -> None:
        # The stock stop() cancels the tasks and closes the loop at once: a client still connected then leaves an
        # unclosed transport behind, which surfaces as a ResourceWarning. Close every connection first, letting a
        # connection accepted a moment ago be set up so that it is closed too.
        for _ in range(3):
            await asyncio.sleep(0)
        if self.server is not None:
            self.server.close()
        for server in list(self._connections):
            transport = server.transport
            if isinstance(transport, asyncio.WriteTransport):
                transport.abort()
            elif transport is not None:
                transport.close()
        for _ in range(3):
            await asyncio.sleep(0)

    def abandon(self) -> None:
        """Release everything after a failed start."""
        self.stop(no_assert=True)
        self._sock.close()
        if not self.loop.is_running() and not self.loop.is_closed():
            self.loop.close()


def read_mailbox(directory: Path) -> list[dict[str, Any]]:
    """The messages stored in `directory`, oldest first.

    Each entry: `file` (the name), `path`, `from`, `to` (a list of addresses as written), `subject`, `job_id`
    (the X-Connector-Job header, None without one), `message_id` and `date` (ISO 8601, from the Date header,
    else the file's modification time). A directory that does not exist is an empty mailbox.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    files = sorted(directory.glob("*.eml"), key=lambda p: (_number(p) is None, _number(p) or 0, p.name))
    entries = []
    parser = BytesParser(policy=policy.default)
    for path in files:
        with path.open("rb") as f:
            message = parser.parse(f, headersonly=True)
        to = [_address(name, address) for name, address in getaddresses([str(v) for v in message.get_all("To") or []])]
        entries.append({
            "file": path.name,
            "path": str(path),
            "from": _header(message, "From") or "",
            "to": to,
            "subject": _header(message, "Subject") or "",
            "job_id": _header(message, JOB_HEADER),
            "message_id": _header(message, "Message-ID"),
            "date": _date(message, path),
        })
    return entries


def _header(message: Any, name: str) -> str | None:
    value = message.get(name)
    return None if value is None else str(value).strip()


def _address(name: str, address: str) -> str:
    return f"{name} <{address}>" if name else address


def _number(path: Path) -> int | None:
    found = _NUMBERED.match(path.name)
    return int(found.group(1)) if found else None


def _date(message: Any, path: Path) -> str:
    value = message.get("Date")
    if value:
        try:
            return parsedate_to_datetime(str(value)).isoformat()
        except (TypeError, ValueError):
            pass
    return datetime.fromtimestamp(path.stat().st_mtime, tz=UTC).isoformat(timespec="seconds")
