"""The HTTP endpoint on a real socket: signed events become jobs once, Mautic's webhooks are read in their own
format, jobs are queued all or nothing, and every refusal stores nothing and says why."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from connector.webhook import sign
from jobs.endpoint import Endpoint, EndpointConfig, EndpointServer, serving
from jobs.model import JobStatus
from jobs.scoring.events import STREAM
from jobs.scoring.rules import load_rules
from jobs.store import JobFilter
from jobs.store.sqlite import SqliteJobStore

SECRET = "endpoint-test-secret"
MAUTIC_SECRET = "mautic-test-secret"
TOKEN = "endpoint-test-token"

RULES = """
[[rules]]
event = "nutrition_page_visit"
tag = "Nutrition Interest"
change = "+1"

[[rules]]
event = "page_hit"
tag = "Web"
change = "+1"

[[rules]]
event = "form_submit:trial"
tag = "Trial"
change = "+5"
"""


class Running:
    def __init__(self, server: EndpointServer, store: SqliteJobStore) -> None:
        self.server = server
        self.store = store
        self.url = server.url

    def events(self, data: Any, *, secret: str = SECRET, at: int | None = None) -> requests.Response:
        body = json.dumps(data).encode()
        signature = sign(secret, body, timestamp=int(time.time()) if at is None else at)
        return requests.post(f"{self.url}/events", data=body, timeout=10,
                             headers={"Content-Type": "application/json", "Connector-Signature": signature})

    def mautic(self, data: Any, *, secret: str = MAUTIC_SECRET) -> requests.Response:
        body = json.dumps(data).encode()
        signature = base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()
        return requests.post(f"{self.url}/mautic", data=body, timeout=10,
                             headers={"Content-Type": "application/json", "Webhook-Signature": signature})

    def jobs(self, data: Any, *, token: str = TOKEN, query: str = "") -> requests.Response:
        return requests.post(f"{self.url}/jobs{query}", json=data, timeout=10,
                             headers={"Authorization": f"Bearer {token}"})

    def all_jobs(self) -> list[Any]:
        return self.store.list(JobFilter(limit=1000)).jobs


def _running(tmp_path: Path, config: EndpointConfig) -> Iterator[Running]:
    (tmp_path / "rules.toml").write_text(RULES, encoding="utf-8")
    store = SqliteJobStore(tmp_path / "jobs.db")
    try:
        with serving(Endpoint(store, load_rules(tmp_path / "rules.toml"), config)) as server:
            yield Running(server, store)
    finally:
        store.close()


@pytest.fixture
def endpoint(tmp_path: Path) -> Iterator[Running]:
    yield from _running(tmp_path, EndpointConfig(secret=SECRET, mautic_secret=MAUTIC_SECRET, token=TOKEN))


def visit(event_id: str = "e1", event: str = "nutrition_page_visit") -> dict[str, Any]:
    return {"contact": "C-1", "event": event, "time": "2026-05-04T09:00:00Z", "id": event_id,
            "url": "https://gym.example/nutrition"}


def test_a_signed_event_queues_its_job_and_a_redelivery_is_seen_before(endpoint: Running) -> None:
    first = endpoint.events(visit())
    assert first.status_code == 200, first.text
    answer = first.json()
    assert len(answer["queued"]) == 1
    assert answer == {"queued": answer["queued"], "seen_before": 0, "first_already_scored": 0, "unknown": []}
    job = endpoint.store.get(answer["queued"][0])
    assert job.status is JobStatus.PENDING and job.request is not None
    assert job.request.origin.source == "rule"

    again = endpoint.events([visit()])
    assert again.json() == {"queued": [], "seen_before": 1, "first_already_scored": 0, "unknown": []}
    assert len(endpoint.all_jobs()) == 1


def test_an_event_no_rule_knows_is_reported_and_kept_in_the_event_log(endpoint: Running) -> None:
    answer = endpoint.events([visit("e1"), visit("e2", event="spa_visit")]).json()
    assert len(answer["queued"]) == 1
    assert answer["unknown"] == [{"index": 1, "message": "No rule for event 'spa_visit'; it is kept in the event log."}]
    logged = [(e.data["event"], e.data["outcome"]) for e in endpoint.store.entries(STREAM, "contact:C-1")]
    assert logged == [("nutrition_page_visit", "queued"), ("spa_visit", "no rule")]


def test_a_bad_signature_is_refused_and_stores_nothing(endpoint: Running) -> None:
    refused = endpoint.events(visit(), secret="not-the-secret")
    assert refused.status_code == 401
    assert "Connector-Signature" in refused.json()["error"]
    unsigned = requests.post(f"{endpoint.url}/events", json=visit(), timeout=10)
    assert unsigned.status_code == 401
    assert endpoint.all_jobs() == []
    assert endpoint.store.entries(STREAM) == []
    assert SECRET not in refused.text + unsigned.text


def test_a_timestamp_older_than_five_minutes_is_refused(endpoint: Running) -> None:
    refused = endpoint.events(visit(), at=int(time.time()) - 301)
    assert refused.status_code == 401
    assert endpoint.all_jobs() == []


def test_events_that_are_not_events_are_refused_all_together(endpoint: Running) -> None:
    refused = endpoint.events([visit(), {"contact": "C-1"}, {**visit("e3"), "colour": "red"}])
    assert refused.status_code == 422
    assert [e["index"] for e in refused.json()["errors"]] == [1, 2]
    assert endpoint.all_jobs() == []


def page_hit(hit_id: int, record: str | None = "C-7", source: str | None = None) -> dict[str, Any]:
    core = {"email": {"alias": "email", "value": "ann@example.com"}}
    if record is not None:
        core["crm_id"] = {"alias": "crm_id", "value": record}
    return {"hit": {"id": hit_id, "dateHit": "2026-05-04T09:00:00+00:00", "url": "https://gym.example/pricing",
                    "source": source, "lead": {"id": 42, "fields": {"core": core}}},
            "timestamp": "2026-05-04T09:00:01+00:00"}


def test_a_mautic_page_hit_with_its_signature_becomes_a_job(endpoint: Running) -> None:
    body = {"mautic.page_on_hit": [page_hit(1), page_hit(2, record=None)],
            "mautic.form_on_submit": [{"submission": {"id": 9, "dateSubmitted": "2026-05-04T09:05:00+00:00",
                                                      "form": {"id": 3, "alias": "trial"},
                                                      "lead": {"id": 42, "crm_id": "C-7"}}}],
            "mautic.lead_post_save_update": [{}], "timestamp": "2026-05-04T09:05:01+00:00"}
    answer = endpoint.mautic(body)
    assert answer.status_code == 200, answer.text
    data = answer.json()
    assert len(data["queued"]) == 2
    assert data["skipped"][0]["type"] == "mautic.page_on_hit" and data["skipped"][0]["index"] == 1
    assert "crm_id" in data["skipped"][0]["message"]
    assert data["ignored_types"] == ["mautic.lead_post_save_update"]
    logged = [(e.data["event"], e.data["id"]) for e in endpoint.store.entries(STREAM, "contact:C-7")]
    assert logged == [("page_hit", "mautic:hit:1"), ("form_submit:trial", "mautic:submission:9")]

    assert endpoint.mautic({"mautic.page_on_hit": [page_hit(1)]}).json()["seen_before"] == 1
    assert endpoint.mautic({"mautic.page_on_hit": [page_hit(3)]}, secret="wrong").status_code == 401
    assert len(endpoint.all_jobs()) == 2


def test_jobs_with_a_bearer_token_are_queued_all_or_nothing(endpoint: Running) -> None:
    good = {"operation": "add_tag", "contact": "C-1", "tags": "Webinar"}
    score = {"operation": "Increase Score", "target_kind": "lead", "target_id": "L-1", "tags": "Web", "score": 5}
    bad = {"operation": "fly", "contact": "C-1"}

    refused = endpoint.jobs([good, bad, score])
    assert refused.status_code == 422
    assert [e["index"] for e in refused.json()["errors"]] == [1]
    assert endpoint.all_jobs() == []

    partial = endpoint.jobs([good, bad, score], query="?partial=true")
    assert partial.status_code == 200, partial.text
    data = partial.json()
    assert [(j["index"], j["status"]) for j in data["jobs"]] == [(0, "pending"), (2, "pending")]
    assert [e["index"] for e in data["errors"]] == [1]
    stored = endpoint.all_jobs()
    assert len(stored) == 2
    assert {j.request.origin.source for j in stored} == {"api"}

    assert endpoint.jobs(good, token="wrong").status_code == 401
    assert len(endpoint.all_jobs()) == 2


def test_jobs_may_be_signed_instead(endpoint: Running) -> None:
    body = json.dumps({"operation": "add_tag", "contact": "C-1", "tags": "Webinar"}).encode()
    answer = requests.post(f"{endpoint.url}/jobs", data=body, timeout=10,
                           headers={"Connector-Signature": sign(SECRET, body, timestamp=int(time.time()))})
    assert answer.status_code == 200, answer.text
    assert len(endpoint.all_jobs()) == 1


def test_a_request_id_sent_twice_is_queued_once(endpoint: Running) -> None:
    job = {"operation": "add_tag", "contact": "C-1", "tags": "Webinar", "request_id": "crm-123"}
    first = endpoint.jobs(job).json()["jobs"][0]
    second = endpoint.jobs([job]).json()["jobs"][0]
    assert first["id"] == second["id"]
    assert (first["seen_before"], second["seen_before"]) == (False, True)
    assert len(endpoint.all_jobs()) == 1


def _raw(endpoint: Running, request: bytes) -> str:
    """The whole answer to `request` sent as is; the answer is read until the server closes."""
    host, port = endpoint.server.socket.getsockname()[:2]
    with socket.create_connection((host, port), timeout=10) as conn:
        conn.sendall(request)
        first = conn.recv(65536)  # the answer begins before anything more is sent
        conn.shutdown(socket.SHUT_WR)
        chunks = [first]
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode()


def test_an_oversized_body_is_refused_before_it_is_read(endpoint: Running) -> None:
    # Ten megabytes announced, none sent: the answer comes without the body.
    answer = _raw(endpoint, b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                            b"Content-Length: 10485760\r\n\r\n")
    assert answer.startswith("HTTP/1.0 413 ")
    assert "endpoint.max_body" in answer


def test_a_body_larger_than_max_body_is_answered_413(tmp_path: Path) -> None:
    for running in _running(tmp_path, EndpointConfig(secret=SECRET, max_body=1024)):
        refused = running.events([visit(str(i)) for i in range(100)])
        assert refused.status_code == 413
        assert running.all_jobs() == []


def test_requests_that_are_not_what_the_route_takes(endpoint: Running) -> None:
    body = b"{not json"
    signed = {"Connector-Signature": sign(SECRET, body, timestamp=int(time.time()))}
    not_json = requests.post(f"{endpoint.url}/events", data=body, headers=signed, timeout=10)
    assert not_json.status_code == 400 and "not valid JSON" in not_json.json()["error"]
    shape = endpoint.events([1, 2])
    assert shape.status_code == 400
    assert requests.post(f"{endpoint.url}/nowhere", json={}, timeout=10).status_code == 404
    wrong_method = requests.get(f"{endpoint.url}/events", timeout=10)
    assert wrong_method.status_code == 405 and wrong_method.headers["Allow"] == "POST"
    assert endpoint.all_jobs() == []


def test_a_route_without_its_secret_is_closed(tmp_path: Path) -> None:
    for running in _running(tmp_path, EndpointConfig()):
        refused = running.events(visit(), secret="")
        assert refused.status_code == 401
        assert "CONNECTOR_ENDPOINT__SECRET" in refused.json()["error"]
        assert "CONNECTOR_ENDPOINT__MAUTIC_SECRET" in running.mautic({}, secret="x").json()["error"]
        assert "CONNECTOR_ENDPOINT__TOKEN" in running.jobs({}, token="").json()["error"]
        assert running.all_jobs() == []


def test_a_missing_content_length_is_answered_411(endpoint: Running) -> None:
    answer = _raw(endpoint, b"POST /events HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    assert answer.startswith("HTTP/1.0 411 ")
    assert "Content-Length" in answer.split("\r\n\r\n", 1)[1]


def test_the_median_time_from_post_to_queued_on_loopback(endpoint: Running) -> None:
    took = []
    with requests.Session() as session:
        for i in range(100):
            body = json.dumps(visit(f"m{i}")).encode()
            headers = {"Connector-Signature": sign(SECRET, body, timestamp=int(time.time()))}
            start = time.perf_counter()
            answer = session.post(f"{endpoint.url}/events", data=body, headers=headers, timeout=10)
            took.append(time.perf_counter() - start)
            assert len(answer.json()["queued"]) == 1
    median = statistics.median(took)
    print(f"median POST /events to queued over 100: {median * 1000:.1f} ms (p90 "
          f"{statistics.quantiles(took, n=10)[-1] * 1000:.1f} ms)")
    assert median < 1.0
