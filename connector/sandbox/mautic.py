"""A Mautic emulator: the contact, tag, point group and OAuth2 routes the adapter uses, on loopback.

It answers with Mautic's shapes (contact lists keyed by id with `total` as a string, `groupScores`,
`pointGroups`, `{"errors": [{"code", "message", "type", "details"}]}`, a batch edit's `contacts`, `statusCodes` and
`errors` by the items' places in the request), checks HTTP basic credentials or
bearer tokens issued by its own `/oauth/v2/token`, and keeps contacts, tags, point groups, group scores and
the points change log (with each change's `eventName` / `actionName`) in SQLite on disk. Tag names compare
case-insensitively, as they do on Mautic's MySQL; point group names may repeat, as in Mautic. A batch edit counts as
one request toward an injected rate limit, as Mautic's own limiter counts requests to /api.
"""

from __future__ import annotations

import base64
import hmac
import json
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from connector.sandbox.server import App, HttpError, Request, Response, Store

SCHEMA = """
CREATE TABLE IF NOT EXISTS contacts (
    id INTEGER PRIMARY KEY AUTOINCREMENT, fields TEXT NOT NULL DEFAULT '{}', date_added TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS tags (
    id INTEGER PRIMARY KEY AUTOINCREMENT, tag TEXT NOT NULL UNIQUE COLLATE NOCASE, description TEXT
);
CREATE TABLE IF NOT EXISTS contact_tags (contact_id INTEGER NOT NULL, tag_id INTEGER NOT NULL,
                                         PRIMARY KEY (contact_id, tag_id));
CREATE TABLE IF NOT EXISTS point_groups (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL,
                                         description TEXT, date_added TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS group_scores (contact_id INTEGER NOT NULL, group_id INTEGER NOT NULL,
                                         score INTEGER NOT NULL, PRIMARY KEY (contact_id, group_id));
CREATE TABLE IF NOT EXISTS points_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT, contact_id INTEGER NOT NULL, group_id INTEGER, type TEXT NOT NULL,
    event_name TEXT NOT NULL, action_name TEXT NOT NULL, delta INTEGER NOT NULL, date_added TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens (token TEXT PRIMARY KEY, expires_at REAL NOT NULL);
-- Contacts made up for a search (auto_create_contacts) that nothing has written to yet: a look-up alone, such as
-- `contact show` of a mistyped id, leaves nothing behind that a person would see.
CREATE TABLE IF NOT EXISTS provisional (contact_id INTEGER PRIMARY KEY);
"""

# Mautic's default page size for lists.
DEFAULT_LIMIT = 30
# Mautic's api_batch_max_limit as it ships: the most items a batch request may carry.
BATCH_LIMIT = 200
# Mautic issues OAuth2 access tokens valid for an hour by default.
TOKEN_LIFETIME = 3600
OPERATORS: dict[str, Callable[[int, int], int]] = {
    "plus": lambda old, n: old + n,
    "minus": lambda old, n: old - n,
    "times": lambda old, n: old * n,
    "divide": lambda old, n: old // n,
    "set": lambda old, n: n,
}
_INT = re.compile(r"^-?\d+$")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _error(status: int, message: str, *, type_: str | None = None, details: Any = None) -> HttpError:
    return HttpError(
        status, {"errors": [{"code": status, "message": message, "type": type_, "details": details or {}}]}
    )


