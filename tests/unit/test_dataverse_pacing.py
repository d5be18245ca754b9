"""Dataverse pacing: a `$batch` takes a slot of the brake per part (unless `dataverse.pace_by = "requests"`), and
what Dataverse says is left of its limits (x-ms-ratelimit-* headers) spaces requests out before a 429 comes.
Answers are pinned with `responses`; time is a FakeClock, so nothing here waits for real."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import responses

from config.defaults import BUDGET_LOW, CAP_SHARE, DATAVERSE_LIMIT_WINDOW, LEARNT_SHARE
from config.settings import SettingsError, load_settings
from connector.dataverse import connect
from connector.dataverse.batch import BatchPart
from connector.dataverse.changesets import send_change_sets
from connector.dataverse.client import DataverseClient
from connector.http import Brake
from tests.conftest import FakeClock
from tests.unit.test_dataverse_client import API, CLIENT_ID, ENV, ROW, SECRET, TENANT, identity

BURST = "x-ms-ratelimit-burst-remaining-xrm-requests"
TIME = "x-ms-ratelimit-time-remaining-xrm-requests"
WINDOW = DATAVERSE_LIMIT_WINDOW


def three_answers() -> str:
    part = ("--batchresponse_1\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n"
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{\"firstname\": \"Ann\"}\r\n")
    return part * 3 + "--batchresponse_1--\r\n"


@pytest.fixture
def rsps() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        identity(mock, "token-1")
        yield mock


def make_client(clock: FakeClock, *, pace_by: str = "parts", cap: float | None = None) -> DataverseClient:
    return connect(environment_url=ENV, tenant_id=TENANT, client_id=CLIENT_ID, client_secret=SECRET,
                   brake=Brake("Dataverse", max_per_second=cap, clock=clock, sleep=clock.sleep), sleep=clock.sleep,
                   pace_by=pace_by)


@pytest.fixture
def client(clock: FakeClock) -> Iterator[DataverseClient]:
    c = make_client(clock)
    yield c
    c.close()


def answer_with(rsps: responses.RequestsMock, **headers: str) -> None:
    rsps.get(f"{API}contacts({ROW})", json={"contactid": ROW}, headers=headers)


# -- the brake: a request that counts for several -----------------------------------------------------------


def test_a_request_that_counts_for_several_takes_as_many_slots_of_the_cap(clock: FakeClock) -> None:
    brake = Brake("API", max_per_second=10, clock=clock, sleep=clock.sleep)
    brake.wait(5)
    brake.wait()
    brake.wait()
    assert clock.slept == pytest.approx([5 * 0.1 / CAP_SHARE, 0.1 / CAP_SHARE], rel=1e-5)


def test_answers_that_count_for_several_teach_the_rate_they_count_for(clock: FakeClock) -> None:
    brake = Brake("API", clock=clock, sleep=clock.sleep)
    for _ in range(4):  # four batches of ten parts in the second before a 429: 40 requests a second
        brake.wait(10)
        brake.answered(10)
        clock.advance(0.2)
    brake.pause(1.0)
    assert brake.learnt == pytest.approx(40 * LEARNT_SHARE)


# -- the brake: what the API says is left ------------------------------------------------------------------


def test_plenty_left_leaves_requests_unspaced(clock: FakeClock) -> None:
    brake = Brake("API", clock=clock, sleep=clock.sleep)
    brake.budget(1500, share=BUDGET_LOW + 0.01, window=WINDOW)
    for _ in range(10):
        brake.wait()
    assert clock.slept == []


def test_little_left_spaces_requests_so_the_rest_lasts_the_window(clock: FakeClock) -> None:
    brake = Brake("API", clock=clock, sleep=clock.sleep)
    brake.budget(600, share=0.1, window=WINDOW)
    for _ in range(4):
        brake.wait()
    assert clock.slept == pytest.approx([WINDOW / 600] * 3, rel=1e-5)


def test_nothing_left_pauses_for_a_window_at_most_the_longest_pause(clock: FakeClock) -> None:
    brake = Brake("API", max_pause=120, clock=clock, sleep=clock.sleep)
    brake.budget(-3, share=0.0, window=WINDOW)  # more in flight than Dataverse said was left
    brake.wait()
    brake.wait()
    assert clock.slept == [120]


def test_a_fresher_reading_counts_for_the_next_slot(clock: FakeClock) -> None:
    brake = Brake("API", clock=clock, sleep=clock.sleep)
    brake.budget(30, share=0.05, window=WINDOW)
    brake.wait()
    clock.advance(1.0)
    # Old requests aged out of Dataverse's window meanwhile: plenty is left again, and no one waits 10 s for it.
    brake.budget(3000, share=0.5, window=WINDOW)
    brake.wait()
    assert clock.slept == []


def test_a_reading_older_than_the_window_is_forgotten(clock: FakeClock) -> None:
    brake = Brake("API", clock=clock, sleep=clock.sleep)
    brake.budget(300, share=0.05, window=WINDOW)
    brake.wait()
    clock.advance(WINDOW + 1)
    brake.wait()
    brake.wait()
    assert clock.slept == []


# -- the client: $batch parts ------------------------------------------------------------------------------


@pytest.mark.parametrize(("pace_by", "slots"), [("parts", 3), ("requests", 1)])
def test_a_batch_takes_a_slot_of_the_cap_per_part_unless_paced_by_requests(
    rsps: responses.RequestsMock, clock: FakeClock, pace_by: str, slots: int
) -> None:
    rsps.post(f"{API}$batch", body=three_answers(), content_type="multipart/mixed; boundary=batchresponse_1")
    answer_with(rsps)
    client = make_client(clock, pace_by=pace_by, cap=10)
    try:
        results = client.batch([BatchPart("GET", f"contacts({ROW})?$select=firstname")] * 3)
        assert [r.status for r in results] == [200, 200, 200]
        client.get("contacts", ROW)
    finally:
        client.close()
    assert clock.slept == pytest.approx([slots * 0.1 / CAP_SHARE], rel=1e-5)


def change_set_answers() -> str:
    def part(status: str) -> str:
        return ("--changesetresponse_2\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n"
                f"\r\nHTTP/1.1 {status}\r\n\r\n\r\n")
    return ("--batchresponse_1\r\nContent-Type: multipart/mixed; boundary=changesetresponse_2\r\n\r\n"
            + part("204 No Content") * 2 + "--changesetresponse_2--\r\n"
            "--batchresponse_1\r\nContent-Type: multipart/mixed; boundary=changesetresponse_2\r\n\r\n"
            + part("204 No Content") + "--changesetresponse_2--\r\n--batchresponse_1--\r\n")


def test_a_batch_of_several_change_sets_counts_every_part_of_each(rsps: responses.RequestsMock,
                                                                  clock: FakeClock) -> None:
    rsps.post(f"{API}$batch", body=change_set_answers(), content_type="multipart/mixed; boundary=batchresponse_1")
    answer_with(rsps)
    client = make_client(clock, cap=10)
    try:
        patch = BatchPart("PATCH", f"contacts({ROW})", body={"description": "x"}, headers={"If-Match": "*"})
        answers = send_change_sets(client, [[patch, patch], [patch]])
        assert [[r.status for r in answer] for answer in answers] == [[204, 204], [204]]
        client.get("contacts", ROW)
    finally:
        client.close()
    assert clock.slept == pytest.approx([3 * 0.1 / CAP_SHARE], rel=1e-5)


def test_pace_by_is_a_setting_that_defaults_to_parts_and_names_the_choices_when_wrong() -> None:
    assert load_settings().dataverse.pace_by == "parts"
    assert load_settings(dataverse={"pace_by": " Requests"}).dataverse.pace_by == "requests"
    with pytest.raises(SettingsError) as caught:
        load_settings(dataverse={"pace_by": "part"})
    assert str(caught.value) == (
        "The configuration is not valid: dataverse.pace_by is 'part'; use \"parts\" (each part of a $batch counts "
        "as a request toward Dataverse's limits, the cautious reading) or \"requests\" (a $batch counts once).")


# -- the client: x-ms-ratelimit-* headers ------------------------------------------------------------------


def test_the_requests_left_space_requests_once_they_run_low(rsps, client, clock) -> None:
    answer_with(rsps, **{BURST: "5999", TIME: "1,200.00"})
    answer_with(rsps, **{BURST: "5000", TIME: "1,199.90"})  # five sixths left: full speed
    answer_with(rsps, **{BURST: "1000", TIME: "1,199.80"})  # a sixth left: the rest must last five minutes
    for _ in range(3):
        client.get("contacts", ROW)
    assert clock.slept == []
    answer_with(rsps, **{BURST: "999", TIME: "1,199.70"})
    client.get("contacts", ROW)
    client.get("contacts", ROW)
    assert clock.slept == pytest.approx([WINDOW / 1000, WINDOW / 999], rel=1e-5)


def test_the_execution_time_left_spaces_requests_too(rsps, client) -> None:
    # Read as 1.2 s, "1,200.00" would make 50 s look like plenty.
    answer_with(rsps, **{BURST: "5999", TIME: "1,200.00"})
    answer_with(rsps, **{BURST: "5998", TIME: "50.00"})
    client.get("contacts", ROW)
    assert client.session.brake.budget_interval == 0.0
    client.get("contacts", ROW)
    assert client.session.brake.budget_interval > 0.0


def test_a_429_leaves_what_is_left_to_its_retry_after(rsps, client, clock) -> None:
    answer_with(rsps, **{BURST: "6000"})
    rsps.get(f"{API}contacts({ROW})", status=429, headers={"Retry-After": "2", BURST: "0"},
             json={"error": {"code": "0x80072322", "message": "Number of requests exceeded the limit"}})
    answer_with(rsps, **{BURST: "5000"})
    client.get("contacts", ROW)
    client.get("contacts", ROW)  # resent after the pause
    assert clock.slept == [2.0]
    assert client.session.brake.budget_interval == 0.0


def test_without_the_headers_nothing_is_spaced(rsps, client, clock) -> None:
    answer_with(rsps)
    for _ in range(5):
        client.get("contacts", ROW)
    assert clock.slept == []


def test_unreadable_header_values_are_ignored(rsps, client, clock) -> None:
    answer_with(rsps, **{BURST: "6000"})
    answer_with(rsps, **{BURST: "lots", TIME: "n/a"})
    answer_with(rsps, **{BURST: "5999"})
    for _ in range(3):
        client.get("contacts", ROW)
    assert clock.slept == []


def test_the_recommended_parallelism_is_kept_and_logged_once(rsps, client, caplog) -> None:
    answer_with(rsps)
    answer_with(rsps, **{"x-ms-dop-hint": "8"})
    answer_with(rsps, **{"x-ms-dop-hint": "8"})
    answer_with(rsps, **{"x-ms-dop-hint": "12"})
    with caplog.at_level(logging.INFO, logger="connector.dataverse.client"):
        client.get("contacts", ROW)
        assert client.dop_hint is None
        client.get("contacts", ROW)
        client.get("contacts", ROW)
        assert client.dop_hint == 8
        client.get("contacts", ROW)
    assert client.dop_hint == 12
    hints = [r.getMessage() for r in caplog.records if "x-ms-dop-hint" in r.getMessage()]
    assert hints == ["Dataverse recommends 8 requests in parallel (x-ms-dop-hint)"]
