"""One job -> its kind's handler -> an outcome on the job.

A job runs in two phases, each remembered on the job so that a retry never repeats a finished phase:
1. *apply*: the kind's handler makes the change (`applied_at` once done);
2. *post*: one line on the target's timeline (`posted_at` once done), for kinds that post.

A change that is harmless to apply again (the kind is `idempotent`) is marked applied, with its effects, in the
write of the job's outcome rather than a write of its own: one store write per job fewer. If the runner dies in
between, the next run applies it again and keeps its effects then; a post that may exist is looked for first.

Transient errors are retried with tenacity: short waits happen inside the attempt (the lease is renewed
meanwhile); a wait longer than `inline_wait_max` puts the job back to pending with `next_attempt_at`, and so does a
stop during a wait, with what is left of it. Permanent errors fail the job at once. Every try is recorded as an attempt.

The retry budget is time first: a transient error is retried while the next try would still start within
`max_age` of the job's first try (since it was queued or last retried by hand; the attempt log says when that was),
and `max_attempts` is a second cap. The wait is the exponential backoff over all the job's tries, or the API's
Retry-After when that is longer: a job that keeps being throttled backs off like any other, so the attempt cap
does not run out long before the day does.

The executor knows no kind: the handler (`jobs.kinds`) applies the change through a `RunContext`, which gives it
the platform, the CRM, the outside services, and a durable place for what it observed before changing anything
(the increments' read-back lives in `jobs.kinds.scores`). What happens is published to the `Observer`
(`jobs.observe`); the effects of durable subscribers are written with the mark that the change is applied.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import tenacity

from config import defaults
from config.settings import RetrySettings
from connector import errors
from connector.crm import Crm
from connector.platform import Contact, Platform
from jobs.kinds import request_from_raw
from jobs.model import Attempt, InvalidJob, Job, JobRequest, JobStatus
from jobs.observe import AttemptEnded, AttemptStarted, Change, ChangeApplied, Finished, Observer
from jobs.store import Effects, LeaseLost, Outcome, RunnerStore

log = logging.getLogger(__name__)

DEFAULT_TIMELINE_TEMPLATE = defaults.TIMELINE_TEMPLATE


class ExecutorStore(RunnerStore, Protocol):
    """What the executor asks of a job store: the runner's calls, and the attempt log, where the time budget of a
    job put back to pending starts."""

    def attempts(self, job_id: str) -> list[Attempt]: ...


class RetryLater(Exception):
    """Leave the attempt loop and put the job back to pending; the delay is too long to wait inside it."""

    def __init__(self, delay: float) -> None:
        super().__init__(delay)
        self.delay = delay


class TimelineFailed(errors.PermanentError):
    """The change was applied on the platform, but the timeline post was refused."""

    result_code = "TIMELINE_FAILED"


@dataclass
class _Run:
    """What one execution knows: the job as it evolves, the contact, and who holds it. It is the `RunContext`
    the kind's handler runs with."""

    job: Job
    request: JobRequest
    owner: str
    store: ExecutorStore
    platform: Platform
    crm: Crm
    services: Mapping[str, Any]
    observer: Observer
    _contact: Contact | None = None
    last_error: errors.ConnectorError | None = None
    # The final attempt (succeeded, or failed for good), written together with the job's outcome.
    final_attempt: Attempt | None = None
    # Whether a timeline post may exist already: an earlier claim ran the job, or a post was tried.
    post_may_exist: bool = False
    # The effects of a change applied in this claim and not written yet: they go with the outcome.
    unsaved: Effects | None = None
    changes: list[Change] = field(default_factory=list)
    # The retry budget: tries made in this claim, when the job's first try started (read once, when first needed),
    # the wait before the next try, and why there is none (the start of the failure message).
    tries: int = 0
    first_try_at: float | None = None
    delay: float = 0.0
    gave_up: str | None = None

    def contact(self) -> Contact:
        if self._contact is None:
            target = self.request.target
            assert target is not None, "a kind that runs without a target asked for its contact"
            self._contact = self.crm.identify(target.kind.value, target.id)
        return self._contact

    def remember(self, *, score_before: int) -> None:
        self.store.save_progress(self.owner, self.job.id, score_before=score_before)
        self.job = self.job.replace(score_before=score_before)

    def changed(self, change: Change) -> None:
        self.changes.append(change)
        self.observer.publish(ChangeApplied(self.job, change))


