"""What a job is: the request a CRM user makes, its validation, and the record the runner keeps of it.

Validation messages are read by CRM users on the job form, so each one is a sentence that names the field, the
value given and what would be right.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from config.text import shown

if TYPE_CHECKING:
    from jobs.kinds import Kind

MAX_TAG_LENGTH = 255
MAX_RECORD_ID_LENGTH = 100
# Scores are stored as 32-bit integers by the platforms and the CRM.
MAX_SCORE = 2_147_483_647
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # Unicode Cc: C0, DEL and C1 (e.g. U+0085, a line break)


class TargetKind(StrEnum):
    CONTACT = "contact"
    ACCOUNT = "account"
    LEAD = "lead"


class JobStatus(StrEnum):
    PENDING = "pending"  # waiting to run; with next_attempt_at in the future it is retrying
    RUNNING = "running"  # claimed by a runner holding a lease
    SUCCEEDED = "succeeded"  # applied on the platform (and posted on the timeline)
    FAILED = "failed"  # final until someone asks to retry it
    CANCELLED = "cancelled"  # withdrawn before it ran

    @property
    def finished(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


class Target(BaseModel):
    """The CRM record a job is about."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: TargetKind
    id: str

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("The record id is empty; give the id of the contact, lead or account.")
        if len(value) > MAX_RECORD_ID_LENGTH:
            raise ValueError(
                f"The record id {shown(value, 40)} is {len(value)} characters long; a CRM id has at most "
                f"{MAX_RECORD_ID_LENGTH} characters."
            )
        if CONTROL_CHARACTERS.search(value):
            raise ValueError(
                f"The record id {shown(value)} contains a control character (a line break or tab); it is not a valid "
                "CRM id."
            )
        if separator := next((c for c in ",;" if c in value), None):
            raise ValueError(f"The record id {shown(value)} contains {separator!r}, as a list of records would: a job "
                             "is about one record, so create one job per record.")
        return value

    def __str__(self) -> str:
        return f"{self.kind.value} {self.id}"


@dataclass(frozen=True)
class Origin:
    """Where a job comes from: a CRM user's job (`crm`), an `import` (with its `batch`), a scoring `rule`, a
    `trigger`, or the `api`. A trigger's action job also names the job whose change fired it, the trigger, the
    firing, and the tag and the score that crossed the threshold (for a webhook's or a mail's text)."""

    source: str = "crm"
    job_id: str | None = None
    trigger: str | None = None
    firing: str | None = None
    tag: str | None = None
    score: str | None = None
    batch: str | None = None

    def to_json(self) -> dict[str, str] | None:
        """None for a CRM user's job, the most common kind; the fields set otherwise."""
        # Plain fields, read directly: asdict deep-copies, a cost paid twice on every row of a large import.
        data = {name: value for name, value in vars(self).items() if value is not None}
        return None if data == {"source": "crm"} else data

    @classmethod
    def from_json(cls, data: object) -> Origin:
        if not isinstance(data, dict):
            return cls()
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: str(v) for k, v in data.items() if k in known and v is not None})


@dataclass(frozen=True)
class JobRequest:
    """A validated request: a kind of job, its payload and its target. Build one with `jobs.kinds.request_from_raw`
    (or `JobRequest.from_input`); the kind's handler (`jobs.kinds`) says what the payload holds."""

    kind: Kind
    target: Target | None
    payload: Any
    # A caller's own name for this request: the same request id is queued once (see `JobStore.add`).
    request_id: str | None = None
    origin: Origin = field(default_factory=Origin)

    @classmethod
    def from_input(cls, *, operation: object, target_kind: str | None = None, target_id: str | None = None,
                   **fields: Any) -> JobRequest:
        """Validate raw form input. Raises `InvalidJob` with every problem as a sentence."""
        from jobs.kinds import request_from_raw

        return request_from_raw({"operation": operation, "target_kind": target_kind, "target_id": target_id,
                                 **fields})

    @property
    def keys(self) -> list[str]:
        """What must be ordered. Jobs sharing a key run in creation order."""
        return self.kind.keys(self.payload, self.target)

    def describe(self) -> str:
        return self.kind.describe(self.payload)

    def brief(self) -> str:
        return self.kind.brief(self.payload)


