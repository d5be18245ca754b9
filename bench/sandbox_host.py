"""The sandboxes in a process of their own, for benchmarks: the connector and the baseline pay for their own CPU
only, as they would against the real APIs.

Usage: python bench/sandbox_host.py HOME '{"latency_ms": 20, "rate_limit": 20}'
Prints one JSON line of base URLs ({"spotler": url, ...}), serves until its stdin closes, then prints one JSON
line of what each sandbox answered: {"spotler": {"requests": n, "429": k}, ...}.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from config.settings import load_settings
from jobs import app as composition


def main() -> None:
    home, faults = Path(sys.argv[1]), json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    settings = load_settings(home=home, faults=faults)
    started = composition.start_sandboxes(settings)
    try:
        print(json.dumps({name: url for name, (_, url) in started.items()}), flush=True)
        sys.stdin.read()
        print(json.dumps({name: {"requests": server.injector.requests, "429": server.injector.counts.get("429", 0)}
                          for name, (server, _) in started.items()}), flush=True)
    finally:
        for server, _ in started.values():
            server.stop()


if __name__ == "__main__":
    main()
