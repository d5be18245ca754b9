"""What a job is: the request a CRM user makes, its validation, and the record the runner keeps of it.

Validation messages are read by CRM users on the job form, so each one is a sentence that names the field, the
value given and what would be right.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

MAX_TAG_LENGTH = 255
MAX_RECORD_ID_LENGTH = 100
# Scores are stored as 32-bit integers by the platforms and the CRM.
MAX_SCORE = 2_147_483_647
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # Unicode Cc: C0, DEL and C1 (e.g. U+0085, a line break)
_SEPARATORS = re.compile(r"[,;]")


class Operation(StrEnum):
    ADD_TAG = "add_tag"
    REMOVE_TAG = "remove_tag"
    SET_SCORE = "set_score"
    INCREASE_SCORE = "increase_score"
    DECREASE_SCORE = "decrease_score"
    REMOVE_SCORE = "remove_score"
    # Start a platform automation for the record; the Tag field carries the automation's trigger code.
    START_AUTOMATION = "start_automation"

    @property
    def label(self) -> str:
        """The CRM's display name: "Increase Score"."""
        return self.value.replace("_", " ").title()

    @property
    def takes_score(self) -> bool:
        return self in (Operation.SET_SCORE, Operation.INCREASE_SCORE, Operation.DECREASE_SCORE)

    @property
    def takes_several_tags(self) -> bool:
        return self in (Operation.ADD_TAG, Operation.REMOVE_TAG, Operation.REMOVE_SCORE)

    @property
    def is_increment(self) -> bool:
        """Not idempotent: applying it twice changes the result."""
        return self in (Operation.INCREASE_SCORE, Operation.DECREASE_SCORE)

    @classmethod
    def parse(cls, value: object) -> Operation:
        """Accepts `increase_score`, the CRM's "Increase Score", and spellings in between."""
        if isinstance(value, Operation):
            return value
        text = str(value or "").strip()
        key = re.sub(r"[\s\-]+", "_", text).lower()
        try:
            return cls(key)
        except ValueError:
            names = ", ".join(f"{op.label} ({op.value})" for op in cls)
            shown = repr(text) if text else "empty"
            raise ValueError(f"Operation is {shown}; it must be one of {names}.") from None


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
                f"The record id {value[:40]!r}… is {len(value)} characters long; a CRM id has at most "
                f"{MAX_RECORD_ID_LENGTH} characters."
            )
        if _CONTROL.search(value):
            raise ValueError(
                f"The record id {value!r} contains a control character (a line break or tab); it is not a valid CRM id."
            )
        return value

    def __str__(self) -> str:
        return f"{self.kind.value} {self.id}"


def split_tags(raw: object, operation: Operation) -> list[str]:
    """Tags from the form's text: trimmed, split on `,` or `;` for operations that take several, checked."""
    if isinstance(raw, list | tuple):
        parts = [str(p) for p in raw]
    else:
        text = "" if raw is None else str(raw)
        # Always split: a tag with `,` or `;` could never be removed again, since removals split on them.
        parts = _SEPARATORS.split(text)
    tags: list[str] = []
    for part in parts:
        tag = part.strip()
        if not tag:
            if len(parts) > 1:
                raise ValueError(
                    f"Tag {str(raw)!r} has an empty tag between separators; remove the extra ',' or ';'."
                )
            needed = "an automation trigger code" if operation is Operation.START_AUTOMATION else "the name of a tag"
            raise ValueError(f"Tag is empty; {operation.label} needs {needed}.")
        if len(tag) > MAX_TAG_LENGTH:
            raise ValueError(
                f"Tag {tag[:30]!r}... is {len(tag)} characters long; a tag has at most {MAX_TAG_LENGTH} characters."
            )
        if _CONTROL.search(tag):
            raise ValueError(
                f"Tag {tag!r} contains a control character (a line break or tab); use letters, digits and spaces."
            )
        # Tags match without regard to case on the platforms, as in the ordering keys: keep the first spelling.
        if tag.casefold() not in {t.casefold() for t in tags}:
            tags.append(tag)
    if len(tags) > 1 and not operation.takes_several_tags:
        raise ValueError(
            f"Tag {str(raw)!r} names {len(tags)} tags; {operation.label} takes exactly one tag (no ',' or ';')."
        )
    return tags


def parse_score(raw: object, operation: Operation) -> int | None:
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        if operation.takes_score:
            raise ValueError(f"Score is empty; {operation.label} needs a whole number.")
        return None
    if not operation.takes_score:
        raise ValueError(
            f"Score is {raw!r}, but {operation.label} does not take a score; leave Score empty "
            f"or use Set Score, Increase Score or Decrease Score."
        )
    if isinstance(raw, bool):
        raise ValueError(f"Score is {raw!r}; it must be a whole number such as 10.")
    if isinstance(raw, int):
        score = raw
    else:
        text = str(raw).strip()
        if isinstance(raw, float):
            text = repr(raw)
        if not re.fullmatch(r"[+-]?[0-9]+", text):
            raise ValueError(f"Score is {text!r}; it must be a whole number such as 10, without decimals.")
        if len(text.lstrip("+-")) > 10:
            raise ValueError(f"Score is {text[:20]}...; it must be between -{MAX_SCORE} and {MAX_SCORE}.")
        score = int(text)
    if abs(score) > MAX_SCORE:
        raise ValueError(f"Score is {score}; it must be between -{MAX_SCORE} and {MAX_SCORE}.")
    if operation is Operation.INCREASE_SCORE and score <= 0:
        hint = (
            f" To lower a score, use Decrease Score with {-score}."
            if score < 0
            else " An increase of 0 changes nothing."
        )
        raise ValueError(f"Score is {score}; Increase Score needs a number greater than 0.{hint}")
    if operation is Operation.DECREASE_SCORE and score <= 0:
        hint = (
            f" Decrease Score already lowers the score: give {-score}, not {score}."
            if score < 0
            else " A decrease of 0 changes nothing."
        )
        raise ValueError(f"Score is {score}; Decrease Score needs a number greater than 0.{hint}")
    return score


