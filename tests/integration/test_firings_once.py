"""Firings happen exactly once per crossing, through 30 % injected faults of every kind and two runners on one
job store. Each runner has its own store connection, executor and trigger subscriber, as two processes would.

Increments cross a `once` threshold and an `every_crossing` one, up and down, on 20 contacts. The expected
firings follow from each key's changes in creation order (the store's per-key order); the trigger log must show
exactly those, and the every_crossing trigger's action (+1 on a counter tag, not idempotent) must be applied
exactly once per firing. Waits go through a FakeClock; only injected timeouts cost real time.
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from config.settings import RetrySettings
from connector.localcrm import LocalCrm
from connector.sandbox.server import Faults, SandboxServer
from connector.sandbox.spotler import SpotlerSandbox
from connector.spotler import SpotlerPlatform
from jobs.app import make_observer
from jobs.executor import Executor
from jobs.model import JobRequest, JobStatus
from jobs.runner import Runner
from jobs.scoring.changes import crossed
from jobs.scoring.rules import RuleSet, load_rules
from jobs.scoring.triggers import firings_of
from jobs.store import JobFilter
from jobs.store.sqlite import SqliteJobStore
from tests.conftest import HANG, READ_TIMEOUT, FakeClock

CONTACTS = 20
JOBS = 300
FAULTS = Faults(throttle_rate=0.06, retry_after=1, error_rate=0.11, reset_rate=0.05, timeout_rate=0.01,
                drop_rate=0.07, hang_seconds=HANG, seed=20261206)
RULES = """
[[triggers]]
name = "Ten"
tag = "Lead"
at_least = 10
[[triggers.actions]]
do = "add_tag"
tags = "Reached ten"

[[triggers]]
name = "Twenty"
tag = "Lead"
at_least = 20
rearm = "every_crossing"
[[triggers.actions]]
do = "increase_score"
tags = "Crossings"
score = 1
"""


@pytest.fixture
def rules(tmp_path: Path) -> RuleSet:
    (tmp_path / "rules.toml").write_text(RULES, encoding="utf-8")
    return load_rules(tmp_path / "rules.toml")


@pytest.fixture
def hostile(spotler_app: SpotlerSandbox) -> Iterator[SandboxServer]:
    for i in range(6, CONTACTS + 1):
        spotler_app.seed_contact(f"C-{i}", f"c{i}@example.com")
    with SandboxServer(spotler_app, faults=FAULTS) as server:
        yield server


@pytest.mark.slow
def test_every_crossing_fires_once_through_faults_and_two_runners(
    tmp_path: Path, hostile: SandboxServer, spotler_app: SpotlerSandbox, make_spotler: Callable[..., SpotlerPlatform],
    clock: FakeClock, rules: RuleSet,
) -> None:
    draw = random.Random(7)
    deltas: dict[str, list[int]] = {f"C-{i}": [] for i in range(1, CONTACTS + 1)}
    requests = []
    for _ in range(JOBS):
        contact, n = f"C-{draw.randint(1, CONTACTS)}", draw.randint(1, 6)
        up = draw.random() < 0.65
        deltas[contact].append(n if up else -n)
        requests.append(JobRequest.from_input(operation="increase_score" if up else "decrease_score", tags="Lead",
                                              score=n, target_kind="contact", target_id=contact))
    seed = SqliteJobStore(tmp_path / "jobs.db", clock=clock)
    seed.add(requests)

    retry = RetrySettings(max_attempts=100, backoff_initial=1, backoff_max=30, jitter=1, inline_wait_max=60)
    runners, closers = [], []
    for name in ("runner-a", "runner-b"):
        store = SqliteJobStore(tmp_path / "jobs.db", clock=clock)
        crm = LocalCrm(tmp_path / "timeline.db")
        platform = make_spotler(hostile.url + "/integrationservice-1.1.0", clock=clock, read_timeout=READ_TIMEOUT,
                                pool_size=8)
        executor = Executor(platform, crm, retry, clock=clock, sleep=clock.sleep,
                            observer=make_observer(rules, store, clock))
        runners.append(Runner(store, executor, workers=8, lease_seconds=1e9, owner=name))
        closers += [store.close, crm.close]

    def drain_until_done(runner: Runner) -> None:
        while True:
            runner.drain()
            counts = runner.store.counts()  # type: ignore[attr-defined]
            if not counts.get("pending") and not counts.get("retrying") and not counts.get("running"):
                return

    threads = [threading.Thread(target=drain_until_done, args=(r,)) for r in runners]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    for runner in runners:
        runner.close()
    for close in closers:
        close()

    expected: Counter[tuple[str, str]] = Counter()
    for contact, changes in deltas.items():
        score, ten_fired = 0, False
        for delta in changes:
            if crossed(score, score + delta, 10) and not ten_fired:
                expected[("Ten", contact)] += 1
                ten_fired = True
            if crossed(score, score + delta, 20):
                expected[("Twenty", contact)] += 1
            score += delta
    firings = firings_of(seed)
    assert Counter((f.trigger, f.record.removeprefix("contact:")) for f in firings) == expected
    assert sum(expected.values()) > 20, "too few crossings to test anything"
    assert seed.counts() == {"succeeded": JOBS + sum(expected.values())}
    actions = [j for j in seed.list(JobFilter(limit=5000)).jobs if j.request and j.request.origin.source == "trigger"]
    assert len(actions) == sum(expected.values())
    assert {"429", "500", "reset", "drop"} <= set(hostile.injector.counts), hostile.injector.counts
    hostile.injector.faults = Faults()
    for contact in deltas:
        scores = spotler_app.scores(contact)
        assert scores.get("Crossings", 0) == expected[("Twenty", contact)], contact
        assert ("Reached ten" in scores) == bool(expected[("Ten", contact)]), contact
    assert all(j.status is JobStatus.SUCCEEDED for j in actions)
    seed.close()
