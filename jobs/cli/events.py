"""`connector events ...`: events (what contacts did) turned into jobs by the rules file, and the event log."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from config.text import count
from jobs.app import load_rules_of
from jobs.cli.common import JsonFlag, err, fail, job_store, out, record_of, reported, settings
from jobs.model import iso
from jobs.scoring.events import STREAM, ingest_file
from jobs.scoring.history import record_key

app = typer.Typer(help="Events that score: ingest them through the rules file, and read the event log.",
                  no_args_is_help=True)


@app.command("ingest")
def ingest(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(metavar="FILE", help="CSV with a header row, or JSON Lines: contact (or "
                                         "lead, account), event, time, and optionally id and url.")],
    skip_invalid: Annotated[bool, typer.Option(
        "--skip-invalid", help="Ingest the good lines even when some are not events.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Turn each event into at most one job through its rule; an event seen before is not scored again, and one no
    rule knows is reported and kept in the event log."""
    config = settings(ctx)
    with reported():
        rules = load_rules_of(config)
    if not rules.rules:
        fail("no scoring rules: set rules_file to a rules file with [[rules]] (see the README).", 2)
    with job_store(config) as store, reported():
        report = ingest_file(store, rules, file, skip_invalid=skip_invalid)
    if as_json:
        out().print_json(data={
            "read": report.read, "queued": report.queued, "seen_before": report.seen_before,
            "first_already_scored": report.first_already_scored,
            "unknown": [{"line": p.line, "message": p.message} for p in report.unknown],
            "problems": [{"line": p.line, "message": p.message} for p in report.problems]})
    for problem in [] if as_json else [*report.problems, *report.unknown]:
        err().print(f"line {problem.line}: {problem.message}", markup=False)
    if report.problems and not skip_invalid:
        fail(f"{count(len(report.problems), 'line')} of {file} {'is' if len(report.problems) == 1 else 'are'} "
             f"not events; nothing was ingested. Fix them, or use --skip-invalid.", 2)
    if not as_json:
        out().print(f"Read {count(report.read, 'event')} from {file}: {len(report.queued)} queued, "
                    f"{report.seen_before} seen before, {report.first_already_scored} already scored once, "
                    f"{len(report.unknown)} with no rule (kept in the event log).", markup=False)


@app.command("log")
def log(
    ctx: typer.Context,
    contact: Annotated[str | None, typer.Option(help="CRM id of the contact.")] = None,
    lead: Annotated[str | None, typer.Option(help="CRM id of the lead.")] = None,
    account: Annotated[str | None, typer.Option(help="CRM id of the account.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Every event of a record, oldest first, with what became of it: queued, seen before, first already scored,
    or no rule."""
    target = record_of(contact, lead, account)
    assert target is not None
    config = settings(ctx)
    with job_store(config) as store:
        entries = store.entries(STREAM, record_key(target))
    rows = [{"logged_at": iso(e.at), **e.data} for e in entries]
    if as_json:
        out().print_json(data=rows)
        return
    for row in rows or [{"logged_at": "", "event": "(no events)", "outcome": "", "job_id": None}]:
        job = f" (job {row['job_id']})" if row.get("job_id") else ""
        out().print(f"{row['logged_at']}  {row['event']}  {row['outcome']}{job}", markup=False)
