"""A thin client for the Dataverse Web API: OData headers, queries with paging, writes with ETags, errors.

Everything goes through one `ApiSession` (timeouts, pool, the brake every worker shares) with `DataverseAuth`
attached. Microsoft's own Python client for Dataverse has no 429 handling and no If-Match, which are the two
things a job store on Dataverse needs most, hence this client.

Retries here are deliberately narrow: a request is sent again only when Dataverse certainly did not run it (429,
503, a connection that was never made), and only while the wait it asks for is short. Everything else is
raised for the caller's retry policy, which knows whether repeating the request is safe.
"""

from __future__ import annotations

import json
import logging
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import quote

import requests

from config import defaults
from connector import errors
from connector.dataverse.batch import BatchPart, BatchResult, build_batch, parse_batch
from connector.http import ApiSession, error_for_status

log = logging.getLogger(__name__)

API_PATH = "/api/data/v9.2/"
# Dataverse answers at most 5000 rows per page and refuses a larger odata.maxpagesize.
MAX_PAGE_SIZE = 5000
DEFAULT_PAGE_SIZE = 1000
# Dataverse caps a $batch at 1000 requests.
MAX_BATCH = 1000

# What Dataverse says of its service protection limits on each answer (per user and web server): the requests
# left of the 6,000 per five minutes, the seconds left of the 1,200 s of combined execution time per five minutes
# (written with a thousands separator: "1,199.46"), and the degree of parallelism it recommends.
BURST_REMAINING = "x-ms-ratelimit-burst-remaining-xrm-requests"
TIME_REMAINING = "x-ms-ratelimit-time-remaining-xrm-requests"
DOP_HINT = "x-ms-dop-hint"
# The head of each request inside a `$batch` body, change sets included.
_BATCH_PART = re.compile(rb"^Content-Type: application/http\r?$", re.MULTILINE)

ROW_NOT_FOUND = "0x80040217"
CONCURRENCY_MISMATCH = "0x80060882"

_QUERY_SAFE = "$',()/:@*"
_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_ENTITY_ID = re.compile(r"\(([0-9a-fA-F-]{36})\)\s*$")


