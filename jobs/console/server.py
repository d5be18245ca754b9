"""Serving the console: on a socket bound before the first request (so `--port 0` can say which port it got), in
the foreground (`connector console`) or in a thread beside the runner (`connector run --console`)."""

from __future__ import annotations

import socket
import threading
import time

import uvicorn

from jobs.app import Connector
from jobs.console.app import ConsoleParts, make_app
from jobs.console.metrics import Metrics
from jobs.console.security import check_bind
from jobs.overview import api_namer


def console_parts(built: Connector) -> ConsoleParts:
    """The console of a built connector, its metrics subscribed to the runner's events and API sessions."""
    metrics = Metrics(built.store)
    built.executor.observer.subscribe(metrics.on_event)
    for api, session in built.sessions.items():
        metrics.watch(session, api)
    return ConsoleParts(store=built.store, platform=built.platform, crm=built.crm, rules=built.rules,
                        settings=built.settings.console, metrics=metrics,
                        api_of=api_namer(built.platform.name, built.crm.name))


class ConsoleServer:
    def __init__(self, parts: ConsoleParts, host: str, port: int) -> None:
        check_bind(host, parts.settings)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind((host, port))
        # Listening from here on: a browser pointed at the URL just printed waits in the backlog, never refused.
        self.socket.listen(128)
        self.host, self.port = host, self.socket.getsockname()[1]
        # log_config=None: the connector's own logging (text or JSON, secrets masked) stays as it is.
        config = uvicorn.Config(make_app(parts), log_config=None, access_log=False, lifespan="off")
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def serve(self) -> None:
        """In the foreground until SIGINT or SIGTERM, which uvicorn turns into a clean stop."""
        self.server.run(sockets=[self.socket])

    def start(self, timeout: float = 10.0) -> ConsoleServer:
        self._thread = threading.Thread(target=self.serve, name="console", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.socket.close()
