"""Hooks around execution: the executor and the runner publish what happens to a job; subscribers listen.

Subscribers are registered in the composition root (`jobs.app`). There are two sorts:

- **plain subscribers** (`subscribe`) see every event after the fact: metrics, logs. One that raises is logged
  and ignored: it never changes what happens to a job.
- **durable subscribers** (`subscribe_durable`) turn the changes a job applied into `Effects` (records, and jobs
  to queue), which the store writes in the same transaction that marks the change applied: score history, trigger
  firings and their action jobs. Either the applied mark and its effects are kept, or neither, so a runner killed
  at any moment can neither lose nor repeat them: a job whose change is marked applied never applies it again. One
  that raises fails the job's run like any defect (the runner records INTERNAL_ERROR), so that an effect can
  never be silently missing.

The events, in the order one run publishes them: `Claimed`, then per try `AttemptStarted`, `ChangeApplied` (for
each change, with the score before and after where known), `AttemptEnded`; then `Finished`, or `Released` when a
shutdown gives the job back.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from jobs.model import Attempt, Job
from jobs.scoring.changes import Change
from jobs.store import Effects, Outcome

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Claimed:
    job: Job


@dataclass(frozen=True)
class AttemptStarted:
    job: Job
    at: float


@dataclass(frozen=True)
class AttemptEnded:
    job: Job
    attempt: Attempt
    seconds: float


@dataclass(frozen=True)
class ChangeApplied:
    job: Job
    change: Change


@dataclass(frozen=True)
class Finished:
    job: Job
    outcome: Outcome


@dataclass(frozen=True)
class Released:
    job: Job


__all__ = ["Change"]

Event = Claimed | AttemptStarted | AttemptEnded | ChangeApplied | Finished | Released
Subscriber = Callable[[Event], None]
DurableSubscriber = Callable[[Job, Sequence[Change]], Effects]


class Observer:
    """The subscribers of one connector. Thread-safe: workers publish concurrently."""

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []
        self._durable: list[DurableSubscriber] = []
        self._lock = threading.Lock()

    def subscribe(self, subscriber: Subscriber) -> None:
        with self._lock:
            self._subscribers.append(subscriber)

    def subscribe_durable(self, subscriber: DurableSubscriber) -> None:
        with self._lock:
            self._durable.append(subscriber)

    def publish(self, event: Event) -> None:
        for subscriber in list(self._subscribers):
            try:
                subscriber(event)
            except Exception:
                log.exception("job %s: a subscriber failed on %s; the job goes on", event.job.id,
                              type(event).__name__)

    def effects(self, job: Job, changes: Sequence[Change]) -> Effects:
        """What the durable subscribers keep of the changes a job applied."""
        total = Effects()
        for durable in list(self._durable):
            total += durable(job, changes)
        return total


def log_outcome(event: Event) -> None:
    """At INFO, one line per run of a job that ended (succeeded, failed, or retrying later), with the job's id,
    record, operation and outcome as fields a JSON log keeps apart (`log_format = "json"`)."""
    if not isinstance(event, Finished) or not log.isEnabledFor(logging.INFO):
        return
    job, outcome = event.job, event.outcome
    shown = job.to_json()
    target = shown["target"]
    record = f"{target['kind']}:{target['id']}" if target else None
    status = "retrying" if outcome.status.value == "pending" else outcome.status.value
    log.info("job %s %s for %s: %s %s %s", job.id, shown["operation"], record or "no record", status,
             outcome.result_code or "", outcome.message,
             extra={"job_id": job.id, "record": record, "operation": shown["operation"], "outcome": status,
                    "result_code": outcome.result_code})
