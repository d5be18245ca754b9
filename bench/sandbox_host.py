"""The sandboxes in a process of their own, for benchmarks: the connector and the baseline pay for their own CPU
only, as they would against the real APIs.

Usage: python bench/sandbox_host.py HOME '{"latency_ms": 20, "rate_limit": 20}'
Prints one JSON line of base URLs ({"spotler": url, ..., "dataverse_ca": the CA file a Dataverse client must
trust}), then serves. Each line "counts" on its stdin is answered with one JSON line of what each sandbox answered
so far: {"spotler": {"requests": n, "429": k}, ...}; when stdin closes it prints that line once more and stops.

For Dataverse, "requests" counts every request the server drew faults for (the token endpoint's too);
"api_requests" counts the Web API requests alone (a `$batch` is one) and "operations" counts each part of a
`$batch` as one, as Dataverse's service protection limits do.
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from typing import Any

from config.settings import load_settings
from connector.dataverse.batch import parse_batch_request
from connector.sandbox.dataverse import DataverseApp
from connector.sandbox.server import Request, Response, SandboxServer
from jobs import app as composition
from jobs.dataverse_wiring import sandbox_ca_file


class BatchParts:
    """Counts the `$batch` requests a Dataverse sandbox answers and the parts they hold. The sandbox counts its
    API requests itself, but not what is inside a batch: this wraps its batch handler."""

    def __init__(self, app: DataverseApp) -> None:
        self.batches = 0
        self.parts = 0
        self._lock = threading.Lock()
        self._handle = app.batch
        app.batch = self._counted  # type: ignore[method-assign]

    def _counted(self, request: Request) -> Response:
        try:
            items = parse_batch_request(request.body, request.header("content-type") or "")
        except ValueError:
            items = []  # the sandbox refuses it with a 400 of its own; it still was one request
        with self._lock:
            self.batches += 1
            self.parts += sum(len(item) if isinstance(item, list) else 1 for item in items)
        return self._handle(request)


def counts(started: dict[str, tuple[SandboxServer, str]], batches: BatchParts | None) -> dict[str, dict[str, Any]]:
    answered: dict[str, dict[str, Any]] = {}
    for name, (server, _) in started.items():
        answered[name] = {"requests": server.injector.requests, "429": server.injector.counts.get("429", 0)}
        if batches is not None and isinstance(server.app, DataverseApp):
            api = server.app.api_requests
            answered[name] |= {"api_requests": api, "batches": batches.batches,
                               "operations": api - batches.batches + batches.parts}
    return answered


def main() -> None:
    home, faults = Path(sys.argv[1]), json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    settings = load_settings(home=home, faults=faults)
    started = composition.start_sandboxes(settings)
    try:
        dataverse = started.get("dataverse")
        batches = BatchParts(dataverse[0].app) if dataverse and isinstance(dataverse[0].app, DataverseApp) else None
        urls = {name: url for name, (_, url) in started.items()}
        print(json.dumps({**urls, "dataverse_ca": str(sandbox_ca_file(settings))}), flush=True)
        for line in sys.stdin:
            if line.strip() == "counts":
                print(json.dumps(counts(started, batches)), flush=True)
        print(json.dumps(counts(started, batches)), flush=True)
    finally:
        for server, _ in started.values():
            server.stop()


if __name__ == "__main__":
    main()
