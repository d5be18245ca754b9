"""Job kinds: what a job can ask for, each described by one handler, found by name in one registry.

A job is a kind plus a validated payload (and, for most kinds, a target record). A kind's handler declares
everything the rest of the connector needs to know about it:

- its name (`add_tag`) and the CRM's display name ("Add Tag"), both accepted wherever a user names a kind;
- its payload: how raw input becomes a payload (`validate`, raising sentences for the user) and back (`raw`);
- where it runs (`runs_on`: the platform, the CRM, or an outside service) and how (`run`, given a `RunContext`);
- its ordering keys: jobs sharing a key run in creation order;
- whether running it twice is harmless (`idempotent`); a kind that is not keeps its own effect-once record
  through the context (the score kinds read the score back, see `jobs.kinds.scores`);
- how it reads in lists (`brief`), in sentences (`describe`) and in the timeline template (`template_fields`).

The executor, the stores and the CLI only ever talk to the handler. Adding a kind is a handler module that calls
`register()`, its tests and a line in the README.

Kinds a CRM user creates on the Dataverse job form are the ones with a choice value in
`dataverse.jobs.operation_values` (today the seven platform kinds below); the connector keeps every other kind in
the same table as JSON (see `jobs.store.dataverse`), so that it is ordered, retried and logged like the rest.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, ValidationError

from config.text import shown
from connector.crm import Crm
from connector.platform import Contact, Platform
from jobs.model import InvalidJob, JobRequest, Origin, Target, TargetKind, messages_of
from jobs.scoring.changes import Change

if TYPE_CHECKING:
    from jobs.model import Job


class RunsOn(StrEnum):
    PLATFORM = "platform"  # the marketing platform: tags, scores, automations
    CRM = "crm"  # the CRM itself: record updates, tasks, timeline posts
    SERVICE = "service"  # anything else: a webhook receiver, a mail server


class RunContext(Protocol):
    """What a kind's `run` may use. Built by the executor for one attempt of one job."""

    job: Job
    request: JobRequest
    platform: Platform
    crm: Crm
    services: Mapping[str, Any]  # outside services by name (composition root), for kinds that run on them

    def contact(self) -> Contact:
        """How the platform knows the job's target (asked of the CRM once per run)."""

    def remember(self, *, score_before: int) -> None:
        """Keep, durably on the job, what an attempt observed before changing anything."""

    def changed(self, change: Change) -> None:
        """Report a change this run applied (`jobs.scoring.changes`), with the score before and after where
        known: the observer's subscribers keep the history and fire triggers from it."""


class Kind(Protocol):
    """The handler of one kind of job."""

    @property
    def name(self) -> str: ...

    @property
    def label(self) -> str: ...

    @property
    def runs_on(self) -> RunsOn: ...

    @property
    def idempotent(self) -> bool: ...

    @property
    def posts_timeline(self) -> bool:
        """Whether a timeline post follows the change (a job with a target record only)."""

    @property
    def on_crm_form(self) -> bool:
        """Whether a CRM user creates it on the job form, whose fields are Tag and Score (`jobs.store.dataverse`)."""

    @property
    def payload_model(self) -> type[BaseModel]:
        """The payload's model: stores keep `payload.model_dump(mode="json")` and read it back through it."""

    def validate(self, fields: Mapping[str, Any], target: Target | None) -> BaseModel:
        """The payload from raw input fields; raises ValueError or InvalidJob with sentences for the user."""

    def raw(self, payload: Any) -> dict[str, Any]:
        """The input fields of a payload, as `validate` reads them back (the raw-input round trip)."""

    def keys(self, payload: Any, target: Target | None) -> list[str]:
        """What must be ordered; jobs sharing a key run in creation order."""

    def describe(self, payload: Any) -> str:
        """What was done, as a sentence fragment: "added tag Webinar"."""

    def brief(self, payload: Any) -> str:
        """The job in a list: "Increase Score Lead 10"."""

    def template_fields(self, payload: Any) -> dict[str, Any]:
        """`{tags}` and `{score}` of the timeline template."""

    def to_json(self, payload: Any) -> dict[str, Any]:
        """The payload's fields in a job's JSON."""

    def run(self, ctx: RunContext) -> None:
        """Apply the job. Raises the connector's errors (`connector.errors`): transient ones are retried."""


_REGISTRY: dict[str, Kind] = {}


def register(kind: Kind) -> Kind:
    if kind.name in _REGISTRY and _REGISTRY[kind.name] is not kind:
        raise ValueError(f"a job kind named {kind.name!r} is registered already")
    _REGISTRY[kind.name] = kind
    return kind


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


