"""`connector demo`: a realistic morning of CRM jobs, run on the embedded default until drained."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jobs.app import Connector
from jobs.model import Job
from jobs.runner import DrainReport
from jobs.service import contact_view, request_from_fields

# What CRM users typically queue: every operation, several contacts, a lead, an account, a tag-only job, a
# removal of several tags, and one job from a careless user (a negative increase).
DEMO_JOBS: list[dict[str, Any]] = [
    {"operation": "Add Tag", "contact": "C-1001", "tags": "Webinar 2026"},
    {"operation": "Add Tag", "contact": "C-1001", "tags": "Newsletter; Product news"},
    {"operation": "Increase Score", "contact": "C-1001", "tags": "Webinar 2026", "score": "10"},
    {"operation": "Increase Score", "contact": "C-1001", "tags": "Webinar 2026", "score": "5"},
    {"operation": "Decrease Score", "contact": "C-1001", "tags": "Webinar 2026", "score": "3"},
    {"operation": "Add Tag", "contact": "C-1002", "tags": "Newsletter, Event Amsterdam, Trial"},
    {"operation": "Set Score", "contact": "C-1002", "tags": "Engagement", "score": "40"},
    {"operation": "Remove Tag", "contact": "C-1002", "tags": "Event Amsterdam; Trial"},
    {"operation": "Set Score", "contact": "C-1003", "tags": "Churn risk", "score": "-15"},
    {"operation": "Remove Score", "contact": "C-1003", "tags": "Churn risk"},
    {"operation": "Remove Tag", "contact": "C-1003", "tags": "Never had this tag"},
    {"operation": "Increase Score", "lead": "L-2001", "tags": "Lead score", "score": "25"},
    {"operation": "Add Tag", "account": "A-3001", "tags": "Key account"},
    {"operation": "Set Score", "account": "A-3001", "tags": "Account health", "score": "80"},
    {"operation": "Add Tag", "tags": "Spring campaign"},
]
CARELESS_JOB = {"operation": "increase_score", "target_kind": "contact", "target_id": "C-1003", "tags": "Lead score",
                "score": "-5"}
SHOWN_RECORDS = [("contact", "C-1001"), ("contact", "C-1002"), ("contact", "C-1003"), ("lead", "L-2001"),
                 ("account", "A-3001")]


@dataclass
class DemoResult:
    jobs: list[Job]
    report: DrainReport
    records: list[dict[str, Any]]


def run_demo(connector: Connector) -> DemoResult:
    store = connector.store
    queued = store.add([request_from_fields(fields) for fields in DEMO_JOBS])
    # As if a user had edited the job record in the CRM after it was validated: the runner must catch it.
    careless = store.add_raw(CARELESS_JOB)
    report = connector.runner.drain()
    jobs = [store.get(job.id) for job in [*queued, careless]]
    records = [contact_view(connector.platform, connector.crm, kind, rid) for kind, rid in SHOWN_RECORDS]
    return DemoResult(jobs, report, records)
