"""Fixtures shared by every tier: a clean environment, a fresh store, a job factory, the platform sandboxes.

`platform_case` runs a test once per platform (Spotler, Mautic): the real adapter against its sandbox over
loopback, with the same five contacts C-1 ... C-5 (e-mail c1@example.com ...) on both.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from requests.auth import HTTPBasicAuth

from connector.http import ApiSession, Brake
from connector.mautic import MauticPlatform
from connector.platform import Contact
from connector.sandbox.mautic import MauticSandbox
from connector.sandbox.server import Faults, SandboxServer
from connector.sandbox.spotler import SpotlerSandbox
from connector.spotler import SpotlerPlatform
from jobs.model import Job, JobRequest
from jobs.store.sqlite import SqliteJobStore
from tests import postgres as pg

SPOTLER_KEY = "test-consumer-key"
SPOTLER_SECRET = "test-consumer-secret-7f3a9"
MAUTIC_USER = "test-user"
MAUTIC_PASSWORD = "test-password-5c2e1"
MAUTIC_CONTACT_FIELD = "crm_id"
# The read timeout of the platforms the fixtures make: far above what a loopback answer takes on a loaded machine,
# so an answer is never late by accident. A test that injects a "timeout" fault makes the sandbox hold the request
# for HANG, over five times longer, so the fault is always a timeout for the client and never a late answer (a held
# request ends when its server stops, so HANG costs nothing).
READ_TIMEOUT = 1.5
HANG = 10.0


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

    _lock = threading.Lock()  # workers of a runner share one clock

    def sleep(self, seconds: float) -> None:
        with self._lock:
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
             read_timeout: float = 2.0, pool_size: int = 8, **kwargs: Any) -> SpotlerPlatform:
        # With a FakeClock, a 429's pause passes in test time; without one, the brake waits for real.
        brake = Brake("Spotler", clock=clock, sleep=clock.sleep) if clock else Brake("Spotler")
        session = ApiSession("Spotler", pool_size=pool_size, timeout=(2.0, read_timeout), brake=brake)
        sessions.append(session)
        return SpotlerPlatform(session, base_url=base_url, consumer_key=SPOTLER_KEY, consumer_secret=secret, **kwargs)

    yield make
    for session in sessions:
        session.close()


@pytest.fixture
def spotler(
    spotler_server: SandboxServer, make_spotler: Callable[..., SpotlerPlatform], clock: FakeClock
) -> SpotlerPlatform:
    return make_spotler(spotler_server.url + "/integrationservice-1.1.0", clock=clock, read_timeout=READ_TIMEOUT)


@pytest.fixture
def mautic_app(tmp_path: Path) -> MauticSandbox:
    app = MauticSandbox(tmp_path / "mautic.db", username=MAUTIC_USER, password=MAUTIC_PASSWORD,
                        contact_field=MAUTIC_CONTACT_FIELD)
    for i in range(1, 6):
        app.seed_contact(f"c{i}@example.com", external_id=f"C-{i}")
    return app


@pytest.fixture
def mautic_server(mautic_app: MauticSandbox) -> Iterator[SandboxServer]:
    with SandboxServer(mautic_app) as server:
        yield server


@pytest.fixture
def make_mautic() -> Iterator[Callable[..., MauticPlatform]]:
    """A real Mautic adapter (basic auth, CRM id in `crm_id`) pointed at a base URL; sessions closed after."""
    sessions: list[ApiSession] = []

    def make(base_url: str, *, clock: FakeClock | None = None, read_timeout: float = 2.0, pool_size: int = 8,
             contact_field: str | None = MAUTIC_CONTACT_FIELD) -> MauticPlatform:
        brake = Brake("Mautic", clock=clock, sleep=clock.sleep) if clock else Brake("Mautic")
        session = ApiSession("Mautic", pool_size=pool_size, timeout=(2.0, read_timeout), brake=brake)
        sessions.append(session)
        return MauticPlatform(session, base_url=base_url, auth=HTTPBasicAuth(MAUTIC_USER, MAUTIC_PASSWORD),
                              contact_field=contact_field)

    yield make
    for session in sessions:
        session.close()


@pytest.fixture
def mautic_platform(
    mautic_server: SandboxServer, make_mautic: Callable[..., MauticPlatform], clock: FakeClock
) -> MauticPlatform:
    return make_mautic(mautic_server.url, clock=clock, read_timeout=READ_TIMEOUT)


@dataclass
class PlatformCase:
    """One platform under test: the real adapter, its sandbox app and server, and what the test reads back."""

    name: str
    platform: SpotlerPlatform | MauticPlatform
    app: SpotlerSandbox | MauticSandbox
    server: SandboxServer

    def scores(self, external_id: str = "C-1") -> dict[str, int]:
        """The contact's tags and scores as the adapter reads them (faults off for the read)."""
        faults, self.server.injector.faults = self.server.injector.faults, Faults()
        try:
            return self.platform.read_scores(Contact(external_id=external_id))
        finally:
            self.server.injector.faults = faults

    def tag_names(self) -> list[str]:
        return sorted(self.app.tag_names())

    def score_changes(self, external_id: str) -> list[tuple[str, int]]:
        """(tag, change) for every score change the platform logged for the contact, oldest first."""
        if isinstance(self.app, SpotlerSandbox):
            return [(tag, int(value or 0)) for tag, what, value in self.app.changes_of(external_id)
                    if what == "score_changed"]
        cid = self.app.contact_id(external_id)
        names = dict(enumerate(self.app.group_names(), start=1))  # the sandbox numbers groups from 1
        return [(names[entry["group_id"]], int(entry["delta"])) for entry in self.app.points_log(cid)]


