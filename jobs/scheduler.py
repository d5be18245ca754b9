"""APScheduler wiring: one interval job that ticks the runner. The scheduler owns no state; the store does.

Each tick drains what is due. `max_instances=1` keeps ticks from overlapping, and `coalesce=True` turns ticks
missed during a long drain into one, so a busy runner does not queue up a backlog of ticks.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import signal
from collections.abc import Callable
from datetime import UTC, datetime
from types import FrameType
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler

from connector.errors import ConnectorError
from jobs.runner import DrainReport, Runner

log = logging.getLogger(__name__)


class StopOnSignals:
    """While in effect, SIGINT and SIGTERM ask the runner to stop: it claims nothing more, lets running attempts
    finish (a wait between retries is cut short) and gives the jobs it holds back without spending an attempt.
    The handlers in place before are put back after. `signum` says which signal stopped it, if one did."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        self.signum: int | None = None
        self._saved: dict[int, Any] = {}

    def __enter__(self) -> StopOnSignals:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._saved[signum] = signal.signal(signum, self._stop)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._saved.items():
            # None: a handler not set from Python, which Python cannot put back
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        log.warning("%s: stopping; running attempts finish, waiting jobs are given back",
                    signal.Signals(signum).name)
        self.signum = signum
        self.runner.request_stop()


def run_forever(
    runner: Runner,
    *,
    tick_seconds: float,
    on_tick: Callable[[DrainReport], None] | None = None,
    install_signals: bool = True,
    heartbeat: Callable[[], None] | None = None,
    wakeups: Callable[[Callable[[], None]], Callable[[], None]] | None = None,
) -> None:
    """Tick the runner until SIGINT / SIGTERM (or `runner.request_stop()`), then shut down cleanly. `heartbeat`
    is called every tick on a schedule of its own, so that a long drain does not look like a dead runner.
    `wakeups` (a store's, such as PostgreSQL's LISTEN) is given a function that ticks at once when jobs are added,
    and returns the function that stops it."""
    with StopOnSignals(runner) if install_signals else contextlib.nullcontext():
        _tick_until_stopped(runner, tick_seconds, on_tick, heartbeat, wakeups)


def _tick_until_stopped(runner: Runner, tick_seconds: float, on_tick: Callable[[DrainReport], None] | None,
                        heartbeat: Callable[[], None] | None = None,
                        wakeups: Callable[[Callable[[], None]], Callable[[], None]] | None = None) -> None:
    def tick() -> None:
        try:
            report = runner.drain(report_waiting=False)
        except ConnectorError as exc:
            # The job store is down for longer than a drain waits: say so, and try again at the next tick.
            log.warning("This tick could not reach the job store: %s %s", exc.result_code, exc.message)
            return
        if on_tick and report.processed:
            on_tick(report)

    # A tick skipped because the previous drain still runs is the design (max_instances=1), not news for the
    # operator: APScheduler would warn about it at every tick of a long drain.
    logging.getLogger("apscheduler.scheduler").setLevel(logging.ERROR)
    logging.getLogger("apscheduler.executors.default").setLevel(logging.ERROR)
    scheduler = BackgroundScheduler(timezone=UTC)
    scheduler.add_job(
        tick, "interval", seconds=tick_seconds, id="tick", max_instances=1, coalesce=True,
        next_run_time=datetime.now(UTC),
    )
    if heartbeat is not None:
        scheduler.add_job(_beat, "interval", args=[heartbeat], seconds=tick_seconds, id="heartbeat", max_instances=1,
                          coalesce=True, next_run_time=datetime.now(UTC))
    scheduler.start()
    stop_waking = wakeups(functools.partial(_tick_now, scheduler)) if wakeups is not None else None
    try:
        while not runner.stop_event.wait(0.5):  # a timeout, so that signal handlers run promptly
            pass
    finally:
        if stop_waking is not None:
            stop_waking()
        runner.request_stop()
        scheduler.shutdown(wait=True)
        runner.close()


def _tick_now(scheduler: BackgroundScheduler) -> None:
    """The next tick now, not at its time: new jobs start at once. A drain under way takes them itself (a tick
    that would overlap it is skipped, as any tick is)."""
    try:
        scheduler.modify_job("tick", next_run_time=datetime.now(UTC))
    except Exception:  # stopping: the scheduler or its job is gone, and so is the need to tick
        log.debug("no tick brought forward: the scheduler is stopping", exc_info=True)


def _beat(heartbeat: Callable[[], None]) -> None:
    try:
        heartbeat()
    except ConnectorError as exc:
        log.warning("The runner's heartbeat could not reach the job store: %s %s", exc.result_code, exc.message)
