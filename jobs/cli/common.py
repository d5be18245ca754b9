"""What the commands share: the consoles, the settings, our errors as `Error: ...` lines with an exit code, and
the connector or job store a command works with.

Exit codes: 0 success; 1 a runtime failure (job not found, a job failed under `run --once`); 2 bad usage or
invalid input.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import signal
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console

from config import Settings, SettingsError, load_settings
from config.text import shown
from connector.dataverse.client import is_guid
from connector.errors import ConnectorError, InvalidInput
from connector.sandbox.server import SandboxServer
from jobs import app as composition
from jobs import views
from jobs.kinds import target_of
from jobs.model import InvalidJob, Job, Target
from jobs.service import UsageProblem
from jobs.store import JobNotFound, JobStore, NotAllowed, StoreError

LOG_FORMAT = "%(asctime)s.%(msecs)03dZ %(levelname)s %(name)s: %(message)s"


class UtcFormatter(logging.Formatter):
    """Log times in UTC, ISO 8601 (`2026-12-02T16:47:05.123Z`): the zone of `jobs list` and of the JSON output, so
    a log line and a job's times compare at a glance, wherever the runner's host is."""

    def __init__(self) -> None:
        super().__init__(LOG_FORMAT, datefmt="%Y-%m-%dT%H:%M:%S")

    def converter(self, seconds: float | None) -> time.struct_time:
        return time.gmtime(seconds)


class JsonFormatter(logging.Formatter):
    """`log_format = "json"`: one JSON object per line, for log collectors: `time` in UTC with its offset
    (`2026-12-02T16:47:05.123+00:00`), `level`, `logger`, `message`, and on a job's lines `job_id`, `record`,
    `operation`, `outcome` and `result_code`."""

    FIELDS = ("job_id", "record", "operation", "outcome", "result_code")

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line: dict[str, Any] = {"time": f"{stamp}.{int(record.msecs):03d}+00:00", "level": record.levelname,
                                "logger": record.name, "message": record.getMessage()}
        line.update({name: getattr(record, name) for name in self.FIELDS if hasattr(record, name)})
        if record.exc_info:
            line["exception"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def out() -> Console:
    """A console on standard output as it is now (a test may have swapped it), sized for it.

    Piped output is read by people in logs and by tools; do not squeeze tables into 80 columns there.
    """
    return Console(file=sys.stdout, highlight=False, width=None if sys.stdout.isatty() else 200)


def err() -> Console:
    """A console on standard error as it is now."""
    return Console(file=sys.stderr, highlight=False, soft_wrap=True)

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
    err().print(f"Error: {message}", markup=False)
    raise typer.Exit(code)


def print_jobs(found: list[Job]) -> None:
    console = out()
    console.print(views.jobs_view(found, console.width))
    if not found:
        console.print("No jobs.")


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


@dataclass(frozen=True)
class RootOptions:
    """The root command's options that override settings (`connector --home D --log-level L ...`).

    The root callback puts them in Typer's context; `settings()` finds them there, so nothing outlives a command.
    """

    home: Path | None = None
    log_level: str | None = None

    def overrides(self) -> dict[str, Any]:
        given = {"home": self.home, "log_level": self.log_level}
        return {key: value for key, value in given.items() if value is not None}


def settings(ctx: typer.Context, **overrides: Any) -> Settings:
    """The settings of this command: its own overrides, then the root options, then the environment and files."""
    root = ctx.find_root().ensure_object(RootOptions)
    with reported():
        return load_settings(**{**root.overrides(), **overrides})


@contextmanager
def logging_to_stderr(config: Settings) -> Iterator[None]:
    """Log records go to standard error at the configured level, secrets masked, while the command runs.

    The handler, the level and the redaction filter are taken back afterwards, so that commands run one after
    another in one process (the tests do) neither pile up handlers nor write to a stream that is gone.
    """
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if config.log_format == "json" else UtcFormatter())
    level = root.level
    root.addHandler(handler)
    root.setLevel(getattr(logging, config.log_level))
    redactor = composition.install_redaction(config)
    try:
        yield
    finally:
        for each in root.handlers:
            each.removeFilter(redactor)
        root.removeHandler(handler)
        root.setLevel(level)


@contextmanager
def signal_handlers_restored() -> Iterator[None]:
    """The SIGINT and SIGTERM handlers a long-running command installs are undone when it ends."""
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, handler in saved.items():
            if handler is not None:  # None: a handler not set from Python, which Python cannot put back
                signal.signal(signum, handler)


@contextmanager
def connector(config: Settings, *, quiet: bool = False) -> Iterator[composition.Connector]:
    """The connector built from the settings, closed after the block; says so on stderr when it starts sandboxes."""
    with logging_to_stderr(config):
        with reported():
            built = composition.build(config)
        try:
            if built.sandboxes and not quiet:
                err().print(_sandbox_line(config, built.sandboxes), markup=False)
            with reported():
                yield built
        finally:
            built.close()


def _sandbox_line(config: Settings, sandboxes: dict[str, SandboxServer]) -> str:
    where = ", ".join(f"{name} on {server.url}" for name, server in sandboxes.items())
    names = list(sandboxes)
    emulators = "its emulator runs" if len(names) == 1 else "their emulators run"
    return (f"Sandbox mode: no URL is configured for {' and '.join(names)}, so {emulators} on "
            f"loopback ({where}; state in {config.home / 'sandbox'}).")


@contextmanager
def job_store(config: Settings) -> Iterator[JobStore]:
    """The job store of the settings, closed after the block."""
    with logging_to_stderr(config), reported(), composition.open_store(config) as store:
        yield store


def check_record_id(config: Settings, option: str, record_id: str) -> None:
    """On Dynamics 365 a record is known by its GUID: any other id would find nothing, and say nothing about why."""
    if "dataverse" in (config.job_store, config.crm) and not is_guid(record_id.strip()):
        fail(f"{option} is {shown(record_id)}; on Dynamics 365 a record is known by its GUID (such as "
             "00000000-0000-0000-0000-000000000000), which the record's address in the CRM ends with.", 2)


def record_of(contact: str | None, lead: str | None, account: str | None, *, required: bool = True,
              config: Settings | None = None) -> Target | None:
    """The record named by --contact, --lead or --account: exactly one (or, when not `required`, at most one);
    with `config`, one Dynamics 365 can know."""
    given = [(kind, value) for kind, value in (("contact", contact), ("lead", lead), ("account", account))
             if value is not None]
    if len(given) > 1 or (required and not given):
        fail(f"give the record with {'exactly' if required else 'at most'} one of --contact, --lead or --account.", 2)
    if not given:
        return None
    with reported():
        target = target_of(*given[0])
    if target is None:
        fail(f"--{given[0][0]} is empty; give the CRM id of the record.", 2)
    if config is not None:
        check_record_id(config, f"--{given[0][0]}", target.id)
    return target
