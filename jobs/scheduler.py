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

from connector.errors import ConnectorError
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
        try:
            report = runner.drain(report_waiting=False)
        except ConnectorError as exc:
            # The job store is down for longer than a drain waits: say so, and try again at the next tick.
            log.warning("This tick could not reach the job store: %s %s", exc.result_code, exc.message)
            return
        if on_tick and report.processed:
            on_tick(report)

    def stop(signum: int, frame: FrameType | None) -> None:
        log.warning("%s: stopping; running attempts finish, waiting jobs are released", signal.Signals(signum).name)
        runner.request_stop()
        stopped.set()

    if install_signals:
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
    # A tick skipped because the previous drain still runs is the design (max_instances=1), not news for the
    # operator: APScheduler would warn about it at every tick of a long drain.
    logging.getLogger("apscheduler.scheduler").setLevel(logging.ERROR)
    logging.getLogger("apscheduler.executors.default").setLevel(logging.ERROR)
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
