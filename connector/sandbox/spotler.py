"""A Spotler Mail+ emulator: the contact, tag/score and automation routes the adapter uses, on loopback.

It checks OAuth 1.0a HMAC-SHA1 signatures like the real API (401 NOT_AUTHORIZED otherwise), keeps contacts, tags
and scores in SQLite on disk, and answers with Spotler's error shape `{"errorType", "message"}`. The tag and score
routes are the adapter's `TAG_ROUTES` table, so both sides change together.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from oauthlib.common import Request as OAuthRequest
from oauthlib.oauth1.rfc5849 import signature, utils

from connector.sandbox.server import App, HttpError, Request, Response, Store
from connector.spotler import TAG_ROUTES

SCHEMA = """
CREATE TABLE IF NOT EXISTS contacts (external_id TEXT PRIMARY KEY, email TEXT, properties TEXT NOT NULL DEFAULT '{}');
CREATE INDEX IF NOT EXISTS contacts_email ON contacts(email);
CREATE TABLE IF NOT EXISTS tags (name TEXT PRIMARY KEY, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS contact_tags (
    external_id TEXT NOT NULL, tag TEXT NOT NULL, score INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (external_id, tag)
);
CREATE TABLE IF NOT EXISTS changes (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, external_id TEXT, tag TEXT, what TEXT NOT NULL,
    value INTEGER
);
CREATE TABLE IF NOT EXISTS automations (trigger_code TEXT PRIMARY KEY, active INTEGER NOT NULL DEFAULT 1,
                                        max_participations INTEGER);
CREATE TABLE IF NOT EXISTS participations (trigger_code TEXT NOT NULL, external_id TEXT NOT NULL, at REAL NOT NULL);
"""

# How far a request's oauth_timestamp may be from our clock, as OAuth providers commonly allow.
TIMESTAMP_WINDOW = 600


def _error(status: int, error_type: str, message: str) -> HttpError:
    return HttpError(status, {"errorType": error_type, "message": message})


class SpotlerSandbox(App):
    name = "spotler"

    def __init__(
        self, path: Path, *, consumer_key: str, consumer_secret: str, auto_create_contacts: bool = False
    ) -> None:
        super().__init__()
        # The embedded default lets a newcomer name any contact; tests keep the real API's 404.
        self.auto_create_contacts = auto_create_contacts
        self.store = Store(path, SCHEMA)
        self._key = consumer_key
        self._secret = consumer_secret
        self.route("GET", "/contact/search", self.search_contacts)
        self.route("POST", "/contact", self.create_contact)
        self.route("GET", "/contact/{contact}", self.get_contact)
        self.route("POST", "/automation/trigger/{trigger}", self.trigger_automation)
        handlers = {
            "create_tag": self.create_tag,
            "read_tags": self.read_tags,
            "add_tags": self.add_tags,
            "remove_tag": self.remove_tag,
            "set_score": self.set_score,
            "change_score": self.change_score,
        }
        for name, (method, template) in TAG_ROUTES.items():
            self.route(method, "/" + template, handlers[name])

    def dispatch(self, request: Request) -> Response:
        # The API lives under a versioned prefix, as the real one does; accept any.
        prefix, sep, rest = request.path.lstrip("/").partition("/")
        if sep and prefix.startswith("integrationservice"):
            request.path = "/" + rest
        return super().dispatch(request)

    def not_found(self, request: Request) -> Response:
        return Response(404, {"errorType": "RESOURCE_NOT_FOUND", "message": f"No resource at {request.path}"})

    # --- auth -----------------------------------------------------------------------------------------------

    def authenticate(self, request: Request) -> Response | None:
        header = request.header("authorization") or ""
        if not header.startswith("OAuth "):
            return Response(401, {"errorType": "AUTH_NOT_FOUND", "message": "No OAuth authorization given"})
        params = {k: utils.unescape(v) for k, v in utils.parse_authorization_header(header)}
        if params.get("oauth_consumer_key") != self._key:
            return Response(401, {"errorType": "NOT_AUTHORIZED", "message": "Unknown consumer key"})
        if params.get("oauth_signature_method") != "HMAC-SHA1":
            return Response(401, {"errorType": "NOT_AUTHORIZED", "message": "Signature method must be HMAC-SHA1"})
        try:
            stamp = int(params.get("oauth_timestamp", "0"))
        except ValueError:
            stamp = 0
        if abs(time.time() - stamp) > TIMESTAMP_WINDOW:
            return Response(401, {"errorType": "NOT_AUTHORIZED", "message": "Timestamp out of range"})
        content_type = request.header("content-type", "") or ""
        body = request.body.decode() if "x-www-form-urlencoded" in content_type else None
        oauth_request = OAuthRequest(request.url, request.method, body, request.headers)
        oauth_request.params = signature.collect_parameters(
            uri_query=request.url.partition("?")[2], body=body, headers={"Authorization": header},
            exclude_oauth_signature=True,
        )
        oauth_request.signature = params.get("oauth_signature", "")
        if not signature.verify_hmac_sha1(oauth_request, self._secret, None):
            return Response(401, {"errorType": "NOT_AUTHORIZED", "message": "Invalid signature"})
        return None

    # --- contacts -------------------------------------------------------------------------------------------

    def seed_contact(self, external_id: str, email: str | None = None) -> None:
        """Create a contact directly (demo and tests), as if it had been imported on the platform."""
        with self.store.atomic() as db:
            db.execute("INSERT OR IGNORE INTO contacts (external_id, email) VALUES (?, ?)", (external_id, email))

    def contact_exists(self, external_id: str) -> bool:
        return self.store.read().execute(
            "SELECT 1 FROM contacts WHERE external_id = ?", (external_id,)).fetchone() is not None

    def _require_contact(self, external_id: str, *, create: bool = True) -> None:
        """A contact the route needs. With `auto_create_contacts` every contact is taken to exist, as if the CRM
        had synced it: a write creates it, a read of tags creates nothing (a mistyped id stays unknown)."""
        if self.auto_create_contacts:
            if create:
                self.seed_contact(external_id)
            return
        if not self.contact_exists(external_id):
            raise _error(404, "CONTACT_NOT_FOUND", "Given contact not found")

    def get_contact(self, request: Request) -> Response:
        row = self.store.read().execute(
            "SELECT external_id, email FROM contacts WHERE external_id = ?", (request.params["contact"],)
        ).fetchone()
        if row is None:
            raise _error(404, "CONTACT_NOT_FOUND", "Given contact not found")
        return Response(200, {"externalId": row["external_id"], "properties": {"email": row["email"]}})

    def search_contacts(self, request: Request) -> Response:
        query = request.arg("MPSearchQuery", "") or ""
        field, _, value = query.partition("=")
        if field != "email" or not value:
            raise _error(400, "INVALID_PARAMS", "MPSearchQuery must be email=<address>")
        rows = self.store.read().execute(
            "SELECT external_id, email FROM contacts WHERE lower(email) = lower(?) LIMIT ?",
            (value, int(request.arg("pageSize", "25") or 25)),
        ).fetchall()
        return Response(200, [{"externalId": r["external_id"], "properties": {"email": r["email"]}} for r in rows])

    def create_contact(self, request: Request) -> Response:
        body = request.json() or {}
        contact = body.get("contact") or {}
        external_id = contact.get("externalId")
        if not external_id:
            raise _error(400, "INVALID_PARAMS", "<ul><li>contact.externalId is required</li></ul>")
        email = (contact.get("properties") or {}).get("email")
        with self.store.atomic() as db:
            if db.execute("SELECT 1 FROM contacts WHERE external_id = ?", (external_id,)).fetchone():
                raise _error(400, "CONTACT_EXISTS", "Contact already exists")
            db.execute("INSERT INTO contacts (external_id, email) VALUES (?, ?)", (external_id, email))
        return Response(204)

    # --- tags and scores ------------------------------------------------------------------------------------

    def _tag_name(self, value: Any) -> str:
        if not isinstance(value, str) or not value.strip() or len(value) > 255:
            raise _error(400, "INVALID_PARAMS", "<ul><li>tag name must be 1 to 255 characters</li></ul>")
        return value

    def _ensure_tag(self, db: Any, tag: str) -> None:
        db.execute("INSERT OR IGNORE INTO tags (name, created_at) VALUES (?, ?)", (tag, time.time()))

    def _log(self, db: Any, external_id: str | None, tag: str, what: str, value: int | None = None) -> None:
        db.execute(
            "INSERT INTO changes (at, external_id, tag, what, value) VALUES (?, ?, ?, ?, ?)",
            (time.time(), external_id, tag, what, value),
        )

    def create_tag(self, request: Request) -> Response:
        tag = self._tag_name((request.json() or {}).get("name"))
        with self.store.atomic() as db:
            self._ensure_tag(db, tag)
        return Response(204)

    def read_tags(self, request: Request) -> Response:
        contact = request.params["contact"]
        self._require_contact(contact, create=False)
        rows = self.store.read().execute(
            "SELECT tag, score FROM contact_tags WHERE external_id = ? ORDER BY tag", (contact,)
        ).fetchall()
        return Response(200, {"tags": [{"name": r["tag"], "score": r["score"]} for r in rows]})

    def add_tags(self, request: Request) -> Response:
        contact = request.params["contact"]
        names = (request.json() or {}).get("tags")
        if not isinstance(names, list) or not names:
            raise _error(400, "INVALID_PARAMS", "<ul><li>tags must be a non-empty list</li></ul>")
        tags = [self._tag_name(n) for n in names]
        self._require_contact(contact)
        with self.store.atomic() as db:
            for tag in tags:
                self._ensure_tag(db, tag)
                db.execute("INSERT OR IGNORE INTO contact_tags (external_id, tag) VALUES (?, ?)", (contact, tag))
                self._log(db, contact, tag, "tag_added")
        return Response(204)

    def remove_tag(self, request: Request) -> Response:
        contact, tag = request.params["contact"], request.params["tag"]
        self._require_contact(contact)
        with self.store.atomic() as db:
            gone = db.execute("DELETE FROM contact_tags WHERE external_id = ? AND tag = ?", (contact, tag)).rowcount
            if gone:
                self._log(db, contact, tag, "tag_removed")
        return Response(204)

    def _score(self, request: Request, field: str) -> int:
        value = (request.json() or {}).get(field)
        if isinstance(value, bool) or not isinstance(value, int):
            raise _error(400, "INVALID_PARAMS", f"<ul><li>{field} must be an integer</li></ul>")
        return value

    def set_score(self, request: Request) -> Response:
        contact, tag = request.params["contact"], self._tag_name(request.params["tag"])
        score = self._score(request, "score")
        self._require_contact(contact)
        with self.store.atomic() as db:
            self._ensure_tag(db, tag)
            db.execute(
                "INSERT INTO contact_tags (external_id, tag, score) VALUES (?, ?, ?) "
                "ON CONFLICT (external_id, tag) DO UPDATE SET score = excluded.score",
                (contact, tag, score),
            )
            self._log(db, contact, tag, "score_set", score)
        return Response(200, {"name": tag, "score": score})

    def change_score(self, request: Request) -> Response:
        contact, tag = request.params["contact"], self._tag_name(request.params["tag"])
        change = self._score(request, "change")
        self._require_contact(contact)
        with self.store.atomic() as db:
            self._ensure_tag(db, tag)
            row = db.execute(
                "INSERT INTO contact_tags (external_id, tag, score) VALUES (?, ?, ?) "
                "ON CONFLICT (external_id, tag) DO UPDATE SET score = score + excluded.score RETURNING score",
                (contact, tag, change),
            ).fetchone()
            self._log(db, contact, tag, "score_changed", change)
        return Response(200, {"name": tag, "score": row["score"]})

    # --- automations ----------------------------------------------------------------------------------------

    def seed_automation(self, trigger_code: str, *, active: bool = True, max_participations: int | None = None) -> None:
        with self.store.atomic() as db:
            db.execute(
                "INSERT OR REPLACE INTO automations (trigger_code, active, max_participations) VALUES (?, ?, ?)",
                (trigger_code, int(active), max_participations),
            )

    def trigger_automation(self, request: Request) -> Response:
        code = request.params["trigger"]
        contact = (request.json() or {}).get("externalContactId")
        if self.auto_create_contacts and isinstance(contact, str) and contact:
            self.seed_contact(contact)
        with self.store.atomic() as db:
            automation = db.execute("SELECT * FROM automations WHERE trigger_code = ?", (code,)).fetchone()
            if automation is None:
                raise _error(404, "TRIGGER_NOTFOUND", f"Trigger {code} not found")
            if not db.execute("SELECT 1 FROM contacts WHERE external_id = ?", (contact,)).fetchone():
                raise _error(404, "CONTACT_NOT_FOUND", "Given contact not found")
            if not automation["active"]:
                return Response(417, {"result": "AUTOMATION_INACTIVE"})
            taken = db.execute(
                "SELECT count(*) FROM participations WHERE trigger_code = ? AND external_id = ?", (code, contact)
            ).fetchone()[0]
            limit = automation["max_participations"]
            if limit is not None and taken >= limit:
                return Response(417, {"result": "PARTICIPATION_LIMIT_REACHED"})
            db.execute("INSERT INTO participations VALUES (?, ?, ?)", (code, contact, time.time()))
        return Response(200, {"result": "OK"})

    # --- for people and tests -------------------------------------------------------------------------------

    def scores(self, external_id: str) -> dict[str, int]:
        rows = self.store.read().execute(
            "SELECT tag, score FROM contact_tags WHERE external_id = ? ORDER BY tag", (external_id,)
        )
        return {r["tag"]: r["score"] for r in rows}

    def tag_names(self) -> list[str]:
        return [r["name"] for r in self.store.read().execute("SELECT name FROM tags ORDER BY name")]

    def changes_of(self, external_id: str) -> list[tuple[str, str, int | None]]:
        """The contact's change log, oldest first: (tag, what, value)."""
        rows = self.store.read().execute(
            "SELECT tag, what, value FROM changes WHERE external_id = ? ORDER BY id", (external_id,)
        )
        return [(r["tag"], r["what"], r["value"]) for r in rows]

    def participations(self, trigger_code: str) -> list[str]:
        """External ids of the contacts the automation was started for, oldest first."""
        rows = self.store.read().execute(
            "SELECT external_id FROM participations WHERE trigger_code = ? ORDER BY rowid", (trigger_code,)
        )
        return [r["external_id"] for r in rows]

    def change_count(self) -> int:
        return int(self.store.read().execute("SELECT count(*) FROM changes").fetchone()[0])
