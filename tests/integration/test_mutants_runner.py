"""How many jobs the runner asks the store for (`Runner.tick`): what `make mutate` found untested. Each claim costs
the store a round trip (a request on Dataverse), so a runner with no free place asks for nothing, and one holding
jobs waits until a line ahead's worth of places is free."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from connector.localcrm import LocalCrm
from connector.spotler import SpotlerPlatform
from jobs.kinds import registered, request_from_raw
from jobs.store.sqlite import SqliteJobStore
from tests.conftest import FakeClock
from tests.integration.helpers import FaultyStore, TestKind
from tests.integration.test_runner import runner_on


@pytest.fixture
def crm(tmp_path: Path) -> Iterator[LocalCrm]:
    crm = LocalCrm(tmp_path / "timeline.db")
    yield crm
    crm.close()


def test_a_runner_without_a_line_ahead_asks_for_nothing_while_its_workers_are_busy(
    store: SqliteJobStore, spotler: SpotlerPlatform, crm: LocalCrm, clock: FakeClock
) -> None:
    counted = FaultyStore(store)
    runner = runner_on(counted, spotler, crm, clock, workers=1, ahead=0)
    gate = threading.Event()
    try:
        with registered(TestKind("held", gate)):
            store.add([request_from_raw({"operation": "held"}) for _ in range(2)])
            assert len(runner.tick()) == 1
            assert runner.tick() == []
            assert counted.claims == 1
            gate.set()
    finally:
        gate.set()
        runner.close()


def test_a_runner_holding_jobs_waits_for_a_whole_line_ahead_of_free_places(
    store: SqliteJobStore, spotler: SpotlerPlatform, crm: LocalCrm, clock: FakeClock
) -> None:
    counted = FaultyStore(store)
    runner = runner_on(counted, spotler, crm, clock, workers=2, ahead=2)
    gate, done = threading.Event(), threading.Event()
    done.set()
    try:
        with registered(TestKind("quick", done)), registered(TestKind("held", gate)):
            store.add([request_from_raw({"operation": "quick"})])
            store.add([request_from_raw({"operation": "held"}) for _ in range(5)])
            first = runner.tick()
            assert len(first) == 4  # two workers and two places ahead
            first[0].result(timeout=30)  # one place free: fewer than the line ahead
            assert runner.tick() == []
            assert counted.claims == 1
    finally:
        gate.set()
        runner.close()
