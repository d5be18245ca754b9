"""Spotler Mail+ (formerly MailPlus) REST API client.

Verified from the public specification: one-legged OAuth 1.0a with HMAC-SHA1, JSON bodies, the contact routes
(`GET /contact/{externalId}`, `POST /contact`, `GET /contact/search`), the automation trigger route, and the error
body `{"errorType", "message"}`.

**Unverified**: the REST routes for tags and scores are not in the public specification. They live in
`TAG_ROUTES`, one table that an operator can override from the settings once the account's real routes are
known, and the sandbox speaks exactly this table.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote

import requests
from requests_oauthlib import OAuth1

from connector import errors
from connector.http import ApiSession, error_for_status
from connector.platform import Contact, score_in

log = logging.getLogger(__name__)

# (method, path template). Placeholders: {contact} the external id, {tag} the tag name, both URL-quoted.
# UNVERIFIED against the real API: see the module docstring.
TAG_ROUTES: dict[str, tuple[str, str]] = {
    "create_tag": ("POST", "tag"),  # body {"name": tag}; 204, also when it already exists
    "read_tags": ("GET", "contact/{contact}/tags"),  # -> {"tags": [{"name": str, "score": int}]}
    "add_tags": ("POST", "contact/{contact}/tags"),  # body {"tags": [names]}; keeps existing scores
    "remove_tag": ("DELETE", "contact/{contact}/tags/{tag}"),  # 204, also when the contact lacks the tag
    "set_score": ("PUT", "contact/{contact}/tags/{tag}/score"),  # body {"score": n}
    "change_score": ("POST", "contact/{contact}/tags/{tag}/score"),  # body {"change": n}
}

AUTOMATION_RESULTS = {
    "AUTOMATION_INACTIVE": "the automation is not active",
    "PARTICIPATION_LIMIT_REACHED": "the contact has already taken part as often as the automation allows",
}

# errorType -> (our error class, result code)
_ERROR_TYPES: dict[str, tuple[type[errors.ConnectorError], str]] = {
    "CONTACT_NOT_FOUND": (errors.NotFound, "CONTACT_NOT_FOUND"),
    "RESOURCE_NOT_FOUND": (errors.NotFound, "NOT_FOUND"),
    "TRIGGER_NOTFOUND": (errors.NotFound, "TRIGGER_NOT_FOUND"),
    "NOT_AUTHORIZED": (errors.AuthError, "AUTH_FAILED"),
    "AUTH_NOT_FOUND": (errors.AuthError, "AUTH_FAILED"),
    "INVALID_PARAMS": (errors.InvalidInput, "INVALID_INPUT"),
    "INVALID_PROPERTY": (errors.InvalidInput, "INVALID_INPUT"),
    "CONTACT_OPTOUT": (errors.Rejected, "CONTACT_OPTOUT"),
    "BACKEND_EXCEPTION": (errors.Unavailable, "UNAVAILABLE"),
}


def spotler_error(response: requests.Response) -> errors.ConnectorError:
    """Our error for a Spotler error response: the errorType decides where it has one, else the status."""
    error_type, message = "", ""
    try:
        body = response.json()
        if isinstance(body, dict):
            error_type = str(body.get("errorType") or "")
            message = str(body.get("message") or "")
    except ValueError:
        message = response.text
    # 400 answers may be HTML lists of problems: keep the words, drop the markup.
    message = re.sub(r"<[^>]+>", " ", message)
    message = re.sub(r"\s+", " ", message).strip()[:500] or f"HTTP {response.status_code}"
    text = f"Spotler: {message}"
    if response.status_code in (429, 502, 503, 504) or error_type not in _ERROR_TYPES:
        return error_for_status(response, text)
    cls, code = _ERROR_TYPES[error_type]
    if cls is errors.AuthError:
        text += " Check the consumer key and secret of the Spotler integration."
    return cls(text, result_code=code, http_status=response.status_code)


class SpotlerPlatform:
    """The Spotler Mail+ adapter. Thread-safe: it shares one pooled `ApiSession` between workers."""

    name = "spotler"

    def __init__(
        self,
        session: ApiSession,
        *,
        base_url: str,
        consumer_key: str,
        consumer_secret: str,
        create_missing_contacts: bool = False,
        routes: Mapping[str, tuple[str, str]] | None = None,
    ) -> None:
        self.session = session
        self.base_url = base_url.rstrip("/") + "/"
        # One-legged: a consumer key and secret, no token. requests-oauthlib signs every request afresh.
        self.session.auth = OAuth1(consumer_key, client_secret=consumer_secret, signature_type="AUTH_HEADER")
        self.create_missing_contacts = create_missing_contacts
        self.routes = {**TAG_ROUTES, **(routes or {})}

    def __repr__(self) -> str:
        return f"SpotlerPlatform(base_url={self.base_url!r})"

    # --- the Platform protocol ------------------------------------------------------------------------------

    def create_tags(self, tags: Sequence[str]) -> None:
        for tag in tags:
            self._call("create_tag", json={"name": tag})

    def add_tags(self, contact: Contact, tags: Sequence[str], *, ref: str) -> None:
        self._for_contact(contact, "add_tags", json={"tags": list(tags)})

    def remove_tags(self, contact: Contact, tags: Sequence[str], *, ref: str) -> None:
        for tag in tags:
            self._for_contact(contact, "remove_tag", tag=tag)

    def set_score(self, contact: Contact, tag: str, score: int, *, ref: str) -> None:
        self._for_contact(contact, "set_score", tag=tag, json={"score": score})

    def change_score(self, contact: Contact, tag: str, delta: int, *, ref: str) -> None:
        self._for_contact(contact, "change_score", tag=tag, json={"change": delta})

    def read_scores(self, contact: Contact) -> dict[str, int]:
        body = self._for_contact(contact, "read_tags").json()
        return {str(item["name"]): int(item.get("score") or 0) for item in body.get("tags", [])}

    def read_score(self, contact: Contact, tag: str) -> int:
        # Spotler has no route for one tag's score: the contact's tags are one request all the same.
        return score_in(self.read_scores(contact), tag)

    # --- beyond tags ------------------------------------------------------------------------------------------

    def start_automation(self, contact: Contact, trigger_code: str, *, ref: str = "") -> None:
        """Start an automation for the contact: 200 started; 404 trigger or contact unknown; 417 not triggered.

        A missing contact follows the contact-not-found policy (created first when `create_missing_contacts`).
        """
        external_id = self.external_id(contact)
        try:
            self._trigger(external_id, trigger_code)
        except errors.NotFound as exc:
            if exc.result_code != "CONTACT_NOT_FOUND" or not self.create_missing_contacts:
                raise
            log.info("Spotler has no contact %s; creating it as configured", external_id)
            self.create_contact(Contact(external_id=external_id, email=contact.email))
            self._trigger(external_id, trigger_code)

    def _trigger(self, external_id: str, trigger_code: str) -> None:
        response = self._send(
            "POST", f"automation/trigger/{quote(trigger_code, safe='')}", json={"externalContactId": external_id}
        )
        if response.status_code == 417:
            result = _field(response, "result") or _field(response, "errorType")
            reason = AUTOMATION_RESULTS.get(result, "nothing was triggered")
            raise errors.Rejected(
                f"Spotler did not start automation {trigger_code!r} for contact {external_id}: {reason}.",
                result_code=result or "NOT_TRIGGERED",
                http_status=417,
            )
        if response.status_code == 404:
            error_type = _field(response, "errorType")
            if error_type == "CONTACT_NOT_FOUND":
                raise errors.NotFound(
                    f"Spotler has no contact with external id {external_id}, so automation {trigger_code!r} "
                    "was not started.",
                    result_code="CONTACT_NOT_FOUND",
                    http_status=404,
                )
            if error_type == "TRIGGER_NOTFOUND":
                raise errors.NotFound(
                    f"Spotler has no automation with trigger code {trigger_code!r}; check the code in the "
                    "automation's trigger settings.",
                    result_code="TRIGGER_NOT_FOUND",
                    http_status=404,
                )
            raise errors.NotFound(
                f"Spotler knows no automation trigger {trigger_code!r} or no contact {external_id}.",
                result_code="TRIGGER_NOT_FOUND",
                http_status=404,
            )
        if response.status_code >= 400:
            raise spotler_error(response)

    def create_contact(self, contact: Contact) -> None:
        if not contact.external_id:
            raise errors.InvalidInput("A contact can only be created on Spotler with an external id.")
        properties: dict[str, Any] = {"email": contact.email} if contact.email else {}
        response = self._send(
            "POST", "contact", json={"update": False, "purge": False,
                                     "contact": {"externalId": contact.external_id, "properties": properties}}
        )
        if response.status_code >= 400 and _field(response, "errorType") != "CONTACT_EXISTS":
            raise spotler_error(response)

    def external_id(self, contact: Contact) -> str:
        """The contact's external id, looked up by e-mail address when the CRM record has none."""
        if contact.external_id:
            return contact.external_id
        if not contact.email:
            raise errors.InvalidInput("The contact has neither an external id nor an e-mail address.")
        response = self._send(
            "GET", "contact/search", params={"pageSize": 1, "MPSearchQuery": f"email={contact.email}"}
        )
        if response.status_code >= 400:
            raise spotler_error(response)
        found = response.json()
        items = found.get("contacts", found) if isinstance(found, dict) else found
        if not items:
            raise errors.NotFound(
                f"Spotler has no contact with e-mail address {contact.email}.", result_code="CONTACT_NOT_FOUND"
            )
        return str(items[0]["externalId"])

    # --- plumbing -------------------------------------------------------------------------------------------

    def _for_contact(self, contact: Contact, route: str, *, tag: str | None = None, **kwargs: Any) -> requests.Response:
        external_id = self.external_id(contact)
        try:
            return self._call(route, contact=external_id, tag=tag, **kwargs)
        except errors.NotFound as exc:
            if exc.result_code != "CONTACT_NOT_FOUND":
                raise
            if not self.create_missing_contacts:
                # Say which contact: Spotler's own words ("Given contact not found") do not.
                raise errors.NotFound(
                    f"{exc.message} (external id {external_id}; set spotler.create_missing_contacts to create "
                    "missing contacts).",
                    result_code=exc.result_code,
                    http_status=exc.http_status,
                ) from exc
        log.info("Spotler has no contact %s; creating it as configured", external_id)
        self.create_contact(Contact(external_id=external_id, email=contact.email))
        return self._call(route, contact=external_id, tag=tag, **kwargs)

    def _call(
        self, route: str, *, contact: str | None = None, tag: str | None = None, **kwargs: Any
    ) -> requests.Response:
        method, template = self.routes[route]
        path = template.format(contact=quote(contact or "", safe=""), tag=quote(tag or "", safe=""))
        response = self._send(method, path, **kwargs)
        if response.status_code >= 400:
            raise spotler_error(response)
        return response

    def _send(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {"Accept": "application/json"}
        return self.session.request(method, self.base_url + path, headers=headers, **kwargs)


def _field(response: requests.Response, name: str) -> str:
    try:
        body = response.json()
    except ValueError:
        return ""
    return str(body.get(name) or "") if isinstance(body, dict) else ""
