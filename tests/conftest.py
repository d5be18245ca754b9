"""Fixtures shared by every tier: a clean environment, a fresh store, a job factory, the Spotler sandbox."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from connector.http import ApiSession, Brake
from connector.sandbox.server import Faults, SandboxServer
from connector.sandbox.spotler import SpotlerSandbox
from connector.spotler import SpotlerPlatform
from jobs.model import Job, JobRequest
from jobs.store.sqlite import SqliteJobStore

SPOTLER_KEY = "test-consumer-key"
SPOTLER_SECRET = "test-consumer-secret-7f3a9"


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No CONNECTOR_* variable of the developer's shell leaks into a test, and no connector.toml is read."""
    for name in list(os.environ):
        if name.startswith("CONNECTOR_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


class FakeClock:
    """A clock tests move by hand, and a sleep that moves it instead of waiting."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock) -> Iterator[SqliteJobStore]:
    s = SqliteJobStore(tmp_path / "jobs.db", clock=clock)
    yield s
    s.close()


@pytest.fixture
def job_factory(store: SqliteJobStore) -> Callable[..., Job]:
    def make(**overrides: Any) -> Job:
        fields: dict[str, Any] = {
            "operation": "add_tag", "tags": "Webinar", "score": None, "target_kind": "contact", "target_id": "C-1",
        }
        fields.update(overrides)
        return store.add([JobRequest.from_input(**fields)])[0]

    return make


@pytest.fixture
def spotler_app(tmp_path: Path) -> SpotlerSandbox:
    app = SpotlerSandbox(tmp_path / "spotler.db", consumer_key=SPOTLER_KEY, consumer_secret=SPOTLER_SECRET)
    for i in range(1, 6):
        app.seed_contact(f"C-{i}", f"c{i}@example.com")
    return app


@pytest.fixture
def spotler_server(spotler_app: SpotlerSandbox) -> Iterator[SandboxServer]:
    with SandboxServer(spotler_app) as server:
        yield server


@pytest.fixture
def make_spotler() -> Iterator[Callable[..., SpotlerPlatform]]:
    """A real Spotler adapter pointed at a base URL; sessions closed after the test."""
    sessions: list[ApiSession] = []

    def make(base_url: str, *, secret: str = SPOTLER_SECRET, clock: FakeClock | None = None,
             read_timeout: float = 2.0, **kwargs: Any) -> SpotlerPlatform:
        # With a FakeClock, a 429's pause passes in test time; without one, the brake waits for real.
        brake = Brake("Spotler", clock=clock, sleep=clock.sleep) if clock else Brake("Spotler")
        session = ApiSession("Spotler", timeout=(2.0, read_timeout), brake=brake)
        sessions.append(session)
        return SpotlerPlatform(session, base_url=base_url, consumer_key=SPOTLER_KEY, consumer_secret=secret, **kwargs)

    yield make
    for session in sessions:
        session.close()


@pytest.fixture
def spotler(
    spotler_server: SandboxServer, make_spotler: Callable[..., SpotlerPlatform], clock: FakeClock
) -> SpotlerPlatform:
    return make_spotler(spotler_server.url + "/integrationservice-1.1.0", clock=clock, read_timeout=0.5)


__all__ = ["SPOTLER_KEY", "SPOTLER_SECRET", "FakeClock", "Faults"]
