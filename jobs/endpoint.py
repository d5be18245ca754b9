"""The HTTP endpoint of `connector serve`: other systems POST events and jobs, and the connector queues them.

Routes (all POST, all JSON in and out):

- `/events`: one event or a list, with the fields `connector events ingest` reads; signed with
  `Connector-Signature` (`connector.webhook`) keyed with `endpoint.secret`. Each event goes through its rule as
  from a file: at most one job, a redelivered one acknowledged, one no rule knows reported and kept in the log.
- `/mautic`: Mautic's own webhook body, signed with `Webhook-Signature` (base64 HMAC-SHA256 of the raw body, keyed
  with `endpoint.mautic_secret`). Page hits, form submissions and e-mail opens become events of the CRM record
  named by the contact field `endpoint.mautic_record_field`.
- `/jobs`: one job or a list, with the fields of `jobs add` and an optional `request_id`; `Authorization: Bearer
  <endpoint.token>` or a `Connector-Signature`. All or nothing unless `?partial=true`.

The endpoint only queues; `connector run` runs the jobs. Every refusal is a JSON `{"error": sentence}`: 401 for a
missing or wrong signature or token (nothing is stored), 400 for a body that is not JSON of the expected shape,
411/413 for a missing or too large Content-Length (the body is not read), 404/405 for a wrong path or method, 503
when the job store is busy or unreachable (retry later), 500 otherwise. A traceback goes to the log, never to the
client; neither carries a secret.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from config.settings import EndpointSettings
from config.text import shown
from connector import errors
from connector.webhook import DEFAULT_TOLERANCE, SIGNATURE_HEADER, verify
from jobs.model import InvalidJob, Job, JobRequest, Origin
from jobs.scoring.events import Event, EventReport, event_from_fields, ingest, stored_request_ids
from jobs.scoring.rules import RuleSet
from jobs.service import request_from_fields
from jobs.store import JobStore

log = logging.getLogger(__name__)

MAUTIC_SIGNATURE_HEADER = "Webhook-Signature"
EVENT_FIELDS = {"event", "contact", "lead", "account", "target_kind", "target_id", "time", "id", "url"}
JOB_FIELDS = {"operation", "contact", "lead", "account", "target_kind", "target_id", "tags", "tag", "score",
              "request_id"}
MAUTIC_TYPES = ("mautic.page_on_hit", "mautic.form_on_submit", "mautic.email_on_open")
REQUEST_ID_MAX = 200
RETRY_AFTER_SECONDS = 5
# A refused body is drained for this long, at most this much, before the socket closes: closing on unread bytes
# resets the connection, and the client would see the reset instead of the answer.
LINGER_SECONDS = 1.0
LINGER_BYTES = 4 * 1_048_576


@dataclass(frozen=True)
class EndpointConfig:
    """What the endpoint needs of the settings. Secrets are kept out of the repr, so they never reach a log."""

    secret: str = field(default="", repr=False)
    mautic_secret: str = field(default="", repr=False)
    token: str = field(default="", repr=False)
    mautic_record_field: str = "crm_id"
    max_body: int = 1_048_576
    tolerance: float = DEFAULT_TOLERANCE

    @classmethod
    def of(cls, settings: EndpointSettings) -> EndpointConfig:
        return cls(secret=settings.secret.get_secret_value(), mautic_secret=settings.mautic_secret.get_secret_value(),
                   token=settings.token.get_secret_value(), mautic_record_field=settings.mautic_record_field,
                   max_body=settings.max_body)


@dataclass
class Answer:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


class Refused(Exception):
    """A request answered with a status and a sentence."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


Reader = Callable[[int], bytes]


