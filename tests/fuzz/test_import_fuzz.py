"""Fuzzing what users and scripts give the `connector` command: import files of valid rows mixed with whatever a
bad row can hold, and arguments of any text. The invariants: the command exits 0 or 2, never with a traceback, and
with --skip-invalid every valid row is queued exactly once.

Hypothesis draws the cases; the profile (`HYPOTHESIS_PROFILE`, see tests/fuzz/conftest.py) says how many: a few
hundred in `make test`, thousands in `make fuzz` before a release.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from jobs.model import JobStatus
from jobs.store import JobFilter
from jobs.store.sqlite import SqliteJobStore
from tests.e2e.helpers import Ran, connector

# Values a JSON field can hold: every type, strings with control characters, lone surrogates and other oddities.
text = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=40)
odd_text = st.one_of(text, st.just("\ud800"), st.just("\x1b[2J\x00"), st.just("C-1; C-2"), st.just(""),
                     st.text(min_size=300, max_size=400))
leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), odd_text)
json_value = st.recursive(leaf, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
                          max_leaves=8)
fields = st.sampled_from(["operation", "tags", "tag", "score", "contact", "lead", "account", "target_kind",
                          "target_id", "request_id", "extra"])
bad_object = st.dictionaries(fields, json_value, max_size=6)
# Lines that are no JSON object at all: broken JSON, huge numbers, deep nesting, arrays, bare values.
bad_line = st.one_of(
    bad_object.map(json.dumps),
    st.text(max_size=60).filter(lambda s: "\n" not in s and "\r" not in s and s.strip() != ""),
    st.integers(min_value=4400, max_value=6000).map(lambda n: '{"contact": 1' + "0" * n + "}"),
    st.integers(min_value=2000, max_value=50_000).map(lambda n: "[" * n + "]" * n),
    json_value.map(lambda v: json.dumps([v])),
)


@contextlib.contextmanager
def workspace() -> Iterator[Path]:
    # Hypothesis runs many cases per test function: each gets its own directory (and so its own job store).
    with tempfile.TemporaryDirectory() as directory:
        yield Path(directory)


def valid_row(n: int) -> dict[str, str]:
    return {"operation": "add_tag", "contact": f"C-{n}", "tags": "VIP"}


def queued_contacts(where: Path) -> list[str]:
    store = SqliteJobStore(where / ".connector" / "jobs.db")
    try:
        jobs = store.list(JobFilter(limit=1000)).jobs
    finally:
        store.close()
    assert all(job.status is JobStatus.PENDING for job in jobs)
    return sorted(job.request.target.id for job in jobs if job.request and job.request.target)


def imported(where: Path, name: str, content: str | bytes, *extra: str) -> Ran:
    path = where / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8", "surrogatepass"))
    ran = connector("jobs", "import", name, *extra, cwd=where, check=None)
    assert ran.returncode in (0, 2), ran
    assert "Traceback" not in ran.stderr
    return ran


@given(layout=st.lists(st.one_of(st.none(), bad_line), min_size=1, max_size=8))
def test_json_lines_queue_every_valid_row_exactly_once_whatever_the_bad_rows_hold(layout: list[str | None]) -> None:
    lines, valid = [], []
    for n, bad in enumerate(layout):
        if bad is None:
            lines.append(json.dumps(valid_row(n)))
            valid.append(f"C-{n}")
        else:
            lines.append(bad)
    content = "\n".join(lines) + "\n"
    with workspace() as where:
        first = imported(where, "jobs.jsonl", content)
        if first.returncode == 0:  # every line was valid (or blank): all queued, as --skip-invalid would
            assert queued_contacts(where) == sorted(valid)
            return
        assert queued_contacts(where) == []  # all or nothing without --skip-invalid
        imported(where, "jobs.jsonl", content, "--skip-invalid")
        assert queued_contacts(where) == sorted(valid)


# Any text but a double quote: a quote that is never closed makes the rest of the file one cell, by CSV's own rule
# (that case has a test of its own: it is reported with the line it opens on).
csv_cell = st.one_of(st.text(max_size=20).filter(lambda c: '"' not in c), st.just("x" * 140_000), st.just("\x00"),
                     st.just("a;b"), st.just("line\rbreak"), st.just("\ud800"))


@given(layout=st.lists(st.one_of(st.none(), st.lists(csv_cell, min_size=0, max_size=5)), min_size=1, max_size=8))
def test_csv_rows_queue_every_valid_row_exactly_once_whatever_the_bad_rows_hold(
    layout: list[list[str] | None]
) -> None:
    rows, valid = ["operation,contact,tags"], []
    for n, cells in enumerate(layout):
        if cells is None:
            rows.append(f"add_tag,C-{n},VIP")
            valid.append(f"C-{n}")
        else:
            rows.append(",".join(cells))
    content = "\n".join(rows) + "\n"
    with workspace() as where:
        imported(where, "jobs.csv", content, "--skip-invalid")
        # A bad row may happen to be valid (three plain cells): it then names a record of its own, never C-n.
        assert [c for c in queued_contacts(where) if c in valid] == sorted(valid)


@given(args=st.lists(st.one_of(st.text(max_size=30), st.sampled_from(
    ["-o", "-t", "--contact", "--lead", "--score", "--json", "add_tag", "set_score", "C-1", "5", "--", "-"])),
    max_size=8))
def test_any_arguments_to_jobs_add_get_a_job_or_a_sentence(args: list[str]) -> None:
    with workspace() as where:
        ran = connector("jobs", "add", *args, cwd=where, check=None)
        assert ran.returncode in (0, 2), ran
        assert "Traceback" not in ran.stderr
        if ran.returncode == 2:
            assert ran.stderr.strip(), "a refusal says why"
