"""How a job's message tells the time it spent retrying: what support staff read when a job gave up."""

from __future__ import annotations

import pytest

from jobs.executor import _duration


@pytest.mark.parametrize(("seconds", "shown"), [
    (0, "0 s"), (7.4, "7 s"), (59.4, "59 s"), (59.6, "1 min"), (60, "1 min"), (3599, "59 min"), (3600, "1 h"),
    (3660, "1 h 1 min"), (85_623, "23 h 47 min"), (86_400, "24 h"), (3 * 86_400 + 60, "72 h 1 min"),
])
def test_a_duration_reads_in_seconds_minutes_or_hours(seconds: float, shown: str) -> None:
    assert _duration(seconds) == shown
