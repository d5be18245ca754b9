"""One job -> platform calls -> an outcome on the job.

A job runs in two phases, each remembered on the job so that a retry never repeats a finished phase:
1. *apply*: the change on the platform (`applied_at` once done);
2. *post*: one line on the target's timeline (`posted_at` once done).

Transient errors are retried with tenacity: short waits happen inside the attempt (the lease is renewed
meanwhile); a wait longer than `inline_wait_max` puts the job back to pending with `next_attempt_at`. Permanent
errors fail the job at once. Every try is recorded as an attempt.

Increments are not idempotent (DESIGN.md guarantee 3). Before the first try the executor reads the score and
keeps it on the job (`score_before`). Before any later try it reads the score again: if it already equals
`score_before + change`, the earlier try was applied and is not sent again; otherwise the reading becomes the new
`score_before` and the change is sent.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import tenacity

from config import defaults
from config.settings import RetrySettings
from connector import errors
from connector.crm import Crm
from connector.platform import Contact, Platform
from jobs.model import Attempt, InvalidJob, Job, JobRequest, JobStatus, Operation
from jobs.store import JobStore, LeaseLost

log = logging.getLogger(__name__)

DEFAULT_TIMELINE_TEMPLATE = defaults.TIMELINE_TEMPLATE
# How often the outcome of a job is offered to a job store that does not answer, before the lease takes over.
STORE_TRIES = 4


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
    """What one execution knows: the job as it evolves, the contact, and who holds it."""

    job: Job
    request: JobRequest
    owner: str
    contact: Contact | None = None
    last_error: errors.ConnectorError | None = None
    # The final attempt (succeeded, or failed for good), written together with the job's outcome.
    final_attempt: Attempt | None = None
    # Whether a timeline post may exist already: the change was applied before this claim, or a post was tried.
    post_may_exist: bool = False


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
    ) -> None:
        self.platform = platform
        self.crm = crm
        self.policy = policy
        self.timeline_template = timeline_template
        self._clock = clock
        self.stop = stop or threading.Event()
        # Waiting on the stop event lets a shutdown cut short an inline backoff.
        self._sleep = sleep or self.stop.wait
        self._backoff = tenacity.wait_exponential_jitter(
            initial=policy.backoff_initial, max=policy.backoff_max, jitter=policy.jitter
        )

    # --- entry point ----------------------------------------------------------------------------------------

    def execute(self, job: Job, store: JobStore, owner: str) -> JobStatus | None:
        """Run a claimed job to its next status. Returns None when the lease was lost to another runner."""
        try:
            return self._execute(job, store, owner)
        except LeaseLost as exc:
            log.warning("job %s: %s The job is left to whoever holds it now.", job.id, exc)
            return None

    def _execute(self, job: Job, store: JobStore, owner: str) -> JobStatus:
        request = job.request
        if request is None:
            return self._invalid(job, store, owner)
        run = _Run(job=job, request=request, owner=owner, post_may_exist=job.applied_at is not None)
        remaining = self.policy.max_attempts - job.attempts
        if remaining <= 0:
            message = f"Gave up after {_attempts(job.attempts)}. {job.message}".strip()
            self._finish(store, owner, job.id, status=JobStatus.FAILED, result_code=job.result_code or "GAVE_UP",
                         message=message)
            return JobStatus.FAILED
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(remaining),
            wait=lambda state: self._wait(job, state),
            retry=tenacity.retry_if_exception_type(errors.TransientError),
            sleep=self._inline_sleep,
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    self._attempt(run, store, last=attempt.retry_state.attempt_number >= remaining)
        except RetryLater as later:
            error = run.last_error
            self._finish(
                store, owner, job.id, status=JobStatus.PENDING,
                result_code=error.result_code if error else "RETRYING",
                message=error.message if error else "Waiting to retry.",
                http_status=error.http_status if error else None,
                next_attempt_at=self._clock() + later.delay,
            )
            log.info("job %s: retrying in %.1f s", job.id, later.delay)
            return JobStatus.PENDING
        except errors.ConnectorError as exc:
            message = exc.message
            if isinstance(exc, errors.TransientError):
                message = f"Gave up after {_attempts(self.policy.max_attempts)}: {message}"
            self._finish(store, owner, job.id, status=JobStatus.FAILED, result_code=exc.result_code, message=message,
                         http_status=exc.http_status, attempt=run.final_attempt)
            log.info("job %s failed: %s %s", job.id, exc.result_code, message)
            return JobStatus.FAILED
        self._finish(store, owner, job.id, status=JobStatus.SUCCEEDED, result_code="OK", message=self._summary(run),
                     attempt=run.final_attempt, posted=run.job.posted_at is not None)
        log.info("job %s succeeded", job.id)
        return JobStatus.SUCCEEDED

    def _finish(self, store: JobStore, owner: str, job_id: str, **outcome: Any) -> None:
        """Record the job's outcome, asking a job store that does not answer (Dataverse 5xx) a few times more.

        Safe to repeat: a write that was applied after all has moved the row on, and the next try finds the job
        no longer held (LeaseLost). If the store stays down, the job keeps its lease until it expires and is
        run again, and the platform change is not repeated (`applied_at`, `score_before`).
        """
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(STORE_TRIES), wait=tenacity.wait_exponential(multiplier=0.5, max=4),
            retry=tenacity.retry_if_exception_type(errors.TransientError), sleep=self._pause, reraise=True,
        )
        retrying(store.finish, owner, job_id, **outcome)

    def _invalid(self, job: Job, store: JobStore, owner: str) -> JobStatus:
        raw = job.raw
        try:
            JobRequest.from_input(
                operation=raw.get("operation"), tags=raw.get("tags"), score=raw.get("score"),
                target_kind=raw.get("target_kind"), target_id=raw.get("target_id"),
            )
            message = "The job's input could not be read."
        except InvalidJob as exc:
            message = str(exc)
        now = self._clock()
        attempt = Attempt(job_id=job.id, started_at=now, ended_at=now, outcome="failed",
                          result_code=InvalidJob.result_code, message=message)
        self._finish(store, owner, job.id, status=JobStatus.FAILED, result_code=InvalidJob.result_code, message=message,
                     attempt=attempt)
        return JobStatus.FAILED

    # --- one attempt ----------------------------------------------------------------------------------------

    def _attempt(self, run: _Run, store: JobStore, *, last: bool) -> None:
        started = self._clock()
        try:
            if run.job.applied_at is None:
                self._apply(run, store)
            if run.request.target is not None and run.job.posted_at is None:
                self._post(run, store)
        except errors.ConnectorError as exc:
            retry = isinstance(exc, errors.TransientError) and not last
            attempt = Attempt(
                job_id=run.job.id, started_at=started, ended_at=self._clock(),
                outcome="retrying" if retry else "failed", result_code=exc.result_code,
                http_status=exc.http_status, message=exc.message,
            )
            if retry:
                store.record_attempt(run.owner, attempt)
            else:
                run.final_attempt = attempt
            run.last_error = exc
            raise
        run.final_attempt = Attempt(
            job_id=run.job.id, started_at=started, ended_at=self._clock(), outcome="succeeded", result_code="OK",
            message=self._summary(run),
        )

    def _apply(self, run: _Run, store: JobStore) -> None:
        request, job = run.request, run.job
        ref = job.id  # the platform's own log names the job (Mautic: "Connector job <id>")
        if request.target is None:
            self.platform.create_tags(request.tags)
        else:
            contact = self._contact(run)
            op, tag = request.operation, request.tags[0]
            if op is Operation.ADD_TAG:
                self.platform.add_tags(contact, request.tags, ref=ref)
            elif op in (Operation.REMOVE_TAG, Operation.REMOVE_SCORE):
                self.platform.remove_tags(contact, request.tags, ref=ref)
            elif op is Operation.SET_SCORE:
                assert request.score is not None
                self.platform.set_score(contact, tag, request.score, ref=ref)
            elif op is Operation.START_AUTOMATION:
                self.platform.start_automation(contact, tag, ref=ref)
            else:
                assert op.is_increment, op
                self._increment(run, store, contact, tag)
        store.save_progress(run.owner, job.id, applied=True)
        run.job = job.model_copy(update={"applied_at": self._clock()})

    def _increment(self, run: _Run, store: JobStore, contact: Contact, tag: str) -> None:
        request, job = run.request, run.job
        assert request.score is not None
        change = request.score if request.operation is Operation.INCREASE_SCORE else -request.score
        current = _score_of(self.platform.read_scores(contact), tag)
        if job.score_before is not None and current == job.score_before + change:
            log.info("job %s: score of %s is already %s; the earlier attempt was applied", job.id, tag, current)
            return
        if job.score_before != current:
            store.save_progress(run.owner, job.id, score_before=current)
            run.job = job = job.model_copy(update={"score_before": current})
        self.platform.change_score(contact, tag, change, ref=job.id)

    def _post(self, run: _Run, store: JobStore) -> None:
        target = run.request.target
        assert target is not None
        text = self.timeline_template.format(
            # The post sits on the record's own timeline: naming the record there again says nothing.
            summary=self._summary(run, with_target=False), job_id=run.job.id, operation=run.request.operation.label,
            tags=", ".join(run.request.tags), score="" if run.request.score is None else run.request.score,
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
        run.job = run.job.model_copy(update={"posted_at": self._clock()})

    def _contact(self, run: _Run) -> Contact:
        if run.contact is None:
            target = run.request.target
            assert target is not None
            run.contact = self.crm.identify(target.kind.value, target.id)
        return run.contact

    def _summary(self, run: _Run, *, with_target: bool = True) -> str:
        request = run.request
        what = request.describe()
        where = "" if not with_target else f" for {request.target}" if request.target else " (tag only)"
        return what[0].upper() + what[1:] + where

    # --- waiting --------------------------------------------------------------------------------------------

    def _wait(self, job: Job, state: tenacity.RetryCallState) -> float:
        """Retry-After when the API gave one (capped), else exponential backoff with jitter over all attempts."""
        error = state.outcome.exception() if state.outcome else None
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None:
            return float(min(retry_after, self.policy.retry_after_cap))
        total = _AttemptCount(job.attempts + state.attempt_number)
        return float(self._backoff(total))  # type: ignore[arg-type]

    def _pause(self, delay: float) -> None:
        self._sleep(delay)

    def _inline_sleep(self, delay: float) -> None:
        if delay > self.policy.inline_wait_max or self.stop.is_set():
            raise RetryLater(delay)
        self._sleep(delay)
        if self.stop.is_set():
            raise RetryLater(0.0)


def _score_of(scores: dict[str, int], tag: str) -> int:
    """The tag's score as read back: an exact name first, else one differing only in case (Mautic compares tag
    names case-insensitively and reports the name it stored first); a missing tag is 0."""
    if tag in scores:
        return scores[tag]
    folded = tag.casefold()
    return next((score for name, score in scores.items() if name.casefold() == folded), 0)


@dataclass
class _AttemptCount:
    """tenacity's wait strategies read only `attempt_number`; this carries the job's total across claims."""

    attempt_number: int


def _attempts(count: int) -> str:
    return f"{count} attempt" if count == 1 else f"{count} attempts"