class MauticSandbox(App):
    name = "mautic"

    def __init__(
        self,
        path: Path,
        *,
        username: str,
        password: str,
        client_id: str | None = None,
        client_secret: str | None = None,
        contact_field: str = "crm_id",
        clock: Callable[[], float] = time.time,
        auto_create_contacts: bool = False,
    ) -> None:
        super().__init__()
        # The embedded default lets a newcomer name any contact: a search by `contact_field` that finds nobody
        # creates the contact, as the Spotler sandbox does. Tests keep Mautic's real behaviour (nobody found).
        self.auto_create_contacts = auto_create_contacts
        self.store = Store(path, SCHEMA)
        self._username = username
        self._password = password
        self._client_id = client_id
        self._client_secret = client_secret
        self.contact_field = contact_field
        self._clock = clock
        # Batch edit requests answered and the items they carried, for tests and benchmarks (the server counts every
        # request: `SandboxServer.injector.requests`).
        self.batch_edits = 0
        self.batch_contacts = 0
        self._count_lock = threading.Lock()
        self.route("POST", "/oauth/v2/token", self.issue_token)
        self.route("GET", "/api/contacts", self.list_contacts)
        self.route("GET", "/api/contacts/{id}", self.get_contact)
        # Before the contact edit route, which would take `batch` for a contact id.
        self.route("PATCH", "/api/contacts/batch/edit", self.batch_edit_contacts)
        self.route("PATCH", "/api/contacts/{id}/edit", self.edit_contact)
        self.route("GET", "/api/contacts/{id}/points/groups", self.contact_group_scores)
        self.route("GET", "/api/contacts/{id}/points/groups/{group}", self.contact_group_score)
        self.route(
            "POST", "/api/contacts/{id}/points/groups/{group}/{operator}/{value}", self.adjust_group_points
        )
        self.route("GET", "/api/points/groups", self.list_groups)
        self.route("POST", "/api/points/groups/new", self.create_group)
        self.route("GET", "/api/tags", self.list_tags)
        self.route("POST", "/api/tags/new", self.create_tag)

    def not_found(self, request: Request) -> Response:
        return _error(404, f"Requested URL not found: {request.path}").response

    # --- auth -----------------------------------------------------------------------------------------------

    def authenticate(self, request: Request) -> Response | None:
        if request.path == "/oauth/v2/token":
            return None
        header = request.header("authorization") or ""
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "basic" and self._basic_ok(value.strip()):
            return None
        if scheme.lower() == "bearer" and self._token_ok(value.strip()):
            return None
        return _error(401, "API authorization denied.", type_="access_denied").response

    def _basic_ok(self, value: str) -> bool:
        # Bytes, compared as UTF-8 (RFC 7617): `compare_digest` refuses str with non-ASCII characters.
        try:
            user, _, password = base64.b64decode(value, validate=True).partition(b":")
        except ValueError:
            return False
        return (hmac.compare_digest(user, self._username.encode())
                and hmac.compare_digest(password, self._password.encode()))

    def _token_ok(self, token: str) -> bool:
        row = self.store.read().execute("SELECT expires_at FROM tokens WHERE token = ?", (token,)).fetchone()
        return row is not None and row["expires_at"] > self._clock()

    def issue_token(self, request: Request) -> Response:
        form = _params(request)
        if form.get("grant_type") != "client_credentials":
            raise HttpError(
                400, {"error": "invalid_request", "error_description": "Invalid grant_type parameter"}
            )
        ok = (
            self._client_id is not None
            and self._client_secret is not None
            and hmac.compare_digest(str(form.get("client_id", "")).encode(), self._client_id.encode())
            and hmac.compare_digest(str(form.get("client_secret", "")).encode(), self._client_secret.encode())
        )
        if not ok:
            raise HttpError(
                400, {"error": "invalid_client", "error_description": "The client credentials are invalid"}
            )
        token = secrets.token_urlsafe(32)
        with self.store.atomic() as db:
            db.execute(
                "INSERT INTO tokens (token, expires_at) VALUES (?, ?)",
                (token, self._clock() + TOKEN_LIFETIME),
            )
        body = {"access_token": token, "expires_in": TOKEN_LIFETIME, "token_type": "bearer", "scope": ""}
        return Response(200, body)

    def expire_tokens(self) -> None:
        """Make every issued token invalid, as a Mautic restart with new keys or a revoked client would."""
        with self.store.atomic() as db:
            db.execute("DELETE FROM tokens")

    # --- contacts -------------------------------------------------------------------------------------------

    def seed_contact(
        self,
        email: str | None = None,
        *,
        external_id: str | None = None,
        tags: Iterable[str] = (),
        **fields: Any,
    ) -> int:
        """Create a contact (for tests and the demo) and return its Mautic id.

        `external_id` goes into the field named by `contact_field`, where the adapter looks for the CRM id.
        """
        values = {"email": email, **fields}
        if external_id is not None:
            values[self.contact_field] = external_id
        with self.store.atomic() as db:
            cid = int(
                db.execute(
                    "INSERT INTO contacts (fields, date_added) VALUES (?, ?)", (json.dumps(values), _now())
                ).lastrowid
                or 0
            )
            for tag in tags:
                db.execute("INSERT OR IGNORE INTO contact_tags VALUES (?, ?)", (cid, self._tag_id(db, tag)))
        return cid

    def _contact_with_field(self, value: str) -> Any:
        """The contact whose `contact_field` is `value`, created when there is none (one write, so never twice)."""
        with self.store.atomic() as db:
            for row in db.execute("SELECT * FROM contacts ORDER BY id").fetchall():
                if str(json.loads(row["fields"]).get(self.contact_field)) == value:
                    return row
            cid = db.execute(
                "INSERT INTO contacts (fields, date_added) VALUES (?, ?)",
                (json.dumps({"email": None, self.contact_field: value}), _now()),
            ).lastrowid
            db.execute("INSERT INTO provisional (contact_id) VALUES (?)", (cid,))
            return db.execute("SELECT * FROM contacts WHERE id = ?", (cid,)).fetchone()

    def contact_id(self, external_id: str) -> int | None:
        """The Mautic id of the contact whose `contact_field` holds `external_id` (for tests and people); None also
        for one only looked up so far."""
        rows = self.store.read().execute(
            "SELECT id, fields FROM contacts WHERE id NOT IN (SELECT contact_id FROM provisional) ORDER BY id")
        for row in rows.fetchall():
            if str(json.loads(row["fields"]).get(self.contact_field)) == external_id:
                return int(row["id"])
        return None

    def delete_contact(self, cid: int) -> None:
        with self.store.atomic() as db:
            for table in ("contact_tags", "group_scores"):
                db.execute(f"DELETE FROM {table} WHERE contact_id = ?", (cid,))
            db.execute("DELETE FROM contacts WHERE id = ?", (cid,))

    def _contact_row(self, db: Any, raw_id: str) -> Any:
        row = None
        if _INT.match(raw_id):
            row = db.execute("SELECT * FROM contacts WHERE id = ?", (int(raw_id),)).fetchone()
        if row is None:
            raise _error(404, "Item was not found.")
        return row

    def _record(self, db: Any, row: Any) -> dict[str, Any]:
        values = json.loads(row["fields"])
        tags = db.execute(
            "SELECT t.id, t.tag FROM contact_tags ct JOIN tags t ON t.id = ct.tag_id WHERE ct.contact_id = ? "
            "ORDER BY t.tag",
            (row["id"],),
        ).fetchall()
        core = {
            alias: {
                "id": str(i + 1),
                "label": alias.title(),
                "alias": alias,
                "type": "text",
                "group": "core",
                "value": value,
            }
            for i, (alias, value) in enumerate(values.items())
        }
        return {
            "id": row["id"],
            "isPublished": True,
            "dateAdded": row["date_added"],
            "points": 0,
            "color": None,
            "fields": {
                "core": core,
                "social": [],
                "personal": [],
                "professional": [],
                "all": {"id": row["id"], **values},
            },
            "tags": [{"id": t["id"], "tag": t["tag"]} for t in tags],
            "utmtags": [],
            "doNotContact": [],
        }

    def list_contacts(self, request: Request) -> Response:
        db = self.store.read()
        rows = db.execute("SELECT * FROM contacts ORDER BY id").fetchall()
        search = request.arg("search")
        if search:
            rows = [r for r in rows if _search_matches(search, json.loads(r["fields"]))]
        where = _where(request)
        for col, expr, val in where:
            if expr != "eq":
                raise _error(400, f"Expression {expr} is not supported by the sandbox.")
            rows = [r for r in rows if str(json.loads(r["fields"]).get(col)) == val]
        if not rows and not search and self.auto_create_contacts:
            wanted = [val for col, _, val in where if col == self.contact_field]
            if len(where) == 1 and wanted:
                rows = [self._contact_with_field(wanted[0])]
        start = int(request.arg("start") or 0)
        limit = int(request.arg("limit") or DEFAULT_LIMIT)
        page = rows[start : start + limit]
        return Response(
            200, {"total": str(len(rows)), "contacts": {str(r["id"]): self._record(db, r) for r in page}}
        )

    def get_contact(self, request: Request) -> Response:
        db = self.store.read()
        return Response(200, {"contact": self._record(db, self._contact_row(db, request.params["id"]))})

    def edit_contact(self, request: Request) -> Response:
        data = _params(request)
        with self.store.atomic() as db:
            return Response(200, {"contact": self._edit(db, self._contact_row(db, request.params["id"]), data)})

    def batch_edit_contacts(self, request: Request) -> Response:
        """`PATCH /api/contacts/batch/edit`: a JSON array of objects, each an `id` and the fields of the contact edit
        call. Each contact is edited on its own (Mautic saves them one by one), and answered in its place: the
        contacts edited, `statusCodes` for every item, and `errors` for the items that failed (a 404 for an id
        Mautic does not know; PATCH never creates one). A batch over Mautic's limit is refused whole, with a 500."""
        try:
            items = request.json() if request.body else []
        except ValueError as exc:
            raise _error(400, "Request body is not valid JSON.") from exc
        if not isinstance(items, list):
            raise _error(400, "The sandbox reads a batch as a JSON array of contacts.")
        if len(items) > BATCH_LIMIT:
            raise _error(500, f"A batch holds at most {BATCH_LIMIT} items; this one has {len(items)}.")
        contacts: dict[int, Any] = {}
        codes: dict[int, int] = {}
        failed: dict[int, Any] = {}
        for key, item in enumerate(items):
            data = dict(item) if isinstance(item, dict) else {}
            raw_id = str(data.pop("id", ""))
            try:
                with self.store.atomic() as db:
                    contacts[key] = self._edit(db, self._contact_row(db, raw_id), data)
                codes[key] = 200
            except HttpError as exc:
                status, (error,) = exc.response.status, exc.response.body["errors"]
                codes[key] = status
                failed[key] = {"message": error["message"], "code": status, "type": "api"}
        with self._count_lock:
            self.batch_edits += 1
            self.batch_contacts += len(items)
        body: dict[str, Any] = {"contacts": _php_array(contacts), "statusCodes": _php_array(codes)}
        if failed:
            body["errors"] = _php_array(failed)
        return Response(200, body)

    def _edit(self, db: Any, row: Any, data: dict[str, Any]) -> dict[str, Any]:
        """The contact edit call's change of one contact (tags: a name adds, `-name` removes); its record after."""
        db.execute("DELETE FROM provisional WHERE contact_id = ?", (row["id"],))  # written to: it exists
        tags = data.pop("tags", None)
        if tags is not None:
            for tag in tags.split(",") if isinstance(tags, str) else tags:
                name = str(tag).strip()
                if name.startswith("-"):
                    found = db.execute("SELECT id FROM tags WHERE tag = ?", (name[1:],)).fetchone()
                    if found:
                        db.execute(
                            "DELETE FROM contact_tags WHERE contact_id = ? AND tag_id = ?", (row["id"], found["id"])
                        )
                elif name:
                    db.execute("INSERT OR IGNORE INTO contact_tags VALUES (?, ?)", (row["id"], self._tag_id(db, name)))
        values = json.loads(row["fields"])
        values.update({k: v for k, v in data.items() if isinstance(v, str | int | float) or v is None})
        db.execute("UPDATE contacts SET fields = ? WHERE id = ?", (json.dumps(values), row["id"]))
        return self._record(db, self._contact_row(db, str(row["id"])))

    # --- tags -----------------------------------------------------------------------------------------------

    def _tag_id(self, db: Any, name: str) -> int:
        found = db.execute("SELECT id FROM tags WHERE tag = ?", (name,)).fetchone()
        if found:
            return int(found["id"])
        return int(db.execute("INSERT INTO tags (tag) VALUES (?)", (name,)).lastrowid or 0)

    def list_tags(self, request: Request) -> Response:
        rows = self.store.read().execute("SELECT * FROM tags ORDER BY id").fetchall()
        items = [{"id": r["id"], "tag": r["tag"], "description": r["description"]} for r in rows]
        return Response(200, {"total": len(items), "tags": items})

    def create_tag(self, request: Request) -> Response:
        name = str(_params(request).get("tag") or "").strip()
        if not name:
            raise _error(400, "tag: A value is required.", details={"tag": ["A value is required."]})
        with self.store.atomic() as db:
            row = db.execute("SELECT * FROM tags WHERE id = ?", (self._tag_id(db, name),)).fetchone()
        return Response(201, {"tag": {"id": row["id"], "tag": row["tag"], "description": row["description"]}})

    # --- point groups ---------------------------------------------------------------------------------------

    @staticmethod
    def _group(row: Any) -> dict[str, Any]:
        return {
            "id": row["id"],
            "name": row["name"],
            "description": row["description"],
            "isPublished": True,
            "dateAdded": row["date_added"],
            "dateModified": None,
            "createdBy": 1,
            "createdByUser": "Sandbox API",
            "modifiedBy": None,
            "modifiedByUser": None,
        }

    def list_groups(self, request: Request) -> Response:
        rows = self.store.read().execute("SELECT * FROM point_groups ORDER BY id").fetchall()
        start = int(request.arg("start") or 0)
        limit = int(request.arg("limit") or DEFAULT_LIMIT)
        return Response(
            200, {"total": len(rows), "pointGroups": [self._group(r) for r in rows[start : start + limit]]}
        )

    def create_group(self, request: Request) -> Response:
        data = _params(request)
        name = str(data.get("name") or "").strip()
        if not name:
            raise _error(400, "name: A value is required.", details={"name": ["A value is required."]})
        with self.store.atomic() as db:
            gid = db.execute(
                "INSERT INTO point_groups (name, description, date_added) VALUES (?, ?, ?)",
                (name, data.get("description"), _now()),
            ).lastrowid
            row = db.execute("SELECT * FROM point_groups WHERE id = ?", (gid,)).fetchone()
        return Response(201, {"pointGroup": self._group(row)})

    def _group_row(self, db: Any, raw_id: str) -> Any:
        row = (
            db.execute("SELECT * FROM point_groups WHERE id = ?", (int(raw_id),)).fetchone()
            if _INT.match(raw_id)
            else None
        )
        if row is None:
            raise _error(404, "Point group not found.")
        return row

    def _score_json(self, score: int, group: Any) -> dict[str, Any]:
        return {"score": score, "group": {"id": group["id"], "name": group["name"]}}

    def contact_group_scores(self, request: Request) -> Response:
        db = self.store.read()
        contact = self._contact_row(db, request.params["id"])
        rows = db.execute(
            "SELECT gs.score, g.id, g.name FROM group_scores gs JOIN point_groups g ON g.id = gs.group_id "
            "WHERE gs.contact_id = ? ORDER BY g.id",
            (contact["id"],),
        ).fetchall()
        return Response(
            200, {"total": len(rows), "groupScores": [self._score_json(r["score"], r) for r in rows]}
        )

    def contact_group_score(self, request: Request) -> Response:
        db = self.store.read()
        contact = self._contact_row(db, request.params["id"])
        group = self._group_row(db, request.params["group"])
        row = db.execute(
            "SELECT score FROM group_scores WHERE contact_id = ? AND group_id = ?",
            (contact["id"], group["id"]),
        ).fetchone()
        return Response(200, {"groupScore": self._score_json(row["score"], group) if row else None})

    def adjust_group_points(self, request: Request) -> Response:
        operator, raw_value = request.params["operator"], request.params["value"]
        data = _params(request)
        with self.store.atomic() as db:
            contact = self._contact_row(db, request.params["id"])
            db.execute("DELETE FROM provisional WHERE contact_id = ?", (contact["id"],))
            group = self._group_row(db, request.params["group"])
            if operator not in OPERATORS:
                raise _error(400, "This operation is not allowed.")
            if not _INT.match(raw_value):
                raise _error(400, f"Value {raw_value} is not a whole number.")
            value = int(raw_value)
            if operator == "divide" and value == 0:
                raise _error(400, "Cannot divide by zero.")
            row = db.execute(
                "SELECT score FROM group_scores WHERE contact_id = ? AND group_id = ?",
                (contact["id"], group["id"]),
            ).fetchone()
            old = int(row["score"]) if row else 0
            new = OPERATORS[operator](old, value)
            db.execute(
                "INSERT OR REPLACE INTO group_scores VALUES (?, ?, ?)", (contact["id"], group["id"], new)
            )
            db.execute(
                "INSERT INTO points_log (contact_id, group_id, type, event_name, action_name, delta, "
                "date_added) VALUES (?, ?, 'API', ?, ?, ?, ?)",
                (
                    contact["id"],
                    group["id"],
                    str(data.get("eventName") or "Manual change"),
                    str(data.get("actionName") or "API"),
                    new - (old if row else 0),
                    _now(),
                ),
            )
        return Response(200, {"groupScore": self._score_json(new, group)})

    # --- what tests and the demo look at --------------------------------------------------------------------

    def tags_of(self, cid: int) -> list[str]:
        rows = (
            self.store.read()
            .execute(
                "SELECT t.tag FROM contact_tags ct JOIN tags t ON t.id = ct.tag_id WHERE ct.contact_id = ? "
                "ORDER BY t.tag",
                (cid,),
            )
            .fetchall()
        )
        return [r["tag"] for r in rows]

    def scores_of(self, cid: int) -> dict[str, int]:
        """Group name -> score for every group score the contact has, zeros included."""
        rows = (
            self.store.read()
            .execute(
                "SELECT g.name, gs.score FROM group_scores gs JOIN point_groups g ON g.id = gs.group_id "
                "WHERE gs.contact_id = ? ORDER BY g.id",
                (cid,),
            )
            .fetchall()
        )
        return {r["name"]: r["score"] for r in rows}

    def tag_names(self) -> list[str]:
        return [r["tag"] for r in self.store.read().execute("SELECT tag FROM tags ORDER BY id").fetchall()]

    def group_names(self) -> list[str]:
        return [
            r["name"]
            for r in self.store.read().execute("SELECT name FROM point_groups ORDER BY id").fetchall()
        ]

    def points_log(self, cid: int | None = None) -> list[dict[str, Any]]:
        sql = (
            "SELECT * FROM points_log" + (" WHERE contact_id = ?" if cid is not None else "") + " ORDER BY id"
        )
        return [dict(r) for r in self.store.read().execute(sql, () if cid is None else (cid,)).fetchall()]


