"""The `connector` command: parse, call one function, print. Errors become `Error: ...` and an exit code.

Exit codes: 0 success; 1 a runtime failure (job not found, a job failed under `run --once`); 2 bad usage or
invalid input.
"""

from __future__ import annotations

import functools
import getpass
import importlib.metadata
import inspect
import json
import logging
import shlex
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from typer.core import TyperOption

from config import Settings, SettingsError, defaults, load_settings
from connector.errors import ConnectorError, InvalidInput
from jobs import app as composition
from jobs.dataverse_wiring import sandbox_ca_file
from jobs.demo import DemoResult, run_demo
from jobs.model import InvalidJob, Job, JobStatus, iso
from jobs.runner import DrainReport
from jobs.service import (
    UsageProblem,
    contact_view,
    count_rows,
    import_jobs,
    parse_duration,
    request_from_fields,
)
from jobs.store import Actor, JobFilter, JobNotFound, JobStore, NotAllowed, StoreError

# Piped output is read by people in logs and by tools; do not squeeze tables into 80 columns there.
out = Console(highlight=False, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, highlight=False, soft_wrap=True)

app = typer.Typer(
    help="Apply tag and score jobs from the CRM on the marketing platform, and show what happened.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
jobs_app = typer.Typer(help="Create, import, list, inspect, retry and cancel jobs.", no_args_is_help=True)
contact_app = typer.Typer(help="What the platform and the timeline say about a CRM record.", no_args_is_help=True)
config_app = typer.Typer(help="The effective configuration.", no_args_is_help=True)
sandbox_app = typer.Typer(help="The local emulators of the platforms and the CRM.", no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")
app.add_typer(contact_app, name="contact")
app.add_typer(config_app, name="config")
app.add_typer(sandbox_app, name="sandbox")

_overrides: dict[str, Any] = {}

JsonFlag = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]

# Faults the sandboxes inject (`faults.*` in the settings); a flag overrides the environment and connector.toml.
LatencyFlag = Annotated[float | None, typer.Option("--latency-ms", min=0, help="Added to every answer, in ms.")]
JitterFlag = Annotated[float | None, typer.Option("--jitter-ms", min=0, help="Random extra latency up to this, ms.")]
RateLimitFlag = Annotated[float | None, typer.Option(
    "--rate-limit", min=0.001, help="Requests per second per sandbox before it answers 429 with Retry-After.")]
RetryAfterFlag = Annotated[float | None, typer.Option(
    "--retry-after", min=0, help="Seconds in the Retry-After of a 429 (default 1).")]
ErrorRateFlag = Annotated[float | None, typer.Option(
    "--error-rate", min=0, max=1, help="Fraction of requests answered 500, 502 or 503.")]
ResetRateFlag = Annotated[float | None, typer.Option(
    "--reset-rate", min=0, max=1, help="Fraction of connections reset before the request is read.")]
TimeoutRateFlag = Annotated[float | None, typer.Option(
    "--timeout-rate", min=0, max=1, help="Fraction of requests never answered (the change not made).")]
DropRateFlag = Annotated[float | None, typer.Option(
    "--drop-rate", min=0, max=1, help="Fraction of changes made and then the answer dropped.")]
SeedFlag = Annotated[int | None, typer.Option("--seed", help="Seed of the fault draws, for repeatable runs.")]


FAULT_FLAGS: dict[str, Any] = {
    "latency_ms": LatencyFlag, "jitter_ms": JitterFlag, "rate_limit": RateLimitFlag, "retry_after": RetryAfterFlag,
    "error_rate": ErrorRateFlag, "reset_rate": ResetRateFlag, "timeout_rate": TimeoutRateFlag,
    "drop_rate": DropRateFlag, "seed": SeedFlag,
}


def with_fault_flags(command: Callable[..., None]) -> Callable[..., None]:
    """Give a command the fault flags; it receives them as one `faults` settings override (None: no flag given).

    Typer has no groups of options: the flags are appended to the command's signature, which is what Typer reads.
    """
    own = inspect.signature(command, eval_str=True)
    flags = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation)
             for name, annotation in FAULT_FLAGS.items()]
    parameters = [p for p in own.parameters.values() if p.name != "faults"] + flags

    @functools.wraps(command)
    def run_with_faults(**kwargs: Any) -> None:
        flags = {name: kwargs.pop(name, None) for name in FAULT_FLAGS}
        given = {name: value for name, value in flags.items() if value is not None}
        command(**kwargs, faults=given or None)

    run_with_faults.__signature__ = own.replace(parameters=parameters)  # type: ignore[attr-defined]
    run_with_faults.__annotations__ = {p.name: p.annotation for p in parameters} | {"return": None}
    return run_with_faults