class InvalidJob(ValueError):
    """The job's input is not valid; `problems` are sentences for the CRM user."""

    result_code = "INVALID_INPUT"

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(" ".join(problems))


def messages_of(exc: ValidationError) -> list[str]:
    out = []
    for err in exc.errors():
        msg = str(err.get("msg", ""))
        msg = msg.removeprefix("Value error, ")
        out.append(msg if msg.endswith(".") else msg + ".")
    return out


def iso(ts: float | None) -> str | None:
    """Epoch seconds as an ISO 8601 UTC string, for people and JSON."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class Attempt(BaseModel):
    """One try at a job, as support staff read it."""

    model_config = ConfigDict(extra="forbid")

    job_id: str
    number: int = 0  # assigned by the store: attempts are numbered per job across manual retries
    started_at: float
    ended_at: float | None = None
    outcome: str  # succeeded | retrying | failed | released | lease_expired
    result_code: str | None = None
    http_status: int | None = None
    message: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "started_at": iso(self.started_at),
            "ended_at": iso(self.ended_at),
            "outcome": self.outcome,
            "result_code": self.result_code,
            "http_status": self.http_status,
            "message": self.message,
        }


@dataclass(frozen=True, kw_only=True)
class Job:
    """A job as the store keeps it. Built by the stores from their own rows, so it is not validated again."""

    id: str
    request: JobRequest | None  # None when the stored input is invalid (a row edited in the CRM)
    raw: dict[str, Any] = field(default_factory=dict)  # the input as given, kept for messages and re-validation
    status: JobStatus = JobStatus.PENDING
    created_at: float
    updated_at: float
    next_attempt_at: float
    attempts: int = 0
    result_code: str | None = None
    message: str = ""
    http_status: int | None = None
    lease_owner: str | None = None
    lease_expires_at: float | None = None
    applied_at: float | None = None  # the change is done; only the timeline post may remain
    posted_at: float | None = None
    score_before: int | None = None  # read before an increment's first attempt (guarantee 3)
    request_id: str | None = None  # the caller's key: a request id is queued once

    @property
    def retrying(self) -> bool:
        return self.status is JobStatus.PENDING and self.attempts > 0

    @property
    def display_status(self) -> str:
        return "retrying" if self.retrying else self.status.value

    def replace(self, **changes: Any) -> Job:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        from jobs.kinds.tagging import raw_score, raw_tags

        req = self.request
        raw = self.raw
        target: dict[str, Any] | None
        if req is not None:
            target = {"kind": req.target.kind.value, "id": req.target.id} if req.target else None
            # Tag kinds give tags (a list of strings) and score (an int or None); other kinds their own fields.
            fields = req.kind.to_json(req.payload)
        else:
            has_target = raw.get("target_id") not in (None, "")
            target = {"kind": raw.get("target_kind"), "id": raw.get("target_id")} if has_target else None
            # The same shape as a valid tag job's; `input` keeps what was given, so nothing is hidden.
            fields = {"tags": raw_tags(raw.get("tags")), "score": raw_score(raw.get("score"))}
        return {
            "id": self.id,
            "operation": req.kind.name if req else raw.get("operation"),
            "target": target,
            **fields,
            "input": raw,
            "request_id": self.request_id,
            "origin": req.origin.to_json() if req else raw.get("origin"),
            "status": self.status.value,
            "display_status": self.display_status,
            "result_code": self.result_code,
            "message": self.message,
            "http_status": self.http_status,
            "attempts": self.attempts,
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
            "next_attempt_at": iso(self.next_attempt_at) if self.status is JobStatus.PENDING else None,
            "applied_at": iso(self.applied_at),
            "posted_at": iso(self.posted_at),
        }
