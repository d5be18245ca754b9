"""The numbers an operator reads at a glance, and whether the connector is healthy: what `connector status`, the
console's overview and `/healthz` show. Read from the job store only, so a console in another process (or on
another machine sharing the store) sees what the runners did.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from jobs import kinds
from jobs.kinds import RunsOn
from jobs.model import Job
from jobs.store import JobFilter, JobStore, ReaderStore, RunnerSeen

HOUR, DAY = 3600.0, 86400.0
STATUSES = ("pending", "retrying", "running", "succeeded", "failed", "cancelled")
# Result codes of a try that the API itself answered badly or not at all: what "429s and errors per API" counts.
API_TROUBLE = frozenset({"RATE_LIMITED", "UNAVAILABLE", "NETWORK_ERROR", "OUTCOME_UNKNOWN", "AUTH_FAILED",
                         "TIMELINE_FAILED", "STORE_UNAVAILABLE", "CONFLICT", "NOT_FOUND"})


@dataclass(frozen=True)
class Overview:
    at: float
    counts: dict[str, int]  # every display status, 0 included
    retrying: int
    next_retry_at: float | None
    oldest_pending: Job | None
    done_last_hour: dict[str, int]  # result code -> jobs finished
    done_last_day: dict[str, int]
    api_trouble: dict[str, dict[str, int]]  # API -> result code -> tries in the last day
    runners: list[RunnerSeen] = field(default_factory=list)  # seen within a day, the most recent first

    @property
    def oldest_pending_age(self) -> float | None:
        return None if self.oldest_pending is None else max(0.0, self.at - self.oldest_pending.created_at)


def api_namer(platform: str, crm: str) -> Callable[[str], str]:
    """The API a job kind talks to, by name: the platform, the CRM, or the kind's own service (webhook, email)."""
    def api_of(kind_name: str) -> str:
        try:
            runs_on = kinds.kind_named(kind_name).runs_on
        except ValueError:
            return "none (invalid input)"
        if runs_on is RunsOn.PLATFORM:
            return platform
        return crm if runs_on is RunsOn.CRM else kind_name
    return api_of


def overview(store: JobStore, api_of: Callable[[str], str], *, now: float | None = None) -> Overview:
    now = time.time() if now is None else now
    counts = {status: 0 for status in STATUSES} | store.counts()
    retrying, next_due = store.waiting()
    trouble: dict[str, dict[str, int]] = {}
    for (kind, code), n in store.failed_attempts_since(now - DAY).items():
        if code in API_TROUBLE:
            per_api = trouble.setdefault(api_of(kind), {})
            per_api[code] = per_api.get(code, 0) + n
    return Overview(
        at=now, counts=counts, retrying=retrying, next_retry_at=next_due, oldest_pending=store.oldest_pending(),
        done_last_hour=store.finished_since(now - HOUR), done_last_day=store.finished_since(now - DAY),
        api_trouble=trouble, runners=store.runners(now - DAY),
    )


@dataclass(frozen=True)
class Health:
    ok: bool
    reason: str


def health(store: ReaderStore, max_age: float, *, now: float | None = None) -> Health:
    """Healthy when the job store answers and a runner beat within `max_age` seconds; the reason either way."""
    now = time.time() if now is None else now
    try:
        store.counts()
        seen = store.runners(now - DAY)
    except Exception as exc:  # whatever the store raised, the answer is the same: it does not answer
        return Health(False, f"The job store does not answer: {type(exc).__name__}: {exc}")
    if not seen:
        return Health(False, "The job store answers, but no runner has beaten in the last day: is `connector run` "
                             "running?")
    latest = seen[0]
    age = now - latest.seen_at
    if age > max_age:
        return Health(False, f"The job store answers, but the last runner heartbeat ({latest.owner}) is {age:.0f} s "
                             f"old, more than {max_age:g} s.")
    return Health(True, f"The job store answers; runner {latest.owner} beat {age:.0f} s ago.")


def count_where(store: ReaderStore, query: JobFilter, page: int = 1000) -> int:
    """How many jobs `query` finds, whatever its limit: what a bulk action will touch, said before it acts."""
    total, cursor = 0, None
    while True:
        found = store.list(dataclasses.replace(query, limit=page, after=cursor))
        total += len(found.jobs)
        cursor = found.next_cursor
        if cursor is None:
            return total
