"""Input a user or a script can give that used to end in a traceback: each is a sentence now, exit code 2, and
with --skip-invalid the file's valid rows are queued whatever the bad rows hold."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.helpers import connector

VALID = ('{"operation": "add_tag", "contact": "C-1", "tags": "VIP"}\n'
         '{"operation": "add_tag", "contact": "C-2", "tags": "VIP"}\n')


@pytest.mark.parametrize(("args", "byte"), [
    ([b"jobs", b"add", b"-o", b"add_tag", b"-t", b"Caf\xe9", b"--contact", b"C-1"], "0xe9"),
    ([b"jobs", b"show", b"\xff"], "0xff"),
])
def test_an_argument_that_is_not_utf8_is_named_by_its_byte(tmp_path: Path, args: list[bytes], byte: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONNECTOR_")}
    ran = subprocess.run([sys.executable.encode(), b"-m", b"jobs.cli", *args], cwd=tmp_path, env=env,
                         capture_output=True, timeout=60)
    assert ran.returncode == 2, ran.stderr
    stderr = ran.stderr.decode()
    assert "Traceback" not in stderr
    assert f"has the byte {byte}, which is not UTF-8; set the terminal" in stderr


@pytest.mark.parametrize(("bad", "reported"), [
    ('{"operation": "add_tag", "contact": "C-9", "tags": "\\ud800"}', "which is not text: it holds a lone surrogate"),
    ('{"operation": "add_tag", "contact": 1' + "0" * 5000 + ', "tags": "X"}', "a number of thousands of digits"),
    ("[" * 100_000 + "]" * 100_000, "nested thousands of levels deep"),
    ('{"operation": "add_tag", "contact": {"id": "C-9"}, "tags": "X"}', "contact is {'id': 'C-9'}; it must be text"),
    ('{"operation": "add_tag", "contact": "C-9", "tags": ["A", 5, null]}', "tags has 5; every tag is a name (text)."),
])
def test_a_hostile_json_line_is_one_reported_row_and_the_valid_rows_are_queued(
    tmp_path: Path, bad: str, reported: str
) -> None:
    (tmp_path / "jobs.jsonl").write_text(VALID + bad + "\n", encoding="utf-8")
    refused = connector("jobs", "import", "jobs.jsonl", cwd=tmp_path, check=2)
    assert "line 3: " in refused.stderr and reported in refused.stderr and "Traceback" not in refused.stderr
    assert "1 of 3 rows is invalid; nothing was queued." in refused.stderr
    queued = connector("jobs", "import", "jobs.jsonl", "--skip-invalid", cwd=tmp_path)
    assert re.fullmatch(r"Queued 2 jobs from jobs.jsonl as batch [0-9a-f]{8}; 1 invalid row skipped.\n", queued.stdout)
    listed = json.loads(connector("jobs", "list", "--json", cwd=tmp_path).stdout)
    assert sorted(job["target"]["id"] for job in listed) == ["C-1", "C-2"]


def test_a_csv_cell_too_large_to_read_is_one_reported_row(tmp_path: Path) -> None:
    rows = ["operation,contact,tags", "Add Tag,C-1,VIP", f"Add Tag,C-9,{'x' * 140_000}", "Add Tag,C-2,VIP"]
    (tmp_path / "jobs.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    queued = connector("jobs", "import", "jobs.csv", "--skip-invalid", cwd=tmp_path)
    assert "not readable as CSV (field larger than field limit (131072))" in queued.stderr
    assert re.fullmatch(r"Queued 2 jobs from jobs.csv as batch [0-9a-f]{8}; 1 invalid row skipped.\n", queued.stdout)


HOSTILE = "\x1b[2J\x00" + "x" * 5000  # clears a terminal, then a NUL, then a pasted document


@pytest.mark.parametrize("args", [
    ["-o", "add_tag", "-t", HOSTILE, "--contact", "C-1"],
    ["-o", "add_tag", "-t", "VIP", "--contact", HOSTILE],
    ["-o", "set_score", "-t", "VIP", "--contact", "C-1", "--score", HOSTILE],
    ["-o", HOSTILE, "-t", "VIP", "--contact", "C-1"],
])
def test_a_refused_value_is_quoted_escaped_and_cut_short(tmp_path: Path, args: list[str]) -> None:
    refused = connector("jobs", "add", *args, cwd=tmp_path, check=2)
    assert "\x1b" not in refused.stderr and "\x00" not in refused.stderr
    quoted = re.search(r"'\\x1b\[2J\\x00x+…", refused.stderr)
    assert quoted and len(quoted.group(0)) <= 80, refused.stderr  # escaped, and cut to at most 80 characters