class Endpoint:
    """The routes, apart from any socket: `handle` is given the request line, the headers and a body reader, and
    reads the body only once its declared length is known to be acceptable."""

    def __init__(self, store: JobStore, rules: RuleSet, config: EndpointConfig, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.rules = rules
        self.config = config
        self.clock = clock
        # One writer at a time: the "seen before" and "queued" counts are read before the jobs are added, and two
        # deliveries of the same event racing each other would both be reported as queued (the store queues once).
        self._writing = threading.Lock()
        self._routes: dict[str, Callable[[bytes, Mapping[str, str], dict[str, list[str]]], Answer]] = {
            "/events": self._events, "/mautic": self._mautic, "/jobs": self._jobs}

    def handle(self, method: str, target: str, headers: Mapping[str, str], read: Reader) -> Answer:
        # Header names are case-insensitive; looked up in lower case below.
        headers = {name.lower(): value for name, value in headers.items()}
        try:
            parts = urlsplit(target)
            route = self._routes.get(parts.path.rstrip("/") or "/")
            if route is None:
                raise Refused(404, f"No route {parts.path}; POST to /events, /mautic or /jobs.")
            if method != "POST":
                raise Refused(405, f"{parts.path} takes POST only.", {"Allow": "POST"})
            body = self._body(headers, read)
            return route(body, headers, parse_qs(parts.query))
        except Refused as refused:
            return Answer(refused.status, {"error": refused.message}, refused.headers)
        except errors.TransientError as exc:
            log.warning("The job store is unavailable: %s %s", exc.result_code, exc.message)
            return Answer(503, {"error": "The job store is busy or unreachable; nothing was stored. Send it again "
                                         "later."}, {"Retry-After": str(RETRY_AFTER_SECONDS)})
        except errors.ConnectorError as exc:
            log.error("The job store refused a request: %s %s", exc.result_code, exc.message)
            return Answer(500, {"error": f"The job store refused the request ({exc.result_code}); the connector's "
                                         "log says why."})
        except Exception:
            log.exception("The endpoint failed on %s %s", method, urlsplit(target).path)
            return Answer(500, {"error": "The connector failed on this request; its log says why."})

    def _body(self, headers: Mapping[str, str], read: Reader) -> bytes:
        declared = headers.get("content-length")
        if declared is None:
            raise Refused(411, "Give a Content-Length; bodies sent without one are not read.")
        try:
            length = int(declared)
        except ValueError:
            raise Refused(400, f"Content-Length is {shown(declared)}; it must be a number of bytes.") from None
        if length < 0:
            raise Refused(400, "Content-Length is negative.")
        if length > self.config.max_body:
            raise Refused(413, f"The body is {length} bytes; the most accepted is {self.config.max_body} "
                               "(endpoint.max_body).")
        body = read(length) if length else b""
        if len(body) != length:
            raise Refused(400, f"The body ended after {len(body)} of its {length} bytes.")
        return body

    # Authentication

    def _signed(self, headers: Mapping[str, str], body: bytes) -> None:
        if not self.config.secret:
            raise Refused(401, "This route is closed: set CONNECTOR_ENDPOINT__SECRET to the secret senders sign "
                               "with.")
        header = headers.get(SIGNATURE_HEADER.lower())
        if not header:
            raise Refused(401, f"No {SIGNATURE_HEADER} header; sign the body as the README says.")
        if not verify(self.config.secret, header, body, now=self.clock(), tolerance=self.config.tolerance):
            raise Refused(401, f"The {SIGNATURE_HEADER} does not match the body, or its time is more than "
                               f"{self.config.tolerance:g} seconds from the connector's clock.")

    def _mautic_signed(self, headers: Mapping[str, str], body: bytes) -> None:
        if not self.config.mautic_secret:
            raise Refused(401, "This route is closed: set CONNECTOR_ENDPOINT__MAUTIC_SECRET to the secret Mautic "
                               "shows for the webhook.")
        given = headers.get(MAUTIC_SIGNATURE_HEADER.lower(), "").strip()
        if not given:
            raise Refused(401, f"No {MAUTIC_SIGNATURE_HEADER} header.")
        expected = base64.b64encode(hmac.new(self.config.mautic_secret.encode(), body, hashlib.sha256).digest())
        if not hmac.compare_digest(expected, given.encode("ascii", "replace")):
            raise Refused(401, f"The {MAUTIC_SIGNATURE_HEADER} does not match the body.")

    def _authorized(self, headers: Mapping[str, str], body: bytes) -> None:
        authorization = headers.get("authorization")
        if authorization is None:
            if headers.get(SIGNATURE_HEADER.lower()) is None and not (self.config.token or self.config.secret):
                raise Refused(401, "This route is closed: set CONNECTOR_ENDPOINT__TOKEN (or "
                                   "CONNECTOR_ENDPOINT__SECRET for signed requests).")
            if headers.get(SIGNATURE_HEADER.lower()) is None:
                raise Refused(401, f"Give Authorization: Bearer <token>, or sign the body with {SIGNATURE_HEADER}.")
            self._signed(headers, body)
            return
        if not self.config.token:
            raise Refused(401, "Bearer tokens are not accepted: set CONNECTOR_ENDPOINT__TOKEN.")
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode("utf-8", "replace"),
                                                                 self.config.token.encode()):
            raise Refused(401, "The bearer token is not the one configured.")

    # Routes

    def _events(self, body: bytes, headers: Mapping[str, str], query: dict[str, list[str]]) -> Answer:
        self._signed(headers, body)
        items = _items(_json(body), "an event")
        events: list[tuple[int, Event]] = []
        problems: list[dict[str, Any]] = []
        for index, item in enumerate(items):
            unknown = sorted(set(item) - EVENT_FIELDS)
            if unknown:
                problems.append({"index": index, "problems": [
                    f"Unknown field{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; use "
                    f"{', '.join(sorted(EVENT_FIELDS))}."]})
                continue
            try:
                events.append((index, event_from_fields(item)))
            except InvalidJob as exc:
                problems.append({"index": index, "problems": exc.problems})
        if problems:
            return Answer(422, {"errors": problems, "error": "Some items are not events; nothing was stored."})
        with self._writing:
            report = ingest(self.store, self.rules, events)
        return Answer(200, _report(report))

    def _mautic(self, body: bytes, headers: Mapping[str, str], query: dict[str, list[str]]) -> Answer:
        self._mautic_signed(headers, body)
        data = _json(body)
        if not isinstance(data, dict):
            raise Refused(400, "The body is not a Mautic webhook: a JSON object of event types, such as "
                               "{\"mautic.page_on_hit\": [...]}.")
        events: list[tuple[int, Event]] = []
        where: list[dict[str, Any]] = []  # the type and index of each event, by its position in `events`
        skipped: list[dict[str, Any]] = []
        ignored: list[str] = []
        for kind, payloads in data.items():
            if not kind.startswith("mautic."):
                continue  # Mautic adds a "timestamp" beside the types
            if kind not in MAUTIC_TYPES:
                ignored.append(kind)
                continue
            for index, payload in enumerate(payloads if isinstance(payloads, list) else [payloads]):
                try:
                    fields = mautic_event(kind, payload, self.config.mautic_record_field)
                    event = event_from_fields(fields)
                except InvalidJob as exc:
                    skipped.append({"type": kind, "index": index, "message": " ".join(exc.problems)})
                    continue
                events.append((len(where), event))
                where.append({"type": kind, "index": index})
        with self._writing:
            report = ingest(self.store, self.rules, events) if events else EventReport()
        answer = _report(report)
        answer["unknown"] = [{**where[p.line], "message": p.message} for p in report.unknown]
        answer["skipped"] = skipped
        answer["ignored_types"] = ignored
        return Answer(200, answer)

    def _jobs(self, body: bytes, headers: Mapping[str, str], query: dict[str, list[str]]) -> Answer:
        self._authorized(headers, body)
        partial = _flag(query, "partial")
        items = _items(_json(body), "a job")
        good: list[tuple[int, JobRequest]] = []
        bad: list[dict[str, Any]] = []
        for index, item in enumerate(items):
            try:
                good.append((index, _job_request(item)))
            except InvalidJob as exc:
                bad.append({"index": index, "problems": exc.problems})
        if bad and (not partial or not good):
            return Answer(422, {"errors": bad, "error": "Some items are not valid jobs; nothing was queued."})
        requests = [request for _, request in good]
        with self._writing:
            before = stored_request_ids(self.store, [r.request_id for r in requests if r.request_id is not None])
            jobs = self.store.add(requests)
        answer: dict[str, Any] = {"jobs": [_job_answer(index, job, request, before)
                                           for (index, request), job in zip(good, jobs, strict=True)]}
        if bad:
            answer["errors"] = bad
        return Answer(200, answer)


