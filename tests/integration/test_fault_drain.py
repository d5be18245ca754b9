"""The benchmark `make bench-faults` in small: mixed jobs through 30 % faults of every kind (429, 5xx, reset, no
answer, applied-then-dropped), on each platform, with the default retry settings, all succeed with exact scores.

What differs from the benchmark, so that it takes seconds: 150 jobs instead of 2,000; every wait (backoff,
Retry-After, the brake's pause, the wait for the next retry) moves a FakeClock instead of sleeping; the lease is
longer than that clock can run in a drain (leases are tested elsewhere); the read timeout is the suite's (an
unanswered request is held longer, so it stays a timeout); and as the only fault that costs real time, no answer
is 2 % of requests and server errors 10 % (30 % in all still).
"""

from __future__ import annotations

import pytest

from bench.faults import drain
from tests.conftest import HANG, READ_TIMEOUT, FakeClock

JOBS = 120
FAULTS = {"timeout_rate": 0.02, "error_rate": 0.10}


@pytest.mark.slow
@pytest.mark.parametrize("platform", ["spotler", "mautic"])
def test_mixed_jobs_through_thirty_percent_faults_all_succeed_with_exact_scores(platform: str) -> None:
    clock = FakeClock()
    result = drain(platform, JOBS, read_timeout=READ_TIMEOUT, hang_seconds=HANG, faults=FAULTS,
                   settings_overrides={"runner": {"lease_seconds": 1e9}}, clock=clock, sleep=clock.sleep)
    assert (result.succeeded, result.failed, result.wrong_scores) == (JOBS, 0, 0)
    assert {"429", "reset", "timeout", "drop"} <= set(result.injected), result.injected
    assert {"500", "502", "503"} & set(result.injected), result.injected
