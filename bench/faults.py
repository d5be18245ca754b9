"""Drain N mixed jobs through 30 % injected faults of every kind, on Spotler and on Mautic, with the default
retry settings, and check that every job succeeded and every score is exact.

Builds the connector from settings exactly as `connector run --once` does (composition root, embedded default,
the platform's sandbox on loopback), queues N jobs (every tag and score operation over 100 contacts and four
tags, drawn from a fixed seed), and drains until no job is left pending or retrying, as `connector run` would:
when only retries are left, it waits for the next one to come due. It then reads every contact back with the
faults off and compares it with the jobs folded in creation order (per record and tag they run in that order).

The faults: 6 % each of 429 (Retry-After: 1), 500/502/503, connection reset, no answer, and applied-then-dropped
(changes only; a dropped read is a reset). Every setting is the default except two, so that "no answer" costs
seconds instead of half a minute: `http.read_timeout` is 2 s (default 30 s) and the sandbox holds an unanswered
request 3 s (default 35 s), still longer than the client waits, so the fault stays a timeout and never turns
into a late answer. Waits are real: backoff, Retry-After and the brake's pauses all sleep.

Usage: python bench/faults.py [N] [spotler|mautic|both]   (defaults: 2000 both); `make bench-faults`.
It exits 1 when a job did not succeed or a score is off.
"""

from __future__ import annotations

import random
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from config.settings import load_settings
from connector.sandbox.server import Faults
from jobs import app as composition
from jobs.model import JobRequest

CONTACTS = 100
TAGS = ("Lead", "Engagement", "Webinar", "Trial")
FAULTS: dict[str, Any] = {
    "throttle_rate": 0.06, "retry_after": 1, "error_rate": 0.06, "reset_rate": 0.06, "timeout_rate": 0.06,
    "drop_rate": 0.06, "seed": 20261210,
}
READ_TIMEOUT = 2.0
HANG_SECONDS = 3.0
OPERATIONS = ("add_tag", "remove_tag", "set_score", "increase_score", "increase_score", "decrease_score",
              "remove_score")


def mixed_jobs(count: int, seed: int = 10) -> tuple[list[JobRequest], dict[str, dict[str, int]]]:
    """`count` jobs, and each contact's tags and scores once they have all run in creation order."""
    draw = random.Random(seed)
    requests: list[JobRequest] = []
    expected: dict[str, dict[str, int]] = {}
    for _ in range(count):
        contact, tag, operation = f"C-{draw.randrange(CONTACTS):03d}", draw.choice(TAGS), draw.choice(OPERATIONS)
        score = draw.randint(1, 9) if operation.endswith("_score") and operation != "remove_score" else None
        requests.append(JobRequest.from_input(operation=operation, tags=tag, score=score, target_kind="contact",
                                              target_id=contact))
        fold(expected.setdefault(contact, {}), operation, tag, score)
    return requests, expected


def fold(scores: dict[str, int], operation: str, tag: str, score: int | None) -> None:
    """One job's effect on a contact's tags and scores, as the README's operations table says."""
    if operation == "add_tag":
        scores.setdefault(tag, 0)
    elif operation in ("remove_tag", "remove_score"):
        scores.pop(tag, None)
    elif operation == "set_score":
        assert score is not None
        scores[tag] = score
    else:
        assert score is not None
        scores[tag] = scores.get(tag, 0) + (score if operation == "increase_score" else -score)


@dataclass
class Result:
    platform: str
    succeeded: int
    failed: int
    seconds: float
    wrong_scores: int
    injected: dict[str, int]
    requests: int
    pauses: int


def drain(platform: str, count: int, *, read_timeout: float = READ_TIMEOUT, hang_seconds: float = HANG_SECONDS,
          faults: dict[str, Any] | None = None, settings_overrides: dict[str, Any] | None = None,
          clock: Callable[[], float] = time.time, sleep: Callable[[float], Any] | None = None) -> Result:
    """Queue `count` mixed jobs and drain them through the faults (`faults` changes some of FAULTS). The test tier
    passes a clock and a sleep that do not wait (and a lease the moving clock cannot outrun)."""
    wait = sleep or time.sleep
    with tempfile.TemporaryDirectory() as home:
        settings = load_settings(home=Path(home), platform=platform,
                                 faults={**FAULTS, "hang_seconds": hang_seconds, **(faults or {})},
                                 http={"read_timeout": read_timeout}, **(settings_overrides or {}))
        with composition.build(settings, clock=clock, sleep=sleep) as built:
            requests, expected = mixed_jobs(count)
            for start in range(0, count, 1000):
                built.store.add(requests[start:start + 1000])
            started = time.perf_counter()
            succeeded = failed = 0
            while True:
                report = built.runner.drain()
                succeeded, failed = succeeded + report.succeeded, failed + report.failed
                if not report.retrying or report.next_retry_at is None:
                    break
                # Only retries are left: what `connector run` does between its ticks.
                wait(max(0.0, report.next_retry_at - clock()))
            seconds = time.perf_counter() - started
            server = built.sandboxes[platform]
            injected = dict(server.injector.counts)
            server.injector.faults = Faults()
            wrong = 0
            for contact, scores in sorted(expected.items()):
                got = built.platform.read_scores(built.crm.identify("contact", contact))
                if got != scores:
                    wrong += 1
                    print(f"  {platform} {contact}: platform has {got}, jobs make {scores}", file=sys.stderr)
            session = built.platform.session  # type: ignore[attr-defined]
            return Result(platform, succeeded, failed, seconds, wrong, injected, session.requests_sent,
                          session.brake.pauses)


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    which = sys.argv[2] if len(sys.argv) > 2 else "both"
    platforms = ["spotler", "mautic"] if which == "both" else [which]
    print(f"{count} mixed jobs over {CONTACTS} contacts, 30 % faults (6 % each of 429, 5xx, reset, no answer, "
          f"applied-then-dropped), default retry settings, read timeout {READ_TIMEOUT:g} s")
    ok = True
    for platform in platforms:
        result = drain(platform, count)
        ok = ok and result.succeeded == count and result.wrong_scores == 0
        faults = ", ".join(f"{k} {v}" for k, v in sorted(result.injected.items()))
        print(f"{platform:>8}: drained in {result.seconds:.1f} s, succeeded {result.succeeded}/{count}, failed "
              f"{result.failed}, contacts with a wrong score {result.wrong_scores}; {result.requests} requests, "
              f"{result.pauses} brake pauses; faults injected: {faults}", flush=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
