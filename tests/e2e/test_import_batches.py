"""Imports as batches, as a user runs them: a batch id for every import, a second import of the same file refused
unless --again, request ids that queue a row once, a batch listed and cancelled by its id, and an import stopped
by a signal halfway leaving nothing queued."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import pytest

from tests.e2e.helpers import connector, in_background
from tests.integration.helpers import wait_until


def batch_of(stdout: str) -> str:
    found = re.search(r" as batch ([0-9a-f]{8})\b", stdout)
    assert found, stdout
    return found.group(1)


def test_a_file_imported_again_is_refused_naming_its_batch_unless_again(tmp_path: Path) -> None:
    (tmp_path / "jobs.csv").write_text("operation,contact,tags,score\nIncrease Score,C-1,Lead,10\n"
                                       "Add Tag,C-2,VIP,\n", encoding="utf-8")
    first = batch_of(connector("jobs", "import", "jobs.csv", cwd=tmp_path).stdout)
    refused = connector("jobs", "import", "jobs.csv", cwd=tmp_path, check=2)
    assert re.search(rf"Error: jobs.csv was imported before, as batch {first} at \d{{4}}-\d\d-\d\dT[\d:]+Z \(2 jobs "
                     rf"queued\); add --again to queue its rows once more, or see them with: connector jobs list "
                     rf"--batch {first}", refused.stderr.replace("\n", " ")), refused.stderr
    assert len(json.loads(connector("jobs", "list", "--json", cwd=tmp_path).stdout)) == 2
    second = batch_of(connector("jobs", "import", "jobs.csv", "--again", cwd=tmp_path).stdout)
    assert second != first
    listed = json.loads(connector("jobs", "batches", "--json", cwd=tmp_path).stdout)
    assert [(b["id"], b["file"], b["rows"], b["queued"]) for b in listed] == [(second, "jobs.csv", 2, 2),
                                                                              (first, "jobs.csv", 2, 2)]
    assert listed[0]["sha256"] == listed[1]["sha256"] and len(listed[0]["sha256"]) == 64
    table = connector("jobs", "batches", cwd=tmp_path).stdout
    assert table.index(second) < table.index(first) and "jobs.csv" in table


def test_a_request_id_already_queued_is_skipped_and_counted(tmp_path: Path) -> None:
    added = connector("jobs", "add", "-o", "increase_score", "-t", "Lead", "--score", "10", "--contact", "C-1",
                      "--request-id", "crm-row-1", cwd=tmp_path).stdout
    job_id = added.split()[2].rstrip(":")
    again = connector("jobs", "add", "-o", "increase_score", "-t", "Lead", "--score", "10", "--contact", "C-1",
                      "--request-id", "crm-row-1", cwd=tmp_path).stdout
    assert again == f"Request id crm-row-1 is queued already, as job {job_id} (pending); nothing new was queued.\n"
    (tmp_path / "jobs.csv").write_text(
        "operation,contact,tags,score,request_id\n"
        "Increase Score,C-1,Lead,10,crm-row-1\n"  # queued by the add above
        "Increase Score,C-1,Lead,5,crm-row-2\n"
        "Increase Score,C-1,Lead,5,crm-row-2\n"  # twice in the file
        "Add Tag,C-2,VIP,,\n", encoding="utf-8")  # no request id: always queued
    report = connector("jobs", "import", "jobs.csv", cwd=tmp_path).stdout
    batch = batch_of(report)
    assert report == f"Queued 2 jobs from jobs.csv as batch {batch}; 2 rows already queued (by request id).\n"
    jobs = json.loads(connector("jobs", "list", "--json", cwd=tmp_path).stdout)
    assert sorted((j["request_id"] or "-", j["score"]) for j in jobs) == \
        [("-", None), ("crm-row-1", 10), ("crm-row-2", 5)]
    summary = json.loads(connector("jobs", "import", "jobs.csv", "--again", "--json", cwd=tmp_path).stdout)
    assert {k: summary["batch"][k] for k in ("rows", "queued", "already", "invalid")} == \
        {"rows": 4, "queued": 1, "already": 3, "invalid": 0}


def test_a_request_id_too_long_or_with_a_line_break_is_a_bad_row(tmp_path: Path) -> None:
    rows = [{"operation": "add_tag", "contact": "C-1", "tags": "VIP", "request_id": "x" * 101},
            {"operation": "add_tag", "contact": "C-1", "tags": "VIP", "request_id": "a\nb"},
            {"operation": "add_tag", "contact": "C-1", "tags": "VIP", "request_id": 7}]
    (tmp_path / "jobs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    refused = connector("jobs", "import", "jobs.jsonl", cwd=tmp_path, check=2).stderr
    assert "line 1: request_id is 'xxxx" in refused and "give at most 100 printable characters" in refused
    assert "line 2: request_id is 'a\\nb'" in refused
    assert "line 3: request_id is 7; it must be text." in refused


def test_a_batch_is_listed_and_its_pending_jobs_cancelled_by_its_id(tmp_path: Path) -> None:
    connector("jobs", "add", "-o", "add_tag", "-t", "VIP", "--contact", "C-9", cwd=tmp_path)
    (tmp_path / "jobs.jsonl").write_text("".join(
        json.dumps({"operation": "add_tag", "contact": f"C-{n}", "tags": "Fair"}) + "\n" for n in range(3)),
        encoding="utf-8")
    batch = batch_of(connector("jobs", "import", "jobs.jsonl", cwd=tmp_path).stdout)
    listed = json.loads(connector("jobs", "list", "--batch", batch, "--json", cwd=tmp_path).stdout)
    assert sorted(j["target"]["id"] for j in listed) == ["C-0", "C-1", "C-2"]
    assert all(j["origin"] == {"source": "import", "batch": batch} for j in listed)
    assert f"origin: source import, batch {batch}" in connector("jobs", "show", listed[0]["id"], cwd=tmp_path).stdout
    cancelled = connector("jobs", "cancel", "--batch", batch, cwd=tmp_path).stdout
    assert cancelled == f"Cancelled 3 pending jobs of batch {batch}.\n"
    statuses = {j["target"]["id"]: j["status"] for j in json.loads(connector("jobs", "list", "--json",
                                                                             cwd=tmp_path).stdout)}
    assert statuses == {"C-0": "cancelled", "C-1": "cancelled", "C-2": "cancelled", "C-9": "pending"}
    assert connector("jobs", "cancel", "--batch", batch, cwd=tmp_path).stdout == \
        f"Cancelled 0 pending jobs of batch {batch}: none was waiting any more.\n"
    unknown = connector("jobs", "cancel", "--batch", "0000beef", cwd=tmp_path, check=2).stderr
    assert "No import has the batch id '0000beef'; connector jobs batches lists them." in unknown
    assert "give either a job id or --batch" in connector("jobs", "cancel", cwd=tmp_path, check=2).stderr


@pytest.mark.processes
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL])
def test_an_import_stopped_by_a_signal_halfway_leaves_nothing_queued_and_says_so(tmp_path: Path,
                                                                                 signum: int) -> None:
    """SIGKILL stands for a crash: the process cannot say anything, and still leaves nothing."""
    rows = 300_000  # long enough to be stopped while it writes, even on a fast machine
    with (tmp_path / "big.csv").open("w", encoding="utf-8") as handle:
        handle.write("operation,contact,tags\n")
        handle.writelines(f"Add Tag,C-{n},VIP\n" for n in range(rows))
    home = tmp_path / "home"
    env = {"CONNECTOR_HOME": str(home)}
    with in_background("jobs", "import", "big.csv", cwd=tmp_path, env=env) as importing:
        # The write-ahead log grows only inside the import's transaction: rows are being queued.
        wait_until(lambda: (home / "jobs.db-wal").exists() and (home / "jobs.db-wal").stat().st_size > 4_000_000,
                   "the import writing", timeout=60)
        importing.process.send_signal(signum)
        code = importing.process.wait(timeout=60)
    if signum == signal.SIGKILL:
        assert code == -signum
    else:
        assert code == 128 + signum, importing.stderr
        name = signal.Signals(signum).name
        assert (f"Error: The import of big.csv was interrupted by {name}: nothing was queued (an import is one "
                "transaction); run it again to queue the file.") in " ".join(importing.stderr.split())
        assert "Traceback" not in importing.stderr
    assert connector("jobs", "list", cwd=tmp_path, env=env).stdout.strip().endswith("No jobs.")
    assert connector("jobs", "batches", cwd=tmp_path, env=env).stdout == "No imports yet.\n"
