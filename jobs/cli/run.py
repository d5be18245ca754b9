"""`connector run` (the schedule, or one drain) and `connector demo` (a realistic morning of jobs, run and shown)."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import shlex
import signal
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from config import Settings, defaults
from config.text import count, shown
from connector.sandbox.webhook import WebhookReceiver
from jobs import app as composition
from jobs import views
from jobs.cli.common import (
    Failure,
    connector,
    err,
    fail,
    out,
    print_jobs,
    reported,
    settings,
    with_fault_flags,
)
from jobs.demo import DemoResult, GymResult, demo_rules, run_demo
from jobs.model import JobStatus, iso

# glibc gives each thread that meets a busy heap an arena of its own, up to eight per core, and memory freed in one
# arena serves no other: with a pool of worker threads a drain of 50,000 jobs peaked at 103 MiB against 84 MiB for
# 1,000, with no more Python objects alive at its end than at its start; with two arenas, 91 against 80 MiB (the
# rest is SQLite's page caches filling as the files grow). The price is malloc's lock, shared by more threads: 3,000
# jobs at 0 ms of latency drained 2-4 % slower than with sixteen arenas (three runs each, in turn); at 20 ms, where
# the workers mostly wait on the network, it does not show. MALLOC_ARENA_MAX, when set, wins. Set here, by the
# command that runs the queue, because it holds for the whole process.
MALLOC_ARENAS = 2
_M_ARENA_MAX = -8  # mallopt's parameter number (malloc.h)


def _limit_malloc_arenas() -> None:
    """At most MALLOC_ARENAS malloc arenas for the threads started from now on, where the C library is glibc (it
    has `mallopt`); elsewhere, and where MALLOC_ARENA_MAX is set, nothing changes."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError):
        return
    mallopt(_M_ARENA_MAX, MALLOC_ARENAS)


def run(
    ctx: typer.Context,
    once: Annotated[bool, typer.Option("--once", help="Process everything due now, then exit.")] = False,
    workers: Annotated[int | None, typer.Option(help="Worker threads.", min=1)] = None,
    console: Annotated[bool, typer.Option(
        "--console", help="Serve the web console (console.host, console.port) from this process too.")] = False,
) -> None:
    """Run the job queue on a schedule until stopped (Ctrl-C), or once."""
    # Here, not at the top: APScheduler is only worth importing for the command that runs the queue.
    from jobs.scheduler import StopOnSignals, run_forever

    _limit_malloc_arenas()
    config = settings(ctx, runner={"workers": workers} if workers else None)
    with connector(config) as built, contextlib.ExitStack() as stack:
        if console:
            from jobs.console.server import ConsoleServer, console_parts

            with reported():
                server = ConsoleServer(console_parts(built), config.console.host, config.console.port).start()
            stack.callback(server.stop)
            err().print(f"Console on {server.url}", markup=False)
        beat = functools.partial(built.store.heartbeat, built.runner.owner)
        if once:
            with reported():
                beat()
            with StopOnSignals(built.runner) as signals:
                report = built.runner.drain()
            out().print(views.report_line(report), markup=False)
            if signals.signum is not None:
                waiting = sum(n for status, n in built.store.counts().items() if status in ("pending", "retrying"))
                err().print(f"Stopped by {signal.Signals(signals.signum).name} before the drain finished: the "
                            f"attempts under way were let finish and none is left running. "
                            f"{count(waiting, 'job')} still waiting; the next drain runs them.", markup=False)
                # 128 + the signal's number, as a shell reports a command a signal ended: the drain did not finish.
                raise typer.Exit(128 + signals.signum)
            if report.failed:
                raise Failure(f"{count(report.failed, 'job')} failed; see `connector jobs list --status failed`.")
            return
        err().print(f"Running: ticking every {config.runner.tick_seconds:g} s with {config.runner.workers} workers. "
                  "Ctrl-C stops.", markup=False)
        run_forever(built.runner, tick_seconds=config.runner.tick_seconds, heartbeat=beat,
                    on_tick=lambda r: out().print(time.strftime("%H:%M:%S ") + views.report_line(r), markup=False),
                    # A store that can say when jobs are added (PostgreSQL's LISTEN) starts them without a tick.
                    wakeups=getattr(built.store, "wakeups", None))
        err().print("Stopped.", markup=False)


