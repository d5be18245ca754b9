"""The Mautic (Webmecanik Automation) adapter: tags through the contact edit call, a point group per tag.

How a tag with a score (README, "Operations") maps onto Mautic:

- **Tags** are Mautic contact tags, changed with `PATCH /api/contacts/{id}/edit` and `{"tags": ["a", "-b"]}`:
  a tag that does not exist yet is created, removing a tag the contact lacks is ignored. A tag whose name
  starts with `-` cannot be expressed in that call, so it is refused as invalid input.
- **A tag's score** is the contact's score in the point group named like the tag (Mautic >= 5.1). Groups are
  found by name, case-insensitively as MySQL compares tag names, or created; the name -> id map is cached per
  adapter and reloaded on a miss. Changes go through
  `POST /api/contacts/{id}/points/groups/{group}/{set|plus|minus}/{n}` with the job id in `eventName`, so
  Mautic's own points log says which job made each change.
- **Setting or changing a score also tags the contact**, so that "the contact has tag T with score n" reads
  the same on both platforms. `read_scores` reports the contact's tags, each with its group score (0 without
  one), and also a non-zero group score whose tag is gone.
- **Removing a tag removes its score**: Mautic has no call that deletes a contact's group score, so the score
  is set to 0 (which the points log records) before the tag is removed. A group score left behind by someone
  who removed the tag in Mautic's UI is still reported by `read_scores`: a later increase continues from it,
  and the read-back that keeps increments from being applied twice must see the score the change starts from.
- **Contacts** are Mautic's numeric ids. They are looked up by e-mail address, or, when `contact_field` names
  a unique Mautic field holding the CRM id, by the contact's external id first. The mapping is cached; a 404
  on a cached id (a contact merged or deleted) looks the contact up once more before failing.
- **Auth**: HTTP basic (must be enabled in Mautic's API settings) or OAuth2 client credentials
  (`POST /oauth/v2/token`), the token cached until shortly before it expires and fetched anew once on a 401.
- **Tag edits of jobs running at once share requests** (`mautic.batch_tag_edits`, on by default): while
  `BATCH_PARALLEL` of them are on the wire, the others wait and leave together in one
  `PATCH /api/contacts/batch/edit` with `[{"id": 7, "tags": [...]}, ...]`, at most `BATCH_MAX` contacts and never
  one contact twice (group commit, `connector.groupcommit`). An edit that finds room leaves alone, as the contact
  edit call above. Each job keeps its own outcome: an item Mautic refused is read as the contact edit call's own
  answer would be (same error, result code and message; a 404 on a cached id looks the contact up again), and a
  request that fails whole (429, 5xx, timeout, reset) fails every edit in it as a single edit would fail; tag
  edits can be sent again safely. A batch counts as one request for the brake: Mautic's rate limiter counts
  requests. A Mautic that answers the batch route 404 or 405 gets each edit alone from then on.

Checked against Mautic's source and developer documentation (mautic/mautic and
mautic/developer-documentation-new):

- the group-score routes, and that their controller reads `eventName` / `actionName` from the request
  parameters and logs the resulting delta;
- `GET /api/contacts/{id}/points/groups` -> `{"total", "groupScores": [{"score", "group": {"id", "name"}}]}`;
- `GET /api/points/groups` -> `{"total", "pointGroups": [...]}`; `POST /api/points/groups/new` -> 201
  `{"pointGroup": {...}}`;
- `POST /api/tags/new` returns the existing tag of that name instead of creating a duplicate;
- the `-` prefix removing a tag in the contact edit call;
- the contact list keyed by id, with `total` as a string;
- contact search `email:` is a LIKE; `+` makes it exact (no `%...%`), `"..."` quotes;
- the OAuth2 client-credentials request and token response; basic auth;
- the batch edit (`CommonApiController::editEntitiesAction`, `BatchIdToEntityHelper`): a body that is a list of
  objects each with `id`; a 200 whose `contacts` (the contacts edited), `statusCodes` (one per item) and `errors`
  (`{"message", "code", "type"}` per item that failed) are keyed by the item's place in the request, written as a
  JSON list without gaps and as an object keyed "0", "2" ... with them; with PATCH an unknown id is that item's 404
  ("Item was not found.", the contact edit call's words); tags go through the same `preSaveEntity` ->
  `modifyTags` as the contact edit call, `-` removing; more items than `api_batch_max_limit` (200 as shipped) is
  refused whole with a 500 (an error that is not in batch mode, whose status defaults to 500); the contacts of a
  batch are loaded in one query and one named twice is edited through the same loaded object, detached part way;
- the API rate limiter (`api_rate_limiter_limit`, off as shipped) counts requests to `/api` per hour.

Not verified (no running Mautic was at hand): that a negative value is accepted in the `set/{value}` path; the
exact wording and shape of every error body (we read `{"errors": [{"message"}]}` and fall back to the raw
text); what `minimal=true` leaves out of a contact (we match on `fields.all` when present and trust the exact
search otherwise); the `where[0][col|expr|val]` filter on a custom field; whether Mautic sends `Retry-After`
on 429; that Mautic decodes a JSON array body for the batch route as it decodes the contact edit call's JSON
object (public scripts send it so); the wording of the over-limit error; which Mautic version first had the batch
route. An administrator who lowered `api_batch_max_limit` below 200 gets every full batch refused with a 500
(retried as UNAVAILABLE): set `mautic.batch_tag_edits = false` there. Point group names are not unique in Mautic:
when two share a name, the lowest id wins, deterministically.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import requests
from requests.auth import AuthBase, HTTPBasicAuth

from config.settings import SettingsError
from connector import errors
from connector.groupcommit import Grouped, Room
from connector.http import ApiSession, error_for_status
from connector.platform import Contact

if TYPE_CHECKING:
    from config.settings import MauticSettings

log = logging.getLogger(__name__)

T = TypeVar("T")

# Mautic's points log keeps event and action names in 255-character columns.
LOG_NAME_MAX = 255
# Fetch a fresh token this long before the old one expires, so a request never carries a dying token.
TOKEN_MARGIN = 60.0
# Point groups are listed in pages of this size when the name -> id map is (re)loaded.
GROUP_PAGE_SIZE = 200
# Contacts whose Mautic id we remember; beyond this the least recently used are looked up again.
CONTACT_CACHE_SIZE = 50_000
# Mautic's `api_batch_max_limit` as it ships: a batch of more items is refused whole, with a 500.
BATCH_MAX = 200
# Batch tag edits on the wire at once. Mautic runs the contacts of a batch one after the other in one PHP worker,
# so a single request at a time would queue every edit behind the others'; a few at once keep a few of its workers
# busy while each request carries the edits that came meanwhile. The edits that wait cost latency where nothing
# limits the rate: draining 1,000 tag jobs with 16 workers at 20 ms (bench/mautic_tags.py), four on the wire took
# tag edit requests from 1.00 to 0.50 a job at 7 % fewer jobs/s; eight kept 0.82 a job, saving little.
BATCH_PARALLEL = 4
# What the contact edit call is for, in an error message; the same words whether the edit went alone or in a batch.
EDIT_TAGS = "change the contact's tags"


def mautic_message(response: requests.Response) -> str:
    """Mautic's own words from an error body `{"errors": [{"message": ...}]}`, or the start of the text."""
    try:
        body = response.json()
    except ValueError:
        return (response.text or response.reason or f"HTTP {response.status_code}").strip()[:200]
    if isinstance(body, dict):
        found = body.get("errors") or body.get("error")
        if isinstance(found, list):
            messages = [str(e.get("message")) for e in found if isinstance(e, dict) and e.get("message")]
            if messages:
                return "; ".join(messages)
        if isinstance(found, dict) and found.get("message"):
            return str(found["message"])
        for key in ("error_description", "message"):
            if body.get(key):
                return str(body[key])
        if isinstance(found, str):
            return found
    return f"HTTP {response.status_code}"