def _php_array(items: dict[int, Any]) -> Any:
    """Items keyed by their place in the request as PHP's json_encode writes such an array: a list when the keys
    are 0, 1, 2 ... without a gap, an object keyed by the numbers as text otherwise."""
    if list(items) == list(range(len(items))):
        return list(items.values())
    return {str(key): value for key, value in items.items()}


def _params(request: Request) -> dict[str, Any]:
    """The request's parameters, from a JSON or a form-encoded body, as Mautic reads either."""
    if not request.body:
        return {}
    content_type = (request.header("content-type") or "").lower()
    if "json" in content_type:
        try:
            body = request.json()
        except ValueError as exc:
            raise _error(400, "Request body is not valid JSON.") from exc
        if not isinstance(body, dict):
            raise _error(400, "Request body must be a JSON object.")
        return body
    form = parse_qs(request.body.decode(), keep_blank_values=True)
    result: dict[str, Any] = {}
    for key, values in form.items():
        if key.endswith("[]"):
            result[key[:-2]] = values
        else:
            result[key] = values[-1]
    return result


def _where(request: Request) -> list[tuple[str, str, str]]:
    conditions: dict[str, dict[str, str]] = {}
    for key, values in request.query.items():
        match = re.fullmatch(r"where\[(\d+)\]\[(col|expr|val)\]", key)
        if match:
            conditions.setdefault(match.group(1), {})[match.group(2)] = values[-1]
    return [(c.get("col", ""), c.get("expr", "eq"), c.get("val", "")) for _, c in sorted(conditions.items())]


def _like(pattern: str, value: str) -> bool:
    """SQL LIKE as MySQL does it by default: `%` and `_` are wildcards, case-insensitive."""
    regex = "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, flags=re.IGNORECASE | re.DOTALL) is not None


def _search_matches(search: str, values: dict[str, Any]) -> bool:
    """The `email:` command of Mautic's contact search: quotes group, `+` means exact, otherwise `%value%`."""
    command, sep, term = search.strip().partition(":")
    if not sep or command.strip().lower() != "email":
        raise _error(400, f"The sandbox only understands the email: search command, not {search!r}.")
    term = term.strip()
    if len(term) >= 2 and term.startswith('"') and term.endswith('"'):
        term = term[1:-1]
    term = term.strip().lower()
    strict = term.startswith("+")
    term = term[1:] if strict else term
    email = str(values.get("email") or "")
    return _like(term if strict else f"%{term}%", email)
