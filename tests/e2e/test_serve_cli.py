"""`connector serve` as a user runs it: it says where it listens, queues a signed event, and stops cleanly on
SIGTERM."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import requests

from connector.webhook import sign
from tests.e2e.helpers import connector, in_background

RULES = """
[[rules]]
event = "nutrition_page_visit"
tag = "Nutrition Interest"
change = "+1"
"""


def test_serve_queues_a_signed_event_and_stops_on_sigterm(tmp_path: Path) -> None:
    (tmp_path / "rules.toml").write_text(RULES, encoding="utf-8")
    env = {"CONNECTOR_RULES_FILE": "rules.toml", "CONNECTOR_HOME": str(tmp_path / "home"),
           "CONNECTOR_ENDPOINT__SECRET": "e2e-secret"}
    with in_background("serve", "--port", "0", cwd=tmp_path, env=env) as running:
        assert running.process.stderr is not None
        line = running.process.stderr.readline()
        assert line.startswith("Serving on http://127.0.0.1:"), line
        url = line.split()[2]
        body = json.dumps({"contact": "C-1", "event": "nutrition_page_visit", "id": "e1",
                           "time": "2026-05-04T09:00:00Z"}).encode()
        answer = requests.post(f"{url}/events", data=body, timeout=10,
                               headers={"Connector-Signature": sign("e2e-secret", body, timestamp=int(time.time()))})
        assert answer.status_code == 200, answer.text
        queued = answer.json()["queued"]
        assert len(queued) == 1
        running.process.send_signal(signal.SIGTERM)
        assert running.process.wait(timeout=30) == 0
    assert "Stopped." in running.stderr
    assert "e2e-secret" not in running.stderr
    listed = connector("jobs", "list", "--json", cwd=tmp_path, env=env)
    assert queued[0] in listed.stdout
