"""Dataverse pacing against the sandbox over https: with a windowed rate limit the sandbox says on every answer
what is left of it (Dataverse's x-ms-ratelimit-* headers), counting each part of a `$batch`; the real client
spaces its requests out on those headers and meets (close to) no 429, where without them it meets many.

The sandbox's window and the client's brake share one FakeClock: five-minute windows pass without waiting."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from config.defaults import DATAVERSE_LIMIT_WINDOW
from connector import errors
from connector.dataverse.batch import BatchPart
from connector.dataverse.client import DataverseClient
from connector.http import Brake
from connector.sandbox.dataverse import DataverseSandbox
from connector.sandbox.server import FaultInjector, Faults
from tests.conftest import FakeClock
from tests.integration.dataverse_env import client_for, make_record, running_sandbox

BURST = "x-ms-ratelimit-burst-remaining-xrm-requests"
TIME = "x-ms-ratelimit-time-remaining-xrm-requests"
# Dataverse's 6,000 requests per five minutes, scaled down to what a test can send in a few seconds.
LIMIT = 120


@pytest.fixture
def sandbox(tmp_path: Path, clock: FakeClock) -> Iterator[DataverseSandbox]:
    faults = Faults(rate_limit=LIMIT, rate_window=DATAVERSE_LIMIT_WINDOW, retry_after=5)
    with running_sandbox(tmp_path, faults=faults) as running:
        running.server.injector = FaultInjector(faults, clock=clock)
        yield running


@pytest.fixture
def client(sandbox: DataverseSandbox, clock: FakeClock) -> Iterator[DataverseClient]:
    with client_for(sandbox, brake=Brake("Dataverse", clock=clock, sleep=clock.sleep)) as c:
        yield c


def test_each_answer_says_what_is_left_counting_each_part_of_a_batch(sandbox, client) -> None:
    contact = make_record(client)
    first = client.send("GET", f"contacts({contact})")
    assert first.headers[BURST] == str(LIMIT - 2)
    assert first.headers[TIME].replace(",", "").replace(".", "").isdigit()
    assert float(first.headers[TIME].replace(",", "")) <= 1200.0
    client.batch([BatchPart("GET", f"contacts({contact})?$select=firstname")] * 5)
    assert client.send("GET", f"contacts({contact})").headers[BURST] == str(LIMIT - 2 - 5 - 1)


def test_past_the_limit_the_429_is_dataverses_own(sandbox, client, clock) -> None:
    contact = make_record(client)
    sandbox.app.report_limits = False  # so the client runs into the limit
    client.retries = 0
    with pytest.raises(errors.RateLimited) as caught:
        for _ in range(LIMIT):
            client.get("contacts", contact)
    assert caught.value.http_status == 429
    assert "Number of requests exceeded the limit of 120 over time window of 300 seconds." in str(caught.value)


def test_the_recommended_parallelism_reaches_the_client(sandbox, client) -> None:
    sandbox.app.dop_hint = 6
    make_record(client)
    assert client.dop_hint == 6


def drain(client: DataverseClient, jobs: int) -> None:
    """Jobs that read a contact and then three of its columns in one `$batch` (four requests, as counted), each
    sent again after a 429 until it is done, as the runner would."""
    contact = make_record(client)
    parts = [BatchPart("GET", f"contacts({contact})?$select={column}")
             for column in ("firstname", "lastname", "emailaddress1")]
    for _ in range(jobs):
        while True:
            try:
                client.get("contacts", contact)
                client.batch(parts)
                break
            except errors.RateLimited:
                continue


@pytest.mark.parametrize("honoured", [True, False], ids=["with the headers", "without them"])
def test_a_drain_past_the_limit_meets_no_429_when_the_headers_are_honoured(sandbox, client, clock, honoured):
    sandbox.app.report_limits = honoured
    started = clock()
    drain(client, jobs=90)  # 361 requests as Dataverse counts them: three windows' worth
    throttled = sandbox.server.injector.counts.get("429", 0)
    print(f"{'with' if honoured else 'without'} the headers: {throttled} 429s, "
          f"{(clock() - started) / 60:.1f} minutes of the fake clock")
    if honoured:
        assert throttled <= 2
    else:
        assert throttled >= 30