class Failure(Exception):
    """A runtime failure reported to the user with exit code 1."""


def fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"Error: {message}", markup=False)
    raise typer.Exit(code)


def count(n: int, word: str, words: str | None = None) -> str:
    """`1 job`, `2 jobs`."""
    return f"{n} {word if n == 1 else words or word + 's'}"


@contextmanager
def reported() -> Iterator[None]:
    """Our errors become one `Error:` line and the exit code of the module docstring."""
    try:
        yield
    except (InvalidJob, UsageProblem, SettingsError) as exc:
        fail(str(exc), 2)
    except NotAllowed as exc:
        fail(str(exc), 2)
    except InvalidInput as exc:
        # What the user typed, refused by the job store or the platform (a CRM id that is no GUID on Dynamics).
        fail(str(exc), 2)
    except (JobNotFound, StoreError, Failure, ConnectorError) as exc:
        fail(str(exc), 1)
    except sqlite3.DatabaseError as exc:
        fail(f"A data file of the connector cannot be used as a database ({exc}); move the damaged file out of "
             f"the data directory, or point CONNECTOR_HOME elsewhere.", 1)
    except OSError as exc:
        # A port already taken, a data directory that is a file, a file we may not write: the system's words.
        where = f": {exc.filename}" if exc.filename else ""
        fail(f"{exc.strerror or exc}{where}.", 1)


def settings(**overrides: Any) -> Settings:
    with reported():
        return load_settings(**{**_overrides, **overrides})


