"""The CRM user's path through the `connector` command, with Dynamics 365 as job store and timeline (sandbox)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.helpers import connector, demo_hints

DATAVERSE = {"CONNECTOR_JOB_STORE": "dataverse", "CONNECTOR_CRM": "dataverse"}


def test_demo_with_dataverse_creates_rows_applies_them_and_posts_on_timelines(tmp_path: Path) -> None:
    result = connector("demo", "--crm", "dataverse", cwd=tmp_path)
    assert "dataverse on https://127.0.0.1:" in result.stderr
    assert "so their emulators run on loopback" in result.stderr
    assert "16 succeeded, 1 failed" in result.stdout  # every operation, Start Automation on the Spotler sandbox
    assert "Newsletter=0, Nutrition Interest=3, Product news=0, Prospect=0, Webinar 2026=12" in result.stdout
    assert "Increased score Webinar 2026 by 10 (job " in result.stdout
    # The gym on Dynamics 365: rows for the events' jobs and the actions, the record updated, a task for its owner.
    assert "Nutrition prospect fired for contact:" in result.stdout
    assert "contact C-1001's description in the CRM: Prospect" in result.stdout
    assert "Task for the owner of contact C-1001: 'Call about the nutrition plan', due " in result.stdout
    assert "Webhook received on loopback, signature verified: trigger 'Hot lead'" in result.stdout
    # The rows live in the sandbox Dataverse: the same job store lists them, statuses written back.
    listed = json.loads(connector("jobs", "list", "--json", "--limit", "50", cwd=tmp_path, env=DATAVERSE).stdout)
    # The morning's 16, the gym's 6 rule jobs and its 7 trigger actions (the mail and the webhook among them).
    assert sorted(j["status"] for j in listed).count("succeeded") == 16 + 6 + 7
    failed = [j for j in listed if j["status"] == "failed"]
    assert [j["result_code"] for j in failed] == ["INVALID_INPUT"]
    assert failed[0]["message"].startswith("Score is -5; Increase Score needs a number greater than 0.")
    contact = next(j["target"]["id"] for j in listed if j["target"] and j["target"]["kind"] == "contact")
    view = json.loads(connector("contact", "show", contact, "--json", cwd=tmp_path, env=DATAVERSE).stdout)
    assert view["timeline"], view
    assert all("(job " in post["text"] for post in view["timeline"])
    # The closing hints name the Dynamics 365 store and a record's GUID, and work as printed.
    hints = demo_hints(result.stdout)
    assert all(env == DATAVERSE for env, _ in hints)
    for env, args in hints:
        shown = connector(*args, cwd=tmp_path, env=env)
        assert "No jobs." not in shown.stdout


def test_config_show_prints_the_table_mapping_with_secrets_masked(tmp_path: Path) -> None:
    env = {**DATAVERSE, "CONNECTOR_DATAVERSE__CLIENT_SECRET": "dv-secret-0042", "CONNECTOR_DATAVERSE__JOBS__TAGS":
           "new_tagnames"}
    shown = connector("config", "show", "--json", cwd=tmp_path, env=env)
    data = json.loads(shown.stdout)
    assert data["job_store"] == "dataverse"
    assert data["dataverse"]["jobs"]["tags"] == "new_tagnames"
    assert data["dataverse"]["jobs"]["entity_set"] == "cr_connectorjobs"
    assert data["dataverse"]["client_secret"] == "**********"
    assert "dv-secret-0042" not in shown.stdout + shown.stderr


def test_a_crm_id_that_is_not_a_guid_is_bad_input(tmp_path: Path) -> None:
    added = connector("jobs", "add", "-o", "Add Tag", "--contact", "C-1001", "-t", "VIP", cwd=tmp_path, env=DATAVERSE,
                      check=2)
    assert added.stderr.strip().endswith("is not a Dataverse row id; jobs in Dataverse point at records by their GUID.")
    shown = connector("contact", "show", "C-1001", cwd=tmp_path, env=DATAVERSE, check=2)
    assert "give the record's GUID" in shown.stderr


@pytest.mark.parametrize("args", [
    ["jobs", "list", "--contact", "C-1001"],
    ["scores", "history", "--contact", "C-1001"],
    ["triggers", "log", "--contact", "C-1001"],
])
def test_every_command_that_takes_a_record_id_says_dynamics_needs_a_guid(tmp_path: Path, args: list[str]) -> None:
    refused = connector(*args, cwd=tmp_path, env=DATAVERSE, check=2)
    assert refused.stderr.startswith("Error: --contact is 'C-1001'; on Dynamics 365 a record is known by its GUID")