@with_fault_flags
def demo(
    ctx: typer.Context,
    faults: dict[str, Any] | None,
    crm: Annotated[str | None, typer.Option(
        "--crm", help="dataverse: create the job rows in (sandbox) Dynamics 365, as CRM users do.")] = None,
    store: Annotated[str | None, typer.Option(
        "--store", help="postgres: the jobs wait in the PostgreSQL database of postgres.url "
                        "(CONNECTOR_POSTGRES__URL), whose schema the demo upgrades first.")] = None,
) -> None:
    """Queue a realistic set of jobs on the embedded default, run them, and show the outcome.

    The fault flags make the sandboxes hostile; the demo keeps running retries that come due within a minute,
    so that it ends with every job in a final state.
    """
    if crm not in (None, "local", "dataverse"):
        fail(f"--crm is {shown(crm)}; use local or dataverse.", 2)
    if store not in (None, "sqlite", "postgres"):
        fail(f"--store is {shown(store)}; use sqlite or postgres (--crm dataverse keeps the jobs in Dynamics 365).",
             2)
    if store is not None and crm == "dataverse":
        fail("--store and --crm dataverse go separately: with --crm dataverse the jobs are rows of Dynamics 365.", 2)
    # The CRM user's path needs both: job rows in the CRM, and the outcome on the same CRM's timeline.
    where = {"crm": crm, "job_store": "dataverse" if crm == "dataverse" else store}
    config = settings(ctx, **where, faults=faults)
    if config.job_store == "postgres":
        with reported():
            before, after = composition.upgrade_postgres(config)
        if before != after:
            err().print(f"Upgraded the PostgreSQL job store's schema from version {before} to {after}.", markup=False)
    with contextlib.ExitStack() as stack:
        receiver = None
        if config.rules_file is None:
            # The gym of the product documents, unless the user has rules of their own; its hot-lead trigger also
            # sends a webhook, to a receiver the demo runs on loopback.
            receiver = stack.enter_context(WebhookReceiver(config.webhook.secret.get_secret_value()))
            config = config.model_copy(update={"rules_file": demo_rules(config.home, receiver.url, config.crm)})
        built = stack.enter_context(connector(config))
        result = run_demo(built)
        deliveries = receiver.received if receiver else []
        injected = {name: server.injector.counts for name, server in built.sandboxes.items()}
    out().rule("Jobs")
    print_jobs(result.jobs)
    out().print(views.report_line(result.report), markup=False)
    for name, counts in injected.items():
        if counts:
            injected_faults = ", ".join(f"{fault} x{n}" for fault, n in sorted(counts.items()))
            out().print(f"Faults injected by the {name} sandbox: {injected_faults}.", markup=False)
    if result.gym is not None:
        out().rule(f"Scoring rules and triggers: the gym ({config.rules_file})")
        for line in _gym_lines(result.gym):
            out().print(line, markup=False)
        for mail in result.gym.mails:
            out().print(f"E-mail to {', '.join(mail['to'])}: {mail['subject']!r} (job {mail['job_id']})",
                        markup=False)
        for delivery in deliveries:
            body = delivery.body or {}
            out().print(f"Webhook received on loopback, signature {'verified' if delivery.verified else 'WRONG'}: "
                        f"trigger {body.get('trigger')!r}, {body.get('tag')} = {body.get('score')} (job "
                        f"{body.get('job_id')})", markup=False)
        if result.gym.actions:
            out().print("Action jobs the triggers queued:", markup=False)
            print_jobs(result.gym.actions)
    out().rule("Tags and scores on the platform, and timeline posts")
    for line in _record_lines(result):
        out().print(line, markup=False)
    out().print("\nTry:", markup=False)
    for hint in _demo_hints(config, result):
        out().print(f"  {hint}", markup=False)


def _gym_lines(gym: GymResult) -> list[str]:
    """The gym's events, the score history they made, what fired, and what the CRM actions left on the record."""
    events = gym.events
    lines = [f"Events: {events.read} read: {len(events.queued)} queued, {events.seen_before} seen before, "
             f"{events.first_already_scored} already scored once, {len(events.unknown)} with no rule (kept in the "
             f"event log)."]
    lines += [f"  line {p.line}: {p.message}" for p in events.unknown]
    lines.append("Score history of the rules' and triggers' changes:")
    for record, entries in gym.history.items():
        for entry in entries:
            if entry.source not in ("rule", "trigger"):
                continue
            change = entry.change
            around = "" if change.after is None else f" ({change.before if change.before is not None else '?'} -> " \
                f"{change.after})"
            lines.append(f"  {record}  {change.tag} {views.change_text(change)}{around}  by a {entry.source} "
                         f"(job {entry.job_id})")
    lines.append("Trigger log:")
    lines += [f"  {iso(f.at)}  {f.trigger} fired for {f.record}: {f.tag} {f.before} -> {f.after} "
              f"(job {f.job_id})" for f in gym.firings] or ["  (nothing fired)"]
    lines += [f"Task for the owner of contact C-1001: {t.subject!r}, due {t.due}" for t in gym.tasks]
    for name, value in gym.fields.items():
        if value:
            lines.append(f"contact C-1001's {name} in the CRM: {value}")
    return lines


def _record_lines(result: DemoResult) -> list[str]:
    """Each record's tags and scores, and under it the timeline posts of this run's jobs."""
    this_run = {job.id for job in result.jobs}
    if result.gym is not None:
        this_run |= set(result.gym.events.queued) | {job.id for job in result.gym.actions}
    lines = []
    for view in result.records:
        tags = ", ".join(f"{t}={s}" for t, s in sorted(view["tags"].items())) or "(no tags)"
        if view["platform_error"]:
            tags = f"(not read: {view['platform_error']})"
        label = view["name"] if view["name"] == view["id"] else f"{view['name']} ({view['id']})"
        lines.append(f"{view['kind']} {label}: {tags}")
        # The posts of this demo's jobs, not those of earlier runs.
        posts = [post for post in view["timeline"] if post["job_id"] in this_run]
        lines += [f"    {post['created_at']}  {post['text']}" for post in posts]
    return lines


def _demo_hints(config: Settings, result: DemoResult) -> list[str]:
    """Commands that show more of what the demo did, as they work in the setup the demo ran in."""
    env = []
    if config.job_store in ("dataverse", "postgres"):
        env.append(f"CONNECTOR_JOB_STORE={config.job_store}")
    if config.crm == "dataverse":
        env.append("CONNECTOR_CRM=dataverse")
    if config.platform != "spotler":
        env.append(f"CONNECTOR_PLATFORM={config.platform}")
    home = [] if config.home == Path(defaults.HOME) else ["--home", shlex.quote(str(config.home))]
    command = " ".join([*env, "connector", *home])
    failed = [job.id for job in result.jobs if job.status is JobStatus.FAILED]
    example = failed[0] if failed else result.jobs[0].id if result.jobs else "<job id>"
    # On Dynamics 365 a record is known by its GUID: C-1001 is the demo's name for it.
    contact = next((view["id"] for view in result.records if view["kind"] == "contact"), "C-1001")
    return [f"{command} jobs list --status failed", f"{command} jobs show {example}",
            f"{command} contact show {contact}"]
