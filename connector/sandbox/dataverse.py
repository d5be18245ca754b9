"""An emulator of the part of Dynamics 365 the connector uses: an identity provider and the Dataverse Web API.

It is strict where Dataverse is strict, so that the real client is tested against the rules rather than around
them: the OData version headers are required, `$skip` and `odata.maxpagesize` over 5000 are refused, navigation
property names in `@odata.bind` are case sensitive, rows carry ETags and `If-Match` answers 412 on a mismatch,
`$batch` change sets are atomic, and errors come as `{"error": {"code", "message"}}`.

The identity provider is the minimum MSAL needs for client credentials (the OpenID configuration and a token
endpoint). MSAL only accepts https authorities, so `DataverseSandbox` serves everything over TLS on loopback
with a throw-away CA made by `trustme`; clients must trust `ca_file`.

State lives in SQLite on disk (rows as JSON documents), so the sandbox survives restarts like the platforms'. A
query asks SQLite for its candidate rows, through indexes and in its order where SQLite sorts as Dataverse does
(`dataverse_sql`), and applies its filter to those: a claim behind 50,000 rows is read in milliseconds.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import requests
import trustme

from connector.dataverse.batch import (
    BatchResult,
    InnerRequest,
    build_batch_response,
    parse_batch_request,
)
from connector.sandbox.dataverse_query import (
    QueryError,
    compile_filter,
    select_columns,
    sort_rows,
)
from connector.sandbox.dataverse_sql import TRUE, column_sql, order_by, simple, where
from connector.sandbox.server import App, Budget, Faults, HttpError, Request, Response, SandboxServer, Store

log = logging.getLogger(__name__)

API = "/api/data/v9.2/"
MAX_PAGE_SIZE = 5000
DEFAULT_PAGE_SIZE = 5000
# Dataverse aggregates over at most this many rows and refuses a query over more.
AGGREGATE_LIMIT = 50_000
TOKEN_LIFETIME = 3600
SYSTEM_COLUMNS = ("createdon", "modifiedon", "versionnumber")
# The server writes these dates itself, always as `2026-05-04T09:12:03Z`.
SYSTEM_DATES = ("createdon", "modifiedon")
# Rows read from SQLite at a time while a query looks for the rows of its page.
CANDIDATES_PER_FETCH = 256

# Dataverse allows 1,200 s of combined execution time per 300 s window: four seconds for each second of it.
EXECUTION_PER_WINDOW_SECOND = 4.0
_BATCH_PART = re.compile(rb"^content-type:[ \t]*application/http[ \t]*\r?$", re.IGNORECASE | re.MULTILINE)

SANDBOX_TENANT = "sandbox-tenant"
SANDBOX_CLIENT_ID = "00000000-0000-4000-8000-00000000c0de"
SANDBOX_CLIENT_SECRET = "sandbox-dataverse-secret"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rows (
    entity_set TEXT NOT NULL,
    id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (entity_set, id)
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS tokens (token TEXT PRIMARY KEY, client_id TEXT NOT NULL, expires_at REAL NOT NULL);
"""


@dataclass(frozen=True)
class Lookup:
    """A single-valued navigation property: `navigation@odata.bind` writes it, `column` (`_x_value`) reads it."""

    navigation: str
    target: str
    column: str


@dataclass(frozen=True)
class EntityDef:
    """One table: its entity set, primary key, columns and lookups. Unknown names are refused, as in Dataverse."""

    entity_set: str
    logical_name: str
    key: str
    columns: frozenset[str]
    lookups: tuple[Lookup, ...] = ()
    required: frozenset[str] = frozenset()
    max_lengths: Mapping[str, int] = field(default_factory=dict)
    immutable: bool = False
    autonumber: str | None = None
    # statuscode -> statecode it belongs to; empty: the table has no status columns
    status_reasons: Mapping[int, int] = field(default_factory=dict)
    default_status: int = 1

    def readable(self, name: str) -> bool:
        return (
            name == self.key
            or name in self.columns
            or name in SYSTEM_COLUMNS
            or any(lookup.column == name for lookup in self.lookups)
            or (bool(self.status_reasons) and name in ("statecode", "statuscode"))
        )


# Every record has an owner (a user; Dataverse also allows a team, which the connector does not need).
_OWNER = Lookup("ownerid", "systemusers", "_ownerid_value")


def _people(entity_set: str, logical: str, extra: Sequence[str]) -> EntityDef:
    return EntityDef(
        entity_set=entity_set,
        logical_name=logical,
        key=f"{logical}id",
        columns=frozenset(("emailaddress1", "telephone1", "description", *extra)),
        lookups=(_OWNER,),
        status_reasons={1: 0, 2: 1},
    )


def _regarding(prefix: str, column: str) -> tuple[Lookup, ...]:
    return tuple(
        Lookup(f"{prefix}_{logical}", target, column)
        for logical, target in (("contact", "contacts"), ("lead", "leads"), ("account", "accounts"))
    )


