"""A runner killed with SIGKILL mid-drain loses no firing and repeats none: the firing and its action jobs are
written with the mark that the crossing change is applied, so the runner that takes the job over after the lease
runs out either finds the change applied (and its effects kept) or applies it itself, once.

The killed runner is a real process on the same SQLite file, talking to the Spotler sandbox over loopback; the kill
comes at a random moment of its drain. Leases are one second of real time, the only real waiting here.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from config.settings import RetrySettings
from connector.http import ApiSession, Brake
from connector.localcrm import LocalCrm
from connector.sandbox.server import SandboxServer
from connector.sandbox.spotler import SpotlerSandbox
from connector.spotler import SpotlerPlatform
from jobs.app import make_observer
from jobs.executor import Executor
from jobs.model import JobRequest
from jobs.runner import Runner
from jobs.scoring.changes import crossed
from jobs.scoring.rules import load_rules
from jobs.scoring.triggers import firings_of
from jobs.store.sqlite import SqliteJobStore
from tests.conftest import SPOTLER_KEY, SPOTLER_SECRET

LEASE = 1.0
CONTACTS = 5
RULES = """
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


def _runner(directory: Path, spotler_url: str, owner: str) -> tuple[Runner, list]:
    store = SqliteJobStore(directory / "jobs.db")
    crm = LocalCrm(directory / "timeline.db")
    session = ApiSession("Spotler", pool_size=4, timeout=(2.0, 5.0), brake=Brake("Spotler"))
    platform = SpotlerPlatform(session, base_url=spotler_url, consumer_key=SPOTLER_KEY, consumer_secret=SPOTLER_SECRET)
    rules = load_rules(directory / "rules.toml")
    executor = Executor(platform, crm, RetrySettings(), observer=make_observer(rules, store))
    return Runner(store, executor, workers=4, lease_seconds=LEASE, owner=owner), [store.close, crm.close,
                                                                                   session.close]


def _drain_forever(directory: str, spotler_url: str) -> None:
    runner, _ = _runner(Path(directory), spotler_url, f"doomed-{os.getpid()}")
    while True:
        runner.drain()


def _expected(deltas: dict[str, list[int]]) -> Counter[str]:
    fired: Counter[str] = Counter()
    for contact, changes in deltas.items():
        score = 0
        for delta in changes:
            fired[contact] += crossed(score, score + delta, 20)
            score += delta
    return fired


@pytest.mark.slow
@pytest.mark.processes
@pytest.mark.parametrize("seed", [1, 2])
def test_a_runner_killed_mid_drain_loses_and_repeats_no_firing(
    tmp_path: Path, spotler_app: SpotlerSandbox, seed: int
) -> None:
    (tmp_path / "rules.toml").write_text(RULES, encoding="utf-8")
    draw = random.Random(seed)
    deltas: dict[str, list[int]] = {f"C-{i}": [] for i in range(1, CONTACTS + 1)}
    requests = []
    for _ in range(120):
        contact, n, up = f"C-{draw.randint(1, CONTACTS)}", draw.randint(1, 8), draw.random() < 0.6
        deltas[contact].append(n if up else -n)
        requests.append(JobRequest.from_input(operation="increase_score" if up else "decrease_score", tags="Lead",
                                              score=n, target_kind="contact", target_id=contact))
    SqliteJobStore(tmp_path / "jobs.db").add(requests)

    with SandboxServer(spotler_app) as server:
        url = server.url + "/integrationservice-1.1.0"
        child = multiprocessing.get_context("spawn").Process(target=_drain_forever, args=(str(tmp_path), url))
        child.start()
        watcher = SqliteJobStore(tmp_path / "jobs.db")
        started = time.monotonic()
        while watcher.counts().get("succeeded", 0) < 20 and time.monotonic() - started < 30:
            time.sleep(0.01)  # until the child is well into its drain
        time.sleep(draw.random() * 0.2)  # then the kill comes at a random moment, not at a backoff
        os.kill(child.pid or 0, signal.SIGKILL)
        child.join(timeout=10)
        assert child.exitcode == -signal.SIGKILL
        at_kill = watcher.counts()
        watcher.close()
        assert at_kill.get("succeeded", 0) >= 20 and at_kill != {"succeeded": 120}, at_kill

        survivor, closers = _runner(tmp_path, url, "survivor")
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                survivor.drain()
                counts = survivor.store.counts()  # type: ignore[attr-defined]
                if set(counts) == {"succeeded"}:
                    break
                time.sleep(LEASE / 4)  # the killed runner's leases run out in real time
        finally:
            survivor.close()
            for close in closers:
                close()

    store = SqliteJobStore(tmp_path / "jobs.db")
    expected = _expected(deltas)
    assert Counter(f.record.removeprefix("contact:") for f in firings_of(store)) == +expected
    assert store.counts() == {"succeeded": 120 + sum(expected.values())}
    for contact in deltas:
        assert spotler_app.scores(contact).get("Crossings", 0) == expected[contact], contact
        assert spotler_app.scores(contact)["Lead"] == sum(deltas[contact]), contact
    store.close()
