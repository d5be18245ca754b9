"""The console's routes through Starlette's test client, on a connector built as `connector console` builds it
(SQLite store, the Spotler sandbox over loopback), with jobs really drained: pages, filters, actions and their
audit, CSRF, authentication, read-only mode, escaping, secrets, `/metrics` and `/healthz`."""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from contextlib import contextmanager
from html import escape, unescape
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from config.settings import ConsoleSettings, Settings, SettingsError
from jobs.app import Connector, build
from jobs.console.app import make_app
from jobs.console.server import ConsoleServer, console_parts
from jobs.model import JobRequest, JobStatus
from jobs.store import JobFilter

XSS = "<script>alert(1)</script>"
PASSWORD = "correct horse battery staple"


@contextmanager
def console(tmp_path: Path, **settings: Any) -> Iterator[tuple[Connector, TestClient]]:
    config = Settings(home=tmp_path / "home", console=ConsoleSettings(**settings))
    built = build(config)
    try:
        parts = console_parts(built)
        with TestClient(make_app(parts), base_url="http://127.0.0.1:8781") as client:
            yield built, client
    finally:
        built.close()


def queue(built: Connector, **fields: Any) -> str:
    fields.setdefault("target_kind", "contact")
    return built.store.add([JobRequest.from_input(**fields)])[0].id


