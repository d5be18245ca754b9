"""`connector sandbox serve`: every emulator on loopback in the foreground, with fault flags."""

from __future__ import annotations

import signal
import sys
import threading
from typing import Annotated, Any

import typer

from config import Settings
from config.text import count
from connector.sandbox.server import SandboxServer
from jobs import app as composition
from jobs.cli.common import (
    err,
    fail,
    logging_to_stderr,
    out,
    reported,
    settings,
    signal_handlers_restored,
    with_fault_flags,
)
from jobs.dataverse_wiring import sandbox_ca_file

app = typer.Typer(help="The local emulators of the platforms and the CRM.", no_args_is_help=True)


@app.command("serve")
@with_fault_flags
def serve(
    ctx: typer.Context,
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
    config = settings(ctx, faults=faults)
    ports = {"spotler": spotler_port or port, "mautic": mautic_port or (port and port + 1),
             "dataverse": dataverse_port or (port and port + 2)}
    with logging_to_stderr(config), signal_handlers_restored():
        stopped = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stopped.set())
        started = _start(config, ports)
        try:
            _announce(config, started)
            while not stopped.wait(0.2):
                pass
        finally:
            for server, _ in started.values():
                server.stop()
    err().print("Stopped.", markup=False)


def _start(config: Settings, ports: dict[str, int]) -> dict[str, tuple[SandboxServer, str]]:
    with reported():
        try:
            return composition.start_sandboxes(config, ports)
        except OSError as exc:
            fail(f"A sandbox could not listen ({exc.strerror}); give free ports with --port, --spotler-port, "
                 f"--mautic-port and --dataverse-port, or 0 for any free port.", 1)


def _announce(config: Settings, started: dict[str, tuple[SandboxServer, str]]) -> None:
    """The base URLs on stdout, one `name: url` a line (scripts read them), and what is served on stderr."""
    for name, (_, url) in started.items():
        out().print(f"{name}: {url}", markup=False)
    if "dataverse" in started:
        out().print(f"dataverse CA (curl --cacert): {sandbox_ca_file(config)}", markup=False)
    quiet = ("hang_seconds", "seed", "retry_after")
    faults = {k: v for k, v in config.faults.model_dump().items() if v and k not in quiet}
    err().print(f"Serving {count(len(started), 'sandbox', 'sandboxes')}, state in {config.home / 'sandbox'}; "
                f"faults: {faults or 'none'}. Ctrl-C stops.", markup=False)
    sys.stdout.flush()