def mautic_error(response: requests.Response, doing: str, *, contact_route: bool = False) -> errors.ConnectorError:
    """The one place where a Mautic error status becomes our error: `doing` says what we were trying to do.

    On a route that names only a contact (no point group), a 404 can only mean the contact is gone.
    """
    message = mautic_message(response)
    if response.status_code in (401, 403):
        return error_for_status(response, f"Mautic refused our credentials while trying to {doing}: {message}")
    if response.status_code == 404 and contact_route:
        return error_for_status(
            response, f"Mautic no longer has this contact (trying to {doing}): {message}", code="CONTACT_NOT_FOUND"
        )
    return error_for_status(response, f"Mautic could not {doing}: {message}")


class MauticOAuth2(AuthBase):
    """OAuth2 client credentials: attaches the bearer token, caches it, and fetches a new one once on a 401.

    The token request goes through the adapter's own session (its timeouts, brake and error translation), sent
    without this auth. The secret is never logged and not part of `repr`.
    """

    def __init__(
        self,
        session: requests.Session,
        *,
        token_url: str,
        client_id: str,
        client_secret: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._session = session
        self.token_url = token_url
        self.client_id = client_id
        self._client_secret = client_secret
        self._clock = clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires_at = 0.0
        self.tokens_fetched = 0

    def __repr__(self) -> str:
        return f"MauticOAuth2(token_url={self.token_url!r}, client_id={self.client_id!r})"

    def token(self) -> str:
        with self._lock:
            if self._token is None or self._clock() >= self._expires_at:
                self._token, lifetime = self._fetch()
                self._expires_at = self._clock() + max(0.0, lifetime - TOKEN_MARGIN)
            return self._token

    def invalidate(self, token: str) -> None:
        """Forget `token` unless another thread already replaced it, so concurrent 401s fetch only once."""
        with self._lock:
            if self._token == token:
                self._token = None

    def _fetch(self) -> tuple[str, float]:
        data = {
            "grant_type": "client_credentials",
            "client_id": self.client_id,
            "client_secret": self._client_secret,
        }
        response = self._session.request(
            "POST", self.token_url, data=data, headers={"Accept": "application/json"}, auth=_NoAuth()
        )
        if response.status_code in (400, 401, 403):
            raise errors.AuthError(
                f"Mautic refused the OAuth2 client credentials of client {self.client_id!r}: "
                f"{mautic_message(response)}",
                http_status=response.status_code,
            )
        if response.status_code >= 400:
            raise mautic_error(response, "issue an OAuth2 token")
        try:
            body = response.json()
            token = str(body["access_token"])
            lifetime = float(body.get("expires_in") or 3600)
        except (ValueError, KeyError, TypeError) as exc:
            raise errors.Unavailable("Mautic's token endpoint answered without an access token.") from exc
        self.tokens_fetched += 1
        log.info("Fetched a Mautic OAuth2 token for client %s (valid %.0f s)", self.client_id, lifetime)
        return token, lifetime

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        token = self.token()
        request.headers["Authorization"] = f"Bearer {token}"
        request.register_hook("response", self._retry_on_401)
        return request

    def _retry_on_401(self, response: requests.Response, **kwargs: Any) -> requests.Response:
        sent = response.request
        if response.status_code != 401 or getattr(sent, "_mautic_retried", False):
            return response
        used = str(sent.headers.get("Authorization", "")).removeprefix("Bearer ")
        self.invalidate(used)
        # Release the connection before sending the copy, as requests' own digest auth does.
        _ = response.content
        response.close()
        retry = sent.copy()
        retry.headers["Authorization"] = f"Bearer {self.token()}"
        retry._mautic_retried = True  # type: ignore[attr-defined]
        log.info("Mautic refused the OAuth2 token; sending the request once more with a new one")
        assert response.connection is not None
        again: requests.Response = response.connection.send(retry, **kwargs)
        again.history.append(response)
        again.request = retry
        return again


class _NoAuth(AuthBase):
    """Explicitly no auth, so a session-level auth can never be applied to the token request."""

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        return request


def build_auth(settings: MauticSettings, session: requests.Session, base_url: str) -> AuthBase:
    """The `AuthBase` the settings ask for."""
    if settings.auth == "oauth2":
        if not settings.client_id or not settings.client_secret.get_secret_value():
            raise SettingsError("mautic.auth is oauth2 but mautic.client_id or mautic.client_secret is empty.")
        return MauticOAuth2(
            session,
            token_url=_root(base_url) + "/oauth/v2/token",
            client_id=settings.client_id,
            client_secret=settings.client_secret.get_secret_value(),
        )
    # As UTF-8 (RFC 7617): given str, requests encodes Latin-1, which no server reads back right beyond ASCII.
    return HTTPBasicAuth(settings.username.encode(), settings.password.get_secret_value().encode())


def _root(base_url: str) -> str:
    """Mautic's root URL: people paste it with or without the trailing `/api`."""
    root = base_url.rstrip("/")
    return root.removesuffix("/api")


class MauticPlatform:
    """The Mautic adapter. Thread-safe: workers share one pooled `ApiSession` and the id caches."""

    name = "mautic"

    def __init__(
        self,
        session: ApiSession,
        *,
        base_url: str,
        auth: AuthBase,
        contact_field: str | None = None,
        batch_tag_edits: bool = True,
    ) -> None:
        self.session = session
        self.base_url = _root(base_url)
        self.auth = auth
        self.contact_field = contact_field or None
        # Tag edits of workers running at once share `PATCH /contacts/batch/edit` requests; None: one each.
        self.tag_edits: TagEdits | None = TagEdits(self) if batch_tag_edits else None
        self._contacts: OrderedDict[Contact, int] = OrderedDict()
        self._contacts_lock = threading.Lock()
        self._groups: dict[str, int] = {}
        self._groups_lock = threading.Lock()
        # Held while the group map is reloaded or a group created, so that two workers never create one twice.
        self._groups_miss_lock = threading.Lock()

    @classmethod
    def from_settings(
        cls, settings: MauticSettings, session: ApiSession, *, base_url: str | None = None
    ) -> MauticPlatform:
        """The adapter for `settings`; `base_url` overrides the settings' (the sandbox's loopback URL)."""
        url = base_url or settings.base_url
        if not url:
            raise SettingsError("mautic.base_url is not set.")
        return cls(
            session,
            base_url=url,
            auth=build_auth(settings, session, url),
            contact_field=settings.contact_field,
            batch_tag_edits=settings.batch_tag_edits,
        )

    def __repr__(self) -> str:
        return f"MauticPlatform(base_url={self.base_url!r}, auth={type(self.auth).__name__})"

    # --- the Platform protocol ------------------------------------------------------------------------------

    def create_tags(self, tags: Sequence[str]) -> None:
        # Mautic answers /tags/new with the existing tag when the name is taken, so this is idempotent.
        for tag in _checked(tags):
            self._call("POST", "/tags/new", f"create tag {tag!r}", json={"tag": tag})

    def add_tags(self, contact: Contact, tags: Sequence[str], *, ref: str) -> None:
        names = _checked(tags)
        self._with_contact(contact, lambda cid: self._edit_tags(cid, names))

    def remove_tags(self, contact: Contact, tags: Sequence[str], *, ref: str) -> None:
        """Untag the contact, its group score set to 0 first: Mautic cannot delete a group score."""
        names = _checked(tags)
        wanted = {name.casefold() for name in names}

        def apply(cid: int) -> None:
            for group_id, group_name, score in self._group_scores(cid):
                if group_name.casefold() in wanted and score != 0:
                    self._change_points(cid, group_id, group_name, "set", 0, ref)
            self._edit_tags(cid, ["-" + name for name in names])

        self._with_contact(contact, apply)

    def set_score(self, contact: Contact, tag: str, score: int, *, ref: str) -> None:
        (name,) = _checked([tag])

        def apply(cid: int) -> None:
            self._edit_tags(cid, [name])
            self._change_points(cid, self._group_id(name), name, "set", score, ref)

        self._with_contact(contact, apply)

    def change_score(self, contact: Contact, tag: str, delta: int, *, ref: str) -> None:
        (name,) = _checked([tag])

        def apply(cid: int) -> None:
            # Tag first: if the points call's outcome is lost, a read-back already sees the tag and its score.
            self._edit_tags(cid, [name])
            if delta:
                operator = "plus" if delta > 0 else "minus"
                self._change_points(cid, self._group_id(name), name, operator, abs(delta), ref)

        self._with_contact(contact, apply)

    def read_scores(self, contact: Contact) -> dict[str, int]:
        def read(cid: int) -> dict[str, int]:
            body = self._call("GET", f"/contacts/{cid}", "read the contact's tags", contact_route=True)
            record = body.get("contact") or {}
            tags = [str(t["tag"]) for t in record.get("tags") or [] if isinstance(t, dict) and t.get("tag")]
            scores: dict[str, tuple[str, int]] = {}
            for _, group_name, score in self._group_scores(cid):
                scores.setdefault(group_name.casefold(), (group_name, score))
            result = {tag: scores.pop(tag.casefold(), (tag, 0))[1] for tag in tags}
            result.update({name: score for name, score in scores.values() if score})
            return result

        return self._with_contact(contact, read)

    def read_score(self, contact: Contact, tag: str) -> int:
        """One request, where `read_scores` needs two: a tag's score is its point group's, whether the contact
        still has the tag or not (see `read_scores`), so the contact's tags need not be read. Of groups whose
        names differ only in case, the first listed counts, as in `read_scores`."""
        folded = tag.casefold()

        def read(cid: int) -> int:
            return next((score for _, name, score in self._group_scores(cid) if name.casefold() == folded), 0)

        return self._with_contact(contact, read)

    def start_automation(self, contact: Contact, trigger_code: str, *, ref: str) -> None:
        """Mautic has no automation trigger codes: refused at once, without a request."""
        raise errors.Rejected(
            f"Start Automation ({trigger_code!r}) is a Spotler operation; Mautic has no automation trigger codes. "
            "Start a Mautic campaign from a segment or a tag instead (e.g. add a tag with Add Tag).",
            result_code="NOT_SUPPORTED",
        )

    # --- contacts -------------------------------------------------------------------------------------------

    def contact_id(self, contact: Contact) -> int:
        """Mautic's id of the contact, from the cache or looked up."""
        return self._contact_id(contact)[0]

    def _contact_id(self, contact: Contact) -> tuple[int, bool]:
        with self._contacts_lock:
            found = self._contacts.get(contact)
            if found is not None:
                self._contacts.move_to_end(contact)
                return found, True
        found = self._lookup(contact)
        with self._contacts_lock:
            self._contacts[contact] = found
            while len(self._contacts) > CONTACT_CACHE_SIZE:
                self._contacts.popitem(last=False)
        return found, False

    def _forget(self, contact: Contact) -> None:
        with self._contacts_lock:
            self._contacts.pop(contact, None)

    def _lookup(self, contact: Contact) -> int:
        if self.contact_field and contact.external_id:
            params: dict[str, str] = {
                "where[0][col]": self.contact_field,
                "where[0][expr]": "eq",
                "where[0][val]": contact.external_id,
            }
            field, value, described = (
                self.contact_field,
                contact.external_id,
                f"{self.contact_field} {contact.external_id}",
            )
        elif contact.email:
            if '"' in contact.email:
                raise errors.InvalidInput(
                    f"The e-mail address {contact.email!r} contains a double quote, which Mautic's contact "
                    "search cannot express."
                )
            # `+` makes Mautic's LIKE exact instead of `%...%`; `_` and `%` still match loosely, hence the
            # exact comparison below.
            params = {"search": f'email:"+{contact.email}"'}
            field, value, described = "email", contact.email, f"e-mail address {contact.email}"
        else:
            hint = "" if self.contact_field else " (set mautic.contact_field to look contacts up by CRM id)"
            raise errors.InvalidInput(f"Contact {contact} has no e-mail address to find it in Mautic by{hint}.")
        params.update({"minimal": "true", "limit": "30", "orderBy": "id", "orderByDir": "asc"})
        body = self._call("GET", "/contacts", f"search for the contact with {described}", params=params)
        matches: list[int] = []
        unknown: list[int] = []
        for record in _records(body.get("contacts")):
            cid = int(record["id"])
            seen = _field_value(record, field)
            if seen is None:
                unknown.append(cid)
            elif str(seen).casefold() == value.casefold():
                matches.append(cid)
        candidates = matches or unknown
        if not candidates:
            raise errors.NotFound(
                f"Mautic has no contact with {described}.", result_code="CONTACT_NOT_FOUND", http_status=None
            )
        if len(candidates) > 1:
            log.warning(
                "Mautic has %d contacts with %s; using the oldest, id %d",
                len(candidates),
                described,
                min(candidates),
            )
        return min(candidates)

    def _with_contact(self, contact: Contact, action: Callable[[int], T]) -> T:
        cid, cached = self._contact_id(contact)
        try:
            return action(cid)
        except errors.NotFound:
            if not cached:
                raise
        # A cached id (or group id) went stale: the contact was merged or deleted, or a group removed.
        log.info("Mautic no longer knows contact id %d for %s; looking it up again", cid, contact)
        self._forget(contact)
        with self._groups_lock:
            self._groups.clear()
        cid, _ = self._contact_id(contact)
        return action(cid)

    # --- tags and point groups ------------------------------------------------------------------------------

    def _edit_tags(self, cid: int, tags: list[str]) -> None:
        edit = TagEdit(self, cid, tags)
        grouped = self.tag_edits
        if grouped is None:
            edit.alone()
        else:
            grouped(edit)

    def _edit_tags_alone(self, cid: int, tags: list[str]) -> None:
        self._call("PATCH", f"/contacts/{cid}/edit", EDIT_TAGS, contact_route=True, json={"tags": tags})

    def _group_scores(self, cid: int) -> Iterator[tuple[int, str, int]]:
        body = self._call(
            "GET", f"/contacts/{cid}/points/groups", "read the contact's point group scores", contact_route=True
        )
        for item in _records(body.get("groupScores")):
            group = item.get("group") or {}
            if group.get("id") is not None and group.get("name") is not None:
                yield int(group["id"]), str(group["name"]), int(item.get("score") or 0)

    def _change_points(self, cid: int, group_id: int, tag: str, operator: str, value: int, ref: str) -> None:
        data = {
            "eventName": f"Connector job {ref}"[:LOG_NAME_MAX],
            "actionName": f"{operator} {value} ({tag})"[:LOG_NAME_MAX],
        }
        self._call(
            "POST",
            f"/contacts/{cid}/points/groups/{group_id}/{operator}/{value}",
            f"{operator} {value} on the score of tag {tag!r}",
            data=data,
        )

    def _group_id(self, tag: str) -> int:
        """The point group named like the tag, created when there is none."""
        key = tag.casefold()
        with self._groups_lock:
            found = self._groups.get(key)
        if found is not None:
            return found
        with self._groups_miss_lock:
            with self._groups_lock:
                found = self._groups.get(key)
            if found is not None:
                return found
            groups = self._load_groups()
            found = groups.get(key)
            if found is None:
                body = self._call(
                    "POST",
                    "/points/groups/new",
                    f"create the point group for tag {tag!r}",
                    json={
                        "name": tag,
                        "description": "Score of the tag of the same name, kept by the connector.",
                    },
                )
                found = int((body.get("pointGroup") or {})["id"])
                log.info("Created Mautic point group %d for tag %r", found, tag)
                groups[key] = found
            with self._groups_lock:
                self._groups = groups
            return found

    def _load_groups(self) -> dict[str, int]:
        groups: dict[str, int] = {}
        start = 0
        while True:
            body = self._call(
                "GET",
                "/points/groups",
                "list the point groups",
                params={"start": start, "limit": GROUP_PAGE_SIZE, "orderBy": "id", "orderByDir": "asc"},
            )
            page = list(_records(body.get("pointGroups")))
            for group in page:
                # Ordered by id, so keeping the first of equal names keeps the lowest id.
                groups.setdefault(str(group["name"]).casefold(), int(group["id"]))
            start += len(page)
            if not page or start >= int(body.get("total") or 0):
                return groups

    # --- plumbing -------------------------------------------------------------------------------------------

    def _call(
        self, method: str, path: str, doing: str, *, contact_route: bool = False, **kwargs: Any
    ) -> dict[str, Any]:
        response = self._send(method, path, **kwargs)
        if response.status_code >= 400:
            raise mautic_error(response, doing, contact_route=contact_route)
        return _body(response, method, path)

    def _send(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {"Accept": "application/json"}
        return self.session.request(method, self.base_url + "/api" + path, headers=headers, auth=self.auth, **kwargs)


class TagEdit:
    """One worker's tag edit of one contact: alone, the contact edit call; in a group, one item of a batch edit."""

    def __init__(self, platform: MauticPlatform, cid: int, tags: list[str]) -> None:
        self.platform = platform
        self.cid = cid
        self.tags = tags

    def alone(self) -> None:
        self.platform._edit_tags_alone(self.cid, self.tags)

    def answer(self, answered: tuple[Any, Any, requests.Response] | None) -> None:
        """Succeeds, or raises what the contact edit call would have raised for this contact's status and error.
        None: the batch route is missing, so the edit goes alone."""
        if answered is None:
            return self.alone()
        status, error, batch = answered
        if status is None and isinstance(error, dict):
            status = error.get("code")
        try:
            status = int(status)
        except (TypeError, ValueError):
            # Mautic answered the request but not for this contact: its tags may or may not have changed.
            raise errors.OutcomeUnknown(
                f"Mautic's answer to a batch edit says nothing of contact {self.cid}; whether its tags changed is "
                "unknown.", http_status=batch.status_code) from None
        if status >= 400:
            raise mautic_error(_item_response(status, error, batch), EDIT_TAGS, contact_route=True)
        return None


class TagEdits(Grouped[TagEdit]):
    """Tag edits of workers running at once, sent in `PATCH /api/contacts/batch/edit` requests of up to `BATCH_MAX`
    contacts, each contact at most once per request (see `connector.groupcommit`)."""

    def __init__(self, platform: MauticPlatform, *, parallel: int = BATCH_PARALLEL, limit: int = BATCH_MAX) -> None:
        super().__init__(parallel=parallel)
        self.platform = platform
        self.limit = limit

    def room(self, taken: Sequence[TagEdit], write: TagEdit) -> Room:
        if len(taken) >= self.limit:
            return Room.FULL
        # Mautic loads the contacts of a batch once, and edits a contact named twice through the same loaded object,
        # detached part way (CommonApiController::processBatchForm): nothing to build on. The second edit of a
        # contact waits for the next request.
        if any(edit.cid == write.cid for edit in taken):
            return Room.LATER
        return Room.TAKE

    def send_together(self, writes: Sequence[TagEdit]) -> list[tuple[Any, Any, requests.Response] | None]:
        # One HTTP request, one slot of the brake (cost 1): Mautic's own rate limiter (api_rate_limiter_limit)
        # counts requests to /api, not the contacts in them, and so do the proxies in front of it. Counting a batch
        # as one contact each would space requests as if grouping saved nothing.
        if self.platform.tag_edits is not self:
            # The route is known to be missing: the edits queued before that was learnt go alone, without asking.
            return [None] * len(writes)
        path = "/contacts/batch/edit"
        response = self.platform._send("PATCH", path, json=[{"id": edit.cid, "tags": edit.tags} for edit in writes])
        if response.status_code in (404, 405):
            # A Mautic without the batch route (or one that reads `batch` as a contact id): nothing was edited, so
            # each edit goes alone. Every such answer, also to the batches that were on the wire or queued when the
            # first came back: theirs are no refusal of their contacts either.
            if self.platform.tag_edits is self:
                log.warning("Mautic answered %d to PATCH /api/contacts/batch/edit: tag edits go one contact per "
                            "request from now on (set mautic.batch_tag_edits = false to skip this)",
                            response.status_code)
                self.platform.tag_edits = None
            return [None] * len(writes)
        if response.status_code >= 400:
            raise mautic_error(response, f"change the tags of {len(writes)} contacts in one request")
        body = _body(response, "PATCH", path)
        statuses, errors_ = _by_position(body.get("statusCodes")), _by_position(body.get("errors"))
        return [(statuses.get(i), errors_.get(i), response) for i in range(len(writes))]


def _body(response: requests.Response, method: str, path: str) -> dict[str, Any]:
    """A successful answer's JSON object ({} when it has no body)."""
    if not response.content:
        return {}
    try:
        body = response.json()
    except ValueError as exc:
        # A login page or a proxy's error page: not Mautic's API answering.
        raise errors.Unavailable(
            f"Mautic answered {method} {path} with something that is not JSON (is base_url right?).",
            http_status=response.status_code,
        ) from exc
    return body if isinstance(body, dict) else {}


def _checked(tags: Iterable[str]) -> list[str]:
    names = [str(t).strip() for t in tags]
    for name in names:
        if not name:
            raise errors.InvalidInput("A tag name is empty.")
        if name.startswith("-"):
            raise errors.InvalidInput(
                f"Tag {name!r} starts with '-', which Mautic reads as 'remove this tag'; rename the tag."
            )
    return names


def _by_position(value: Any) -> dict[int, Any]:
    """A batch answer's per-item values by the item's place in the request. PHP's JSON writes an array keyed 0, 1,
    2 ... as a list and one with gaps (an item that failed, left out of `contacts`) as an object keyed "0", "2"."""
    if isinstance(value, list):
        return dict(enumerate(value))
    if isinstance(value, dict):
        return {int(key): item for key, item in value.items() if str(key).isdigit()}
    return {}


def _item_response(status: int, error: Any, batch: requests.Response) -> requests.Response:
    """One item of a batch answer as the answer of its own request would be, for `mautic_error`: its status, and
    its error in the body as the contact edit call words it ({"errors": [error]})."""
    item = requests.Response()
    item.status_code = status
    item.url, item.request = batch.url, batch.request
    # The body is set as `requests` itself sets it when it reads one off the wire.
    item._content = json.dumps({"errors": [error]} if isinstance(error, dict) else {}).encode()
    return item


def _records(value: Any) -> Iterator[dict[str, Any]]:
    """Mautic lists entities either as a JSON array or as an object keyed by id, depending on the endpoint."""
    items = value.values() if isinstance(value, dict) else value or []
    for item in items:
        if isinstance(item, dict):
            yield item


def _field_value(record: dict[str, Any], alias: str) -> Any:
    """A contact field's value from a contact record, or None when the record does not carry it."""
    fields = record.get("fields") or {}
    if isinstance(fields, dict):
        flat = fields.get("all")
        if isinstance(flat, dict) and alias in flat:
            return flat[alias]
        for group in fields.values():
            if isinstance(group, dict) and isinstance(group.get(alias), dict):
                return group[alias].get("value")
    return record.get(alias)
