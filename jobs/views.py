"""How jobs look: the JSON shapes tools read, and the tables and lines people read.

The `connector` command prints what these functions build; they print nothing and read no store themselves, so
any other front end can show jobs the same way.
"""

from __future__ import annotations

from typing import Any

from rich.console import Group, RenderableType
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from config.text import count
from jobs.model import Attempt, Job, iso
from jobs.overview import Overview
from jobs.runner import DrainReport
from jobs.scoring.changes import Change, Op
from jobs.scoring.history import HistoryEntry
from jobs.scoring.rules import Trigger
from jobs.scoring.triggers import Firing
from jobs.service import ImportResult
from jobs.store import AuditEntry, Batch

# `jobs show`: the fields in the order people read them, and the labels that differ from the JSON key.
JOB_FIELDS = ("id", "operation", "target", "tags", "score", "origin", "display_status", "result_code", "message",
              "attempts",
              "attempts_total", "created_at", "updated_at", "next_attempt_at", "applied_at", "posted_at")
FIELD_LABELS = {"display_status": "status", "attempts": "attempts (since last retry)",
                "attempts_total": "attempts in all"}


def jobs_json(jobs: list[Job]) -> list[dict[str, Any]]:
    """`jobs list --json`."""
    return [job.to_json() for job in jobs]


def job_detail_json(job: Job, attempts: list[Attempt], actions: list[AuditEntry],
                    fired: list[tuple[Firing, list[str]]] | None = None) -> dict[str, Any]:
    """`jobs show --json`: the job, its attempt log, who retried or cancelled it, and what its change fired (each
    firing with the ids of the action jobs it queued).

    `attempts` counts the tries since the job was queued or last retried by hand (the retry budget); the attempt
    log keeps every try, so support staff see both.
    """
    return {**job.to_json(), "attempts_total": len(attempts), "attempt_log": [a.to_json() for a in attempts],
            "actions": [action_json(entry) for entry in actions],
            "fired": [{**firing_json(f), "action_jobs": ids} for f, ids in fired or []]}


def action_json(entry: AuditEntry) -> dict[str, Any]:
    return {"action": entry.action, "at": iso(entry.at), "who": entry.who, "via": entry.via}


def action_lines(actions: list[AuditEntry]) -> list[str]:
    """`jobs show`: one line per retry or cancel by hand: `2026-05-04T09:15:00Z  retry by ann (cli)`."""
    return [f"{iso(entry.at)}  {entry.action} by {entry.who} ({entry.via})" for entry in actions]


def import_json(result: ImportResult) -> dict[str, Any]:
    """`jobs import --json`: the rows read, the batch queued (null when nothing was), and every bad row."""
    return {
        "file": str(result.file), "rows": result.rows,
        "batch": batch_json(result.batch) if result.batch else None,
        "problems": [{"line": p.line, "message": p.message} for p in result.problems],
    }


def batch_json(batch: Batch) -> dict[str, Any]:
    return {"id": batch.id, "file": batch.file, "sha256": batch.sha256, "at": iso(batch.at), "who": batch.who,
            "rows": batch.rows, "queued": batch.queued, "already": batch.already, "invalid": batch.invalid}


def import_summary(result: ImportResult) -> str:
    """`Queued 3 jobs from jobs.csv as batch 1f0c9a2e; 1 row already queued (its request id), 2 invalid rows
    skipped.`"""
    batch = result.batch
    assert batch is not None
    also = [f"{count(batch.already, 'row')} already queued (by request id)"] if batch.already else []
    also += [f"{count(batch.invalid, 'invalid row')} skipped"] if batch.invalid else []
    return (f"Queued {count(batch.queued, 'job')} from {result.file} as batch {batch.id}"
            f"{'; ' + ', '.join(also) if also else ''}.")


def batches_table(found: list[Batch]) -> Table:
    """`jobs batches`: one line per import, newest first."""
    table = Table(show_edge=False, pad_edge=False)
    for column in ("batch", "imported (UTC)", "file", "rows", "queued", "already", "invalid", "by"):
        table.add_column(column, justify="right" if column in ("rows", "queued", "already", "invalid") else "left",
                         no_wrap=column in ("batch", "imported (UTC)"))
    for batch in reversed(found):
        table.add_row(batch.id, minute(batch.at), batch.file, str(batch.rows), str(batch.queued), str(batch.already),
                      str(batch.invalid), batch.who)
    return table


# Below this many columns the table would squeeze tags and results to nothing: each job takes two lines instead.
TABLE_WIDTH = 110


def jobs_view(jobs: list[Job], width: int) -> RenderableType:
    """`jobs list` for a screen `width` columns wide: a table, or two lines per job on a narrow one."""
    return jobs_table(jobs) if width >= TABLE_WIDTH else jobs_lines(jobs)