class JobRequest(BaseModel):
    """A validated request: what a CRM user asked for. Build one with `JobRequest.from_input`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    operation: Operation
    target: Target | None = None
    tags: list[str] = Field(min_length=1)
    score: int | None = None

    @model_validator(mode="before")
    @classmethod
    def _normalise(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        operation = Operation.parse(data.get("operation"))
        data["operation"] = operation
        data["tags"] = split_tags(data.get("tags"), operation)
        data["score"] = parse_score(data.get("score"), operation)
        if data.get("target") is None and operation is not Operation.ADD_TAG:
            raise ValueError(
                f"{operation.label} needs a contact, lead or account; only Add Tag can run without one "
                f"(it then just creates the tag)."
            )
        return data

    @classmethod
    def from_input(
        cls,
        *,
        operation: object,
        tags: object,
        score: object = None,
        target_kind: str | None = None,
        target_id: str | None = None,
    ) -> JobRequest:
        """Validate raw form input. Raises `InvalidJob` with every problem as a sentence."""
        target: Target | None = None
        problems: list[str] = []
        if target_id is not None and str(target_id).strip():
            kind = str(target_kind or "").strip().lower()
            if kind not in {k.value for k in TargetKind}:
                problems.append(f"Record type is {target_kind!r}; it must be contact, lead or account.")
            else:
                try:
                    target = Target(kind=TargetKind(kind), id=str(target_id))
                except ValidationError as exc:
                    problems.extend(_messages(exc))
        if problems:
            raise InvalidJob(problems)
        try:
            return cls.model_validate({"operation": operation, "tags": tags, "score": score, "target": target})
        except ValidationError as exc:
            raise InvalidJob(_messages(exc)) from None

    @property
    def keys(self) -> list[str]:
        """What must be ordered: one key per (target, tag). Jobs sharing a key run in creation order."""
        owner = f"{self.target.kind.value}:{self.target.id}" if self.target else "tag-only"
        if self.operation is Operation.START_AUTOMATION:
            # Its own namespace: a trigger code that happens to equal a tag's name does not wait for that tag.
            return [f"{owner}|automation:{code.casefold()}" for code in self.tags]
        return [f"{owner}|{tag.casefold()}" for tag in self.tags]

    def describe(self) -> str:
        tags = ", ".join(self.tags)
        what = {
            Operation.ADD_TAG: f"added tag {tags}",
            Operation.REMOVE_TAG: f"removed tag {tags}",
            Operation.REMOVE_SCORE: f"removed score {tags}",
            Operation.SET_SCORE: f"set score {tags} to {self.score}",
            Operation.INCREASE_SCORE: f"increased score {tags} by {self.score}",
            Operation.DECREASE_SCORE: f"decreased score {tags} by {self.score}",
            Operation.START_AUTOMATION: f"started automation {tags}",
        }[self.operation]
        return what


class InvalidJob(ValueError):
    """The job's input is not valid; `problems` are sentences for the CRM user."""

    result_code = "INVALID_INPUT"

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(" ".join(problems))


def _messages(exc: ValidationError) -> list[str]:
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


def _raw_tags(raw: object) -> list[str]:
    """The tags of input that did not validate, as well as they can be read: split on `,` and `;`, trimmed."""
    if raw is None:
        return []
    parts = [str(p) for p in raw] if isinstance(raw, list | tuple) else _SEPARATORS.split(str(raw))
    return [tag for tag in (part.strip() for part in parts) if tag]


def _raw_score(raw: object) -> int | None:
    """The score of input that did not validate, when it is a whole number; otherwise None."""
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return raw
    if isinstance(raw, float):
        return int(raw) if raw.is_integer() else None
    if isinstance(raw, str) and re.fullmatch(r"[+-]?[0-9]+", raw.strip()):
        return int(raw.strip())
    return None


class Job(BaseModel):
    """A job as the store keeps it."""

    model_config = ConfigDict(extra="forbid")

    id: str
    request: JobRequest | None  # None when the stored input is invalid (a row edited in the CRM)
    raw: dict[str, Any] = Field(default_factory=dict)  # the input as given, kept for messages and re-validation
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
    applied_at: float | None = None  # the platform change is done; only the timeline post may remain
    posted_at: float | None = None
    score_before: int | None = None  # read before an increment's first attempt (guarantee 3)

    @property
    def retrying(self) -> bool:
        return self.status is JobStatus.PENDING and self.attempts > 0

    @property
    def display_status(self) -> str:
        return "retrying" if self.retrying else self.status.value

    def to_json(self) -> dict[str, Any]:
        req = self.request
        raw = self.raw
        target: dict[str, Any] | None
        if req is not None:
            target = {"kind": req.target.kind.value, "id": req.target.id} if req.target else None
        else:
            has_target = raw.get("target_id") not in (None, "")
            target = {"kind": raw.get("target_kind"), "id": raw.get("target_id")} if has_target else None
        return {
            "id": self.id,
            "operation": req.operation.value if req else raw.get("operation"),
            "target": target,
            # The same shape whether or not the stored input is valid: tags a list of strings, score an int or
            # None; `input` keeps what was given, so nothing is hidden.
            "tags": req.tags if req else _raw_tags(raw.get("tags")),
            "score": req.score if req else _raw_score(raw.get("score")),
            "input": raw,
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
