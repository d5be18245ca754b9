"""Score history: every tag or score change the connector applied, per record and tag.

A durable subscriber (`history_effects`) turns the changes of a job into records of the `history` stream, keyed by
record, written in the transaction that marks the job's change applied: each change is kept exactly once. Reading
it back (`history_of`) gives the entries oldest first; `fold` of a tag's entries is the connector's view of that
score.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from jobs.model import Job, Target
from jobs.scoring.changes import Change, Op, fold
from jobs.store import Effects, Entry, ReaderStore, Record

STREAM = "history"


def record_key(target: Target) -> str:
    return f"{target.kind.value}:{target.id}"


@dataclass(frozen=True)
class HistoryEntry:
    """One change in a record's history, with the job behind it and where that job came from."""

    at: float
    job_id: str
    kind: str
    source: str
    change: Change

    def to_json(self) -> dict[str, object]:
        from jobs.model import iso

        c = self.change
        return {"at": iso(self.at), "tag": c.tag, "op": c.op.value, "before": c.before, "after": c.after,
                "delta": c.delta, "job_id": self.job_id, "kind": self.kind, "source": self.source}


def history_effects(job: Job, changes: Sequence[Change]) -> Effects:
    """The durable subscriber: a history record for each change to a tag of the job's record."""
    request = job.request
    if request is None or request.target is None:
        return Effects()  # a tag-only job changes no record
    key = record_key(request.target)
    return Effects(tuple(
        Record(STREAM, key, {"tag": c.tag, "op": c.op.value, "before": c.before, "after": c.after,
                             "delta": c.delta, "kind": request.kind.name, "source": request.origin.source})
        for c in changes
    ))


def history_of(store: ReaderStore, target: Target, tag: str | None = None) -> list[HistoryEntry]:
    """The record's history, oldest first; only the tag's when given (tags compare without case)."""
    entries = [_entry(entry) for entry in store.entries(STREAM, record_key(target))]
    if tag is not None:
        entries = [e for e in entries if e.change.tag.casefold() == tag.casefold()]
    return entries


def scores_of(entries: Sequence[HistoryEntry]) -> dict[str, int | None]:
    """The connector's view of each tag's score (the fold of its history), by the tag's first spelling."""
    by_tag: dict[str, list[Change]] = {}
    names: dict[str, str] = {}
    for entry in entries:
        tag = entry.change.tag
        names.setdefault(tag.casefold(), tag)
        by_tag.setdefault(tag.casefold(), []).append(entry.change)
    return {names[folded]: fold(changes) for folded, changes in by_tag.items()}


def _entry(entry: Entry) -> HistoryEntry:
    data = entry.data
    change = Change(tag=data["tag"], op=Op(data["op"]), before=data.get("before"), after=data.get("after"),
                    delta=data.get("delta"))
    return HistoryEntry(at=entry.at, job_id=entry.job_id, kind=str(data.get("kind", "")),
                        source=str(data.get("source", "crm")), change=change)
