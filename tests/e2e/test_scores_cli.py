"""Score history from the command line: `scores history` and the last changes on `contact show`."""

from __future__ import annotations

import json
from pathlib import Path

from tests.e2e.helpers import connector


def queue(tmp_path: Path, *args: str) -> None:
    connector("jobs", "add", "--contact", "C-1", *args, cwd=tmp_path)


def test_the_history_of_a_record_adds_up_to_its_score_on_the_platform(tmp_path: Path) -> None:
    queue(tmp_path, "-o", "set_score", "-t", "Lead", "--score", "5")
    queue(tmp_path, "-o", "increase_score", "-t", "Lead", "--score", "10")
    queue(tmp_path, "-o", "decrease_score", "-t", "Lead", "--score", "3")
    queue(tmp_path, "-o", "add_tag", "-t", "VIP")
    connector("run", "--once", cwd=tmp_path)

    data = json.loads(connector("scores", "history", "--contact", "C-1", "--json", cwd=tmp_path).stdout)
    assert data["record"] == "contact:C-1"
    # One tag's changes in the order they were applied; other tags' run beside them.
    entries = [(e["tag"], e["op"], e["before"], e["after"], e["delta"], e["source"]) for e in data["entries"]]
    assert [e for e in entries if e[0].casefold() == "lead"] == [
        ("Lead", "set", None, 5, None, "crm"), ("Lead", "add", 5, 15, 10, "crm"), ("Lead", "add", 15, 12, -3, "crm")]
    assert [e for e in entries if e[0] == "VIP"] == [("VIP", "tag", None, None, None, "crm")]
    assert data["scores"] == {"Lead": 12, "VIP": None}
    platform = json.loads(connector("contact", "show", "C-1", "--json", cwd=tmp_path).stdout)
    assert platform["tags"]["Lead"] == data["scores"]["Lead"]

    only = json.loads(connector("scores", "history", "--contact", "C-1", "--tag", "LEAD", "--json",
                                cwd=tmp_path).stdout)
    assert [e["op"] for e in only["entries"]] == ["set", "add", "add"]
    human = connector("scores", "history", "--contact", "C-1", cwd=tmp_path).stdout
    assert "Lead: 12, the sum of its changes" in human
    assert "+10" in human and "=5" in human and "-3" in human and "tagged" in human

    shown = connector("contact", "show", "C-1", cwd=tmp_path).stdout
    changes = shown.split("last changes by the connector:\n", 1)[1].split("timeline:", 1)[0].splitlines()
    assert len([line for line in changes if line.strip().startswith("Lead:")]) == 3
    assert platform["last_changes"]["VIP"][0]["op"] == "tag"


def test_scores_history_needs_one_record(tmp_path: Path) -> None:
    both = connector("scores", "history", "--contact", "C-1", "--lead", "L-1", cwd=tmp_path, check=2)
    assert both.stderr.strip() == "Error: give the record with exactly one of --contact, --lead or --account."
    none = connector("scores", "history", "--contact", "C-404", cwd=tmp_path)
    assert none.stdout.strip() == "No changes for contact C-404."
