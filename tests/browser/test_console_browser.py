"""The console in a real Chromium (Debian's `/usr/bin/chromium`, driven by Playwright), against `connector console`
served on loopback over real HTTP, with real jobs drained through the Spotler sandbox. One browser for the module;
each page's screenshot goes to the test's tmp dir, and a failure prints where they are.

In CI (`CI` set, as `.ci/run` sets it) a missing browser fails the tier; on a laptop without chromium the tests
say so in one line and are skipped.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from config.settings import ConsoleSettings, Settings
from jobs.app import Connector, build
from jobs.console.server import ConsoleServer, console_parts
from jobs.model import JobRequest, JobStatus

CHROMIUM = os.environ.get("CONNECTOR_TEST_CHROMIUM", "/usr/bin/chromium")
XSS = "<script>alert(1)</script>"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]

pytestmark = pytest.mark.browser


def _chromium_or_reason() -> str | None:
    if not Path(CHROMIUM).exists() and not shutil.which(CHROMIUM):
        return f"{CHROMIUM} is missing (apt-get install -y chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is missing (pip install -e '.[test]')"
    return None


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    reason = _chromium_or_reason()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"The browser tier must run in CI: {reason}.")
        pytest.skip(f"Browser tests not run: {reason}.")
    from playwright.sync_api import sync_playwright

    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(str(profile), executable_path=CHROMIUM, headless=True,
                                                        args=FLAGS)
        try:
            yield context
        finally:
            context.close()


class Shots:
    def __init__(self, where: Path) -> None:
        self.where = where
        self.taken: list[Path] = []

    def take(self, page: Any, name: str) -> None:
        path = self.where / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        self.taken.append(path)


@pytest.fixture
def shots(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Shots]:
    taken = Shots(tmp_path)
    yield taken
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(f"\nScreenshots of {request.node.name}: {tmp_path}")


def queue(built: Connector, **fields: Any) -> str:
    fields.setdefault("target_kind", "contact")
    return built.store.add([JobRequest.from_input(**fields)])[0].id


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Connector, ConsoleServer]]:
    built = build(Settings(home=tmp_path / "home"))
    server = ConsoleServer(console_parts(built), "127.0.0.1", 0).start()
    try:
        yield built, server
    finally:
        server.stop()
        built.close()


def test_support_staff_find_retry_and_cancel_jobs(browser: Any, served: Any, shots: Shots) -> None:
    built, server = served
    ok = queue(built, operation="add_tag", tags="Webinar", target_id="C-1001")
    xss = queue(built, operation="add_tag", tags=XSS, target_id="C-1002")
    failed = queue(built, operation="start_automation", tags="spring-nurture", target_id="C-1001")
    built.runner.drain()
    page = browser.new_page()
    alerts: list[str] = []
    page.on("dialog", lambda dialog: (alerts.append(dialog.message), dialog.dismiss()))

    page.goto(server.url)
    assert page.locator('[data-status="failed"]').inner_text() == "1"
    shots.take(page, "overview")

    # Filter the jobs list: the filters land in the URL, so the link can be sent to a colleague.
    page.goto(server.url + "jobs")
    page.fill('input[name="record"]', "C-1001")
    page.select_option('select[name="status"]', "failed")
    page.click("#apply-filters")
    page.wait_for_url(re.compile(r"record=C-1001.*|status=failed.*"))
    assert "status=failed" in page.url and "record=C-1001" in page.url
    assert page.locator("tr.job").count() == 1 and failed in page.locator("#jobs").inner_text()
    shots.take(page, "jobs")

    # The XSS case: a tag with markup is text on the page, and no script ran.
    page.goto(server.url + "jobs?tag=" + XSS.replace("<", "%3C").replace(">", "%3E"))
    assert XSS in page.locator("#jobs").inner_text() and xss in page.locator("#jobs").inner_text()
    assert alerts == []

    # Open a failed job, retry it, and watch it succeed after a drain once its automation exists.
    page.goto(server.url + f"jobs/{failed}")
    assert page.locator("#status").inner_text().strip() == "failed"
    built.sandboxes["spotler"].app.seed_automation("spring-nurture")  # someone creates the automation in Spotler
    page.click("#retry")
    page.wait_for_selector("#done")
    assert page.locator("#status").inner_text().strip() == "pending"
    built.runner.drain()
    page.reload()
    assert page.locator("#status").inner_text().strip() == "succeeded"
    audit = page.locator("#actions tr.action").all_inner_texts()
    assert len(audit) == 1 and "retry" in audit[0] and "console" in audit[0]
    shots.take(page, "job")

    # Open a record: tags and scores on the platform, the chart, and every job including the failed one.
    page.goto(server.url + "records/contact/C-1001")
    assert "Webinar" in page.locator("#tags").inner_text()
    assert failed in page.locator("#jobs").inner_text() and ok in page.locator("#jobs").inner_text()
    shots.take(page, "record")

    # Bulk-cancel a filtered set, after a confirmation that says how many.
    pending = [queue(built, operation="add_tag", tags="Spring", target_id=f"C-2{n}") for n in range(3)]
    page.goto(server.url + "jobs?tag=spring")
    page.click("#bulk-cancel")
    page.wait_for_selector("#bulk-count")
    assert page.locator("#bulk-count").inner_text() == "3"
    page.click("#bulk-confirm")
    page.wait_for_selector("#done")
    assert "Cancelled 3 jobs." in page.locator("#done").inner_text()
    assert {built.store.get(i).status for i in pending} == {JobStatus.CANCELLED}
    page.goto(server.url + f"jobs/{pending[0]}")
    assert "cancel" in page.locator("#actions").inner_text() and "console" in page.locator("#actions").inner_text()
    page.goto(server.url + "triggers")
    shots.take(page, "triggers")
    assert len(shots.taken) == 5


def test_basic_auth_is_required_when_configured(browser: Any, tmp_path: Path, shots: Shots) -> None:
    built = build(Settings(home=tmp_path / "home", console=ConsoleSettings(password="s3cret-pass")))
    server = ConsoleServer(console_parts(built), "127.0.0.1", 0).start()
    try:
        page = browser.new_page()
        # Without credentials the browser gets the 401 and its basic-auth challenge, and shows nothing.
        with pytest.raises(Exception, match="ERR_INVALID_AUTH_CREDENTIALS"):
            page.goto(server.url)
        page.set_extra_http_headers({"Authorization": "Basic " + base64.b64encode(b"operator:wrong").decode()})
        with pytest.raises(Exception, match="ERR_INVALID_AUTH_CREDENTIALS"):
            page.goto(server.url + "jobs")
        page.set_extra_http_headers({"Authorization": "Basic " + base64.b64encode(b"operator:s3cret-pass").decode()})
        answer = page.goto(server.url)
        assert answer is not None and answer.status == 200
        assert "s3cret-pass" not in page.content() and "operator" in page.locator("header").inner_text()
        shots.take(page, "signed-in")
    finally:
        server.stop()
        built.close()
