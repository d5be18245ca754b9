"""`jobs list` on a screen: full dates in UTC, and on 80 columns every word of a job still there, nothing cut."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import pytest
from rich.console import Console

from jobs import views
from jobs.model import Job, JobRequest, JobStatus

CREATED = datetime(2026, 12, 2, 16, 47, 5, tzinfo=UTC).timestamp()
LONG_TAG = "Spring webinar on nutrition and sports, second session"
REFUSAL = "NOT_FOUND: Spotler has no contact C-1002 (external id C-1002; set spotler.create_missing_contacts)"


def jobs() -> list[Job]:
    ok = JobRequest.from_input(operation="add_tag", tags=LONG_TAG, target_kind="contact", target_id="C-1001")
    missing = JobRequest.from_input(operation="increase_score", tags="Lead", score=5, target_kind="contact",
                                    target_id="C-1002")
    code, message = REFUSAL.split(": ", 1)
    return [
        Job(id="5f0c9a1e2b3d", request=ok, status=JobStatus.SUCCEEDED, created_at=CREATED, updated_at=CREATED,
            next_attempt_at=CREATED, attempts=1, result_code="OK", message="Added tag"),
        Job(id="77ab01cd9e8f", request=missing, status=JobStatus.FAILED, created_at=CREATED, updated_at=CREATED,
            next_attempt_at=CREATED, attempts=1, result_code=code, message=message),
    ]


def shown(width: int) -> list[str]:
    console = Console(file=io.StringIO(), width=width, highlight=False)
    console.print(views.jobs_view(jobs(), width))
    return [line.rstrip() for line in console.file.getvalue().splitlines()]  # type: ignore[attr-defined]


@pytest.mark.parametrize("width", [80, 60])
def test_a_narrow_screen_gets_every_word_of_every_job_within_its_width(width: int) -> None:
    lines = shown(width)
    assert max(map(len, lines)) <= width
    text = " ".join(line.strip() for line in lines)
    assert "5f0c9a1e2b3d  succeeded, 1 try  2026-12-02 16:47Z" in text
    assert f"Add Tag {LONG_TAG} for contact C-1001" in text
    assert f"Increase Score Lead 5 for contact C-1002: {REFUSAL}" in text


def test_a_wide_screen_gets_one_row_per_job_with_the_date_in_utc() -> None:
    lines = shown(200)
    at = next(n for n, line in enumerate(lines) if line.startswith("77ab01cd9e8f"))
    row = lines[at]
    assert "2026-12-02 16:47Z" in row and "contact C-1002" in row and "failed" in row
    assert "NOT_FOUND: Spotler has no contact C-1002" in row and "create_missing_contacts)" in lines[at + 1]
    assert "created (UTC)" in lines[0]