def standard_tables() -> list[EntityDef]:
    """Contacts, leads, accounts and the two timeline record kinds the connector can write."""
    return [
        _people("contacts", "contact", ("firstname", "lastname", "fullname")),
        _people("leads", "lead", ("firstname", "lastname", "fullname", "subject", "companyname")),
        _people("accounts", "account", ("name", "accountnumber")),
        EntityDef(
            entity_set="posts",
            logical_name="post",
            key="postid",
            columns=frozenset(("text", "source", "type")),
            lookups=_regarding("regardingobjectid", "_regardingobjectid_value"),
            required=frozenset(("text", "_regardingobjectid_value")),
            max_lengths={"text": 2000},
            immutable=True,
        ),
        EntityDef(
            entity_set="systemusers",
            logical_name="systemuser",
            key="systemuserid",
            columns=frozenset(("fullname", "internalemailaddress")),
        ),
        EntityDef(
            entity_set="tasks",
            logical_name="task",
            key="activityid",
            columns=frozenset(("subject", "description", "scheduledend")),
            # On an activity the regarding navigation properties carry the activity's name.
            lookups=(*(Lookup(f"regardingobjectid_{logical}_task", target, "_regardingobjectid_value")
                       for logical, target in (("contact", "contacts"), ("lead", "leads"), ("account", "accounts"))),
                     _OWNER),
            required=frozenset(("subject",)),
            max_lengths={"subject": 200, "description": 2000},
            status_reasons={2: 0, 5: 1},
            default_status=2,
        ),
        EntityDef(
            entity_set="annotations",
            logical_name="annotation",
            key="annotationid",
            columns=frozenset(("subject", "notetext", "objecttypecode", "isdocument")),
            lookups=_regarding("objectid", "_objectid_value"),
            max_lengths={"subject": 500, "notetext": 100_000},
        ),
    ]


def error(status: int, message: str, code: str = "", headers: dict[str, str] | None = None) -> HttpError:
    return HttpError(status, {"error": {"code": code, "message": message}}, headers)