def _setup_logging(config: Settings) -> None:
    logging.basicConfig(
        level=getattr(logging, config.log_level), stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    composition.install_redaction(config)


@contextmanager
def connector(config: Settings, *, quiet: bool = False) -> Iterator[composition.Connector]:
    _setup_logging(config)
    with reported():
        built = composition.build(config)
    try:
        if built.sandboxes and not quiet:
            where = ", ".join(f"{name} on {server.url}" for name, server in built.sandboxes.items())
            names = list(built.sandboxes)
            emulators = "its emulator runs" if len(names) == 1 else "their emulators run"
            err.print(
                f"Sandbox mode: no URL is configured for {' and '.join(names)}, so {emulators} on "
                f"loopback ({where}; state in {config.home / 'sandbox'}).", markup=False,
            )
        with reported():
            yield built
    finally:
        built.close()


@contextmanager
def job_store(config: Settings) -> Iterator[JobStore]:
    _setup_logging(config)
    with reported(), composition.open_store(config) as store:
        yield store


def _print_version(wanted: bool) -> None:
    if wanted:
        try:
            version = importlib.metadata.version("connector-job-runner")
        except importlib.metadata.PackageNotFoundError:
            version = "unknown (not installed)"
        out.print(f"connector {version}", markup=False)
        raise typer.Exit()


@app.callback()
def main_options(
    home: Annotated[Path | None, typer.Option(
        help=f"Data directory of the embedded default: {defaults.HOME} unless CONNECTOR_HOME says otherwise. "
             "Give it before the sub-command: connector --home DIR jobs list.")] = None,
    log_level: Annotated[str | None, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = None,
    version: Annotated[bool, typer.Option(
        "--version", is_eager=True, callback=_print_version, help="Print the version and exit.")] = False,
) -> None:
    _overrides.clear()
    if home is not None:
        _overrides["home"] = home
    if log_level is not None:
        _overrides["log_level"] = log_level


# --- jobs -------------------------------------------------------------------------------------------------------


@jobs_app.command("add")
def jobs_add(
    operation: Annotated[str, typer.Option("--operation", "-o", help='add_tag, remove_tag, set_score, increase_score, '
                                           'decrease_score, remove_score, start_automation, or the CRM name '
                                           '("Add Tag").')],
    tag: Annotated[str, typer.Option("--tag", "-t", help="Tag name; several separated by , or ; for add/remove. "
                                     "For start_automation: the automation's trigger code.")],
    contact: Annotated[str | None, typer.Option(help="CRM id of the contact.")] = None,
    lead: Annotated[str | None, typer.Option(help="CRM id of the lead.")] = None,
    account: Annotated[str | None, typer.Option(help="CRM id of the account.")] = None,
    score: Annotated[str | None, typer.Option(help="Whole number, for the score operations.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Queue one job. Without --contact, --lead or --account, Add Tag only creates the tag."""
    config = settings()
    with reported():
        request = request_from_fields(
            {"operation": operation, "tags": tag, "score": score, "contact": contact, "lead": lead, "account": account}
        )
    with job_store(config) as store:
        job = store.add([request])[0]
    if as_json:
        out.print_json(data=job.to_json())
    else:
        fields = request.kind.template_fields(request.payload)
        score = "" if fields.get("score") in (None, "") else f" ({fields['score']})"
        out.print(f"Queued job {job.id}: {request.kind.label} {fields.get('tags', '')}{score} for "
                  f"{request.target or 'no record (tag only)'}.", markup=False)


@jobs_app.command("import")
def jobs_import(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="CSV with a header row, or JSON Lines.")],
    skip_invalid: Annotated[bool, typer.Option(
        "--skip-invalid", help="Queue the valid rows even when some are bad.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Queue the jobs of a file: all or nothing unless --skip-invalid; every bad row reported with its line."""
    config = settings()
    with job_store(config) as store:
        # Counting reads the file once more: only worth it when someone watches a progress bar.
        total = count_rows(file) if err.is_terminal and file.is_file() else 0
        with Progress(console=err, transient=True, disable=total < 2000 or not err.is_terminal) as progress:
            task = progress.add_task("Checking rows", total=total)
            result = import_jobs(store, file, skip_invalid=skip_invalid, on_row=lambda: progress.advance(task))
    if as_json:
        out.print_json(data={
            "rows": result.rows, "queued": [j.id for j in result.queued],
            "problems": [{"line": p.line, "message": p.message} for p in result.problems],
        })
    for problem in result.problems if not as_json else []:
        err.print(f"line {problem.line}: {problem.message}", markup=False)
    if result.problems and not skip_invalid:
        fail(f"{len(result.problems)} of {count(result.rows, 'row')} {'is' if len(result.problems) == 1 else 'are'} "
             f"invalid; nothing was queued. "
             f"Fix them, or use --skip-invalid to queue the valid rows.", 2)
    if not as_json:
        skipped = f", {count(len(result.problems), 'invalid row')} skipped" if result.problems else ""
        out.print(f"Queued {count(len(result.queued), 'job')} from {file}{skipped}.", markup=False)


DEFAULT_LIMIT = 100


@jobs_app.command("list")
def jobs_list(
    status: Annotated[
        str | None, typer.Option(help="pending, retrying, running, succeeded, failed or cancelled.")
    ] = None,
    contact: Annotated[str | None, typer.Option(help="Only jobs for this CRM record id.")] = None,
    since: Annotated[str | None, typer.Option(help="Only jobs created within this period: 30m, 2h, 7d.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many jobs, newest first.")] = DEFAULT_LIMIT,
    as_json: JsonFlag = False,
) -> None:
    """Jobs, newest first, with their status and result."""
    config = settings()
    with reported():
        if status is not None and status not in {*(s.value for s in JobStatus), "retrying"}:
            raise UsageProblem(
                f"--status is {status!r}; use pending, retrying, running, succeeded, failed or cancelled."
            )
        since_ts = time.time() - parse_duration(since) if since else None
    with job_store(config) as store:
        found = store.list(JobFilter(status=status, target_id=contact, since=since_ts, limit=limit)).jobs
    if as_json:
        out.print_json(data=[job.to_json() for job in found])
        return
    _print_jobs(found)
    if len(found) == limit:
        # There may be more: say so rather than let the listing look complete.
        err.print(f"Showing the newest {limit} jobs; use --limit to see more.", markup=False)


def _print_jobs(found: list[Job]) -> None:
    table = Table(show_edge=False, pad_edge=False)
    table.add_column("id", no_wrap=True)
    table.add_column("created", no_wrap=True)
    table.add_column("job")
    table.add_column("record", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("tries", justify="right")
    table.add_column("result")
    for job in found:
        data = job.to_json()
        target = data["target"]
        result = job.result_code or ""
        if job.message and job.result_code != "OK":
            result = f"{result}: {job.message}" if result else job.message
        table.add_row(
            job.id, (data["created_at"] or "")[5:16].replace("T", " "), _what(job),
            f"{target['kind']} {target['id']}" if target else "-", job.display_status, str(job.attempts), result,
        )
    out.print(table)
    if not found:
        out.print("No jobs.")


def _what(job: Job) -> str:
    if job.request is not None:
        return job.request.brief()
    raw = job.raw
    return " ".join(str(raw.get(k)) for k in ("operation", "tags", "score") if raw.get(k) not in (None, ""))


@jobs_app.command("show")
def jobs_show(job_id: Annotated[str, typer.Argument(help="The job id.")], as_json: JsonFlag = False) -> None:
    """One job with every attempt: times, outcome, result code, HTTP status and message."""
    config = settings()
    with job_store(config) as store:
        job = store.get(job_id)
        attempts = store.attempts(job_id)
    # `attempts` counts the tries since the job was queued or last retried by hand (the retry budget); the
    # attempt log keeps every try, so support staff see both.
    data = {**job.to_json(), "attempts_total": len(attempts), "attempt_log": [a.to_json() for a in attempts]}
    if as_json:
        out.print_json(data=data)
        return
    labels = {"display_status": "status", "attempts": "attempts (since last retry)",
              "attempts_total": "attempts in all"}
    keys = ("id", "operation", "target", "tags", "score", "display_status", "result_code", "message", "attempts",
            "attempts_total", "created_at", "updated_at", "next_attempt_at", "applied_at", "posted_at")
    width = max(len(labels.get(key, key)) for key in keys)
    for key in keys:
        value = data[key]
        if isinstance(value, dict):
            value = f"{value['kind']} {value['id']}"
        elif isinstance(value, list):
            value = ", ".join(value)
        out.print(f"{labels.get(key, key):>{width}}: {'' if value is None else value}", markup=False)
    table = Table(title="attempts", show_edge=False)
    for column in ("#", "started", "ended", "outcome", "result", "http", "message"):
        table.add_column(column, overflow="fold")
    for a in attempts:
        table.add_row(str(a.number), iso(a.started_at) or "", iso(a.ended_at) or "", a.outcome, a.result_code or "",
                      str(a.http_status or ""), a.message)
    out.print(table)


@jobs_app.command("retry")
def jobs_retry(
    job_id: Annotated[str | None, typer.Argument(help="The failed job to retry.")] = None,
    failed: Annotated[bool, typer.Option("--failed", help="Retry every failed job.")] = False,
) -> None:
    """Put a failed job (or all of them) back in the queue."""
    config = settings()
    if (job_id is None) == (not failed):
        fail("give either a job id or --failed.", 2)
    with job_store(config) as store:
        ids = store.retry(None if failed else job_id, by=_actor())
    out.print(f"Queued again: {count(len(ids), 'job')}{': ' + ', '.join(ids) if ids and len(ids) <= 20 else ''}.",
              markup=False)


@jobs_app.command("cancel")
def jobs_cancel(job_id: Annotated[str, typer.Argument(help="The pending job to cancel.")]) -> None:
    """Cancel a job that has not run yet."""
    config = settings()
    with job_store(config) as store:
        job = store.cancel(job_id, by=_actor())
    out.print(f"Cancelled job {job.id}.", markup=False)


def _actor() -> Actor:
    """Who acts from this command line: the operating system's login name."""
    try:
        who = getpass.getuser()
    except (KeyError, OSError):
        who = "unknown"
    return Actor(who=who, via="cli")


# --- contact ----------------------------------------------------------------------------------------------------


@contact_app.command("show")
def contact_show(
    record_id: Annotated[str, typer.Argument(help="CRM id of the contact (or lead / account with --kind).")],
    kind: Annotated[str, typer.Option(help="contact, lead or account.")] = "contact",
    as_json: JsonFlag = False,
) -> None:
    """The tags and scores the platform reports for a record, and its timeline posts."""
    if kind not in ("contact", "lead", "account"):
        fail(f"--kind is {kind!r}; use contact, lead or account.", 2)
    config = settings()
    with connector(config, quiet=as_json) as built:
        view = contact_view(built.platform, built.crm, kind, record_id)
    if as_json:
        out.print_json(data=view)
        return
    out.print(f"{kind} {record_id} on {view['platform']} (as {view['platform_id']})", markup=False)
    if view["platform_error"]:
        out.print(f"  platform: {view['platform_error']}", markup=False)
    table = Table(show_edge=False)
    table.add_column("tag")
    table.add_column("score", justify="right")
    for tag, score in sorted(view["tags"].items()):
        table.add_row(tag, str(score))
    out.print(table if view["tags"] else "  no tags")
    out.print("timeline:")
    for post in view["timeline"] or [{"created_at": "", "text": "(no posts)"}]:
        out.print(f"  {post['created_at']}  {post['text']}", markup=False)


# --- running ----------------------------------------------------------------------------------------------------


def _report_line(report: DrainReport) -> str:
    line = f"{report.succeeded} succeeded, {report.failed} failed in {report.seconds:.1f} s"
    if report.retrying:
        line += f"; {report.retrying} waiting to retry (next at {iso(report.next_retry_at)})"
    return line + "."


@app.command("run")
def run(
    once: Annotated[bool, typer.Option("--once", help="Process everything due now, then exit.")] = False,
    workers: Annotated[int | None, typer.Option(help="Worker threads.", min=1)] = None,
) -> None:
    """Run the job queue on a schedule until stopped (Ctrl-C), or once."""
    config = settings(runner={"workers": workers} if workers else None)
    with connector(config) as built:
        if once:
            report = built.runner.drain()
            out.print(_report_line(report), markup=False)
            if report.failed:
                raise Failure(f"{count(report.failed, 'job')} failed; see `connector jobs list --status failed`.")
            return
        from jobs.scheduler import run_forever

        err.print(f"Running: ticking every {config.runner.tick_seconds:g} s with {config.runner.workers} workers. "
                  "Ctrl-C stops.", markup=False)
        run_forever(built.runner, tick_seconds=config.runner.tick_seconds,
                    on_tick=lambda r: out.print(time.strftime("%H:%M:%S ") + _report_line(r), markup=False))
        err.print("Stopped.", markup=False)


@app.command("demo")
@with_fault_flags
def demo(
    faults: dict[str, Any] | None,
    crm: Annotated[str | None, typer.Option(
        "--crm", help="dataverse: create the job rows in (sandbox) Dynamics 365, as CRM users do.")] = None,
) -> None:
    """Queue a realistic set of jobs on the embedded default, run them, and show the outcome.

    The fault flags make the sandboxes hostile; the demo keeps running retries that come due within a minute,
    so that it ends with every job in a final state.
    """
    if crm not in (None, "local", "dataverse"):
        fail(f"--crm is {crm!r}; use local or dataverse.", 2)
    # The CRM user's path needs both: job rows in the CRM, and the outcome on the same CRM's timeline.
    where = {"crm": crm, "job_store": "dataverse" if crm == "dataverse" else None}
    config = settings(**where, faults=faults)
    with connector(config) as built:
        result = run_demo(built)
        injected = {name: server.injector.counts for name, server in built.sandboxes.items()}
    out.rule("Jobs")
    _print_jobs(result.jobs)
    out.print(_report_line(result.report), markup=False)
    for name, counts in injected.items():
        if counts:
            shown = ", ".join(f"{fault} x{n}" for fault, n in sorted(counts.items()))
            out.print(f"Faults injected by the {name} sandbox: {shown}.", markup=False)
    out.rule("Tags and scores on the platform, and timeline posts")
    this_run = {job.id for job in result.jobs}
    for view in result.records:
        tags = ", ".join(f"{t}={s}" for t, s in sorted(view["tags"].items())) or "(no tags)"
        if view["platform_error"]:
            tags = f"(not read: {view['platform_error']})"
        label = view["name"] if view["name"] == view["id"] else f"{view['name']} ({view['id']})"
        out.print(f"{view['kind']} {label}: {tags}", markup=False)
        for post in view["timeline"]:
            if post["job_id"] in this_run:  # the posts of this demo's jobs, not those of earlier runs
                out.print(f"    {post['created_at']}  {post['text']}", markup=False)
    out.print("\nTry:", markup=False)
    for hint in _demo_hints(config, result):
        out.print(f"  {hint}", markup=False)


def _demo_hints(config: Settings, result: DemoResult) -> list[str]:
    """Commands that show more of what the demo did, as they work in the setup the demo ran in."""
    env = []
    if config.job_store == "dataverse":
        env.append("CONNECTOR_JOB_STORE=dataverse")
    if config.crm == "dataverse":
        env.append("CONNECTOR_CRM=dataverse")
    if config.platform != "spotler":
        env.append(f"CONNECTOR_PLATFORM={config.platform}")
    home = [] if config.home == Path(defaults.HOME) else ["--home", shlex.quote(str(config.home))]
    command = " ".join([*env, "connector", *home])
    failed = [job.id for job in result.jobs if job.status is JobStatus.FAILED]
    shown = failed[0] if failed else result.jobs[0].id if result.jobs else "<job id>"
    # On Dynamics 365 a record is known by its GUID: C-1001 is the demo's name for it.
    contact = next((view["id"] for view in result.records if view["kind"] == "contact"), "C-1001")
    return [f"{command} jobs list --status failed", f"{command} jobs show {shown}", f"{command} contact show {contact}"]


# --- sandbox ----------------------------------------------------------------------------------------------------


@sandbox_app.command("serve")
@with_fault_flags
def sandbox_serve(
    faults: dict[str, Any] | None,
    port: Annotated[int, typer.Option(
        min=0, max=65533, help="First of three ports: Spotler on it, Mautic on the next, Dataverse on the one after "
        "(0: any free ports).")] = 0,
    spotler_port: Annotated[int, typer.Option(min=0, max=65535, help="Port of the Spotler sandbox (0: any free).")] = 0,
    mautic_port: Annotated[int, typer.Option(min=0, max=65535, help="Port of the Mautic sandbox (0: any free).")] = 0,
    dataverse_port: Annotated[int, typer.Option(
        min=0, max=65535, help="Port of the Dataverse sandbox, https (0: any free).")] = 0,
) -> None:
    """Serve every sandbox on loopback in the foreground and print their base URLs; Ctrl-C or SIGTERM stops."""
    config = settings(faults=faults)
    _setup_logging(config)
    stopped = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopped.set())
    with reported():
        try:
            started = composition.start_sandboxes(
                config, {"spotler": spotler_port or port, "mautic": mautic_port or (port and port + 1),
                         "dataverse": dataverse_port or (port and port + 2)}
            )
        except OSError as exc:
            fail(f"A sandbox could not listen ({exc.strerror}); give free ports with --port, --spotler-port, "
                 f"--mautic-port and --dataverse-port, or 0 for any free port.", 1)
    try:
        for name, (_, url) in started.items():
            out.print(f"{name}: {url}", markup=False)
        if "dataverse" in started:
            out.print(f"dataverse CA (curl --cacert): {sandbox_ca_file(config)}", markup=False)
        quiet = ("hang_seconds", "seed", "retry_after")
        faults = {k: v for k, v in config.faults.model_dump().items() if v and k not in quiet}
        err.print(f"Serving {count(len(started), 'sandbox', 'sandboxes')}, state in {config.home / 'sandbox'}; "
                  f"faults: {faults or 'none'}. Ctrl-C stops.", markup=False)
        sys.stdout.flush()
        while not stopped.wait(0.2):
            pass
    finally:
        for server, _ in started.values():
            server.stop()
    err.print("Stopped.", markup=False)


# --- config -----------------------------------------------------------------------------------------------------


@config_app.command("show")
def config_show(as_json: JsonFlag = False) -> None:
    """The effective settings, secrets masked."""
    config = settings()
    data = json.loads(config.model_dump_json())
    data["sandbox_mode"] = config.sandbox_mode
    if as_json:
        out.print_json(data=data)
        return
    for line in _flatten(data):
        out.print(line, markup=False)


def _flatten(data: dict[str, Any], prefix: str = "") -> Iterator[str]:
    for key, value in data.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key} = {json.dumps(value)}"


def _flags_without_a_value_type(command: Any) -> Any:
    """Help shows `--json`, not `--json <bool>`.

    This typer's rich help prints a value type after every option, flags included (its plain help skips flags;
    neither `is_flag=True` nor `--json/--no-json` changes the rich one). An empty metavar leaves that column blank
    for the options that take no value, `--help` among them.
    """
    for param in command.get_params(typer.Context(command)):
        if isinstance(param, TyperOption) and param.is_flag and param.metavar is None:
            param.metavar = ""
    for sub in getattr(command, "commands", {}).values():
        _flags_without_a_value_type(sub)
    return command


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns the exit code."""
    command = _flags_without_a_value_type(typer.main.get_command(app))
    try:
        command.main(args=argv, prog_name="connector", standalone_mode=True)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
