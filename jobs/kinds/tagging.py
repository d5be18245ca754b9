"""What the platform kinds share: a payload of tags and an optional score, read from the CRM's job form.

Validation messages are read by CRM users on the job form, so each one is a sentence that names the field, the
value given and what would be right.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from config.text import shown
from jobs.kinds import RunContext, RunsOn
from jobs.model import CONTROL_CHARACTERS, MAX_SCORE, MAX_TAG_LENGTH, Target

_SEPARATORS = re.compile(r"[,;]")


class TagPayload(BaseModel):
    """The job form's Tag and Score fields, validated."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tags: list[str]
    score: int | None = None


@dataclass(frozen=True)
class TagKind:
    """A platform kind whose input is the form's Tag (one or several) and Score fields."""

    name: str
    verb: str  # "increased score {tags} by {score}"
    takes_score: bool = False
    takes_several_tags: bool = False
    needs_target: bool = True
    idempotent: bool = True
    # Keys live in their own namespace when the Tag field is not a tag (an automation's trigger code).
    key_namespace: str = ""
    tag_hint: str = "the name of a tag"
    runs_on: RunsOn = RunsOn.PLATFORM
    payload_model: ClassVar[type[TagPayload]] = TagPayload

    @property
    def label(self) -> str:
        """The CRM's display name: "Increase Score"."""
        return self.name.replace("_", " ").title()

    posts_timeline: ClassVar[bool] = True
    on_crm_form: ClassVar[bool] = True

    def validate(self, fields: Mapping[str, Any], target: Target | None) -> TagPayload:
        tags = split_tags(fields.get("tags", fields.get("tag")), self)
        score = parse_score(fields.get("score"), self)
        if target is None and self.needs_target:
            raise ValueError(
                f"{self.label} needs a contact, lead or account; only Add Tag can run without one "
                f"(it then just creates the tag)."
            )
        return TagPayload(tags=tags, score=score)

    def check_score(self, score: int) -> None:
        """A kind's own rule for the score, past the common ones; raises ValueError with a sentence."""

    def raw(self, payload: TagPayload) -> dict[str, Any]:
        return {"tags": ", ".join(payload.tags), "score": payload.score}

    def keys(self, payload: TagPayload, target: Target | None) -> list[str]:
        owner = f"{target.kind.value}:{target.id}" if target else "tag-only"
        return [f"{owner}|{self.key_namespace}{tag.casefold()}" for tag in payload.tags]

    def describe(self, payload: TagPayload) -> str:
        return self.verb.format(tags=", ".join(payload.tags), score=payload.score)

    def brief(self, payload: TagPayload) -> str:
        score = "" if payload.score is None else f" {payload.score}"
        return f"{self.label} {', '.join(payload.tags)}{score}"

    def template_fields(self, payload: TagPayload) -> dict[str, Any]:
        return {"tags": ", ".join(payload.tags), "score": "" if payload.score is None else payload.score}

    def to_json(self, payload: TagPayload) -> dict[str, Any]:
        return {"tags": list(payload.tags), "score": payload.score}

    def run(self, ctx: RunContext) -> None:
        raise NotImplementedError(self.name)  # pragma: no cover - every registered TagKind overrides it


def payload_of(ctx: RunContext) -> TagPayload:
    payload = ctx.request.payload
    assert isinstance(payload, TagPayload), payload
    return payload


def split_tags(raw: object, kind: TagKind) -> list[str]:
    """Tags from the form's text: trimmed, split on `,` or `;`, checked."""
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
                    f"Tag {shown(str(raw))} has an empty tag between separators; remove the extra ',' or ';'."
                )
            raise ValueError(f"Tag is empty; {kind.label} needs {kind.tag_hint}.")
        if len(tag) > MAX_TAG_LENGTH:
            raise ValueError(
                f"Tag {shown(tag, 40)} is {len(tag)} characters long; a tag has at most {MAX_TAG_LENGTH} characters."
            )
        if CONTROL_CHARACTERS.search(tag):
            raise ValueError(
                f"Tag {shown(tag)} contains a control character (a line break or tab); use letters, digits and spaces."
            )
        # Tags match without regard to case on the platforms, as in the ordering keys: keep the first spelling.
        if tag.casefold() not in {t.casefold() for t in tags}:
            tags.append(tag)
    if len(tags) > 1 and not kind.takes_several_tags:
        raise ValueError(
            f"Tag {shown(str(raw))} names {len(tags)} tags; {kind.label} takes exactly one tag (no ',' or ';')."
        )
    return tags


def parse_score(raw: object, kind: TagKind) -> int | None:
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        if kind.takes_score:
            raise ValueError(f"Score is empty; {kind.label} needs a whole number.")
        return None
    if not kind.takes_score:
        raise ValueError(
            f"Score is {shown(raw)}, but {kind.label} does not take a score; leave Score empty "
            f"or use Set Score, Increase Score or Decrease Score."
        )
    if isinstance(raw, bool):
        raise ValueError(f"Score is {shown(raw)}; it must be a whole number such as 10.")
    if isinstance(raw, int):
        score = raw
    else:
        text = repr(raw) if isinstance(raw, float) else str(raw).strip()
        if not re.fullmatch(r"[+-]?[0-9]+", text):
            raise ValueError(f"Score is {shown(text)}; it must be a whole number such as 10, without decimals.")
        if len(text.lstrip("+-")) > 10:
            raise ValueError(f"Score is {text[:20]}...; it must be between -{MAX_SCORE} and {MAX_SCORE}.")
        score = int(text)
    if abs(score) > MAX_SCORE:
        raise ValueError(f"Score is {score}; it must be between -{MAX_SCORE} and {MAX_SCORE}.")
    kind.check_score(score)
    return score


def raw_tags(raw: object) -> list[str]:
    """The tags of input that did not validate, as well as they can be read: split on `,` and `;`, trimmed."""
    if raw is None:
        return []
    parts = [str(p) for p in raw] if isinstance(raw, list | tuple) else _SEPARATORS.split(str(raw))
    return [tag for tag in (part.strip() for part in parts) if tag]


def raw_score(raw: object) -> int | None:
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
