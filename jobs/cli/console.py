"""`connector console` (the web console until SIGINT or SIGTERM) and `connector status` (the overview's numbers)."""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Annotated

import typer

from jobs import views
from jobs.cli.common import JsonFlag, connector, err, job_store, out, reported, settings, signal_handlers_restored
from jobs.console.server import ConsoleServer, console_parts
from jobs.overview import api_namer, overview

HostFlag = Annotated[str | None, typer.Option(help="Address to listen on (console.host; default 127.0.0.1).")]
PortFlag = Annotated[int | None, typer.Option(help="Port (console.port; default 8781; 0: any free port).", min=0,
                                              max=65535)]


def console(ctx: typer.Context, host: HostFlag = None, port: PortFlag = None) -> None:
    """Serve the web console (overview, jobs, records, triggers, /metrics, /healthz) until stopped (Ctrl-C). It
    runs no jobs: `connector run` does, or `connector run --console` serves both from one process."""
    config = settings(ctx, console=_where(host, port))
    stop = threading.Event()

    def stopping(signum: int, frame: FrameType | None) -> None:
        stop.set()

    with connector(config) as built, signal_handlers_restored():
        with reported():
            server = ConsoleServer(console_parts(built), config.console.host, config.console.port).start()
        try:
            signal.signal(signal.SIGINT, stopping)
            signal.signal(signal.SIGTERM, stopping)
            err().print(f"Console on {server.url}{_access(config.console)} Ctrl-C stops.", markup=False)
            while not stop.wait(0.5):
                pass
        finally:
            server.stop()
    err().print("Stopped.", markup=False)


def _where(host: str | None, port: int | None) -> dict[str, object] | None:
    return {key: value for key, value in (("host", host), ("port", port)) if value is not None} or None


def _access(console: object) -> str:
    from config.settings import ConsoleSettings

    assert isinstance(console, ConsoleSettings)
    how = []
    if console.password.get_secret_value():
        how.append(f"basic auth as {console.username}")
    if console.token.get_secret_value():
        how.append("a bearer token")
    sign_in = f" (sign in with {' or '.join(how)})" if how else ""
    return sign_in + (" read-only;" if console.read_only else ";")


def status(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """The overview's numbers: jobs per status, the retry backlog, the oldest pending job, jobs done in the last
    hour and day per result code, 429s and errors per API, and the runners seen recently."""
    config = settings(ctx)
    with job_store(config) as store:
        crm = "dataverse" if config.crm == "dataverse" else "local"
        view = overview(store, api_namer(config.platform, crm))
    if as_json:
        out().print_json(data=views.overview_json(view))
        return
    for line in views.overview_lines(view):
        out().print(line, markup=False)
