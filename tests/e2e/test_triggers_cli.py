"""Triggers from the command line: the rules file checked at start-up, `triggers list`, `triggers log`, and the
link between a job and what it fired shown both ways by `jobs show`."""

from __future__ import annotations

import json
from pathlib import Path

from tests.e2e.helpers import connector

RULES = """
[[triggers]]
name = "Nutrition prospect"
tag = "Nutrition Interest"
at_least = 3
[[triggers.actions]]
do = "add_tag"
tags = "Prospect"
[[triggers.actions]]
do = "start_automation"
tags = "welcome"
"""


def test_a_crossing_is_in_the_trigger_log_and_both_jobs_show_their_link(tmp_path: Path) -> None:
    (tmp_path / "rules.toml").write_text(RULES, encoding="utf-8")
    env = {"CONNECTOR_RULES_FILE": "rules.toml"}
    listed = json.loads(connector("triggers", "list", "--json", cwd=tmp_path, env=env).stdout)
    assert [(t["name"], t["tag"], t["at_least"], t["rearm"]) for t in listed] == [
        ("Nutrition prospect", "Nutrition Interest", 3, "once")]
    assert "Nutrition Interest >= 3" in connector("triggers", "list", cwd=tmp_path, env=env).stdout

    connector("jobs", "add", "-o", "increase_score", "-t", "Nutrition Interest", "--score", "3", "--contact", "C-1",
              cwd=tmp_path, env=env)
    connector("run", "--once", cwd=tmp_path, env=env)

    (firing,) = json.loads(connector("triggers", "log", "--contact", "C-1", "--json", cwd=tmp_path, env=env).stdout)
    assert (firing["trigger"], firing["record"], firing["before"], firing["after"]) == (
        "Nutrition prospect", "contact:C-1", 0, 3)
    cause = json.loads(connector("jobs", "show", firing["job_id"], "--json", cwd=tmp_path, env=env).stdout)
    (fired,) = cause["fired"]
    assert len(fired["action_jobs"]) == 2
    for action_id in fired["action_jobs"]:
        action = json.loads(connector("jobs", "show", action_id, "--json", cwd=tmp_path, env=env).stdout)
        assert action["origin"]["job_id"] == firing["job_id"]
        assert action["origin"]["trigger"] == "Nutrition prospect"
        assert action["status"] == "succeeded"
    human = connector("jobs", "show", firing["job_id"], cwd=tmp_path, env=env).stdout
    assert f"fired: trigger Nutrition prospect (Nutrition Interest 0 -> 3), queued {', '.join(fired['action_jobs'])}" \
        in human
    action_human = connector("jobs", "show", fired["action_jobs"][0], cwd=tmp_path, env=env).stdout
    assert f"source trigger, job id {firing['job_id']}, trigger Nutrition prospect" in action_human
    assert "Nothing fired." in connector("triggers", "log", "--contact", "C-2", cwd=tmp_path, env=env).stdout


def test_a_mistake_in_the_rules_file_stops_the_connector_before_it_runs_anything(tmp_path: Path) -> None:
    (tmp_path / "rules.toml").write_text(RULES.replace("at_least = 3", 'at_least = "three"'), encoding="utf-8")
    env = {"CONNECTOR_RULES_FILE": "rules.toml"}
    connector("jobs", "add", "-o", "add_tag", "-t", "VIP", "--contact", "C-1", cwd=tmp_path, env=env)
    refused = connector("run", "--once", cwd=tmp_path, env=env, check=2)
    assert refused.stderr.strip() == ("Error: rules.toml: triggers[0] 'Nutrition prospect' at_least: at_least is "
                                      "'three'; it must be a whole number such as 3.")
    assert json.loads(connector("jobs", "list", "--json", cwd=tmp_path).stdout)[0]["status"] == "pending"