def mautic_event(kind: str, payload: object, record_field: str) -> dict[str, Any]:
    """The event fields of one Mautic webhook payload; raises InvalidJob when it names no CRM record."""
    if not isinstance(payload, dict):
        raise InvalidJob(["The item is not a JSON object."])
    if kind == "mautic.page_on_hit":
        hit = _object(payload.get("hit"))
        name = "email_click" if hit.get("source") == "email" else "page_hit"
        contact = _object(hit.get("lead")) or _object(payload.get("lead")) or _object(payload.get("contact"))
        fields = {"event": name, "id": _prefixed("hit", hit.get("id")), "url": hit.get("url"),
                  "time": hit.get("dateHit")}
    elif kind == "mautic.form_on_submit":
        submission = _object(payload.get("submission"))
        form = _object(submission.get("form"))
        alias = form.get("alias") or form.get("id")
        if alias in (None, ""):
            raise InvalidJob(["The form submission names no form (submission.form.alias)."])
        contact = (_object(submission.get("lead")) or _object(payload.get("lead"))
                   or _object(payload.get("contact")))
        fields = {"event": f"form_submit:{alias}", "id": _prefixed("submission", submission.get("id")),
                  "time": submission.get("dateSubmitted")}
    else:
        stat = _object(payload.get("stat"))
        contact = _object(payload.get("contact")) or _object(stat.get("lead")) or _object(payload.get("lead"))
        email = _object(stat.get("email"))
        if stat.get("id") not in (None, ""):
            event_id = _prefixed("stat", stat.get("id"))
        elif email.get("id") not in (None, "") and contact.get("id") not in (None, ""):
            event_id = f"mautic:open:{email['id']}:{contact['id']}"
        else:
            event_id = None
        fields = {"event": "email_open", "id": event_id, "time": stat.get("dateRead") or payload.get("timestamp")}
    record = record_of(contact, record_field)
    if record is None:
        raise InvalidJob([f"The Mautic contact has no {record_field!r} (endpoint.mautic_record_field), so the CRM "
                          f"record is not known; the item is not kept."])
    return {**fields, "contact": record}


