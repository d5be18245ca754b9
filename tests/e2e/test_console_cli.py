"""The console's CLI side: the filters of `jobs list`, a retry and a cancel on a filter, `connector status`, and
JSON logs with one line per finished job."""

from __future__ import annotations

import json
from pathlib import Path

from tests.e2e.helpers import connector


def test_filters_bulk_actions_and_status(tmp_path: Path) -> None:
    connector("jobs", "add", "-o", "Add Tag", "--contact", "C-1", "-t", "Webinar; VIP", cwd=tmp_path)
    connector("jobs", "add", "-o", "start_automation", "--contact", "C-1", "-t", "no-such", cwd=tmp_path)
    connector("jobs", "add", "-o", "Add Tag", "--contact", "C-2", "-t", "Spring", cwd=tmp_path)
    ran = connector("run", "--once", cwd=tmp_path, check=1,
                    env={"CONNECTOR_LOG_FORMAT": "json", "CONNECTOR_LOG_LEVEL": "INFO"})
    lines = [json.loads(line) for line in ran.stderr.splitlines() if line.startswith("{")]
    finished = [line for line in lines if line.get("outcome")]
    assert {line["outcome"] for line in finished} == {"succeeded", "failed"} and len(finished) == 3
    assert all(line["time"].endswith("+00:00") and line["record"] for line in finished)
    vip = json.loads(connector("jobs", "list", "--tag", "vip", "--json", cwd=tmp_path).stdout)
    assert [job["tags"] for job in vip] == [["Webinar", "VIP"]]
    failed = json.loads(connector("jobs", "list", "--operation", "Start Automation", "--result-code",
                                  "trigger_not_found", "--text", "no-such", "--json", cwd=tmp_path).stdout)
    assert len(failed) == 1
    retried = connector("jobs", "retry", "--result-code", "TRIGGER_NOT_FOUND", "--yes", cwd=tmp_path).stdout
    assert "find 1 failed job to retry" in retried and f"Queued again: 1 job: {failed[0]['id']}" in retried
    shown = json.loads(connector("jobs", "show", failed[0]["id"], "--json", cwd=tmp_path).stdout)
    assert [(a["action"], a["via"]) for a in shown["actions"]] == [("retry", "cli")]
    status = json.loads(connector("status", "--json", cwd=tmp_path).stdout)
    assert status["jobs"]["succeeded"] == 2 and status["jobs"]["pending"] == 1
    assert status["oldest_pending"]["id"] == failed[0]["id"] and status["runners"]
    assert "retry backlog" in connector("status", cwd=tmp_path).stdout
    cancelled = connector("jobs", "cancel", "--operation", "start_automation", "--yes", cwd=tmp_path).stdout
    assert "Cancelled 1 pending job." in cancelled
    refused = connector("jobs", "list", "--operation", "Paint", cwd=tmp_path, check=2).stderr
    assert "--operation: Operation is 'Paint'" in refused