class Executor:
    def __init__(
        self,
        platform: Platform,
        crm: Crm,
        policy: RetrySettings,
        *,
        timeline_template: str = DEFAULT_TIMELINE_TEMPLATE,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Any] | None = None,
        stop: threading.Event | None = None,
        observer: Observer | None = None,
        services: Mapping[str, Any] | None = None,
    ) -> None:
        self.platform = platform
        self.crm = crm
        self.policy = policy
        self.observer = observer or Observer()
        # Outside services by name, for kinds that run on them (a webhook client, a mailer).
        self.services = dict(services or {})
        self.timeline_template = timeline_template
        self._clock = clock
        self.stop = stop or threading.Event()
        # Waiting on the stop event lets a shutdown cut short an inline backoff.
        self._sleep = sleep or self.stop.wait
        self._backoff = tenacity.wait_exponential_jitter(
            multiplier=policy.backoff_initial, max=policy.backoff_max, jitter=policy.jitter
        )

    # --- entry point ----------------------------------------------------------------------------------------

    def execute(self, job: Job, store: ExecutorStore, owner: str) -> JobStatus | None:
        """Run a claimed job to its next status. Returns None when the lease was lost to another runner."""
        try:
            return self._execute(job, store, owner)
        except LeaseLost as exc:
            log.warning("job %s: %s The job is left to whoever holds it now.", job.id, exc)
            return None

    def _execute(self, job: Job, store: ExecutorStore, owner: str) -> JobStatus:
        request = job.request
        if request is None:
            return self._invalid(job, store, owner)
        # An earlier run may have posted and died before writing so: every earlier run left an attempt (a lease
        # that expired counts one) or the applied mark.
        ran_before = job.applied_at is not None or job.attempts > 0
        run = _Run(job=job, request=request, owner=owner, store=store, platform=self.platform, crm=self.crm,
                   services=self.services, observer=self.observer, post_may_exist=ran_before)
        if job.attempts >= self.policy.max_attempts:
            # Its last tries were runners dying while holding it (each a LEASE_EXPIRED attempt).
            message = f"{_attempts_cap(job.attempts)}. {job.message}".strip()
            return self._finish(run, Outcome(JobStatus.FAILED, job.result_code or "GAVE_UP", message))
        # `_attempt` decides after each failure whether the budget allows another try, and how long to wait for it.
        retrying = tenacity.Retrying(
            stop=lambda state: run.gave_up is not None,
            wait=lambda state: run.delay,
            retry=tenacity.retry_if_exception_type(errors.TransientError),
            sleep=self._inline_sleep,
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    self._attempt(run)
        except RetryLater as later:
            error = run.last_error
            assert error is not None  # a wait only ever follows a failed attempt
            log.info("job %s: retrying in %.1f s", job.id, later.delay)
            return self._finish(run, Outcome(
                JobStatus.PENDING, error.result_code, error.message, http_status=error.http_status,
                next_attempt_at=self._clock() + later.delay,
            ))
        except LeaseLost:
            raise
        except errors.ConnectorError as exc:
            message = exc.message
            if isinstance(exc, errors.TransientError):
                message = f"{run.gave_up}: {message}"
            log.info("job %s failed: %s %s", job.id, exc.result_code, message)
            return self._finish(run, Outcome(JobStatus.FAILED, exc.result_code, message,
                                             http_status=exc.http_status, attempt=run.final_attempt))
        log.info("job %s succeeded", job.id)
        return self._finish(run, Outcome(JobStatus.SUCCEEDED, "OK", self._summary(run), attempt=run.final_attempt,
                                         posted=run.job.posted_at is not None))

    def _finish(self, run: _Run, outcome: Outcome) -> JobStatus:
        if run.unsaved is not None:
            outcome = dataclasses.replace(outcome, applied=True, effects=run.unsaved)
        return self._record(run.store, run.owner, run.job, outcome)

    def _record(self, store: RunnerStore, owner: str, job: Job, outcome: Outcome) -> JobStatus:
        """Record the job's outcome, asking a job store that does not answer (Dataverse 5xx) a few times more;
        then tell the plain subscribers.

        Safe to repeat: a write that was applied after all has moved the row on, and the next try finds the job
        no longer held (LeaseLost). If the store stays down, the job keeps its lease until it expires and is
        run again, and the platform change is not repeated (`applied_at`, `score_before`).
        """
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(defaults.STORE_WRITE_TRIES),
            wait=tenacity.wait_exponential(multiplier=0.5),  # 0.5, 1, 2 s between the STORE_WRITE_TRIES
            retry=tenacity.retry_if_exception_type(errors.TransientError), sleep=self._pause, reraise=True,
        )
        retrying(store.finish, owner, job.id, outcome)
        self.observer.publish(Finished(job, outcome))
        return outcome.status

    def _invalid(self, job: Job, store: RunnerStore, owner: str) -> JobStatus:
        try:
            request_from_raw(job.raw)
            message = "The job's input could not be read."
        except InvalidJob as exc:
            message = str(exc)
        now = self._clock()
        attempt = Attempt(job_id=job.id, started_at=now, ended_at=now, outcome="failed",
                          result_code=InvalidJob.result_code, message=message)
        outcome = Outcome(JobStatus.FAILED, InvalidJob.result_code, message, attempt=attempt)
        return self._record(store, owner, job, outcome)

    # --- one attempt ----------------------------------------------------------------------------------------

    def _attempt(self, run: _Run) -> None:
        started = self._clock()
        run.tries += 1
        self.observer.publish(AttemptStarted(run.job, started))
        try:
            if run.job.applied_at is None:
                self._apply(run)
            if run.request.kind.posts_timeline and run.request.target is not None and run.job.posted_at is None:
                self._post(run)
        except LeaseLost:
            raise
        except errors.ConnectorError as exc:
            retry = isinstance(exc, errors.TransientError) and self._may_retry(run, exc, started)
            attempt = Attempt(
                job_id=run.job.id, started_at=started, ended_at=self._clock(),
                outcome="retrying" if retry else "failed", result_code=exc.result_code,
                http_status=exc.http_status, message=exc.message,
            )
            if retry:
                run.store.record_attempt(run.owner, attempt)
            else:
                run.final_attempt = attempt
            run.last_error = exc
            self.observer.publish(AttemptEnded(run.job, attempt, self._clock() - started))
            raise
        run.final_attempt = Attempt(
            job_id=run.job.id, started_at=started, ended_at=self._clock(), outcome="succeeded", result_code="OK",
            message=self._summary(run),
        )
        self.observer.publish(AttemptEnded(run.job, run.final_attempt, self._clock() - started))

    def _apply(self, run: _Run) -> None:
        run.request.kind.run(run)
        effects = self.observer.effects(run.job, run.changes)
        if run.request.kind.idempotent:
            run.unsaved = effects
        else:
            run.store.save_progress(run.owner, run.job.id, applied=True, effects=effects)
        run.job = run.job.replace(applied_at=self._clock())

    def _post(self, run: _Run) -> None:
        request = run.request
        target = request.target
        assert target is not None
        text = self.timeline_template.format(
            # The post sits on the record's own timeline: naming the record there again says nothing.
            summary=self._summary(run, with_target=False), job_id=run.job.id, operation=request.kind.label,
            **request.kind.template_fields(request.payload),
        )
        may_exist, run.post_may_exist = run.post_may_exist, True
        try:
            self.crm.post(target_kind=target.kind.value, target_id=target.id, job_id=run.job.id, text=text,
                          may_exist=may_exist)
        except errors.PermanentError as exc:
            raise TimelineFailed(
                f"{self._summary(run)}, but the timeline post failed: {exc.message}", http_status=exc.http_status
            ) from exc
        # Marked posted with the job's outcome: a post repeated after a crash right here is found by the CRM.
        run.job = run.job.replace(posted_at=self._clock())

    def _summary(self, run: _Run, *, with_target: bool = True) -> str:
        request = run.request
        what = request.describe()
        where = "" if not with_target else f" for {request.target}" if request.target else " (tag only)"
        return what[0].upper() + what[1:] + where

    # --- waiting --------------------------------------------------------------------------------------------

    def _may_retry(self, run: _Run, error: errors.TransientError, started: float) -> bool:
        """Whether the budget allows another try after this one failed; sets the wait for it, or why not."""
        tries = run.job.attempts + run.tries
        delay = self._wait(error, tries)
        if run.first_try_at is None:
            run.first_try_at = started if run.job.attempts == 0 else self._first_try_at(run, started)
        elapsed = self._clock() - run.first_try_at
        if elapsed + delay > self.policy.max_age:
            run.gave_up = (f"Gave up after {_duration(elapsed)} and {_attempts(tries)}, the longest retry.max_age "
                           f"({_duration(self.policy.max_age)}) allows")
            return False
        if tries >= self.policy.max_attempts:
            run.gave_up = _attempts_cap(tries)
            return False
        run.delay = delay
        return True

    def _first_try_at(self, run: _Run, started: float) -> float:
        """When the first of the job's counted tries started: the oldest of the last `attempts` in its log (a
        manual retry sets the count back to 0; the log keeps every try). A log clipped shorter than the count
        (Dataverse keeps the newest lines) gives its oldest line."""
        counted = run.store.attempts(run.job.id)[-run.job.attempts:]
        return counted[0].started_at if counted else started

    def _wait(self, error: errors.TransientError, tries: int) -> float:
        """Exponential backoff with jitter over all the job's tries, or the API's Retry-After (capped) when longer:
        Retry-After says when the API wants us back at the earliest; a job throttled again and again backs off."""
        backoff = float(self._backoff(_AttemptCount(tries)))  # type: ignore[arg-type]
        if error.retry_after is None:
            return backoff
        return max(backoff, min(error.retry_after, self.policy.retry_after_cap))

    def _pause(self, delay: float) -> None:
        self._sleep(delay)

    def _inline_sleep(self, delay: float) -> None:
        if delay > self.policy.inline_wait_max:
            raise RetryLater(delay)
        started = self._clock()
        self._sleep(delay)  # returns at once when a stop is requested, before or during the wait
        if self.stop.is_set():
            # The job goes back with what is left of its wait: a stop does not shorten a Retry-After.
            raise RetryLater(max(0.0, delay - (self._clock() - started)))


@dataclass
class _AttemptCount:
    """tenacity's wait strategies read only `attempt_number`; this carries the job's total across claims."""

    attempt_number: int


def _attempts(count: int) -> str:
    return f"{count} attempt" if count == 1 else f"{count} attempts"


def _attempts_cap(count: int) -> str:
    return f"Gave up after {_attempts(count)}, the most retry.max_attempts allows"


def _duration(seconds: float) -> str:
    """A time span as a person reads it on a job: `7 s`, `15 min`, `23 h 52 min`."""
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    hours, minutes = divmod(whole // 60, 60)
    if not hours:
        return f"{minutes} min"
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"
