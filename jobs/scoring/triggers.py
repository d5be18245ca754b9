"""Triggers: when a change takes a tag's score from below a threshold to the threshold or above, fire.

`TriggerFirings` is a durable subscriber. For each change a job applied it finds the crossed thresholds of the
tag's triggers, lowest first, and asks the re-arm rule whether each may fire. A firing is a record of the
`firings` stream, and its actions are jobs for the same record; both are written in the transaction that marks
the job's change applied, so a firing happens exactly once per crossing, whatever the retries, runners or kills.
Jobs on one record and tag run one at a time, so two runners never judge the same crossing at once; should they
still meet, the firing's `unique` value keeps it once and its actions' request ids queue them once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from jobs.kinds import request_from_raw
from jobs.model import Job, JobRequest, Origin, Target
from jobs.scoring.changes import Change, Op, crossed, fold
from jobs.scoring.history import history_of, record_key
from jobs.scoring.rules import MAX_ACTIONS, RuleSet, Trigger
from jobs.store import Effects, Entry, JobFilter, ReaderStore, Record

STREAM = "firings"


def firing_key(trigger: Trigger, target: Target, job_id: str) -> str:
    """What makes a firing the same one: once per record ever, or once per crossing (a job's change crosses a
    threshold at most once)."""
    if trigger.rearm == "once":
        return f"{trigger.name}|{record_key(target)}"
    return f"{trigger.name}|{record_key(target)}|{job_id}"


def may_fire(trigger: Trigger, earlier: Sequence[Entry], now: float) -> bool:
    """The re-arm rule, given this trigger's earlier firings for the record (oldest first)."""
    if not earlier:
        return True
    if trigger.rearm == "once":
        return False
    return trigger.cooldown is None or now - earlier[-1].at >= trigger.cooldown


@dataclass(frozen=True)
class Firing:
    trigger: str
    tag: str
    at_least: int
    before: int | None
    after: int | None
    job_id: str
    at: float
    record: str
    actions: tuple[str, ...]  # the request ids of its action jobs

    @classmethod
    def from_entry(cls, entry: Entry) -> Firing:
        data = entry.data
        return cls(trigger=data["trigger"], tag=data["tag"], at_least=data["at_least"], before=data.get("before"),
                   after=data.get("after"), job_id=entry.job_id, at=entry.at, record=entry.key,
                   actions=tuple(data["actions"]))


class TriggerFirings:
    """The durable subscriber that fires the rules file's triggers."""

    def __init__(self, rules: RuleSet, store: ReaderStore, clock: Callable[[], float]) -> None:
        self.rules = rules
        self.store = store
        self.clock = clock

    def __call__(self, job: Job, changes: Sequence[Change]) -> Effects:
        assert job.request is not None  # a job whose input is not valid changes nothing
        target = job.request.target
        if target is None:  # only a job on a record changes its tags
            return Effects()
        effects = Effects()
        for change in changes:
            # Adding a tag leaves its score as it was: it crosses nothing, not even a threshold at or below 0.
            if change.op is Op.TAG or not self.rules.triggers_on(change.tag):
                continue
            before = change.before if change.before is not None else self._view(target, change.tag)
            for trigger in self.rules.triggers_on(change.tag):
                if crossed(before, change.after, trigger.at_least):
                    effects += self._fire(trigger, job, target, change, before)
        return effects

    def _view(self, target: Target, tag: str) -> int | None:
        """The score before a change that did not read it (Set Score, a removal): the fold of its history."""
        return fold(entry.change for entry in history_of(self.store, target, tag))

    def _fire(self, trigger: Trigger, job: Job, target: Target, change: Change, before: int | None) -> Effects:
        key = record_key(target)
        earlier = [e for e in self.store.entries(STREAM, key) if e.data.get("trigger") == trigger.name]
        if not may_fire(trigger, earlier, self.clock()):
            return Effects()
        unique = firing_key(trigger, target, job.id)
        origin = Origin(source="trigger", job_id=job.id, trigger=trigger.name, firing=unique, tag=change.tag,
                        score=str(change.after))  # every change that can cross a threshold has a score after it
        actions = tuple(self._action(fields, target, f"firing:{unique}:{n}", origin)
                        for n, fields in enumerate(a.fields() for a in trigger.actions))
        record = Record(STREAM, key, {
            "trigger": trigger.name, "tag": change.tag, "at_least": trigger.at_least, "before": before,
            "after": change.after, "actions": [a.request_id for a in actions],
        }, unique=unique)
        return Effects((record,), actions)

    @staticmethod
    def _action(fields: dict[str, object], target: Target, request_id: str, origin: Origin) -> JobRequest:
        raw = {**fields, "target_kind": target.kind.value, "target_id": target.id, "request_id": request_id,
               "origin": origin.to_json()}
        return request_from_raw(raw)


def firings_of(store: ReaderStore, target: Target | None = None) -> list[Firing]:
    """What fired, oldest first: for one record, or for every record."""
    return [Firing.from_entry(entry) for entry in store.entries(STREAM, record_key(target) if target else None)]


def fired_by(store: ReaderStore, job: Job) -> list[tuple[Firing, list[str]]]:
    """What the job's change fired, each firing with the ids of the action jobs it queued (`jobs show`, and the
    console's job page)."""
    if job.request is None or job.request.target is None:
        return []
    fired = []
    for firing in firings_of(store, job.request.target):
        if firing.job_id == job.id:
            # A trigger has one to twenty actions (`rules.MAX_ACTIONS`): one page holds every job a firing queued.
            queued = store.list(JobFilter(request_ids=firing.actions, limit=MAX_ACTIONS)).jobs
            fired.append((firing, [j.id for j in queued]))
    return fired