def jobs_table(jobs: list[Job]) -> Table:
    """One line per job: when, what, for which record, its status and its result."""
    table = Table(show_edge=False, pad_edge=False)
    table.add_column("id", no_wrap=True)
    table.add_column("created (UTC)", no_wrap=True)
    table.add_column("job")
    table.add_column("record", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("tries", justify="right")
    table.add_column("result")
    for job in jobs:
        table.add_row(job.id, created(job), what(job), record(job), job.display_status, str(job.attempts),
                      result(job))
    return table


def jobs_lines(jobs: list[Job]) -> Group:
    """Two lines per job: its id, status and creation time; then what, for which record, and its result, wrapped
    and indented under it. Nothing is cut."""
    lines: list[RenderableType] = []
    for job in jobs:
        tries = f", {job.attempts} {'try' if job.attempts == 1 else 'tries'}" if job.attempts else ""
        lines.append(Text(f"{job.id}  {job.display_status}{tries}  {created(job)}"))
        outcome = result(job)
        detail = f"{what(job)} for {record(job)}" + (f": {outcome}" if outcome else "")
        lines.append(Padding(Text(detail), (0, 0, 0, 4)))
    return Group(*lines)


def created(job: Job) -> str:
    return minute(job.created_at)


def minute(ts: float) -> str:
    """A time to the minute, in UTC like the logs: `2026-12-02 16:47Z`."""
    return (iso(ts) or "")[:16].replace("T", " ") + "Z"


def record(job: Job) -> str:
    target = job.to_json()["target"]  # as given when the input is not valid
    return f"{target['kind']} {target['id']}" if target else "-"


def result(job: Job) -> str:
    code = job.result_code or ""
    if job.message and job.result_code != "OK":
        return f"{code}: {job.message}" if code else job.message
    return code


def what(job: Job) -> str:
    """The job in a few words (`Increase Score Lead 10`); the input as given when it is not valid."""
    if job.request is not None:
        return job.request.brief()
    raw = job.raw
    return " ".join(str(raw.get(k)) for k in ("operation", "tags", "score") if raw.get(k) not in (None, ""))


def job_fields(detail: dict[str, Any]) -> list[tuple[str, str]]:
    """`jobs show`: (label, value) for every field of a `job_detail_json`, in reading order."""
    fields = []
    for key in JOB_FIELDS:
        value = detail[key]
        if key == "origin" and value:
            value = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in value.items() if k != "firing")
        elif isinstance(value, dict):
            value = f"{value['kind']} {value['id']}"
        elif isinstance(value, list):
            value = ", ".join(value)
        fields.append((FIELD_LABELS.get(key, key), "" if value is None else str(value)))
    return fields


def attempts_table(attempts: list[Attempt]) -> Table:
    """Every try at a job: times, outcome, result code, HTTP status and message."""
    table = Table(title="attempts", show_edge=False)
    for column in ("#", "started", "ended", "outcome", "result", "http", "message"):
        table.add_column(column, overflow="fold")
    for a in attempts:
        table.add_row(str(a.number), iso(a.started_at) or "", iso(a.ended_at) or "", a.outcome, a.result_code or "",
                      str(a.http_status or ""), a.message)
    return table


def change_text(change: Change) -> str:
    """A change in a few characters: `+10`, `-3`, `=5`, `tagged`, `untagged`."""
    if change.op is Op.ADD:
        return f"{change.delta:+d}" if change.delta is not None else "changed"
    if change.op is Op.SET:
        return f"={change.after}"
    return "tagged" if change.op is Op.TAG else "untagged"


def history_table(entries: list[HistoryEntry]) -> Table:
    """A record's history: when, which tag, what changed, the score before and after, and the job behind it."""
    table = Table(show_edge=False, pad_edge=False)
    for column in ("when", "tag", "change", "before", "after", "source", "job"):
        table.add_column(column, no_wrap=column != "tag")
    for entry in entries:
        c = entry.change
        table.add_row(iso(entry.at) or "", c.tag, change_text(c), "" if c.before is None else str(c.before),
                      "" if c.after is None else str(c.after), entry.source, entry.job_id)
    return table


def change_line(change: dict[str, Any]) -> str:
    """`contact show`: one change of a `HistoryEntry.to_json()`, in a line: `2026-… +10 (job 4b6f…)`."""
    text = change_text(Change(change["tag"], Op(change["op"]), change["before"], change["after"], change["delta"]))
    return f"{change['at']} {text} (job {change['job_id']})"