def odata_literal(value: object) -> str:
    """A `$filter` literal: strings quoted with `'` doubled, so user text can never change the query."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    text = str(value)
    return "'" + text.replace("'", "''") + "'"


def is_guid(value: str) -> bool:
    return bool(_GUID.match(value))


def guid(value: str) -> str:
    """A row id checked before it goes into a URL or a filter: anything else would be injected verbatim."""
    if not is_guid(value):
        raise errors.InvalidInput(f"{value!r} is not a Dataverse row id (a GUID such as 00000000-0000-...).")
    return value.lower()


class DataverseClient:
    """The Web API at `environment_url` (e.g. https://contoso.crm4.dynamics.com), through `session`.

    `session` carries the auth (`DataverseAuth`) and, for the sandbox, trusts its CA. `retries` bounds the
    resends after a 429 / 503 / refused connection; a wait longer than `max_wait` seconds is not done inline.
    `sleep` is injectable so tests never wait for real (the session's brake has its own `sleep`).

    `pace_by` says what the session's brake counts of a `$batch`: each of its `"parts"` or the one HTTP request
    (`"requests"`). The limits Dataverse reports on its answers (`BURST_REMAINING`, `TIME_REMAINING`, over its
    sliding `limit_window`) go to the brake, which spaces requests out when little is left; `dop_hint` keeps the
    degree of parallelism Dataverse recommends, once it has said so.
    """

    def __init__(
        self,
        session: ApiSession,
        environment_url: str,
        *,
        retries: int = 3,
        max_wait: float = 30.0,
        backoff: float = 0.5,
        sleep: Callable[[float], Any] = time.sleep,
        pace_by: str = defaults.DATAVERSE_PACE_BY,
        limit_window: float = defaults.DATAVERSE_LIMIT_WINDOW,
    ) -> None:
        if pace_by not in ("parts", "requests"):
            raise ValueError(f"pace_by is {pace_by!r}; use 'parts' or 'requests'")
        self.session = session
        self.environment_url = environment_url.rstrip("/")
        self.base_url = self.environment_url + API_PATH
        self.retries = retries
        self.max_wait = max_wait
        self.backoff = backoff
        self._sleep = sleep
        self.pace_by = pace_by
        self.limit_window = limit_window
        self.dop_hint: int | None = None
        self._limits_lock = threading.Lock()
        # The most Dataverse has said is left: its limit, as far as this client can tell.
        self._most_requests_left = 0.0
        self._most_seconds_left = 0.0
        # Seconds an answer takes per request it counts for, on average: what turns the execution time left into
        # requests left. The time on the wire is counted as execution, which errs on the side of caution.
        self._seconds_per_request = 0.0
        session.headers.update(
            {
                "Accept": "application/json",
                "OData-MaxVersion": "4.0",
                "OData-Version": "4.0",
                # Without it Dataverse may answer 304 from its own cache to a repeated GET.
                "If-None-Match": "null",
            }
        )

    def close(self) -> None:
        self.session.close()
        auth = self.session.auth
        http_client = getattr(auth, "http_client", None)
        if isinstance(http_client, requests.Session):
            http_client.close()

    def url(self, path: str) -> str:
        return path if path.startswith(("https://", "http://")) else self.base_url + path.lstrip("/")

    # -- sending -------------------------------------------------------------------------------------------

    def send(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        data: bytes | None = None,
    ) -> requests.Response:
        """One request, resent only while Dataverse certainly did not run it; errors mapped onto our tree."""
        request_headers = dict(headers or {})
        if body is not None:
            data = json.dumps(body).encode()
            request_headers.setdefault("Content-Type", "application/json")
        url = self.url(path)
        if params:
            url += "?" + encode_query(params)
        cost = self.cost(path, data)
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self.session.request(method, url, data=data, headers=request_headers, cost=cost)
                self._read_limits(response, cost)
                if response.status_code < 400:
                    return response
                raise self.error(response)
            except (errors.RateLimited, errors.Unavailable, errors.NetworkError) as exc:
                if not self._may_resend(exc, attempt):
                    raise
                wait = exc.retry_after
                if wait is None:
                    wait = self.backoff * 2 ** (attempt - 1) * (1 + random.random())
                    log.info("Dataverse %s %s: %s; trying again in %.1f s", method, path, exc.result_code, wait)
                    self._sleep(wait)
                    continue
                log.info("Dataverse %s %s: %s; every worker waits %.1f s", method, path, exc.result_code, wait)
                # A Retry-After is about the API, not this request: the shared brake makes every worker wait.
                # (The session has already paused it for a 429; pausing again for the same time is a no-op.)
                self.session.brake.pause(wait)

    def cost(self, path: str, data: bytes | None) -> int:
        """How many requests the brake counts a request for: a `$batch` paced by parts counts its parts, read from
        the body, so that every way of building one (`batch`, change sets of several jobs) is counted alike."""
        if self.pace_by != "parts" or path != "$batch" or not data:
            return 1
        return max(1, len(_BATCH_PART.findall(data)))

    def _read_limits(self, response: requests.Response, cost: int) -> None:
        """What Dataverse says is left of its limits, for the brake; and its recommended parallelism."""
        hint = _number(response.headers.get(DOP_HINT))
        if hint is not None and hint >= 1 and int(hint) != self.dop_hint:
            if self.dop_hint is None:
                log.info("Dataverse recommends %d requests in parallel (x-ms-dop-hint)", int(hint))
            self.dop_hint = int(hint)
        if response.status_code == 429:
            return  # its Retry-After has paused the brake already; what is left once that is over, the next says
        requests_left = _number(response.headers.get(BURST_REMAINING))
        seconds_left = _number(response.headers.get(TIME_REMAINING))
        if requests_left is None and seconds_left is None:
            return
        facets: list[tuple[float, float]] = []  # (requests left, share of the limit left)
        with self._limits_lock:
            took = response.elapsed.total_seconds() / max(cost, 1)
            average = self._seconds_per_request
            self._seconds_per_request = took if not average else 0.9 * average + 0.1 * took
            if requests_left is not None:
                self._most_requests_left = max(self._most_requests_left, requests_left)
                facets.append((requests_left, requests_left / self._most_requests_left if requests_left else 0.0))
            if seconds_left is not None and self._seconds_per_request > 0:
                self._most_seconds_left = max(self._most_seconds_left, seconds_left)
                facets.append((seconds_left / self._seconds_per_request,
                               seconds_left / self._most_seconds_left if seconds_left else 0.0))
        if facets:
            # Requests still on their way were not counted in this answer; they will be.
            left = min(f[0] for f in facets) - self.session.in_flight
            self.session.brake.budget(left, share=min(f[1] for f in facets), window=self.limit_window)

    def _may_resend(self, exc: errors.TransientError, attempt: int) -> bool:
        if attempt > self.retries:
            return False
        if isinstance(exc, errors.Unavailable) and exc.http_status not in (503, None):
            return False  # a 500/502/504 may have been applied; the caller decides
        return exc.retry_after is None or exc.retry_after <= self.max_wait

    def error(self, response: requests.Response) -> errors.ConnectorError:
        """Our error for a Dataverse error response: status first, then the `0x...` code where it decides."""
        code, message = _error_body(response)
        status = response.status_code
        text = f"Dataverse {status}: {message}" if message else f"Dataverse answered {status}."
        if code == ROW_NOT_FOUND:
            return errors.NotFound(text, http_status=status)
        if code == CONCURRENCY_MISMATCH or status == 412:
            return errors.Conflict(text, http_status=status)
        if status in (401, 403):
            return errors.AuthError(
                f"{text} Dataverse refused the connector's application even with a fresh token. Check that "
                f"the app registration is an application user in this environment, that the user is enabled, "
                f"and that its security role can read and write the tables the connector uses.",
                http_status=status,
            )
        return error_for_status(response, text)

    # -- reading -------------------------------------------------------------------------------------------

    def query(
        self,
        entity_set: str,
        *,
        select: Sequence[str] | None = None,
        filter: str | None = None,
        orderby: str | None = None,
        top: int | None = None,
        page_size: int = DEFAULT_PAGE_SIZE,
    ) -> Iterator[dict[str, Any]]:
        """Every matching row, page by page, following `@odata.nextLink` exactly as given."""
        if not 0 < page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be between 1 and {MAX_PAGE_SIZE}")
        params: dict[str, str] = {}
        if select:
            params["$select"] = ",".join(select)
        if filter:
            params["$filter"] = filter
        if orderby:
            params["$orderby"] = orderby
        if top is not None:
            params["$top"] = str(top)
        headers = {"Prefer": f"odata.maxpagesize={page_size}"}
        path: str | None = entity_set
        query_params: dict[str, str] | None = params
        while path:
            payload = self.send("GET", path, params=query_params, headers=headers).json()
            yield from payload.get("value", [])
            path = payload.get("@odata.nextLink")
            query_params = None  # the next link already carries the query and its skip token

    def count_by(self, entity_set: str, columns: Sequence[str], *, filter: str | None = None) -> list[dict[str, Any]]:
        """Rows counted per distinct value of `columns`, by the server (`$apply=groupby`): one request, whatever
        the table's size, up to Dataverse's aggregate limit (50,000 rows), past which it refuses the query."""
        params = {"$apply": f"groupby(({','.join(columns)}),aggregate($count as count))"}
        if filter:
            params["$filter"] = filter
        return list(self.send("GET", entity_set, params=params).json().get("value", []))

    def get(self, entity_set: str, row_id: str, *, select: Sequence[str] | None = None) -> dict[str, Any]:
        params = {"$select": ",".join(select)} if select else None
        result: dict[str, Any] = self.send("GET", f"{entity_set}({guid(row_id)})", params=params).json()
        return result

    # -- writing -------------------------------------------------------------------------------------------

    def create(self, entity_set: str, row: Mapping[str, Any]) -> str:
        """POST a row; returns its id from the `OData-EntityId` header of the 204."""
        response = self.send("POST", entity_set, body=dict(row))
        return entity_id(response.headers.get("OData-EntityId", ""))

    def create_returning(
        self, entity_set: str, row: Mapping[str, Any], *, select: Sequence[str] | None = None
    ) -> dict[str, Any]:
        """POST a row with `Prefer: return=representation`; returns the row as stored (201)."""
        params = {"$select": ",".join(select)} if select else None
        response = self.send(
            "POST", entity_set, params=params, body=dict(row), headers={"Prefer": "return=representation"}
        )
        result: dict[str, Any] = response.json()
        return result

    def update(
        self,
        entity_set: str,
        row_id: str,
        changes: Mapping[str, Any],
        *,
        etag: str | None = "*",
        select: Sequence[str] | None = None,
    ) -> dict[str, Any] | None:
        """PATCH the changed columns only. `etag` is the row's `@odata.etag` (412 -> `errors.Conflict` when the
        row changed since), `*` (the row must exist: no upsert), or None (an upsert). With `select`, returns the
        updated row, including its new ETag."""
        headers: dict[str, str] = {}
        if etag is not None:
            headers["If-Match"] = etag
        params = None
        if select is not None:
            headers["Prefer"] = "return=representation"
            params = {"$select": ",".join(select)} if select else None
        response = self.send("PATCH", f"{entity_set}({guid(row_id)})", params=params, body=dict(changes),
                             headers=headers)
        if select is None or response.status_code == 204:
            return None
        result: dict[str, Any] = response.json()
        return result

    def batch(
        self, parts: Sequence[BatchPart], *, changeset: bool = False, continue_on_error: bool = False
    ) -> list[BatchResult]:
        """Run `parts` in one `$batch`. In a change set they are atomic (all or none, no GETs allowed); without
        one each runs on its own and, unless `continue_on_error`, the batch stops at the first failure."""
        if not parts:
            return []
        if len(parts) > MAX_BATCH:
            raise ValueError(f"a $batch holds at most {MAX_BATCH} requests")
        if changeset and any(p.method == "GET" for p in parts):
            raise ValueError("a change set cannot hold a GET")
        boundary = f"batch_{uuid.uuid4()}"
        body = build_batch(parts, boundary=boundary, base_url=self.base_url, changeset=changeset)
        headers = {"Content-Type": f"multipart/mixed; boundary={boundary}"}
        if continue_on_error:
            headers["Prefer"] = "odata.continue-on-error"
        response = self.send("POST", "$batch", data=body, headers=headers)
        results = parse_batch(response.content, response.headers.get("Content-Type", ""))
        # Dataverse answers a change set with every part, or with the one that failed. Anything else (an answer
        # cut short on the way) leaves its outcome unknown: asking again is the only safe reading.
        if changeset and len(results) != len(parts) and all(result.ok for result in results):
            raise errors.Unavailable(f"Dataverse answered a change set of {len(parts)} requests with "
                                     f"{len(results)} answers and no failure; its outcome is unknown.")
        return results

    def batch_error(self, result: BatchResult) -> errors.ConnectorError:
        """Our error for one failed part of a batch."""
        fake = requests.Response()
        fake.status_code = result.status
        fake.headers.update(result.headers)
        fake._content = result.body
        return self.error(fake)


def encode_query(params: Mapping[str, str]) -> str:
    """`$select=a,b&$filter=...` with `$`, quotes and commas kept readable, everything that could end or split a
    parameter (`&`, `#`, `+`, `%`, spaces) percent-encoded."""
    return "&".join(f"{name}={quote(value, safe=_QUERY_SAFE)}" for name, value in params.items())


def entity_id(header: str) -> str:
    """The row id at the end of an `OData-EntityId` URL."""
    match = _ENTITY_ID.search(header)
    if not match:
        raise errors.Unavailable(f"Dataverse did not say which row it created (OData-EntityId {header!r}).")
    return match.group(1).lower()


def row_url(entity_set: str, row_id: str) -> str:
    """The reference for an `@odata.bind`: `/contacts(<guid>)`."""
    return f"/{quote(entity_set)}({guid(row_id)})"


def _number(text: str | None) -> float | None:
    """A number as Dataverse writes it in a header, with a thousands separator (`1,199.46`, `5993`); None when
    absent or unreadable."""
    if not text:
        return None
    text = text.strip().replace(" ", "").replace("\u00a0", "")
    if "," in text and "." in text:
        decimal = "." if text.rfind(".") > text.rfind(",") else ","
        text = text.replace("," if decimal == "." else ".", "").replace(",", ".")
    elif "," in text:
        whole, _, fraction = text.rpartition(",")
        text = text.replace(",", "") if len(fraction) == 3 else whole.replace(",", "") + "." + fraction
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value == value and value not in (float("inf"), float("-inf")) else None


def _error_body(response: requests.Response) -> tuple[str, str]:
    try:
        payload = response.json()
    except ValueError:
        return "", ""
    error = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(error, dict):
        return "", ""
    return str(error.get("code") or ""), str(error.get("message") or "").strip()
