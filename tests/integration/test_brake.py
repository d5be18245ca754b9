"""One brake per API: a 429 pauses every worker talking to that API for the Retry-After time; the optional cap
spaces requests out. Time is a FakeClock: nothing here waits for real."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from config.defaults import CAP_SHARE
from config.settings import load_settings
from connector.http import ApiSession, Brake
from connector.sandbox.server import Faults, SandboxServer
from jobs import app as composition
from tests.conftest import FakeClock

WORKERS = 6


@pytest.fixture
def server(spotler_server: SandboxServer) -> SandboxServer:
    spotler_server.injector.faults = Faults(retry_after=2)
    return spotler_server


@pytest.fixture
def session(clock: FakeClock) -> Iterator[ApiSession]:
    with ApiSession("Spotler", pool_size=WORKERS, brake=Brake("Spotler", clock=clock, sleep=clock.sleep)) as s:
        yield s


def test_one_429_pauses_every_worker_of_the_api_for_the_retry_after(
    server: SandboxServer, session: ApiSession, clock: FakeClock
) -> None:
    url = server.url + "/integrationservice-1.1.0/contact/C-1"  # unsigned: 401, which is an answer all the same
    server.injector.script("429")
    throttled_at = clock()
    first = session.get(url)
    assert first.status_code == 429
    # Every worker now asks; each must wait until the pause is over, and none may meet the limit again.
    answered_at: list[float] = []
    lock = threading.Lock()
    start = threading.Barrier(WORKERS)

    def worker() -> None:
        start.wait()
        response = session.get(url)
        with lock:
            answered_at.append(clock())
        assert response.status_code != 429

    threads = [threading.Thread(target=worker) for _ in range(WORKERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(answered_at) == WORKERS
    # For the Retry-After and no longer: every worker was answered the moment the pause ended.
    assert answered_at == [throttled_at + 2.0] * WORKERS
    assert server.injector.counts == {"429": 1}
    assert (session.throttled, session.brake.pauses) == (1, 1)


def test_workers_with_their_own_brake_would_each_meet_the_limit(server: SandboxServer, clock: FakeClock) -> None:
    """The contrast: without a shared brake, every worker finds the limit for itself."""
    url = server.url + "/integrationservice-1.1.0/contact/C-1"
    server.injector.script(*["429"] * WORKERS)
    sessions = [ApiSession("Spotler", brake=Brake("Spotler", clock=clock, sleep=clock.sleep)) for _ in range(WORKERS)]
    try:
        statuses = [s.get(url).status_code for s in sessions]
    finally:
        for s in sessions:
            s.close()
    assert statuses == [429] * WORKERS
    assert server.injector.counts == {"429": WORKERS}


def test_the_cap_spaces_requests_evenly(clock: FakeClock) -> None:
    brake = Brake("Spotler", max_per_second=10, clock=clock, sleep=clock.sleep)
    for _ in range(5):
        brake.wait()
    # Slots a tenth of a second apart, a little more (CAP_SHARE): each caller after the first waited for its slot.
    assert clock.slept == pytest.approx([0.1 / CAP_SHARE] * 4, rel=1e-5)


@pytest.mark.parametrize("platform", ["spotler", "mautic"])
def test_the_settings_cap_applies_to_the_platform_api(tmp_path: Path, platform: str) -> None:
    settings = load_settings(home=tmp_path / "home", platform=platform, http={"max_requests_per_second": 150})
    with composition.build(settings) as built:
        session = built.platform.session  # type: ignore[attr-defined]
        assert isinstance(session, ApiSession)
        assert session.brake.interval == pytest.approx(1 / (150 * CAP_SHARE))
        assert session.brake.name.lower() == platform


def test_a_request_that_was_throttled_reaches_the_api_once_the_pause_is_over(
    server: SandboxServer, session: ApiSession, clock: FakeClock
) -> None:
    server.injector.script("429", None)
    url = server.url + "/integrationservice-1.1.0/contact/C-1"
    assert session.get(url).status_code == 429
    before = clock()
    response = session.get(url)
    assert isinstance(response, requests.Response) and response.status_code != 429
    assert clock() - before == pytest.approx(2.0)