def trigger_json(trigger: Trigger) -> dict[str, Any]:
    return {"name": trigger.name, "tag": trigger.tag, "at_least": trigger.at_least, "rearm": trigger.rearm,
            "cooldown_seconds": trigger.cooldown, "actions": [a.fields() for a in trigger.actions]}


def triggers_table(triggers: list[Trigger]) -> Table:
    table = Table(show_edge=False, pad_edge=False)
    for column in ("trigger", "when", "re-arm", "actions"):
        table.add_column(column)
    for t in triggers:
        rearm = t.rearm + (f", cooldown {t.cooldown:g} s" if t.cooldown else "")
        actions = "; ".join(" ".join(str(v) for v in a.fields().values()) for a in t.actions)
        table.add_row(t.name, f"{t.tag} >= {t.at_least}", rearm, actions)
    return table


def firing_json(firing: Firing) -> dict[str, Any]:
    return {"at": iso(firing.at), "trigger": firing.trigger, "record": firing.record, "tag": firing.tag,
            "at_least": firing.at_least, "before": firing.before, "after": firing.after, "job_id": firing.job_id,
            "actions": list(firing.actions)}


def firings_table(firings: list[Firing]) -> Table:
    table = Table(show_edge=False, pad_edge=False)
    for column in ("when", "trigger", "record", "score", "caused by job"):
        table.add_column(column, no_wrap=column != "trigger")
    for f in firings:
        table.add_row(iso(f.at) or "", f.trigger, f.record, f"{f.tag} {f.before} -> {f.after}", f.job_id)
    return table


def tags_table(tags: dict[str, int]) -> Table:
    """A record's tags on the platform, with their scores."""
    table = Table(show_edge=False)
    table.add_column("tag")
    table.add_column("score", justify="right")
    for tag, score in sorted(tags.items()):
        table.add_row(tag, str(score))
    return table


def report_line(report: DrainReport) -> str:
    """What a drain did, in one line: `3 succeeded, 1 failed in 0.4 s; 2 waiting to retry (next at ...).`"""
    line = f"{report.succeeded} succeeded, {report.failed} failed in {report.seconds:.1f} s"
    if report.retrying:
        line += f"; {report.retrying} waiting to retry (next at {iso(report.next_retry_at)})"
    return line + "."


def stamp(ts: float | None) -> str:
    """A time for the console's pages, to the second, in UTC with its offset shown: `2026-12-02 16:47:05 +00:00`.
    The zone of the logs and of `jobs list`, so that they compare at a glance."""
    return "" if ts is None else (iso(ts) or "").replace("T", " ").replace("Z", " +00:00")


def ago(seconds: float | None) -> str:
    """A duration in the largest unit that keeps it readable: `45 s`, `12 min`, `3 h`, `2 d`."""
    if seconds is None:
        return ""
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


def overview_json(view: Overview) -> dict[str, Any]:
    """`connector status --json`, and the console's overview."""
    oldest = view.oldest_pending
    return {
        "at": iso(view.at),
        "jobs": view.counts,
        "retry_backlog": view.retrying,
        "next_retry_at": iso(view.next_retry_at),
        "oldest_pending": None if oldest is None else {
            "id": oldest.id, "created_at": iso(oldest.created_at), "age_seconds": round(view.oldest_pending_age or 0)},
        "done_last_hour": view.done_last_hour,
        "done_last_day": view.done_last_day,
        "api_trouble_last_day": view.api_trouble,
        "runners": [{"owner": r.owner, "last_heartbeat": iso(r.seen_at)} for r in view.runners],
    }


def overview_lines(view: Overview) -> list[str]:
    """`connector status`: the overview's numbers, a line each."""
    def codes(found: dict[str, int]) -> str:
        return ", ".join(f"{code or '-'} {n}" for code, n in sorted(found.items(), key=lambda kv: -kv[1])) or "none"

    oldest = view.oldest_pending
    lines = ["jobs: " + ", ".join(f"{status} {n}" for status, n in view.counts.items()),
             f"retry backlog: {view.retrying}" + (f", next due {stamp(view.next_retry_at)}"
                                                  if view.next_retry_at is not None else ""),
             "oldest pending: " + (f"{oldest.id}, created {stamp(oldest.created_at)} "
                                   f"({ago(view.oldest_pending_age)} ago)" if oldest else "none"),
             f"done in the last hour: {codes(view.done_last_hour)}",
             f"done in the last day: {codes(view.done_last_day)}"]
    lines += [f"429s and errors in the last day, {api}: {codes(found)}" for api, found in view.api_trouble.items()] \
        or ["429s and errors in the last day: none"]
    lines += [f"runner {r.owner}: last heartbeat {stamp(r.seen_at)} ({ago(view.at - r.seen_at)} ago)"
              for r in view.runners] or ["runners: none seen in the last day"]
    return lines