def record_of(contact: Mapping[str, Any], name: str) -> str | None:
    """The CRM id in a Mautic contact: `fields.<group>.<name>.value` (core first), `fields.all.<name>`, or a flat
    `<name>`, as the different payloads carry it."""
    groups = _object(contact.get("fields"))
    candidates: list[object] = [_object(_object(groups.get("core")).get(name)).get("value")]
    candidates += [_object(_object(group).get(name)).get("value") for key, group in groups.items()
                   if key not in ("core", "all")]
    candidates += [_object(groups.get("all")).get(name), contact.get(name)]
    for value in candidates:
        if isinstance(value, str | int) and not isinstance(value, bool) and str(value).strip():
            return str(value).strip()
    return None


def _object(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _prefixed(what: str, value: object) -> str | None:
    # Mautic's ids are per table; the prefix keeps a hit and a submission with the same number apart, and both
    # apart from the ids of generic events.
    return None if value in (None, "") else f"mautic:{what}:{value}"


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Refused(400, f"The body is not valid JSON ({exc}).") from None


def _items(data: Any, what: str) -> list[dict[str, Any]]:
    items = data if isinstance(data, list) else [data]
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise Refused(400, f"Item {index} is not a JSON object; give {what} as an object, or a list of them.")
    return items


def _flag(query: dict[str, list[str]], name: str) -> bool:
    values = query.get(name, [])
    return bool(values) and values[-1].lower() in ("true", "1", "yes")


def _job_request(item: dict[str, Any]) -> JobRequest:
    unknown = sorted(set(item) - JOB_FIELDS)
    if unknown:
        raise InvalidJob([f"Unknown field{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; use "
                          f"{', '.join(sorted(JOB_FIELDS))}."])
    request_id = item.get("request_id")
    if request_id is not None and (not isinstance(request_id, str | int) or isinstance(request_id, bool)
                                   or not str(request_id).strip() or len(str(request_id)) > REQUEST_ID_MAX):
        raise InvalidJob([f"request_id must be a text of 1 to {REQUEST_ID_MAX} characters."])
    request = request_from_fields(item)
    return dataclasses.replace(request, origin=Origin(source="api"))


def _job_answer(index: int, job: Job, request: JobRequest, before: set[str]) -> dict[str, Any]:
    answer: dict[str, Any] = {"index": index, "id": job.id, "status": job.display_status}
    if request.request_id is not None:
        answer["request_id"] = request.request_id
        answer["seen_before"] = request.request_id in before
    return answer


def _report(report: EventReport) -> dict[str, Any]:
    return {"queued": report.queued, "seen_before": report.seen_before,
            "first_already_scored": report.first_already_scored,
            "unknown": [{"index": p.line, "message": p.message} for p in report.unknown]}


# The socket side


class _Handler(BaseHTTPRequestHandler):
    server: EndpointServer
    # Neither the Python version nor the library's name is anyone's business.
    def version_string(self) -> str:
        return "connector"

    # A client that stops sending holds a thread only this long.
    timeout = 15

    def _answer(self) -> None:
        consumed = 0

        def read(size: int) -> bytes:
            nonlocal consumed
            data = self.rfile.read(size)
            consumed += len(data)
            return data

        answer = self.server.endpoint.handle(self.command, self.path, dict(self.headers.items()), read)
        self._send(answer)
        declared = self.headers.get("Content-Length")
        if answer.status >= 400 and (declared is None or not declared.isdigit() or consumed < int(declared)):
            self._linger()

    def _linger(self) -> None:
        try:
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(LINGER_SECONDS)
            deadline, drained = time.monotonic() + LINGER_SECONDS, 0
            while time.monotonic() < deadline and drained < LINGER_BYTES:
                chunk = self.connection.recv(65536)
                if not chunk:
                    break
                drained += len(chunk)
        except OSError:
            pass

    do_POST = do_GET = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = _answer

    def _send(self, answer: Answer) -> None:
        body = json.dumps(answer.body).encode()
        self.send_response(answer.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in answer.headers.items():
            self.send_header(name, value)
        if answer.status >= 400:
            # The body may not have been read (411, 413): the connection cannot carry another request.
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # A malformed request line or header: the same JSON shape as every other refusal.
        self.close_connection = True
        self._send(Answer(code, {"error": message or self.responses.get(code, ("Error",))[0]}))

    def log_message(self, format: str, *args: Any) -> None:
        log.info("%s %s", self.address_string(), format % args)


class EndpointServer(ThreadingHTTPServer):
    """The endpoint on a socket, one thread per request; `stop` waits for the requests being answered."""

    daemon_threads = False
    block_on_close = True

    def __init__(self, endpoint: Endpoint, host: str, port: int) -> None:
        self.endpoint = endpoint
        super().__init__((host, port), _Handler)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.socket.getsockname()[:2]
        shown = f"[{host}]" if ":" in str(host) else str(host)
        return f"http://{shown}:{port}"

    def start(self) -> EndpointServer:
        self._thread = threading.Thread(target=self.serve_forever, args=(0.1,), name="endpoint", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self.shutdown()
            self._thread.join()
        self.server_close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client gone mid-answer is the client's business; anything else is logged, with its traceback.
        log.warning("The endpoint could not answer %s", client_address[0], exc_info=True)


def serve(endpoint: Endpoint, host: str = "127.0.0.1", port: int = 0) -> EndpointServer:
    """The endpoint listening on `host`:`port` (0: any free port), answering in a thread of its own."""
    return EndpointServer(endpoint, host, port).start()


@contextmanager
def serving(endpoint: Endpoint, host: str = "127.0.0.1", port: int = 0) -> Iterator[EndpointServer]:
    """`serve` for a `with` block: stopped when it ends."""
    server = serve(endpoint, host, port)
    try:
        yield server
    finally:
        server.stop()
