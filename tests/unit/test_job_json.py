"""`Job.to_json`: the same shape for every job, also when its stored input is not valid."""

from __future__ import annotations

from typing import Any

import pytest

from jobs.model import Job, JobRequest


def job(request: JobRequest | None, raw: dict[str, Any]) -> Job:
    return Job(id="j1", request=request, raw=raw, created_at=1.0, updated_at=1.0, next_attempt_at=1.0)


@pytest.mark.parametrize(
    ("tags", "expected"),
    [("Lead score", ["Lead score"]), (" A, B ;;C ", ["A", "B", "C"]), ("", []), (None, []), (["X ", " "], ["X"])],
)
def test_tags_of_invalid_input_are_a_list_of_strings(tags: object, expected: list[str]) -> None:
    data = job(None, {"operation": "increase_score", "tags": tags, "score": "-5"}).to_json()
    assert data["tags"] == expected


@pytest.mark.parametrize(
    ("score", "expected"),
    [("-5", -5), (" +7 ", 7), (12, 12), (3.0, 3), ("ten", None), ("1.5", None), (2.5, None), (True, None),
     (None, None), ("", None)],
)
def test_score_of_invalid_input_is_an_int_or_null(score: object, expected: int | None) -> None:
    data = job(None, {"operation": "increase_score", "tags": "Lead", "score": score}).to_json()
    assert data["score"] == expected
    assert data["input"]["score"] == score  # what was given stays visible


def test_a_valid_and_an_invalid_job_have_the_same_keys_and_types() -> None:
    raw = {"operation": "add_tag", "tags": "A; B", "score": None, "target_kind": "contact", "target_id": "C-1"}
    valid = job(JobRequest.from_input(operation="add_tag", tags="A; B", target_kind="contact", target_id="C-1"),
                raw).to_json()
    invalid = job(None, {**raw, "operation": "bogus", "score": "x"}).to_json()
    assert valid.keys() == invalid.keys()
    assert valid["tags"] == invalid["tags"] == ["A", "B"]
    assert valid["input"] == raw
    assert invalid["input"]["operation"] == "bogus"
