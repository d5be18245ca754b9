"""Dataverse requests per job: drain N jobs with Dynamics 365 (the sandbox) as job store and timeline.

Creates 100 contacts and N job rows in the Dataverse sandbox, then counts the HTTP requests the runner sends to
the Dataverse Web API while draining them (a `$batch` counts as one request here; Dataverse's service
protection limits count each of its parts too, so both are reported). Usage: python bench/dataverse_requests.py [N]
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from config import load_settings
from jobs.app import build
from jobs.model import JobRequest

OPERATIONS = [("add_tag", "Webinar", None), ("increase_score", "Lead", 5), ("set_score", "Engagement", 40),
              ("decrease_score", "Lead", 2), ("remove_tag", "Trial", None)]


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(home=Path(tmp) / "home", job_store="dataverse", crm="dataverse")
        with build(settings) as connector:
            client = connector.dataverse
            assert client is not None
            contacts = [client.create("contacts", {"lastname": f"Bench {i}"}) for i in range(100)]
            requests = [
                JobRequest.from_input(operation=op, tags=tag, score=score, target_kind="contact",
                                      target_id=contacts[i % len(contacts)])
                for i, (op, tag, score) in ((i, OPERATIONS[i % len(OPERATIONS)]) for i in range(count))
            ]
            for start in range(0, count, 500):
                connector.store.add(requests[start:start + 500])
            session = client.session
            sent_before = session.requests_sent
            listings: list[int] = []  # rows read by each GET of the jobs table: the claims' cost
            entity_set = settings.dataverse.jobs.entity_set

            def count_rows(response: Any, *args: Any, **kwargs: Any) -> None:
                if response.request.method == "GET" and f"/{entity_set}?" in response.url:
                    listings.append(len(response.json().get("value", [])))

            session.hooks["response"].append(count_rows)
            started = time.perf_counter()
            report = connector.runner.drain()
            elapsed = time.perf_counter() - started
            sent = session.requests_sent - sent_before
    print(f"{report.succeeded} succeeded, {report.failed} failed, {report.retrying} retrying in {elapsed:.1f} s")
    print(f"Dataverse HTTP requests during the drain: {sent} = {sent / count:.2f} per job")
    print(f"Job rows read by the claims: {sum(listings)} in {len(listings)} reads = {sum(listings) / count:.1f} per "
          f"job, {max(listings, default=0)} at most in one read")


if __name__ == "__main__":
    main()