@pytest.fixture(params=["spotler", "mautic"])
def platform_case(request: pytest.FixtureRequest, clock: FakeClock) -> PlatformCase:
    """The test runs once per platform; only that platform's sandbox is started."""
    name = str(request.param)
    if name == "spotler":
        return PlatformCase(name, request.getfixturevalue("spotler"), request.getfixturevalue("spotler_app"),
                            request.getfixturevalue("spotler_server"))
    return PlatformCase(name, request.getfixturevalue("mautic_platform"), request.getfixturevalue("mautic_app"),
                        request.getfixturevalue("mautic_server"))


# --- the PostgreSQL tier ----------------------------------------------------------------------------------------


def _tier_not_run(reason: str) -> None:
    if pg.in_ci():
        pytest.fail(f"The PostgreSQL tier must run in CI, and cannot: {reason}.", pytrace=False)
    pytest.skip(f"PostgreSQL tier not run: {reason}; to run it, {pg.HOW_TO_ENABLE}")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[pg.Server]:
    """One real PostgreSQL per test process (see tests/postgres.py)."""
    if reason := pg.unavailable():
        _tier_not_run(reason)
    try:
        server = pg.start()
    except Exception as exc:
        _tier_not_run(f"no PostgreSQL server could be started ({exc})")
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server: pg.Server) -> Iterator[str]:
    """The URL of an empty schema of the test's own, without the connector's tables: `connector db upgrade`
    makes them."""
    name, url = postgres_server.fresh_schema()
    yield url
    postgres_server.drop_schema(name)


@pytest.fixture
def postgres_db(postgres_url: str) -> str:
    """The URL of a schema of the test's own, upgraded to the connector's tables."""
    from jobs.store.postgres import upgrade

    upgrade(postgres_url)
    return postgres_url


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that need PostgreSQL carry the `postgres` marker (by fixture, or by the `case` fixture's parameter);
    where no server can be had they are left out, and `pytest_terminal_summary` says so in one line. In CI they
    stay in, and fail."""
    for item in items:
        if "postgres_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.postgres)
    if pg.unavailable() is None or pg.in_ci():
        return
    left_out = [item for item in items if item.get_closest_marker("postgres")]
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = [item for item in items if not item.get_closest_marker("postgres")]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if (reason := pg.unavailable()) and not pg.in_ci():
        terminalreporter.write_line(f"PostgreSQL tier not run ({reason}); to run it, {pg.HOW_TO_ENABLE}.")


__all__ = ["MAUTIC_PASSWORD", "MAUTIC_USER", "SPOTLER_KEY", "SPOTLER_SECRET", "FakeClock", "Faults", "PlatformCase"]
