"""Claim due jobs, run them on a bounded worker pool, keep their leases alive, and stop cleanly.

The store's claim already guarantees that no two claimed jobs share a key, so the runner can run whatever it
claims concurrently. It holds at most `ahead` claimed jobs beyond its workers, so that a worker that finishes
takes the next job at once instead of waiting for the next claim (a claim is a round trip or more on Dataverse),
and it claims once at least `ahead` places are free, so each claim brings several jobs; a job waits in that short
line for at most the time a worker takes to free up, its lease renewed like the running ones.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

from config import defaults
from connector import errors
from jobs.executor import Executor, ExecutorStore
from jobs.model import Job, JobStatus
from jobs.observe import Claimed, Finished, Released
from jobs.store import LeaseLost, Outcome

log = logging.getLogger(__name__)


@dataclass
class DrainReport:
    """What a drain did, and what it left waiting for a retry."""

    succeeded: int = 0
    failed: int = 0
    retrying: int = 0
    next_retry_at: float | None = None
    seconds: float = 0.0

    @property
    def processed(self) -> int:
        return self.succeeded + self.failed


class Runner:
    def __init__(
        self,
        store: ExecutorStore,
        executor: Executor,
        *,
        workers: int = defaults.WORKERS,
        ahead: int | None = None,
        batch_size: int = defaults.BATCH_SIZE,
        lease_seconds: float = defaults.LEASE_SECONDS,
        owner: str | None = None,
        sleep: Callable[[float], object] | None = None,
    ) -> None:
        self.store = store
        self.executor = executor
        self.workers = workers
        self.ahead = max(1, workers // defaults.CLAIM_AHEAD_DIVISOR) if ahead is None else ahead
        self.batch_size = batch_size
        self.lease_seconds = lease_seconds
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.stop_event = executor.stop
        self.observer = executor.observer
        # Waiting on the stop event lets a shutdown cut a pause short; tests pass a sleep that does not wait.
        self._sleep = sleep or self.stop_event.wait
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="worker")
        self._inflight: dict[str, Future[JobStatus | None]] = {}
        self._lock = threading.Lock()
        self._renewer: threading.Thread | None = None
        self._renewer_stop = threading.Event()

    # --- claiming and running -------------------------------------------------------------------------------

    def tick(self) -> list[Future[JobStatus | None]]:
        """Claim due jobs for the free places (workers and the line ahead of them) and start them."""
        if self.stop_event.is_set():
            return []
        with self._lock:
            held = len(self._inflight)
        free = self.workers + self.ahead - held
        # With jobs in hand, wait until a claim can bring several: each claim costs the store a round trip.
        if free <= 0 or (held and free < self.ahead):
            return []
        jobs = self.store.claim(self.owner, min(free, self.batch_size), self.lease_seconds)
        if jobs:
            # One renewer for the runner's whole life: it must outlive every drain, also one cut short by an
            # exception or a signal, for as long as any claimed job runs (it stops in close()).
            self._start_renewer()
        futures = []
        for job in jobs:
            self.observer.publish(Claimed(job))
            with self._lock:
                future = self._pool.submit(self._run_one, job)
                self._inflight[job.id] = future
            futures.append(future)
        return futures

    def _run_one(self, job: Job) -> JobStatus | None:
        try:
            if self.stop_event.is_set():
                self.store.release(self.owner, job.id)
                self.observer.publish(Released(job))
                return None
            return self.executor.execute(job, self.store, self.owner)
        except errors.ConnectorError as exc:
            # The executor handles the platform's and the CRM's errors; what reaches here is the job store failing
            # to record. The job keeps its lease until it expires, then another claim takes it up again.
            log.warning("job %s: the job store failed to record it (%s %s); it is retried when its lease "
                        "expires", job.id, exc.result_code, exc.message)
            return None
        except Exception as exc:
            # A bug or a surprise from an API must fail this one job, never the runner.
            log.exception("job %s: unexpected error", job.id)
            outcome = Outcome(
                JobStatus.FAILED, "INTERNAL_ERROR",
                f"Unexpected error in the connector ({type(exc).__name__}); see the runner's log.",
            )
            try:
                self.store.finish(self.owner, job.id, outcome)
                self.observer.publish(Finished(job, outcome))
            except LeaseLost:
                pass
            except Exception:
                # Not even that could be written: the lease runs out and the job is tried again.
                log.exception("job %s: its failure could not be recorded either", job.id)
                return None
            return JobStatus.FAILED
        finally:
            with self._lock:
                self._inflight.pop(job.id, None)

    def drain(
        self, on_progress: Callable[[DrainReport], None] | None = None, *, report_waiting: bool = True
    ) -> DrainReport:
        """Run everything that is due now, including retries that come due while draining, then return.

        `report_waiting` also asks the store what is left waiting for a retry (one more query: a scheduler's
        idle tick does without it)."""
        started = time.monotonic()
        report = DrainReport()
        outstanding: set[Future[JobStatus | None]] = set()
        claim_failures = 0
        while True:
            try:
                outstanding.update(self.tick())
                claim_failures = 0
            except errors.TransientError as exc:
                claim_failures += 1
                if claim_failures > len(defaults.CLAIM_RETRY_DELAYS):
                    raise
                delay = defaults.CLAIM_RETRY_DELAYS[claim_failures - 1]
                log.warning("The job store did not answer a claim (%s); asking again in %g s", exc.message, delay)
                if not outstanding:
                    self._sleep(delay)
                    continue
            if not outstanding:
                break
            done, outstanding = wait(outstanding, return_when=FIRST_COMPLETED, timeout=1.0)
            for future in done:
                status = future.result()
                if status is JobStatus.SUCCEEDED:
                    report.succeeded += 1
                elif status is JobStatus.FAILED:
                    report.failed += 1
            if done and on_progress:
                on_progress(report)
        if report_waiting:
            try:
                report.retrying, report.next_retry_at = self.store.waiting()
            except errors.TransientError as exc:
                log.warning("The job store did not say what is left waiting (%s)", exc.message)
        report.seconds = time.monotonic() - started
        return report

    def _wait_inflight(self) -> None:
        with self._lock:
            pending = list(self._inflight.values())
        wait(pending)

    # --- leases ---------------------------------------------------------------------------------------------

    def _start_renewer(self) -> None:
        if self._renewer is not None:
            return
        self._renewer_stop.clear()
        self._renewer = threading.Thread(target=self._renew_loop, name="lease-renewer", daemon=True)
        self._renewer.start()

    def _stop_renewer(self) -> None:
        if self._renewer is None:
            return
        self._renewer_stop.set()
        self._renewer.join()
        self._renewer = None

    def _renew_loop(self) -> None:
        # Renew at a third of the lease: two renewals can fail before another runner may take the job.
        while not self._renewer_stop.wait(self.lease_seconds / 3):
            with self._lock:
                ids = list(self._inflight)
            if not ids:
                continue
            try:
                lost = self.store.renew(self.owner, ids, self.lease_seconds)
            except errors.ConnectorError as exc:
                log.warning("Renewing leases failed (%s); trying again in %g s", exc.message, self.lease_seconds / 3)
                continue
            except Exception:
                log.exception("renewing leases failed; will try again")
                continue
            with self._lock:
                # A job that finished while we renewed has no lease left to lose.
                lost = [job_id for job_id in lost if job_id in self._inflight]
            for job_id in lost:
                log.warning("job %s: lease lost; another runner may take it", job_id)

    # --- stopping -------------------------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Stop claiming; running attempts finish, inline waits are cut short and their jobs released."""
        self.stop_event.set()

    def close(self) -> None:
        self.request_stop()
        self._wait_inflight()
        self._stop_renewer()
        self._pool.shutdown(wait=True)