@contextmanager
def registered(kind: Kind) -> Iterator[Kind]:
    """A kind that exists for the length of a `with` block (tests)."""
    register(kind)
    try:
        yield kind
    finally:
        unregister(kind.name)


def all_kinds() -> list[Kind]:
    return list(_REGISTRY.values())


def kind_named(value: object) -> Kind:
    """Accepts `increase_score`, the CRM's "Increase Score", and spellings in between."""
    text = str(value or "").strip()
    key = re.sub(r"[\s\-]+", "_", text).lower()
    kind = _REGISTRY.get(key)
    if kind is None:
        names = ", ".join(f"{k.label} ({k.name})" for k in _REGISTRY.values())
        given = shown(text) if text else "empty"
        raise ValueError(f"Operation is {given}; it must be one of {names}.")
    return kind


TARGET_KINDS = frozenset(k.value for k in TargetKind)


def target_of(target_kind: object, target_id: object) -> Target | None:
    """The target of raw input, or None when no record id is given; raises InvalidJob with every problem."""
    if target_id is None or not str(target_id).strip():
        return None
    kind = str(target_kind or "").strip().lower()
    if kind not in TARGET_KINDS:
        raise InvalidJob([f"Record type is {shown(target_kind)}; it must be contact, lead or account."])
    try:
        return Target(kind=TargetKind(kind), id=str(target_id))
    except ValidationError as exc:
        raise InvalidJob(messages_of(exc)) from None


def request_from_raw(raw: Mapping[str, Any]) -> JobRequest:
    """Validate raw input: `operation` (a kind's name or label), `target_kind`, `target_id`, the kind's fields
    and an optional `request_id`. Raises `InvalidJob` with sentences."""
    target = target_of(raw.get("target_kind"), raw.get("target_id"))
    try:
        kind = kind_named(raw.get("operation", raw.get("kind")))
        payload = kind.validate(raw, target)
    except ValidationError as exc:
        raise InvalidJob(messages_of(exc)) from None
    except InvalidJob:
        raise
    except ValueError as exc:
        raise InvalidJob([str(exc)]) from None
    request_id = raw.get("request_id")
    return JobRequest(kind=kind, target=target, payload=payload,
                      request_id=None if request_id in (None, "") else str(request_id),
                      origin=Origin.from_json(raw.get("origin")))


def raw_of(request: JobRequest) -> dict[str, Any]:
    """The raw input of a valid request; `request_from_raw(raw_of(r))` gives `r` back."""
    target = request.target
    raw: dict[str, Any] = {
        "operation": request.kind.name,
        "target_kind": target.kind.value if target else None,
        "target_id": target.id if target else None,
        **request.kind.raw(request.payload),
    }
    if request.request_id is not None:
        raw["request_id"] = request.request_id
    if (origin := request.origin.to_json()) is not None:
        raw["origin"] = origin
    return raw


def stored_request(kind_name: str, target: Target | None, payload: Mapping[str, Any] | None,
                   request_id: str | None, origin: object = None) -> JobRequest | None:
    """The request a store kept (its kind's name and payload JSON), or None when the kind is no longer known or
    the payload was not valid when stored (the job then fails with the reason when it runs)."""
    kind = _REGISTRY.get(kind_name)
    if kind is None or payload is None:
        return None
    try:
        return JobRequest(kind=kind, target=target, payload=kind.payload_model.model_validate(payload),
                          request_id=request_id, origin=Origin.from_json(origin))
    except ValidationError:
        return None


def payload_json(request: JobRequest) -> dict[str, Any]:
    return dict(request.payload.model_dump(mode="json"))


def try_request(raw: Mapping[str, Any]) -> JobRequest | None:
    """The request of stored input, or None when it is not valid (it fails when it runs, with the reason)."""
    try:
        return request_from_raw(raw)
    except InvalidJob:
        return None


# The built-in kinds register themselves on import, in the order users see them listed.
from jobs.kinds import tags  # noqa: E402, I001
from jobs.kinds import scores  # noqa: E402
from jobs.kinds import automation  # noqa: E402
from jobs.kinds import crm  # noqa: E402
from jobs.kinds import notify  # noqa: E402

__all__ = [
    "Kind",
    "RunContext",
    "RunsOn",
    "all_kinds",
    "automation",
    "crm",
    "kind_named",
    "notify",
    "payload_json",
    "raw_of",
    "register",
    "registered",
    "request_from_raw",
    "scores",
    "stored_request",
    "tags",
    "target_of",
    "try_request",
    "unregister",
]
