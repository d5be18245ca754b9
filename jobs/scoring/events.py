"""Events to jobs: something a contact did becomes, through its rule, at most one job; every event is logged.

An event names a record (`contact`, `lead` or `account`, or `target_kind` and `target_id`), its name (`event`),
when it happened (`time`, ISO 8601), and optionally its own id (`id`) and a `url`. The rule for its name (see
`jobs.scoring.rules`) makes it a job, queued with a request id, so that:

- an event whose id was seen before is acknowledged and not scored again (webhooks are redelivered);
- a rule scoring only the first occurrence per record queues the first one, and acknowledges the others;
- an event no rule knows is reported and kept in the event log, never dropped silently.

Every event read goes into the event log (the `events` stream of the job store, by record) with what became of
it: `queued`, `seen before`, `first already scored`, or `no rule`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from jobs.kinds import request_from_raw, target_of
from jobs.model import InvalidJob, JobRequest, Origin, Target, TargetKind
from jobs.scoring.history import record_key
from jobs.scoring.rules import Rule, RuleSet
from jobs.service import RowProblem, read_rows
from jobs.store import JobFilter, JobStore, Record

STREAM = "events"
EVENT_COLUMNS = {"event", "contact", "lead", "account", "target_kind", "target_id", "time", "id", "url"}


@dataclass(frozen=True)
class Event:
    target: Target
    name: str
    at: str | None = None
    id: str | None = None
    url: str | None = None


@dataclass
class EventReport:
    read: int = 0
    queued: list[str] = field(default_factory=list)  # job ids
    seen_before: int = 0
    first_already_scored: int = 0
    unknown: list[RowProblem] = field(default_factory=list)  # events no rule knows, by line
    problems: list[RowProblem] = field(default_factory=list)  # lines that are not events


def event_from_fields(fields: dict[str, Any]) -> Event:
    """An event from a CSV row, a JSON object or a webhook; raises InvalidJob with sentences."""
    kinds = [k.value for k in TargetKind if fields.get(k.value) not in (None, "")]
    if len(kinds) > 1:
        raise InvalidJob([f"The event names more than one record ({', '.join(kinds)}); an event is about one."])
    kind, record = (kinds[0], fields[kinds[0]]) if kinds else (fields.get("target_kind"), fields.get("target_id"))
    target = target_of(kind, record)
    if target is None:
        raise InvalidJob(["The event names no record; give contact, lead or account with its CRM id."])
    name = str(fields.get("event") or "").strip()
    if not name:
        raise InvalidJob(["The event has no name; give event, such as page_visit."])
    at = fields.get("time")
    if at not in (None, ""):
        try:
            datetime.fromisoformat(str(at).replace("Z", "+00:00"))
        except ValueError:
            raise InvalidJob([f"Time is {at!r}; give an ISO 8601 time such as 2026-05-04T09:15:00Z."]) from None
    return Event(target, name, str(at) if at not in (None, "") else None,
                 str(fields["id"]) if fields.get("id") not in (None, "") else None,
                 str(fields["url"]) if fields.get("url") not in (None, "") else None)


def request_id_of(event: Event, rule: Rule) -> str | None:
    """What makes two events the same to this rule; None when every event counts (no id, every occurrence)."""
    if rule.occurrences == "first":
        return f"event-first:{rule.event}|{record_key(event.target)}"
    if event.id is None:
        return None
    same = event.id if rule.same_event == "id" else f"{event.id}|{event.url or ''}"
    return f"event:{rule.event}|{same}"


def job_of(event: Event, rule: Rule) -> JobRequest:
    return request_from_raw({**rule.job_fields(), "target_kind": event.target.kind.value,
                             "target_id": event.target.id, "request_id": request_id_of(event, rule),
                             "origin": Origin(source="rule").to_json()})


def ingest(store: JobStore, rules: RuleSet, events: Iterable[tuple[int, Event]]) -> EventReport:
    """Queue the jobs of `events` ((line, event) pairs) in one transaction, and log every event."""
    report = EventReport()
    lines: list[tuple[int, Event, JobRequest | None]] = []
    for line, event in events:
        report.read += 1
        rule = rules.rule_for(event.name)
        if rule is None:
            report.unknown.append(RowProblem(line, f"No rule for event {event.name!r}; it is kept in the event log."))
        lines.append((line, event, job_of(event, rule) if rule else None))
    requests = [request for _, _, request in lines if request is not None]
    stored = stored_request_ids(store, [r.request_id for r in requests if r.request_id is not None])
    jobs = iter(store.add(requests))
    log: list[Record] = []
    for _line, event, request in lines:
        outcome, job_id = "no rule", None
        if request is not None:
            job = next(jobs)
            job_id = job.id
            if request.request_id in stored:
                first = request.request_id.startswith("event-first:")
                outcome = "first already scored" if first else "seen before"
                if first:
                    report.first_already_scored += 1
                else:
                    report.seen_before += 1
            else:
                if request.request_id is not None:
                    stored.add(request.request_id)  # a second one later in the file is the same event
                outcome = "queued"
                report.queued.append(job.id)
        log.append(Record(STREAM, record_key(event.target), {
            "event": event.name, "time": event.at, "id": event.id, "url": event.url, "outcome": outcome,
            "job_id": job_id}))
    store.keep(log)
    return report


def stored_request_ids(store: JobStore, request_ids: Sequence[str]) -> set[str]:
    """Which of these request ids name a job the store holds already."""
    found: set[str] = set()
    unique = list(dict.fromkeys(request_ids))
    for start in range(0, len(unique), 500):
        chunk = tuple(unique[start:start + 500])
        found.update(j.request_id for j in store.list(JobFilter(request_ids=chunk, limit=len(chunk))).jobs
                     if j.request_id)
    return found


def read_events(path: Path, report: EventReport) -> Iterable[tuple[int, Event]]:
    """The events of a CSV or JSON Lines file; lines that are not events go to `report.problems`."""
    for line, fields in read_rows(path, EVENT_COLUMNS, ("event", "every event has a name")):
        if "__error__" in fields:
            report.problems.append(RowProblem(line, f"The line is {fields['__error__']}."))
            continue
        unknown = sorted(set(fields) - EVENT_COLUMNS)
        if unknown:
            report.problems.append(RowProblem(line, f"Unknown field{'s' if len(unknown) > 1 else ''} "
                                                    f"{', '.join(unknown)}; use {', '.join(sorted(EVENT_COLUMNS))}."))
            continue
        try:
            yield line, event_from_fields(fields)
        except InvalidJob as exc:
            report.problems.append(RowProblem(line, str(exc)))


def ingest_file(store: JobStore, rules: RuleSet, path: Path, *, skip_invalid: bool = False) -> EventReport:
    """All or nothing, like `jobs import`: lines that are not events stop the file unless `skip_invalid`."""
    report = EventReport()
    events = list(read_events(path, report))
    if report.problems and not skip_invalid:
        return report
    done = ingest(store, rules, events)
    done.problems = report.problems
    return done
