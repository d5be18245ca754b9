"""`/metrics` in Prometheus' text format, with `prometheus_client`.

Two sources. What happens inside this process (jobs finished, attempt durations, HTTP answers, 429s and their
Retry-After) is counted as it happens, from the observer's events and from a response hook on each API session:
those counters live as long as the process, as Prometheus expects of counters, and only a process that runs jobs
(`connector run --console`) has them. What the job store holds (jobs per status, the oldest pending job, trigger
firings, runners' heartbeats) is read from the store at each scrape, so any console shows it, also one that runs
no jobs.
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Callable, Iterator
from typing import Any

import requests
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from connector.http import parse_retry_after
from jobs.observe import AttemptEnded, Event, Finished
from jobs.overview import STATUSES
from jobs.scoring.triggers import firings_of
from jobs.store import JobStore

# From a quick tag change on loopback (a few ms) to a try that waited out a long Retry-After inside its attempt.
ATTEMPT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
RETRY_AFTER_BUCKETS = (0.0, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)


class Metrics:
    """The registry of one console. `on_event` subscribes to the observer; `watch` hooks an API session."""

    def __init__(self, store: JobStore, *, clock: Callable[[], float] = time.time) -> None:
        self.registry = CollectorRegistry()
        self.finished = Counter("connector_jobs_finished", "Runs of jobs that ended, per operation and result code "
                                "(a retrying outcome too).", ["operation", "result_code"], registry=self.registry)
        self.attempt_seconds = Histogram("connector_attempt_duration_seconds", "Time one attempt at a job took.",
                                         ["operation"], buckets=ATTEMPT_BUCKETS, registry=self.registry)
        self.http = Counter("connector_http_requests", "Answers of the outside APIs, per API and status class.",
                            ["api", "status_class"], registry=self.registry)
        self.throttled = Counter("connector_http_throttled", "429 answers, per API.", ["api"], registry=self.registry)
        self.retry_after = Histogram("connector_retry_after_seconds", "The Retry-After of 429 answers, per API.",
                                     ["api"], buckets=RETRY_AFTER_BUCKETS, registry=self.registry)
        self.registry.register(StoreCollector(store, clock))

    def on_event(self, event: Event) -> None:
        if isinstance(event, Finished):
            self.finished.labels(operation(event.job), event.outcome.result_code or "").inc()
        elif isinstance(event, AttemptEnded):
            self.attempt_seconds.labels(operation(event.job)).observe(max(0.0, event.seconds))

    def watch(self, session: requests.Session, api: str) -> None:
        def count(response: requests.Response, *args: Any, **kwargs: Any) -> None:
            self.http.labels(api, f"{response.status_code // 100}xx").inc()
            if response.status_code == 429:
                self.throttled.labels(api).inc()
                waited = parse_retry_after(response.headers.get("Retry-After"))
                if waited is not None:
                    self.retry_after.labels(api).observe(waited)

        session.hooks["response"].append(count)


def operation(job: Any) -> str:
    return str(job.to_json().get("operation") or "")


class StoreCollector(Collector):
    """What the job store holds, read at each scrape."""

    def __init__(self, store: JobStore, clock: Callable[[], float]) -> None:
        self.store = store
        self.clock = clock

    def collect(self) -> Iterator[Metric]:
        now = self.clock()
        counts = {status: 0 for status in STATUSES} | self.store.counts()
        depth = GaugeMetricFamily("connector_queue_jobs", "Jobs in the store per display status.", labels=["status"])
        for status, n in counts.items():
            depth.add_metric([status], n)
        yield depth
        oldest = self.store.oldest_pending()
        yield GaugeMetricFamily("connector_oldest_pending_job_age_seconds",
                                "Age of the oldest pending (or retrying) job; 0 when none waits.",
                                value=0.0 if oldest is None else max(0.0, now - oldest.created_at))
        fired = CounterMetricFamily("connector_trigger_firings", "Trigger firings kept in the store, per trigger.",
                                    labels=["trigger"])
        for trigger, n in sorted(Tally(f.trigger for f in firings_of(self.store)).items()):
            fired.add_metric([trigger], n)
        yield fired
        seen = self.store.runners(now - 86400)
        yield GaugeMetricFamily("connector_runner_heartbeat_age_seconds",
                                "Seconds since the most recent runner heartbeat (absent: none in a day).",
                                value=now - seen[0].seen_at) if seen else \
            GaugeMetricFamily("connector_runner_heartbeat_age_seconds", "Seconds since the most recent runner "
                              "heartbeat (absent: none in a day).")
