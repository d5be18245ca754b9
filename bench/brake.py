"""How many 429s a drain of N jobs receives from a rate-limited API, with and without the client-side cap.

Builds the connector from settings exactly as `connector run --once` does (composition root, embedded default,
Spotler sandbox on loopback), with the sandbox limited to RATE requests per second (429 with Retry-After: 1
beyond that), queues N jobs (add_tag and set_score over 500 contacts: one request each), and drains them twice in
fresh data directories: once without `http.max_requests_per_second`, once with it. The 429 count is the
sandbox's own (`FaultInjector.counts`), cross-checked with the adapter session's `throttled`.

Usage: python bench/brake.py [N] [RATE] [CAP] [WORKERS]   (defaults: 5000 100 90 8)

The limit must lie below what the client can send, or the drain never meets it: on a 2-core machine one process
(runner, adapter and sandbox together) sends about 155 requests/s, so a limit of 200 drew only 2 429s. Measured
there with the defaults: no cap 220 429s, 78.8 s; cap 90/s 0 429s, 55.6 s.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from config.settings import load_settings
from jobs import app as composition
from jobs.model import JobRequest


def jobs(count: int) -> list[JobRequest]:
    made = []
    for i in range(count):
        contact = f"C-{i % 500:03d}"
        if i % 2:
            made.append(JobRequest.from_input(operation="add_tag", tags=f"Tag {i % 7}", target_kind="contact",
                                              target_id=contact))
        else:
            made.append(JobRequest.from_input(operation="set_score", tags="Engagement", score=i % 100,
                                              target_kind="contact", target_id=contact))
    return made


def drain(count: int, rate: float, cap: float | None, workers: int) -> dict[str, float | int | None]:
    with tempfile.TemporaryDirectory() as home:
        settings = load_settings(
            home=Path(home), runner={"workers": workers},
            faults={"rate_limit": rate, "retry_after": 1},
            http={"max_requests_per_second": cap},
        )
        with composition.build(settings) as built:
            requests = jobs(count)
            for start in range(0, count, 1000):
                built.store.add(requests[start:start + 1000])
            started = time.perf_counter()
            report = built.runner.drain()
            while report.retrying and report.next_retry_at is not None:
                time.sleep(max(0.0, report.next_retry_at - time.time()))
                more = built.runner.drain()
                more.succeeded += report.succeeded
                more.failed += report.failed
                report = more
            seconds = time.perf_counter() - started
            session = built.platform.session  # type: ignore[attr-defined]
            server = built.sandboxes["spotler"]
            return {
                "cap": cap,
                "succeeded": report.succeeded,
                "failed": report.failed,
                "seconds": round(seconds, 1),
                "requests": session.requests_sent,
                "429s (sandbox)": server.injector.counts.get("429", 0),
                "429s (client)": session.throttled,
                "brake pauses": session.brake.pauses,
            }


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    rate = float(sys.argv[2]) if len(sys.argv) > 2 else 100.0
    cap = float(sys.argv[3]) if len(sys.argv) > 3 else 90.0
    workers = int(sys.argv[4]) if len(sys.argv) > 4 else 8
    print(f"{count} jobs, sandbox limited to {rate:g} requests/s (429, Retry-After: 1), {workers} workers")
    for result in (drain(count, rate, None, workers), drain(count, rate, cap, workers)):
        label = "no cap" if result["cap"] is None else f"cap {result['cap']:g}/s"
        rest = ", ".join(f"{k} {v}" for k, v in result.items() if k != "cap")
        print(f"{label:>12}: {rest}")


if __name__ == "__main__":
    main()
