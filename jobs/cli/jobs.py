"""`connector jobs ...`: create, import, list, inspect, retry and cancel jobs."""

from __future__ import annotations

import dataclasses
import getpass
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import Progress

from config import Settings
from config.text import count, shown
from jobs import views
from jobs.cli.common import (
    JsonFlag,
    check_record_id,
    err,
    fail,
    job_store,
    out,
    print_jobs,
    reported,
    settings,
)
from jobs.kinds import kind_named
from jobs.model import JobStatus
from jobs.overview import count_where
from jobs.scoring.triggers import fired_by
from jobs.service import (
    UsageProblem,
    count_rows,
    import_jobs,
    new_batch_id,
    parse_duration,
    request_from_fields,
)
from jobs.store import Actor, JobFilter, JobStore, batches

app = typer.Typer(help="Create, import, list, inspect, retry and cancel jobs.", no_args_is_help=True)

DEFAULT_LIMIT = 100


@app.command("add")
def add(
    ctx: typer.Context,
    operation: Annotated[str, typer.Option("--operation", "-o", help='add_tag, remove_tag, set_score, increase_score, '
                                           'decrease_score, remove_score, start_automation, or the CRM name '
                                           '("Add Tag").')],
    tag: Annotated[str, typer.Option("--tag", "-t", help="Tag name; several separated by , or ; for add/remove. "
                                     "For start_automation: the automation's trigger code.")],
    contact: Annotated[str | None, typer.Option(help="CRM id of the contact.")] = None,
    lead: Annotated[str | None, typer.Option(help="CRM id of the lead.")] = None,
    account: Annotated[str | None, typer.Option(help="CRM id of the account.")] = None,
    score: Annotated[str | None, typer.Option(help="Whole number, for the score operations.")] = None,
    request_id: Annotated[str | None, typer.Option(
        help="Your own key for this job: a request id already queued is not queued again.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Queue one job. Without --contact, --lead or --account, Add Tag only creates the tag."""
    config = settings(ctx)
    with reported():
        request = request_from_fields(
            {"operation": operation, "tags": tag, "score": score, "contact": contact, "lead": lead, "account": account,
             "request_id": request_id}
        )
    with job_store(config) as store:
        known = store.list(JobFilter(request_ids=(request.request_id,), limit=1)).jobs if request.request_id else []
        job = known[0] if known else store.add([request])[0]
    if known:
        if as_json:
            out().print_json(data=job.to_json())
        else:
            out().print(f"Request id {job.request_id} is queued already, as job {job.id} ({job.display_status}); "
                        "nothing new was queued.", markup=False)
        return
    if as_json:
        out().print_json(data=job.to_json())
    else:
        fields = request.kind.template_fields(request.payload)
        score = "" if fields.get("score") in (None, "") else f" ({fields['score']})"
        out().print(f"Queued job {job.id}: {request.kind.label} {fields.get('tags', '')}{score} for "
                    f"{request.target or 'no record (tag only)'}.", markup=False)


@app.command("import")
def import_(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(metavar="FILE", help="CSV with a header row, or JSON Lines.")],
    skip_invalid: Annotated[bool, typer.Option(
        "--skip-invalid", help="Queue the valid rows even when some are bad.")] = False,
    again: Annotated[bool, typer.Option(
        "--again", help="Queue the rows of a file that was imported before once more.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Queue the jobs of a file as one batch: all or nothing unless --skip-invalid; every bad row reported with its
    line. A file imported before is refused unless --again; a row whose request_id is queued already is skipped."""
    config = settings(ctx)
    console = err()
    with job_store(config) as store:
        # Counting reads the file once more: only worth it when someone watches a progress bar.
        total = count_rows(file) if console.is_terminal and file.is_file() else 0
        watched = total >= 2000 and console.is_terminal
        with Progress(console=console, transient=True, disable=not watched) as progress, \
                _interrupted(file, store, batch_id := new_batch_id()):
            task = progress.add_task("Importing rows", total=total)
            result = import_jobs(store, file, skip_invalid=skip_invalid, again=again, who=actor().who,
                                 batch_id=batch_id, on_row=(lambda: progress.advance(task)) if watched else None)
    if as_json:
        out().print_json(data=views.import_json(result))
    for problem in result.problems if not as_json else []:
        console.print(f"line {problem.line}: {problem.message}", markup=False)
    if result.batch is None:
        fail(f"{len(result.problems)} of {count(result.rows, 'row')} {'is' if len(result.problems) == 1 else 'are'} "
             f"invalid; nothing was queued. "
             f"Fix them, or use --skip-invalid to queue the valid rows.", 2)
    if not as_json:
        out().print(views.import_summary(result), markup=False)


class _Signalled(BaseException):
    """SIGTERM during an import, raised where the import is, so that its transaction is undone like on Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextmanager
def _interrupted(file: Path, store: JobStore, batch_id: str) -> Iterator[None]:
    """Ctrl-C or SIGTERM (a service manager, a timeout) stops an import with a sentence saying what was queued,
    and the exit code 128 + the signal's number."""
    def stop(signum: int, _frame: object) -> None:
        raise _Signalled(signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    except (KeyboardInterrupt, _Signalled) as exc:
        signum = exc.signum if isinstance(exc, _Signalled) else signal.SIGINT
        if store.atomic_batches or not _queued_any(store, batch_id):
            what = "nothing was queued" + (" (an import is one transaction)" if store.atomic_batches else "") + \
                "; run it again to queue the file"
        else:
            what = (f"the jobs queued before it stay queued, as batch {batch_id}: see them with connector jobs list "
                    f"--batch {batch_id}, or withdraw them with connector jobs cancel --batch {batch_id}; the "
                    f"file is not recorded as imported, so running it again queues its rows again")
        fail(f"The import of {file} was interrupted by {signal.Signals(signum).name}: {what}.", 128 + signum)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _queued_any(store: JobStore, batch_id: str) -> bool:
    """Whether an interrupted import had queued some of its jobs (a store without one transaction per import);
    when the store cannot say, it may have."""
    try:
        return bool(store.list(JobFilter(batch=batch_id, limit=1)).jobs)
    except Exception:  # the store's answer is what was interrupted: say what may be left
        return True


@app.command("batches")
def batches_(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """The imports: each file's batch id, when and by whom, and what became of its rows. Newest first."""
    config = settings(ctx)
    with job_store(config) as store:
        found = batches(store)
    if as_json:
        out().print_json(data=[views.batch_json(batch) for batch in reversed(found)])
    elif found:
        out().print(views.batches_table(found))
    else:
        out().print("No imports yet.")


StatusOption = Annotated[str | None, typer.Option(
    help="pending, retrying, running, succeeded, failed or cancelled.")]
ContactOption = Annotated[str | None, typer.Option(help="Only jobs for this CRM record id.")]
SinceOption = Annotated[str | None, typer.Option(help="Only jobs created within this period: 30m, 2h, 7d.")]
BatchOption = Annotated[str | None, typer.Option(help="Only the jobs of this import (see: jobs batches).")]
TagOption = Annotated[str | None, typer.Option("--tag", help="Only jobs naming this tag (case ignored).")]
OperationOption = Annotated[str | None, typer.Option(help='Only jobs of this operation (add_tag, "Add Tag", ...).')]
ResultCodeOption = Annotated[str | None, typer.Option(help="Only jobs with this result code (NOT_FOUND, OK, ...).")]
TextOption = Annotated[str | None, typer.Option(help="Only jobs whose message contains this text, or with this id.")]
YesFlag = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask before acting on a filter's jobs.")]


def job_filter(config: Settings, *, status: str | None = None, contact: str | None = None, since: str | None = None,
               batch: str | None = None, tag: str | None = None, operation: str | None = None,
               result_code: str | None = None, text: str | None = None, limit: int = DEFAULT_LIMIT) -> JobFilter:
    """The filter of the options, as the console's jobs page builds it from its URL."""
    with reported():
        status = status.strip().lower() if status is not None else None
        if status is not None and status not in {*(s.value for s in JobStatus), "retrying"}:
            raise UsageProblem(
                f"--status is {shown(status)}; use pending, retrying, running, succeeded, failed or cancelled."
            )
        since_ts = time.time() - parse_duration(since) if since else None
        kind = None
        if operation is not None:
            try:
                kind = kind_named(operation).name
            except ValueError as exc:
                raise UsageProblem(f"--operation: {exc}") from None
    if contact is not None:
        check_record_id(config, "--contact", contact)
    return JobFilter(status=status, target_id=contact, since=since_ts, batch=batch, tag=tag, operation=kind,
                     result_code=result_code.strip().upper() if result_code else None, text=text, limit=limit)


@app.command("list")
def list_(
    ctx: typer.Context,
    status: StatusOption = None,
    contact: ContactOption = None,
    since: SinceOption = None,
    batch: BatchOption = None,
    tag: TagOption = None,
    operation: OperationOption = None,
    result_code: ResultCodeOption = None,
    text: TextOption = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many jobs, newest first.")] = DEFAULT_LIMIT,
    as_json: JsonFlag = False,
) -> None:
    """Jobs, newest first, with their status and result. The filters combine."""
    config = settings(ctx)
    query = job_filter(config, status=status, contact=contact, since=since, batch=batch, tag=tag,
                       operation=operation, result_code=result_code, text=text, limit=limit)
    with job_store(config) as store:
        found = store.list(query).jobs
    if as_json:
        out().print_json(data=views.jobs_json(found))
        return
    print_jobs(found)
    if len(found) == limit:
        # There may be more: say so rather than let the listing look complete.
        err().print(f"Showing the newest {limit} jobs; use --limit to see more.", markup=False)


@app.command("show")
def show(
    ctx: typer.Context, job_id: Annotated[str, typer.Argument(help="The job id.")], as_json: JsonFlag = False
) -> None:
    """One job with every attempt: times, outcome, result code, HTTP status and message."""
    config = settings(ctx)
    with job_store(config) as store:
        job = store.get(job_id)
        attempts = store.attempts(job_id)
        actions = store.audit(job_id)
        fired = fired_by(store, job)
    detail = views.job_detail_json(job, attempts, actions, fired)
    if as_json:
        out().print_json(data=detail)
        return
    fields = views.job_fields(detail)
    width = max(len(label) for label, _ in fields)
    for label, value in fields:
        out().print(f"{label:>{width}}: {value}", markup=False)
    out().print(views.attempts_table(attempts))
    for firing in detail["fired"]:
        out().print(f"fired: trigger {firing['trigger']} ({firing['tag']} {firing['before']} -> {firing['after']}), "
                    f"queued {', '.join(firing['action_jobs']) or 'nothing new'}", markup=False)
    if actions:
        out().print("actions:", markup=False)
        for line in views.action_lines(actions):
            out().print(f"  {line}", markup=False)


@app.command("retry")
def retry(
    ctx: typer.Context,
    job_id: Annotated[str | None, typer.Argument(help="The failed job to retry.")] = None,
    failed: Annotated[bool, typer.Option("--failed", help="Retry every failed job.")] = False,
    contact: ContactOption = None,
    since: SinceOption = None,
    batch: BatchOption = None,
    tag: TagOption = None,
    operation: OperationOption = None,
    result_code: ResultCodeOption = None,
    text: TextOption = None,
    yes: YesFlag = False,
) -> None:
    """Put a failed job back in the queue; or every failed job (--failed), or those the filters find (the count is
    shown first, and on a terminal asked about unless --yes)."""
    config = settings(ctx)
    query = job_filter(config, contact=contact, since=since, batch=batch, tag=tag, operation=operation,
                       result_code=result_code, text=text)
    filtered = query != JobFilter()
    if sum([job_id is not None, failed, filtered]) != 1:
        fail("give either a job id, --failed, or filters (--tag, --operation, --result-code, --batch, --text, "
             "--contact, --since).", 2)
    with job_store(config) as store:
        if filtered:
            if not _confirmed(store, dataclasses.replace(query, status="failed"), "retry", "failed", yes):
                return
            ids = store.retry_where(query, by=actor())
        else:
            ids = store.retry(None if failed else job_id, by=actor())
    out().print(f"Queued again: {count(len(ids), 'job')}{': ' + ', '.join(ids) if ids and len(ids) <= 20 else ''}.",
              markup=False)


def _confirmed(store: JobStore, query: JobFilter, verb: str, status: str, yes: bool) -> bool:
    """Say how many jobs a bulk action will touch; on a terminal, ask first unless --yes."""
    n = count_where(store, query)
    out().print(f"The filters find {count(n, status + ' job')} to {verb}.", markup=False)
    if n and not yes and sys.stdin.isatty() and not typer.confirm(f"{verb.capitalize()} {count(n, 'job')}?"):
        out().print("Nothing done.", markup=False)
        return False
    return bool(n)


def actor() -> Actor:
    """Who acts from this command line: the operating system's login name."""
    try:
        who = getpass.getuser()
    except (KeyError, OSError):
        who = "unknown"
    return Actor(who=who, via="cli")


@app.command("cancel")
def cancel(
    ctx: typer.Context,
    job_id: Annotated[str | None, typer.Argument(help="The pending job to cancel.")] = None,
    batch: Annotated[str | None, typer.Option(help="Cancel every pending job of this import instead.")] = None,
    contact: ContactOption = None,
    since: SinceOption = None,
    tag: TagOption = None,
    operation: OperationOption = None,
    result_code: ResultCodeOption = None,
    text: TextOption = None,
    yes: YesFlag = False,
) -> None:
    """Cancel a pending job (one waiting for a retry too), the pending jobs of an import (--batch), or those the
    filters find (the count is shown first, and on a terminal asked about unless --yes)."""
    config = settings(ctx)
    query = job_filter(config, contact=contact, since=since, tag=tag, operation=operation,
                       result_code=result_code, text=text)
    if query != JobFilter():
        if job_id is not None:
            fail("give either a job id or filters.", 2)
        with job_store(config) as store:
            query = dataclasses.replace(query, batch=batch)
            if not _confirmed(store, dataclasses.replace(query, status="pending"), "cancel", "pending", yes):
                return
            ids = store.cancel_where(query, by=actor())
        out().print(f"Cancelled {count(len(ids), 'pending job')}.", markup=False)
        return
    if (job_id is None) == (batch is None):
        fail("give either a job id or --batch, or filters (--tag, --operation, --result-code, --text, --contact, "
             "--since).", 2)
    with job_store(config) as store:
        if batch is None:
            assert job_id is not None
            job = store.cancel(job_id, by=actor())
            out().print(f"Job {job.id}: {job.message}", markup=False)
            return
        ids = store.cancel_where(JobFilter(batch=batch), by=actor())
        known = ids or any(b.id == batch for b in batches(store)) or store.list(JobFilter(batch=batch, limit=1)).jobs
    if not known:
        fail(f"No import has the batch id {shown(batch)}; connector jobs batches lists them.", 2)
    out().print(f"Cancelled {count(len(ids), 'pending job')} of batch {batch}"
                f"{'' if ids else ': none was waiting any more'}.", markup=False)
