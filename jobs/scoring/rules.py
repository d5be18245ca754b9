"""The rules file: scoring rules (an event changes a tag's score) and triggers (a score reaching a threshold queues
action jobs). TOML, named by the `rules_file` setting, read and checked once when the connector starts: a file with
a mistake is refused whole, naming the file, the entry and what would be right, so nothing runs half-configured.

    [[rules]]
    event = "page_visit"            # the event's name
    tag = "Nutrition Interest"
    change = "+1"                   # +n, -n, =n (the score becomes n) or "erase" (the tag and its score go)
    occurrences = "every"           # every (the default) or first: only a record's first such event scores
    same_event = "id"               # id (the default) or "id+url": what makes a redelivered event the same one

    [[triggers]]
    name = "Nutrition prospect"
    tag = "Nutrition Interest"
    at_least = 3                    # fires when a change takes the score from below 3 to 3 or more
    rearm = "once"                  # once (the default): once per record, ever; every_crossing: again after the
                                    # score fell below and rose again
    cooldown = "7d"                 # optional: not again for the same record within this time

    [[triggers.actions]]
    do = "start_automation"         # any kind of job; its fields as for `jobs add` / `POST /jobs`
    tags = "prospect-nurture"
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from config.settings import SettingsError
from jobs.kinds import kind_named, request_from_raw
from jobs.model import InvalidJob

_CHANGE = re.compile(r"^\s*([+\-=])\s*(\d{1,10})\s*$")
_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class Rule(BaseModel):
    """An event changes a tag's score."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event: str = Field(min_length=1)
    tag: str = Field(min_length=1)
    change: str
    occurrences: Literal["every", "first"] = "every"
    same_event: Literal["id", "id+url"] = "id"

    @field_validator("change")
    @classmethod
    def _change(cls, value: str) -> str:
        if value.strip().lower() == "erase" or _CHANGE.match(value):
            return value.strip().lower()
        raise ValueError(f"change is {value!r}; use +n, -n or =n with a whole number n (such as +1, -5, =0), "
                         f"or erase")

    def job_fields(self) -> dict[str, Any]:
        """The job this rule makes of an event, as `jobs add` fields (without the record)."""
        if self.change == "erase":
            return {"operation": "remove_score", "tags": self.tag}
        match = _CHANGE.match(self.change)
        assert match is not None
        sign, number = match.groups()
        operation = {"+": "increase_score", "-": "decrease_score", "=": "set_score"}[sign]
        return {"operation": operation, "tags": self.tag, "score": int(number)}


class Action(BaseModel):
    """One job a firing queues: a kind (`do`) and its fields, as for `jobs add`."""

    model_config = ConfigDict(extra="allow", frozen=True)

    do: str

    @field_validator("do")
    @classmethod
    def _kind(cls, value: str) -> str:
        return kind_named(value).name  # ValueError lists the kinds there are

    @model_validator(mode="after")
    def _valid_job(self) -> Action:
        # Checked as the job it will be, for a record: a mistake shows at start-up, not at the first firing.
        try:
            request_from_raw({**self.fields(), "target_kind": "contact", "target_id": "C-0"})
        except InvalidJob as exc:
            raise ValueError(str(exc)) from None
        return self

    def fields(self) -> dict[str, Any]:
        return {"operation": self.do, **(self.model_extra or {})}


MAX_ACTIONS = 20


class Trigger(BaseModel):
    """When a tag's score reaches a threshold, queue the actions."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    tag: str = Field(min_length=1)
    at_least: int
    rearm: Literal["once", "every_crossing"] = "once"
    cooldown: float | None = None  # seconds
    # A crossing does a few things (tag, score, task, webhook); twenty is far more than any trigger needs, and what
    # a job's page lists of a firing.
    actions: list[Action] = Field(min_length=1, max_length=MAX_ACTIONS)

    @field_validator("at_least", mode="before")
    @classmethod
    def _threshold(cls, value: object) -> object:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"at_least is {value!r}; it must be a whole number such as 3")
        return value

    @field_validator("cooldown", mode="before")
    @classmethod
    def _cooldown(cls, value: object) -> object:
        if value is None or (isinstance(value, int | float) and not isinstance(value, bool)):
            return value
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"cooldown is {value!r}; give a number and a unit, such as 30m, 12h or 7d")
        return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rules: list[Rule] = []
    triggers: list[Trigger] = []

    @model_validator(mode="after")
    def _unique(self) -> _File:
        events = [rule.event for rule in self.rules]
        twice = sorted({e for e in events if events.count(e) > 1})
        if twice:
            raise ValueError(f"event {twice[0]!r} has more than one rule; an event becomes at most one job, so give "
                             f"it one rule")
        names = [trigger.name for trigger in self.triggers]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"trigger name {twice[0]!r} is used twice; firings are kept by name")
        return self


@dataclass(frozen=True)
class RuleSet:
    """The rules and triggers in force. Empty when no rules file is set."""

    rules: Mapping[str, Rule] = field(default_factory=dict)  # by event name
    triggers: tuple[Trigger, ...] = ()
    path: Path | None = None
    warnings: tuple[str, ...] = ()

    def rule_for(self, event: str) -> Rule | None:
        return self.rules.get(event)

    def triggers_on(self, tag: str) -> list[Trigger]:
        """The tag's triggers, lowest threshold first (tags compare without case)."""
        folded = tag.casefold()
        return sorted((t for t in self.triggers if t.tag.casefold() == folded), key=lambda t: t.at_least)


def load_rules(path: Path | None) -> RuleSet:
    """Read and check the rules file; raises SettingsError with the file, the entry and what is wrong."""
    if path is None:
        return RuleSet()
    try:
        with path.open("rb") as file:  # TOML is UTF-8 by definition: tomllib decodes it, whatever the locale
            data = tomllib.load(file)
    except FileNotFoundError:
        raise SettingsError(f"rules_file {path} does not exist; create it or unset rules_file.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"rules_file {path} cannot be read ({exc}).") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path} is not valid TOML: {exc}.") from None
    try:
        parsed = _File.model_validate(data)
    except ValidationError as exc:
        raise SettingsError(f"{path}: {'; '.join(_problem(data, err) for err in exc.errors())}.") from None
    return RuleSet({rule.event: rule for rule in parsed.rules}, tuple(parsed.triggers), path,
                   tuple(_unreachable(parsed)))


def _problem(data: Any, error: Any) -> str:
    """`triggers[0] "Nutrition prospect" at_least: at_least is 'three'; ...`: where, and what."""
    where: list[str] = []
    node = data
    for part in error["loc"]:
        if isinstance(part, int) and isinstance(node, list) and part < len(node):
            node = node[part]
            name = node.get("name") or node.get("event") if isinstance(node, dict) else None
            where[-1] += f"[{part}]" + (f" {name!r}" if name else "")
        else:
            where.append(str(part))
            node = node.get(part) if isinstance(node, dict) else None
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "is not a key of the rules file here"
    elif error["type"] == "missing":
        message = "is missing"
    return f"{' '.join(where) or 'the file'}: {message}"


def _unreachable(parsed: _File) -> list[str]:
    """Triggers on a tag no rule changes: CRM jobs may still reach it, so this is a warning, not a refusal."""
    tags = {rule.tag.casefold() for rule in parsed.rules}
    return [f"trigger {t.name!r} watches tag {t.tag!r}, which no rule changes; only jobs can reach it."
            for t in parsed.triggers if t.tag.casefold() not in tags]