def _now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class DataverseApp(App):
    """The routes of the emulator. `tables` adds custom tables (the job table) to the standard ones.

    With a windowed rate limit on its server (`Faults.rate_window`), every Web API answer says what is left of it
    as Dataverse does: requests in `x-ms-ratelimit-burst-remaining-xrm-requests`, seconds of execution time in
    `x-ms-ratelimit-time-remaining-xrm-requests` (unless `report_limits` is off), and past it the 429 carries
    Dataverse's error code. `batch_counts_parts` makes each part of a `$batch` count as a request (the cautious
    reading of Dataverse's limits); `dop_hint`, when set, is sent as `x-ms-dop-hint`.
    """

    name = "dataverse"

    def __init__(
        self,
        path: Path,
        *,
        tables: Sequence[EntityDef] = (),
        tenant_id: str = SANDBOX_TENANT,
        clients: Mapping[str, str] | None = None,
        token_lifetime: int = TOKEN_LIFETIME,
    ) -> None:
        super().__init__()
        self.store = Store(path, _SCHEMA)
        self.tables = {t.entity_set: t for t in [*standard_tables(), *tables]}
        self.tenant_id = tenant_id
        self.clients = dict(clients or {SANDBOX_CLIENT_ID: SANDBOX_CLIENT_SECRET})
        self.token_lifetime = token_lifetime
        self.report_limits = True
        self.batch_counts_parts = True
        self.dop_hint: int | None = None
        self._tx_local = threading.local()
        self.requests_by_method: dict[str, int] = {}
        self._count_lock = threading.Lock()
        self._index()
        self.route("GET", "/{tenant}/v2.0/.well-known/openid-configuration", self.openid_configuration)
        self.route("POST", "/{tenant}/oauth2/v2.0/token", self.token)
        for method in ("GET", "POST", "PATCH", "DELETE"):
            self.route(method, API.rstrip("/") + "/{resource}", self.api)

    # -- identity ------------------------------------------------------------------------------------------

    def _check_tenant(self, request: Request) -> None:
        if request.params["tenant"] != self.tenant_id:
            raise HttpError(400, {"error": "invalid_tenant",
                                  "error_description": f"AADSTS90002: Tenant '{request.params['tenant']}' not found."})

    def openid_configuration(self, request: Request) -> Response:
        self._check_tenant(request)
        base = _origin(request) + "/" + self.tenant_id
        return Response(200, {
            "issuer": f"{base}/v2.0",
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "token_endpoint": f"{base}/oauth2/v2.0/token",
            "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
            "jwks_uri": f"{base}/discovery/v2.0/keys",
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "grant_types_supported": ["client_credentials"],
            "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
        })

    def token(self, request: Request) -> Response:
        self._check_tenant(request)
        form = {k: v[0] for k, v in parse_qs(request.body.decode(), keep_blank_values=True).items()}
        if form.get("grant_type") != "client_credentials":
            return Response(400, {"error": "unsupported_grant_type",
                                  "error_description": "AADSTS70003: The sandbox only grants client_credentials."})
        client_id = form.get("client_id", "")
        if client_id not in self.clients:
            return Response(400, {"error": "unauthorized_client",
                                  "error_description": f"AADSTS700016: Application '{client_id}' was not found."})
        if not secrets.compare_digest(form.get("client_secret", ""), self.clients[client_id]):
            return Response(401, {"error": "invalid_client",
                                  "error_description": "AADSTS7000215: Invalid client secret provided."})
        scope = form.get("scope", "")
        if not any(s.endswith("/.default") for s in scope.split()):
            return Response(400, {"error": "invalid_scope",
                                  "error_description": "AADSTS1002012: The scope must be '<resource>/.default'."})
        token = secrets.token_urlsafe(32)
        with self.store.atomic() as db:
            db.execute("INSERT INTO tokens VALUES (?, ?, ?)", (token, client_id, time.time() + self.token_lifetime))
        return Response(200, {"token_type": "Bearer", "expires_in": self.token_lifetime,
                              "ext_expires_in": self.token_lifetime, "access_token": token})

    def revoke_tokens(self) -> None:
        """Every issued token stops working (as after a secret rotation); clients must fetch a new one."""
        with self.store.atomic() as db:
            db.execute("DELETE FROM tokens")

    def authenticate(self, request: Request) -> Response | None:
        if not request.path.startswith(API):
            return None
        header = request.header("authorization") or ""
        token = header[7:] if header[:7].lower() == "bearer " else ""
        row = self.store.read().execute("SELECT expires_at FROM tokens WHERE token = ?", (token,)).fetchone()
        if row is None or row["expires_at"] < time.time():
            challenge = f'Bearer authorization_uri={_origin(request)}/{self.tenant_id}/oauth2/authorize'
            return Response(401, {"error": {"code": "", "message": "The access token is missing, invalid or expired."}},
                            {"WWW-Authenticate": challenge})
        if request.header("odata-maxversion") is None or request.header("odata-version") is None:
            return Response(400, {"error": {"code": "0x80048d19", "message": (
                "The request must carry the headers OData-MaxVersion: 4.0 and OData-Version: 4.0.")}})
        with self._count_lock:
            self.requests_by_method[request.method] = self.requests_by_method.get(request.method, 0) + 1
        return None

    @property
    def api_requests(self) -> int:
        return sum(self.requests_by_method.values())

    # -- service protection limits -------------------------------------------------------------------------

    def cost(self, request: Request) -> int:
        if not request.path.startswith(API):
            return 0  # the identity provider is not Dataverse: its limits are not Dataverse's
        if self.batch_counts_parts and request.method == "POST" and request.path == API + "$batch":
            return max(1, len(_BATCH_PART.findall(request.body)))
        return 1

    def too_many(self, request: Request, faults: Faults) -> Response:
        limit, window = f"{faults.rate_limit:g}", f"{faults.rate_window or 1:g}"
        return error(429, f"Number of requests exceeded the limit of {limit} over time window of {window} seconds.",
                     "0x80072322").response

    def limit_headers(self, request: Request, budget: Budget | None) -> dict[str, str]:
        if not request.path.startswith(API):
            return {}
        headers = {"x-ms-dop-hint": str(self.dop_hint)} if self.dop_hint else {}
        if budget is not None and self.report_limits:
            seconds_left = max(0.0, EXECUTION_PER_WINDOW_SECOND * budget.window - budget.seconds_executed)
            headers["x-ms-ratelimit-burst-remaining-xrm-requests"] = f"{budget.requests_left:.0f}"
            # Written as Dataverse writes it: "1,199.46".
            headers["x-ms-ratelimit-time-remaining-xrm-requests"] = f"{seconds_left:,.2f}"
        return headers

    # -- the Web API ---------------------------------------------------------------------------------------

    def api(self, request: Request) -> Response:
        resource = request.params["resource"]
        try:
            if resource == "$batch" and request.method == "POST":
                return self.batch(request)
            return self.handle(request.method, resource, request.query, request.headers, request.body,
                               _origin(request))
        except QueryError as exc:
            raise error(400, str(exc), "0x80060888") from None

    def handle(
        self,
        method: str,
        resource: str,
        query: dict[str, list[str]],
        headers: Mapping[str, str],
        body: bytes,
        origin: str,
    ) -> Response:
        entity_set, row_id = _resource(resource)
        table = self.tables.get(entity_set)
        if table is None:
            raise error(404, f"Resource not found for the segment '{entity_set}'.", "0x8006088a")
        prefer = _prefer(headers.get("prefer", ""))
        if row_id is None:
            if method == "GET":
                return self.collection(table, query, prefer, origin)
            if method == "POST":
                return self.create(table, _json(body), query, prefer, origin)
            raise error(405, f"{method} is not allowed on the entity set '{entity_set}'.")
        if method == "GET":
            return Response(200, self._shape(table, self._load(table, row_id), query, origin))
        if method == "PATCH":
            return self.update(table, row_id, _json(body), headers, query, prefer, origin)
        if method == "DELETE":
            with self._tx() as db:
                self._load(table, row_id)
                db.execute("DELETE FROM rows WHERE entity_set = ? AND id = ?", (table.entity_set, row_id))
            return Response(204)
        raise error(405, f"{method} is not allowed on a row.")

    # reading

    def collection(
        self, table: EntityDef, query: dict[str, list[str]], prefer: dict[str, str], origin: str
    ) -> Response:
        args = {k: v[0] for k, v in query.items()}
        for name in args:
            if name == "$skip":
                raise error(400, "The query parameter $skip is not supported; page with odata.maxpagesize and "
                                 "@odata.nextLink.", "0x80060888")
            if name.startswith("$") and name not in ("$select", "$filter", "$orderby", "$top", "$skiptoken", "$apply"):
                raise error(400, f"The query parameter {name} is not supported by the sandbox.", "0x80060888")
        page_size = DEFAULT_PAGE_SIZE
        if "odata.maxpagesize" in prefer:
            try:
                page_size = int(prefer["odata.maxpagesize"])
            except ValueError:
                page_size = 0
            if not 0 < page_size <= MAX_PAGE_SIZE:
                raise error(400, f"The odata.maxpagesize preference must be between 1 and {MAX_PAGE_SIZE}.",
                            "0x80060888")
        predicate = compile_filter(args["$filter"], table.readable, table.logical_name) if "$filter" in args else None
        candidates = where(args["$filter"], SYSTEM_DATES) if "$filter" in args else [TRUE]
        if "$apply" in args:
            return self._aggregate(table, args["$apply"], self._matching(table, candidates, "seq", predicate), origin)
        order = order_by(args["$orderby"], lambda name: self._orderable(table, name)) if "$orderby" in args else "seq"
        top = args.get("$top")
        try:
            offset: int | None = _skiptoken_offset(args.get("$skiptoken"))
        except HttpError:
            offset = None  # refused below, after the rows are read, as before
        if order is not None and (top is None or top.isdigit()) and offset is not None:
            # In the query's order from SQLite: reading stops one row past the page (or at $top).
            limit = offset + page_size + 1
            rows = self._matching(table, candidates, order, predicate, min(limit, int(top)) if top else limit)
        else:
            rows = self._matching(table, candidates, "seq", predicate)
            if "$orderby" in args:
                rows = sort_rows(rows, args["$orderby"], table.readable, table.logical_name)
            if top is not None:
                if not top.isdigit():
                    raise error(400, f"Invalid value '{top}' for $top query option.", "0x80060888")
                rows = rows[: int(top)]
            offset = _skiptoken_offset(args.get("$skiptoken"))
        page = rows[offset : offset + page_size]
        payload: dict[str, Any] = {
            "@odata.context": f"{origin}{API}$metadata#{table.entity_set}",
            "value": [self._shape(table, row, query, origin, context=False) for row in page],
        }
        headers = {}
        if "odata.maxpagesize" in prefer:
            headers["Preference-Applied"] = f"odata.maxpagesize={page_size}"
        if offset + page_size < len(rows):
            next_query = {k: v for k, v in args.items() if k != "$skiptoken"}
            cookie = f'<cookie pagenumber="{offset // page_size + 2}" offset="{offset + page_size}" />'
            next_query["$skiptoken"] = cookie
            encoded = "&".join(f"{k}={quote(v, safe='$,()')}" for k, v in next_query.items())
            payload["@odata.nextLink"] = f"{origin}{API}{table.entity_set}?{encoded}"
        return Response(200, payload, headers)

    def _matching(
        self, table: EntityDef, candidates: list[str], order: str,
        predicate: Callable[[dict[str, Any]], bool] | None, limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """The rows `predicate` matches, in `order`, up to `limit`: only the rows meeting one of `candidates` (SQL,
        see `dataverse_sql`) are decoded and tested, and SQLite reads no further than the last one needed."""
        if order == "seq" and candidates != [TRUE]:
            # Each term's rows from its own index, then sorted: a few running rows and a few retrying ones are
            # not looked for among all the pending ones.
            each = " UNION ALL ".join(f"SELECT rowid FROM rows WHERE entity_set = :set AND {c}" for c in candidates)
            sql = f"SELECT data FROM rows WHERE rowid IN ({each}) ORDER BY +seq"
        else:
            sql = f"SELECT data FROM rows WHERE entity_set = :set AND ({' OR '.join(candidates)}) ORDER BY {order}"
        cursor = self._db().execute(sql, {"set": table.entity_set})
        found: list[dict[str, Any]] = []
        try:
            while limit is None or len(found) < limit:
                chunk = cursor.fetchmany(CANDIDATES_PER_FETCH)
                if not chunk:
                    break
                for record in chunk:
                    row = json.loads(record["data"])
                    if predicate is None or predicate(row):
                        found.append(row)
                        if limit is not None and len(found) >= limit:
                            break
        finally:
            cursor.close()
        return found

    def _orderable(self, table: EntityDef, name: str) -> bool:
        """Whether SQLite sorts the column as `sort_rows` does: the server's dates and version, the key (a
        lower-case GUID), and an autonumber column as long as no client has written it."""
        if not table.readable(name):
            return False
        if name in SYSTEM_COLUMNS or name == table.key:
            return True
        return name == table.autonumber and self._db().execute(
            "SELECT 1 FROM counters WHERE name = ?", (_written_mark(table, name),)).fetchone() is None

    def _index(self) -> None:
        """Indexes for the reads of `_matching`: rows in creation order, by status, and on tables with an
        autonumber column (the job table) in the order `createdon, <autonumber>, <key>` that claims read."""
        with self.store.atomic() as db:
            db.execute("CREATE INDEX IF NOT EXISTS rows_seq ON rows(entity_set, seq)")
            db.execute(f"CREATE INDEX IF NOT EXISTS rows_status ON rows(entity_set, {column_sql('statuscode')})")
            db.execute(f"CREATE INDEX IF NOT EXISTS rows_created ON rows(entity_set, {column_sql('createdon')}, seq)")
            for table in self.tables.values():
                if table.autonumber and simple(table.autonumber) and simple(table.key):
                    name = "rows_order_" + re.sub(r"\W", "_", table.entity_set)
                    db.execute(f'CREATE INDEX IF NOT EXISTS "{name}" ON rows(entity_set, {column_sql("createdon")}, '
                               f'{column_sql(table.autonumber)}, {column_sql(table.key)}, seq)')

    def _aggregate(self, table: EntityDef, apply: str, rows: list[dict[str, Any]], origin: str) -> Response:
        """`groupby((a,b),aggregate($count as n))`, the one transformation the connector asks for; like Dataverse,
        over at most AGGREGATE_LIMIT rows."""
        match = re.fullmatch(r"groupby\(\(([\w,]+)\),aggregate\(\$count as (\w+)\)\)", apply)
        if not match:
            raise error(400, f"The $apply transformation {apply!r} is not supported by the sandbox.", "0x80060888")
        columns = match.group(1).split(",")
        for column in columns:
            if not table.readable(column):
                raise error(400, f"Could not find a property named '{column}' on type "
                                 f"'Microsoft.Dynamics.CRM.{table.logical_name}'.", "0x80060888")
        if len(rows) > AGGREGATE_LIMIT:
            raise error(400, "AggregateQueryRecordLimit exceeded. Cannot perform this operation.", "0x8004e023")
        groups: dict[tuple[Any, ...], int] = {}
        for row in rows:
            key = tuple(row.get(column) for column in columns)
            groups[key] = groups.get(key, 0) + 1
        value = [{**dict(zip(columns, key, strict=True)), match.group(2): n} for key, n in groups.items()]
        return Response(200, {"@odata.context": f"{origin}{API}$metadata#{table.entity_set}", "value": value})

    def _load(self, table: EntityDef, row_id: str) -> dict[str, Any]:
        found = self._db().execute(
            "SELECT data FROM rows WHERE entity_set = ? AND id = ?", (table.entity_set, row_id.lower())
        ).fetchone()
        if found is None:
            raise error(404, f"{table.logical_name} With Id = {row_id} Does Not Exist", "0x80040217")
        data: dict[str, Any] = json.loads(found["data"])
        return data

    def _shape(
        self,
        table: EntityDef,
        row: dict[str, Any],
        query: Mapping[str, list[str]],
        origin: str,
        *,
        context: bool = True,
    ) -> dict[str, Any]:
        select = query.get("$select")
        names = select_columns(select[0], table.readable, table.logical_name) if select else None
        out: dict[str, Any] = {}
        if context:
            out["@odata.context"] = f"{origin}{API}$metadata#{table.entity_set}/$entity"
        out["@odata.etag"] = f'W/"{row["versionnumber"]}"'
        for name, value in row.items():
            if names is None or name in names or name == table.key:
                out[name] = value
        return out

    # writing

    def create(
        self, table: EntityDef, body: Any, query: dict[str, list[str]], prefer: dict[str, str], origin: str
    ) -> Response:
        if not isinstance(body, dict):
            raise error(400, "The request body must be a JSON object.", "0x80048d19")
        with self._tx() as db:
            row_id = str(body.get(table.key) or uuid.uuid4()).lower()
            exists = db.execute("SELECT 1 FROM rows WHERE entity_set = ? AND id = ?", (table.entity_set, row_id))
            if exists.fetchone():
                raise error(412, "A record with matching key values already exists.", "0x80040237")
            now = _now_iso()
            row: dict[str, Any] = {table.key: row_id, "createdon": now}
            if table.status_reasons:
                row["statuscode"] = table.default_status
                row["statecode"] = table.status_reasons[table.default_status]
            if table.autonumber:
                row[table.autonumber] = f"{self._next(db, 'auto:' + table.entity_set):010d}"
            row.update(self._changes(table, body, db))
            self._check_required(table, row)
            self._write(db, table, row, now, insert=True)
        return self._written(table, row, query, prefer, origin, created=True)

    def update(
        self,
        table: EntityDef,
        row_id: str,
        body: Any,
        headers: Mapping[str, str],
        query: dict[str, list[str]],
        prefer: dict[str, str],
        origin: str,
    ) -> Response:
        if not isinstance(body, dict):
            raise error(400, "The request body must be a JSON object.", "0x80048d19")
        if_match = headers.get("if-match")
        row_id = row_id.lower()
        with self._tx() as db:
            found = db.execute(
                "SELECT data FROM rows WHERE entity_set = ? AND id = ?", (table.entity_set, row_id)
            ).fetchone()
            if found is None:
                if if_match is not None:
                    raise error(404, f"{table.logical_name} With Id = {row_id} Does Not Exist", "0x80040217")
                return self.create(table, {**body, table.key: row_id}, query, prefer, origin)
            row = json.loads(found["data"])
            if if_match is not None and if_match != "*" and if_match != f'W/"{row["versionnumber"]}"':
                raise error(412, "The version of the existing record doesn't match the RowVersion property "
                                 "provided.", "0x80060882")
            if table.immutable:
                raise error(400, f"The entity {table.logical_name} cannot be updated.", "0x80040265")
            row.update(self._changes(table, body, db, existing=row))
            self._write(db, table, row, _now_iso(), insert=False)
        return self._written(table, row, query, prefer, origin, created=False)

    def _written(
        self, table: EntityDef, row: dict[str, Any], query: dict[str, list[str]], prefer: dict[str, str],
        origin: str, *, created: bool,
    ) -> Response:
        location = f"{origin}{API}{table.entity_set}({row[table.key]})"
        headers = {"OData-EntityId": location, "ETag": f'W/"{row["versionnumber"]}"'}
        if prefer.get("return") == "representation":
            headers["Preference-Applied"] = "return=representation"
            return Response(201 if created else 200, self._shape(table, row, query, origin), headers)
        return Response(204, None, headers)

    def _changes(
        self, table: EntityDef, body: dict[str, Any], db: Any, existing: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        changes: dict[str, Any] = {}
        for name, value in body.items():
            if name.endswith("@odata.bind"):
                navigation = name[: -len("@odata.bind")]
                lookup = next((lk for lk in table.lookups if lk.navigation == navigation), None)
                if lookup is None:
                    raise error(400, (
                        f"An undeclared property '{navigation}' which only has property annotations in the payload "
                        f"but no property value was found in the payload. In OData, only declared navigation "
                        f"properties and declared named streams can be represented as properties without values."
                    ), "0x80060888")
                changes[lookup.column] = None if value is None else self._bind(lookup, value, db)
                continue
            if name.startswith("@odata.") or name == table.key:
                continue
            if (name.startswith("_") and name.endswith("_value")) or name in SYSTEM_COLUMNS:
                raise error(400, f"The property '{name}' cannot be written; use an @odata.bind or leave it "
                                 f"to the server.", "0x80060888")
            if name in ("statecode", "statuscode") and table.status_reasons:
                changes[name] = value
                continue
            if name not in table.columns:
                raise error(400, (
                    f"The property '{name}' does not exist on type 'Microsoft.Dynamics.CRM.{table.logical_name}'. "
                    f"Make sure to only use property names that are defined by the type."
                ), "0x80060888")
            if name == table.autonumber:  # sorted by Python from now on (`_orderable`)
                db.execute("INSERT OR IGNORE INTO counters VALUES (?, 1)", (_written_mark(table, name),))
            limit = table.max_lengths.get(name)
            if limit is not None and isinstance(value, str) and len(value) > limit:
                raise error(400, f"A validation error occurred. The length of the '{name}' attribute of the "
                                 f"'{table.logical_name}' entity exceeded the maximum allowed length of '{limit}'.",
                            "0x80044331")
            changes[name] = value
        if table.status_reasons and ("statuscode" in changes or "statecode" in changes):
            self._check_status(table, changes, existing)
        return changes

    def _check_status(self, table: EntityDef, changes: dict[str, Any], existing: dict[str, Any] | None) -> None:
        reason = changes.get("statuscode")
        if reason is None:
            state = changes["statecode"]
            # A new state without a reason takes that state's first reason, as Dataverse does.
            reason = next((r for r, s in table.status_reasons.items() if s == state), None)
            if reason is None:
                raise error(400, f"{state} is not a valid state code on {table.logical_name}.", "0x80044331")
            changes["statuscode"] = reason
        if reason not in table.status_reasons:
            raise error(400, f"{reason} is not a valid status code on {table.logical_name}.", "0x80044331")
        expected = table.status_reasons[reason]
        if changes.setdefault("statecode", expected) != expected:
            raise error(400, f"{reason} is not a valid status code for state code {changes['statecode']} on "
                             f"{table.logical_name}.", "0x8004431a")

    def _bind(self, lookup: Lookup, value: Any, db: Any) -> str:
        text = str(value)
        path = urlsplit(text).path if "://" in text else text
        path = path.removeprefix(API.rstrip("/")).lstrip("/")
        entity_set, row_id = _resource(path)
        if entity_set != lookup.target or row_id is None:
            raise error(400, f"The @odata.bind of '{lookup.navigation}' must name a row of {lookup.target}, "
                             f"like /{lookup.target}(<guid>); got '{text}'.", "0x80060888")
        target = self.tables[lookup.target]
        found = db.execute("SELECT 1 FROM rows WHERE entity_set = ? AND id = ?", (target.entity_set, row_id.lower()))
        if found.fetchone() is None:
            raise error(404, f"{target.logical_name} With Id = {row_id} Does Not Exist", "0x80040217")
        return row_id.lower()

    def _check_required(self, table: EntityDef, row: dict[str, Any]) -> None:
        for name in sorted(table.required):
            if row.get(name) in (None, ""):
                raise error(400, f"A value for the required column '{name}' of {table.logical_name} is missing.",
                            "0x80040200")

    def _write(self, db: Any, table: EntityDef, row: dict[str, Any], now: str, *, insert: bool) -> None:
        row["versionnumber"] = self._next(db, "version")
        row["modifiedon"] = now
        data = json.dumps(row)
        if insert:
            seq = self._next(db, "seq")
            db.execute("INSERT INTO rows VALUES (?, ?, ?, ?)", (table.entity_set, row[table.key], seq, data))
        else:
            db.execute("UPDATE rows SET data = ? WHERE entity_set = ? AND id = ?",
                       (data, table.entity_set, row[table.key]))

    def _next(self, db: Any, name: str) -> int:
        db.execute(
            "INSERT INTO counters VALUES (?, 1) ON CONFLICT(name) DO UPDATE SET value = value + 1", (name,)
        )
        return int(db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()["value"])

    # transactions: a change set runs all its parts in one

    @contextmanager
    def _tx(self) -> Iterator[Any]:
        active = getattr(self._tx_local, "db", None)
        if active is not None:
            yield active
            return
        with self.store.atomic() as db:
            self._tx_local.db = db
            try:
                yield db
            finally:
                self._tx_local.db = None

    def _db(self) -> Any:
        return getattr(self._tx_local, "db", None) or self.store.read()

    # $batch

    def batch(self, request: Request) -> Response:
        try:
            items = parse_batch_request(request.body, request.header("content-type") or "")
        except ValueError as exc:
            raise error(400, str(exc), "0x80048d19") from None
        if sum(len(i) if isinstance(i, list) else 1 for i in items) > 1000:
            raise error(400, "The number of requests in a $batch exceeds the limit of 1000.", "0x80060888")
        continue_on_error = "odata.continue-on-error" in _prefer(request.header("prefer") or "")
        origin = _origin(request)
        out: list[list[BatchResult] | BatchResult] = []
        for item in items:
            if isinstance(item, list):
                result = self._changeset(item, origin)
                out.append(result)
                failed = isinstance(result, BatchResult) and result.status >= 400
            else:
                single = self._inner(item, origin, {})
                out.append(single)
                failed = single.status >= 400
            if failed and not continue_on_error:
                break
        boundary = f"batchresponse_{uuid.uuid4()}"
        return Response(200, raw=build_batch_response(out, boundary),
                        headers={"Content-Type": f"multipart/mixed; boundary={boundary}", "OData-Version": "4.0"})

    def _changeset(self, parts: list[InnerRequest], origin: str) -> list[BatchResult] | BatchResult:
        created: dict[str, str] = {}
        responses: list[BatchResult] = []
        try:
            with self._tx():
                for part in parts:
                    if part.method == "GET":
                        raise _Abort(_inner_error(part, 400, "A change set cannot contain a GET request.",
                                                  "0x80060888"))
                    response = self._inner(part, origin, created)
                    if response.status >= 400:
                        raise _Abort(response)
                    location = response.headers.get("OData-EntityId")
                    if part.content_id and location:
                        created[part.content_id] = location
                    responses.append(response)
        except _Abort as abort:
            return abort.response
        return responses

    def _inner(self, part: InnerRequest, origin: str, created: Mapping[str, str]) -> BatchResult:
        url = part.url
        if url.startswith("$"):
            ref, _, rest = url[1:].partition("/")
            if ref not in created:
                return _inner_error(part, 400, f"The Content-ID reference ${ref} is not known.", "0x80060888")
            url = created[ref] + ("/" + rest if rest else "")
        split = urlsplit(url)
        path = split.path
        if not path.startswith(API):
            path = API + path.lstrip("/")
        headers = {k.lower(): v for k, v in part.headers.items()}
        try:
            response = self.handle(part.method, unquote(path[len(API):]),
                                   parse_qs(split.query, keep_blank_values=True), headers, part.body, origin)
        except HttpError as exc:
            response = exc.response
        except QueryError as exc:
            response = Response(400, {"error": {"code": "0x80060888", "message": str(exc)}})
        body = response.encode()
        out_headers = dict(response.headers)
        if body:
            out_headers.setdefault("Content-Type", "application/json; odata.metadata=minimal")
        return BatchResult(response.status, out_headers, body, part.content_id)


class _Abort(Exception):
    def __init__(self, response: BatchResult) -> None:
        super().__init__(response.status)
        self.response = response


def _inner_error(part: InnerRequest, status: int, message: str, code: str) -> BatchResult:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    return BatchResult(status, {"Content-Type": "application/json"}, body, part.content_id)


def _written_mark(table: EntityDef, column: str) -> str:
    """The counter that marks a column a client has written (its values may no longer sort as SQLite sorts)."""
    return f"written:{table.entity_set}:{column}"


def _origin(request: Request) -> str:
    split = urlsplit(request.url)
    return f"{split.scheme}://{split.netloc}"


def _resource(text: str) -> tuple[str, str | None]:
    """`contacts` -> ("contacts", None); `contacts(<guid>)` -> ("contacts", guid)."""
    if text.endswith(")") and "(" in text:
        name, _, key = text[:-1].partition("(")
        key = key.strip("'")
        try:
            uuid.UUID(key)
        except ValueError:
            raise error(400, f"Bad Request - Error in query syntax: '{key}' is not a valid row id.",
                        "0x80060888") from None
        return name, key.lower()
    return text, None


def _prefer(header: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in header.split(","):
        name, _, value = item.strip().partition("=")
        if name:
            out[name.strip()] = value.strip().strip('"')
    return out


def _json(body: bytes) -> Any:
    if not body:
        return None
    try:
        return json.loads(body)
    except ValueError:
        raise error(400, "The request body is not valid JSON.", "0x80048d19") from None


def _skiptoken_offset(token: str | None) -> int:
    if not token:
        return 0
    marker = 'offset="'
    start = token.find(marker)
    end = token.find('"', start + len(marker))
    if start < 0 or end < 0 or not token[start + len(marker) : end].isdigit():
        raise error(400, "The $skiptoken is not valid; follow @odata.nextLink as given.", "0x80060888")
    return int(token[start + len(marker) : end])


class DataverseSandbox:
    """The emulator served over https on 127.0.0.1, with the CA its clients must trust written to `ca_file`.

    `url` is both the environment URL (the Web API is under `/api/data/v9.2/`) and the identity provider's host:
    the MSAL authority is `authority`. One server keeps the setup to one port and one certificate.
    """

    def __init__(
        self,
        home: Path,
        *,
        port: int = 0,
        faults: Faults | None = None,
        tables: Sequence[EntityDef] = (),
        tenant_id: str = SANDBOX_TENANT,
        clients: Mapping[str, str] | None = None,
    ) -> None:
        home.mkdir(parents=True, exist_ok=True)
        self.ca = trustme.CA()
        cert = self.ca.issue_cert("127.0.0.1", "localhost")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(context)
        self.ca_file = home / "dataverse-sandbox-ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.app = DataverseApp(home / "dataverse.sqlite3", tables=tables, tenant_id=tenant_id, clients=clients)
        self.server = SandboxServer(self.app, port=port, faults=faults, tls=context)
        self.tenant_id = tenant_id

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def authority(self) -> str:
        return f"{self.server.url}/{self.tenant_id}"

    def http_session(self) -> requests.Session:
        """A plain session that trusts the sandbox CA (and ignores REQUESTS_CA_BUNDLE), e.g. for MSAL."""
        session = requests.Session()
        self.trust(session)
        return session

    def trust(self, session: requests.Session) -> requests.Session:
        session.verify = str(self.ca_file)
        # Otherwise REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE in the environment would override `verify`.
        session.trust_env = False
        return session

    def start(self) -> DataverseSandbox:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop()

    def __enter__(self) -> DataverseSandbox:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
