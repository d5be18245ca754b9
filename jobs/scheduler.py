"""APScheduler wiring: one interval job that ticks the runner. The scheduler owns no state; the store does.

Each tick drains what is due. `max_instances=1` keeps ticks from overlapping, and `coalesce=True` turns ticks
missed during a long drain into one, so a busy runner does not queue up a backlog of ticks.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from types import FrameType

from apscheduler.schedulers.background import BackgroundScheduler

from jobs.runner import DrainReport, Runner

log = logging.getLogger(__name__)


def run_forever(
    runner: Runner,
    *,
    tick_seconds: float,
    on_tick: Callable[[DrainReport], None] | None = None,
    install_signals: bool = True,
) -> None:
    """Tick the runner until SIGINT / SIGTERM (or `runner.request_stop()`), then shut down cleanly."""
    stopped = threading.Event()

    def tick() -> None:
        report = runner.drain()
        if on_tick and report.processed:
            on_tick(report)

    def stop(signum: int, frame: FrameType | None) -> None:
        log.warning("signal %s: stopping; running attempts finish, waiting jobs are released", signum)
        runner.request_stop()
        stopped.set()

    if install_signals:
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
    scheduler = BackgroundScheduler(timezone=UTC)
    scheduler.add_job(
        tick, "interval", seconds=tick_seconds, id="tick", max_instances=1, coalesce=True,
        next_run_time=datetime.now(UTC),
    )
    scheduler.start()
    try:
        while not stopped.wait(0.5) and not runner.stop_event.is_set():
            pass
    finally:
        runner.request_stop()
        scheduler.shutdown(wait=True)
        runner.close()
