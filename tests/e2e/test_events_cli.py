"""Events from a file: the gym example's rules turn visits, clicks and form picks into score changes that cross a
trigger; a redelivered event is not scored again; an event no rule knows is reported and kept in the log."""

from __future__ import annotations

import json
from pathlib import Path

from tests.e2e.helpers import connector

RULES = """
[[rules]]
event = "nutrition_page_visit"
tag = "Nutrition Interest"
change = "+1"

[[rules]]
event = "nutrition_article_click"
tag = "Nutrition Interest"
change = "+1"

[[rules]]
event = "form_picked_nutrition"
tag = "Nutrition Interest"
change = "+1"

[[rules]]
event = "purchase"
tag = "Hot lead"
change = "+100"
occurrences = "first"

[[triggers]]
name = "Nutrition prospect"
tag = "Nutrition Interest"
at_least = 3
[[triggers.actions]]
do = "add_tag"
tags = "Prospect"
"""

EVENTS = """contact,event,time,id,url
C-1,nutrition_page_visit,2026-05-04T09:00:00Z,e1,https://gym.example/nutrition
C-1,nutrition_article_click,2026-05-04T09:01:00Z,e2,https://gym.example/blog/protein
C-1,nutrition_article_click,2026-05-04T09:01:00Z,e2,https://gym.example/blog/protein
C-1,spa_visit,2026-05-04T09:02:00Z,e3,
C-1,form_picked_nutrition,2026-05-04T09:03:00Z,e4,
C-2,purchase,2026-05-04T10:00:00Z,p1,
C-2,purchase,2026-05-04T11:00:00Z,p2,
"""


def test_events_score_through_their_rules_once_each_and_cross_the_trigger(tmp_path: Path) -> None:
    (tmp_path / "rules.toml").write_text(RULES, encoding="utf-8")
    (tmp_path / "events.csv").write_text(EVENTS, encoding="utf-8")
    env = {"CONNECTOR_RULES_FILE": "rules.toml"}
    done = connector("events", "ingest", "events.csv", cwd=tmp_path, env=env)
    assert done.stdout.strip() == ("Read 7 events from events.csv: 4 queued, 1 seen before, 1 already scored once, "
                                   "1 with no rule (kept in the event log).")
    assert done.stderr.strip() == "line 5: No rule for event 'spa_visit'; it is kept in the event log."
    again = json.loads(connector("events", "ingest", "events.csv", "--json", cwd=tmp_path, env=env).stdout)
    assert (again["queued"], again["seen_before"], again["first_already_scored"]) == ([], 4, 2)  # redelivered

    connector("run", "--once", cwd=tmp_path, env=env)
    connector("run", "--once", cwd=tmp_path, env=env)  # the trigger's action
    c1 = json.loads(connector("contact", "show", "C-1", "--json", cwd=tmp_path, env=env).stdout)
    assert c1["tags"] == {"Nutrition Interest": 3, "Prospect": 0}
    c2 = json.loads(connector("contact", "show", "C-2", "--json", cwd=tmp_path, env=env).stdout)
    assert c2["tags"] == {"Hot lead": 100}
    (firing,) = json.loads(connector("triggers", "log", "--json", cwd=tmp_path, env=env).stdout)
    assert (firing["trigger"], firing["record"], firing["after"]) == ("Nutrition prospect", "contact:C-1", 3)
    history = json.loads(connector("scores", "history", "--contact", "C-1", "--json", cwd=tmp_path).stdout)
    assert {e["source"] for e in history["entries"]} == {"rule", "trigger"}

    log = json.loads(connector("events", "log", "--contact", "C-1", "--json", cwd=tmp_path).stdout)
    assert [(e["event"], e["outcome"]) for e in log][:5] == [
        ("nutrition_page_visit", "queued"), ("nutrition_article_click", "queued"),
        ("nutrition_article_click", "seen before"), ("spa_visit", "no rule"), ("form_picked_nutrition", "queued")]
    assert len(log) == 10


def test_a_line_that_is_not_an_event_stops_the_file_unless_skipped(tmp_path: Path) -> None:
    (tmp_path / "rules.toml").write_text(RULES, encoding="utf-8")
    (tmp_path / "events.jsonl").write_text(
        '{"contact": "C-1", "event": "nutrition_page_visit", "id": "e1"}\n'
        '{"contact": "C-1", "time": "yesterday", "event": "nutrition_page_visit"}\n'
        '{"event": "nutrition_page_visit"}\n', encoding="utf-8")
    env = {"CONNECTOR_RULES_FILE": "rules.toml"}
    refused = connector("events", "ingest", "events.jsonl", cwd=tmp_path, env=env, check=2)
    assert "line 2: Time is 'yesterday'; give an ISO 8601 time such as 2026-05-04T09:15:00Z." in refused.stderr
    assert "line 3: The event names no record; give contact, lead or account with its CRM id." in refused.stderr
    assert "nothing was ingested" in refused.stderr
    assert json.loads(connector("jobs", "list", "--json", cwd=tmp_path).stdout) == []
    skipped = connector("events", "ingest", "events.jsonl", "--skip-invalid", cwd=tmp_path, env=env)
    assert "1 queued" in skipped.stdout
    no_rules = connector("events", "ingest", "events.jsonl", cwd=tmp_path, check=2)
    assert "no scoring rules: set rules_file" in no_rules.stderr