def csrf_of(client: TestClient, page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', client.get(page).text)
    assert found, f"no CSRF field on {page}"
    return found.group(1)


@pytest.fixture
def drained(tmp_path: Path) -> Iterator[tuple[Connector, TestClient, dict[str, str]]]:
    with console(tmp_path) as (built, client):
        ids = {
            "ok": queue(built, operation="add_tag", tags="Webinar", target_id="C-1001"),
            "xss": queue(built, operation="add_tag", tags=XSS, target_id="C-1002"),
            "failed": queue(built, operation="start_automation", tags="no-such-trigger", target_id="C-1001"),
            "score": queue(built, operation="increase_score", tags="Lead", score=10, target_id="C-1001"),
        }
        built.runner.drain()
        yield built, client, ids


def test_pages_show_the_drained_jobs_with_their_outcomes(drained: Any) -> None:
    _, client, ids = drained
    overview = client.get("/")
    assert overview.status_code == 200
    assert re.search(r'data-status="succeeded">3<', overview.text) and re.search(r'data-status="failed">1<',
                                                                                  overview.text)
    assert "TRIGGER_NOT_FOUND" in overview.text
    jobs = client.get("/jobs").text
    assert all(job_id in jobs for job_id in ids.values())
    job = client.get(f"/jobs/{ids['failed']}").text
    assert "TRIGGER_NOT_FOUND" in job and 'id="retry"' in job and "no-such-trigger" in job
    ok = client.get(f"/jobs/{ids['ok']}").text
    assert f"(job {ids['ok']})" in ok  # its timeline post
    record = client.get("/records/contact/C-1001").text
    assert "Lead" in record and "<svg" in record and ids["failed"] in record and ids["score"] in record
    assert client.get("/triggers").status_code == 200
    assert client.get("/jobs/nope").status_code == 404


def test_filters_combine_and_stay_in_the_links(drained: Any) -> None:
    _, client, ids = drained
    page = client.get("/jobs", params={"record": "C-1001", "status": "succeeded"}).text
    assert ids["ok"] in page and ids["score"] in page and ids["failed"] not in page and ids["xss"] not in page
    page = client.get("/jobs", params={"tag": "webinar"}).text
    assert ids["ok"] in page and ids["score"] not in page
    page = client.get("/jobs", params={"operation": "Start Automation", "result_code": "trigger_not_found"}).text
    assert ids["failed"] in page and ids["ok"] not in page
    page = client.get("/jobs", params={"text": "no-such"}).text
    assert ids["failed"] in page and ids["ok"] not in page
    refused = client.get("/jobs", params={"status": "lost"})
    assert refused.status_code == 400 and "status is" in refused.text


def test_the_jobs_list_pages_with_a_cursor_keeping_the_filters(tmp_path: Path) -> None:
    with console(tmp_path) as (built, client):
        for n in range(103):
            queue(built, operation="add_tag", tags="Many", target_id=f"C-{n}")
        first = client.get("/jobs", params={"tag": "many"}).text
        assert first.count('class="job"') == 100
        link = re.search(r'id="next-page" href="([^"]+)"', first)
        assert link and "tag=many" in link.group(1)
        second = client.get(link.group(1).replace("&amp;", "&")).text
        assert second.count('class="job"') == 3 and 'id="next-page"' not in second


def test_links_to_a_record_open_that_record_whatever_its_id_holds(tmp_path: Path) -> None:
    # A CRM id may hold characters a URL gives a meaning to: '#' starts a fragment, '?' a query, '%' an escape.
    # Over real HTTP: the test client decodes a path twice, which would hide the last one.
    built = build(Settings(home=tmp_path / "home"))
    server = ConsoleServer(console_parts(built), "127.0.0.1", 0).start()
    try:
        for record_id in ("ACME#42", "C?ref=7", "C-50%41", "EU/C-1"):
            job = queue(built, operation="add_tag", tags="T", target_id=record_id)
            pages = [requests.get(server.url + "jobs", params={"record": record_id}, timeout=10).text,
                     requests.get(f"{server.url}jobs/{job}", timeout=10).text]
            links = {link for page in pages for link in re.findall(r'href="/(records/contact/[^"]*)"', page)}
            assert links, record_id
            for link in links:
                page = requests.get(server.url + unescape(link), timeout=10).text
                assert f"<h1>contact {escape(record_id)}</h1>" in page and job in page, (record_id, link)
            found = requests.get(server.url + "records", params={"kind": "contact", "id": record_id}, timeout=10)
            assert f"<h1>contact {escape(record_id)}</h1>" in found.text, record_id
    finally:
        server.stop()
        built.close()


def test_a_tag_with_markup_shows_as_text(drained: Any) -> None:
    _, client, ids = drained
    for page in ("/jobs", f"/jobs/{ids['xss']}", "/records/contact/C-1002"):
        text = client.get(page).text
        assert XSS not in text, page
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text, page


def test_retry_needs_the_csrf_token_and_is_recorded_with_who_and_from_where(drained: Any) -> None:
    built, client, ids = drained
    failed = ids["failed"]
    assert client.post(f"/jobs/{failed}/retry", data={"csrf": "forged"}).status_code == 403
    token = csrf_of(client, f"/jobs/{failed}")
    other_site = client.post(f"/jobs/{failed}/retry", data={"csrf": token}, headers={"Origin": "http://evil.test"})
    assert other_site.status_code == 403
    assert built.store.get(failed).status is JobStatus.FAILED and built.store.audit(failed) == []
    done = client.post(f"/jobs/{failed}/retry", data={"csrf": token}, follow_redirects=False)
    assert done.status_code == 303
    assert built.store.get(failed).status is JobStatus.PENDING
    [entry] = built.store.audit(failed)
    assert (entry.action, entry.via) == ("retry", "console") and entry.who
    page = client.get(f"/jobs/{failed}").text
    assert re.search(r"<td>retry</td><td>[^<]+</td><td>console</td>", page)
    again = client.post(f"/jobs/{failed}/retry", data={"csrf": token}, follow_redirects=True)
    assert "only failed jobs can be retried" in again.text


def test_bulk_cancel_says_how_many_first_then_cancels_what_the_filter_finds(tmp_path: Path) -> None:
    with console(tmp_path) as (built, client):
        vip = [queue(built, operation="add_tag", tags="VIP", target_id=f"C-{n}") for n in range(3)]
        other = queue(built, operation="add_tag", tags="Other", target_id="C-9")
        confirm = client.get("/jobs/confirm", params={"action": "cancel", "tag": "vip"}).text
        assert re.search(r'id="bulk-count">3<', confirm)
        done = client.post("/jobs/bulk", data=form_of(confirm))
        assert "Cancelled 3 jobs." in done.text
        assert {built.store.get(i).status for i in vip} == {JobStatus.CANCELLED}
        assert built.store.get(other).status is JobStatus.PENDING
        assert [(e.action, e.via) for e in built.store.audit(vip[0])] == [("cancel", "console")]
        assert "nothing to retry" in client.get("/jobs/confirm", params={"action": "retry", "tag": "vip"}).text


def form_of(html: str) -> dict[str, str]:
    """The fields a form on the page posts."""
    return {unescape(name): unescape(value)
            for name, value in re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', html)}


def test_a_bulk_action_touches_no_job_the_confirmation_did_not_count(tmp_path: Path) -> None:
    with console(tmp_path) as (built, client):
        counted = [queue(built, operation="add_tag", tags="VIP", target_id=f"C-{n}") for n in range(3)]
        confirm = client.get("/jobs/confirm", params={"action": "cancel", "tag": "vip"}).text
        assert re.search(r'id="bulk-count">3<', confirm)
        # Read by a person before the click: meanwhile the CRM queues another job the filter finds.
        later = queue(built, operation="add_tag", tags="VIP", target_id="C-9")
        refused = client.post("/jobs/bulk", data=form_of(confirm)).text
        assert "Nothing was cancelled: the filter finds 4 jobs now, not the 3 the confirmation counted." in refused
        assert {built.store.get(i).status for i in [*counted, later]} == {JobStatus.PENDING}
        assert built.store.audit(later) == []
        again = client.get("/jobs/confirm", params={"action": "cancel", "tag": "vip"}).text
        assert re.search(r'id="bulk-count">4<', again)
        done = client.post("/jobs/bulk", data=form_of(again))
        assert "Cancelled 4 jobs." in done.text
        assert {built.store.get(i).status for i in [*counted, later]} == {JobStatus.CANCELLED}


def test_read_only_shows_no_buttons_and_refuses_actions(tmp_path: Path) -> None:
    with console(tmp_path, read_only=True) as (built, client):
        job = queue(built, operation="add_tag", tags="A", target_id="C-1")
        page = client.get(f"/jobs/{job}").text
        assert 'id="cancel"' not in page and "read-only" in page
        token = client.cookies.get("connector_csrf")
        refused = client.post(f"/jobs/{job}/cancel", data={"csrf": token})
        assert refused.status_code == 403 and "read-only" in refused.text
        assert built.store.get(job).status is JobStatus.PENDING


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_basic_auth_or_a_bearer_token_when_configured(tmp_path: Path) -> None:
    with console(tmp_path, password=PASSWORD, token="t0ken-for-prometheus") as (built, client):
        denied = client.get("/")
        assert denied.status_code == 401 and denied.headers["WWW-Authenticate"].startswith("Basic")
        assert client.get("/", headers=basic("operator", "wrong")).status_code == 401
        assert client.get("/", headers=basic("someone", PASSWORD)).status_code == 401
        assert client.get("/", headers=basic("operator", PASSWORD)).status_code == 200
        assert client.get("/metrics", headers={"Authorization": "Bearer t0ken-for-prometheus"}).status_code == 200
        assert client.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert client.get("/healthz").status_code == 503  # open to monitors; no runner has beaten
        job = queue(built, operation="add_tag", tags="A", target_id="C-1")
        token = csrf_of_with(client, f"/jobs/{job}", basic("operator", PASSWORD))
        client.post(f"/jobs/{job}/cancel", data={"csrf": token}, headers=basic("operator", PASSWORD))
        assert [(e.who, e.via) for e in built.store.audit(job)] == [("operator", "console")]
        for page in ("/", "/jobs", f"/jobs/{job}", "/records/contact/C-1", "/triggers", "/metrics"):
            text = client.get(page, headers=basic("operator", PASSWORD)).text
            for secret in built.settings.secret_values():
                assert secret not in text, page


def csrf_of_with(client: TestClient, page: str, headers: dict[str, str]) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', client.get(page, headers=headers).text)
    assert found
    return found.group(1)


def test_another_address_than_loopback_needs_credentials(tmp_path: Path) -> None:
    config = Settings(home=tmp_path / "home")
    built = build(config)
    try:
        parts = console_parts(built)
        with pytest.raises(SettingsError, match="no authentication"):
            ConsoleServer(parts, "0.0.0.0", 0)
        parts.settings = ConsoleSettings(password=PASSWORD)
        server = ConsoleServer(parts, "0.0.0.0", 0)
        server.socket.close()
    finally:
        built.close()


def test_metrics_match_the_store_after_a_drain(drained: Any) -> None:
    built, client, _ = drained
    families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
    finished: dict[str, float] = {}
    for sample in families["connector_jobs_finished"].samples:
        if sample.name == "connector_jobs_finished_total":
            code = sample.labels["result_code"]
            finished[code] = finished.get(code, 0) + sample.value
    assert finished == {code: float(n) for code, n in built.store.finished_since(0).items()}
    depth = {s.labels["status"]: s.value for s in families["connector_queue_jobs"].samples}
    counts = built.store.counts()
    assert depth == {status: float(counts.get(status, 0)) for status in depth} and depth["succeeded"] == 3
    attempts = [s for s in families["connector_attempt_duration_seconds"].samples if s.name.endswith("_count")]
    assert sum(s.value for s in attempts) == 4
    http = {(s.labels["api"], s.labels["status_class"]): s.value for s in families["connector_http_requests"].samples
            if s.name.endswith("_total")}
    assert http[("Spotler", "2xx")] >= 3 and http[("Spotler", "4xx")] >= 1
    assert families["connector_oldest_pending_job_age_seconds"].samples[0].value == 0


def test_healthz_wants_a_recent_runner_heartbeat(drained: Any) -> None:
    built, client, _ = drained
    missing = client.get("/healthz")
    assert missing.status_code == 503 and "no runner" in missing.text
    built.store.heartbeat(built.runner.owner)
    healthy = client.get("/healthz")
    assert healthy.status_code == 200 and built.runner.owner in healthy.text
    assert built.store.list(JobFilter(limit=1)).jobs  # the store answered
