"""`connector serve`: the HTTP endpoint (`jobs.endpoint`) until SIGINT or SIGTERM."""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Annotated

import typer

from jobs.app import load_rules_of
from jobs.cli.common import err, job_store, reported, settings, signal_handlers_restored
from jobs.endpoint import Endpoint, EndpointConfig, serving


def serve(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="Address to listen on (endpoint.host; default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(
        help="Port to listen on (endpoint.port; default 8780; 0: any free port).", min=0, max=65535)] = None,
) -> None:
    """Take events and jobs over HTTP (POST /events, /mautic, /jobs) until stopped (Ctrl-C). It only queues jobs:
    `connector run` runs them."""
    config = settings(ctx, endpoint={key: value for key, value in (("host", host), ("port", port))
                                     if value is not None} or None)
    with reported():
        rules = load_rules_of(config)
    stop = threading.Event()

    def stopping(signum: int, frame: FrameType | None) -> None:
        stop.set()

    with job_store(config) as store, signal_handlers_restored():
        endpoint = Endpoint(store, rules, EndpointConfig.of(config.endpoint))
        with serving(endpoint, config.endpoint.host, config.endpoint.port) as server:
            signal.signal(signal.SIGINT, stopping)
            signal.signal(signal.SIGTERM, stopping)
            given = EndpointConfig.of(config.endpoint)
            closed = [route for route, secret in (("/events", given.secret), ("/mautic", given.mautic_secret),
                                                  ("/jobs", given.secret or given.token)) if not secret]
            note = f" Closed until their secret is set: {', '.join(closed)}." if closed else ""
            if not rules.rules:
                note += " No scoring rules: every event is kept in the event log as unknown."
            err().print(f"Serving on {server.url} (POST /events, /mautic, /jobs); `connector run` runs the jobs. "
                        f"Ctrl-C stops.{note}", markup=False)
            while not stop.wait(0.5):
                pass
    err().print("Stopped.", markup=False)
