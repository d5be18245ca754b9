"""`connector demo`: a realistic morning of CRM jobs, run on the embedded default until drained."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from connector.crm import Task
from connector.sandbox.server import Faults, SandboxServer
from connector.sandbox.smtp import read_mailbox
from jobs.app import EXAMPLE_RULES, Connector, mailbox_path
from jobs.demo_dataverse import create_job_rows, ensure_records
from jobs.model import Job, Target, TargetKind
from jobs.runner import DrainReport
from jobs.scoring.events import EventReport, event_from_fields, ingest
from jobs.scoring.history import HistoryEntry, history_of, record_key
from jobs.scoring.triggers import Firing, firings_of
from jobs.service import contact_view, read_for_a_person, request_from_fields
from jobs.store import JobFilter
from jobs.store.dataverse import DataverseJobStore

# What CRM users typically queue: every operation, several contacts, a lead, an account, a tag-only job, a
# removal of several tags, and one job from a careless user (a negative increase). Start Automation uses the trigger
# code the Spotler sandbox knows; Mautic has no trigger codes, so there it fails with NOT_SUPPORTED.
DEMO_JOBS: list[dict[str, Any]] = [
    {"operation": "Add Tag", "contact": "C-1001", "tags": "Webinar 2026"},
    {"operation": "Add Tag", "contact": "C-1001", "tags": "Newsletter; Product news"},
    {"operation": "Increase Score", "contact": "C-1001", "tags": "Webinar 2026", "score": "10"},
    {"operation": "Increase Score", "contact": "C-1001", "tags": "Webinar 2026", "score": "5"},
    {"operation": "Decrease Score", "contact": "C-1001", "tags": "Webinar 2026", "score": "3"},
    {"operation": "Start Automation", "contact": "C-1001", "tags": "welcome"},
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
# Retries due within this many seconds are waited for, so that the demo ends with every job final even with
# injected faults: longer than the default retry budget's backoff (1 + 2 + 4 + 8 s, plus jitter). A job whose
# next try is further away (a long Retry-After) is left retrying; `connector run` picks it up.
DEMO_RETRY_WINDOW = 60.0
SHOWN_RECORDS = [("contact", "C-1001"), ("contact", "C-1002"), ("contact", "C-1003"), ("lead", "L-2001"),
                 ("account", "A-3001")]


# The gym of the product documents (config/example-rules.toml): three events give C-1001's "Nutrition Interest"
# its 3 points and make the contact a Prospect; a shop's visit, cart and purchase take C-1002 past "Hot lead". The
# second nutrition article click is the same event delivered twice: it is acknowledged, not scored again.
GYM_EVENTS: list[dict[str, Any]] = [
    {"contact": "C-1001", "event": "nutrition_page_visit", "time": "2026-05-04T09:00:00Z", "id": "gym-1"},
    {"contact": "C-1001", "event": "nutrition_article_click", "time": "2026-05-04T09:05:00Z", "id": "gym-2"},
    {"contact": "C-1001", "event": "nutrition_article_click", "time": "2026-05-04T09:05:00Z", "id": "gym-2"},
    {"contact": "C-1001", "event": "form_picked_nutrition", "time": "2026-05-04T09:10:00Z", "id": "gym-3"},
    {"contact": "C-1001", "event": "spa_visit", "time": "2026-05-04T09:12:00Z", "id": "gym-4"},
    {"contact": "C-1002", "event": "page_visit", "time": "2026-05-04T10:00:00Z", "id": "shop-1"},
    {"contact": "C-1002", "event": "add_to_cart", "time": "2026-05-04T10:02:00Z", "id": "shop-2"},
    {"contact": "C-1002", "event": "purchase", "time": "2026-05-04T10:05:00Z", "id": "shop-3"},
]
GYM_RECORDS = [("contact", "C-1001"), ("contact", "C-1002")]


@dataclass
class GymResult:
    """What the gym example did: the events and what became of them, the history, firings and action jobs."""

    events: EventReport
    history: dict[str, list[HistoryEntry]]  # by record key
    firings: list[Firing]
    actions: list[Job]
    tasks: list[Task]
    fields: dict[str, Any]
    report: DrainReport
    mails: list[dict[str, Any]]


@dataclass
class DemoResult:
    jobs: list[Job]
    report: DrainReport
    records: list[dict[str, Any]]
    gym: GymResult | None = None


def run_demo(
    connector: Connector,
    *,
    retry_window: float = DEMO_RETRY_WINDOW,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], Any] = time.sleep,
) -> DemoResult:
    """Queue the demo jobs and drain them, then keep draining the retries that come due within `retry_window`."""
    store = connector.store
    job_ids, shown = _queue(connector)
    report = connector.runner.drain()
    deadline = clock() + retry_window
    while report.retrying and report.next_retry_at is not None and report.next_retry_at <= deadline:
        # A job the runner put back to pending (a backoff longer than the inline wait): wait for it, drain again.
        sleep(max(0.0, report.next_retry_at - clock()))
        more = connector.runner.drain()
        more.succeeded += report.succeeded
        more.failed += report.failed
        more.seconds += report.seconds
        report = more
    jobs = [read_for_a_person(functools.partial(store.get, job_id)) for job_id in job_ids]
    names = {name: record_id for _, record_id, name in shown}
    gym = run_gym(connector, names) if connector.rules.rules else None
    records = [
        {**contact_view(connector.platform, connector.crm, kind, record_id), "name": name}
        for kind, record_id, name in shown
    ]
    return DemoResult(jobs, report, records, gym)


def run_gym(connector: Connector, names: dict[str, str]) -> GymResult:
    """Ingest the gym's events through the rules file, drain until the triggers' actions are done too. `names`
    maps the demo's record names to the CRM's ids (GUIDs on Dynamics 365)."""
    store = connector.store
    events = [(n, event_from_fields({**fields, "contact": names.get(fields["contact"], fields["contact"])}))
              for n, fields in enumerate(GYM_EVENTS, start=1)]
    with _faults_paused(connector.sandboxes.get("dataverse")):  # the events arrive; the runner meets the faults
        report = ingest(store, connector.rules, events)
    drained = connector.runner.drain()
    while True:  # the actions a firing queued, and what they cascade into
        more = connector.runner.drain()
        if not more.processed:
            break
        drained.succeeded += more.succeeded
        drained.failed += more.failed
    targets = [Target(kind=TargetKind(kind), id=names.get(record, record)) for kind, record in GYM_RECORDS]
    prospect = names.get("C-1001", "C-1001")
    # What this run fired: firings caused by its events' jobs, and by the action jobs those queued (cascades).
    caused, firings, actions = set(report.queued), [], []
    for firing in sorted((f for t in targets for f in firings_of(store, t)), key=lambda f: f.at):
        if firing.job_id in caused and firing.actions:
            firings.append(firing)
            queued = store.list(JobFilter(request_ids=firing.actions, limit=len(firing.actions))).jobs
            actions += queued
            caused |= {job.id for job in queued}
    return GymResult(
        events=report, history={record_key(t): history_of(store, t) for t in targets}, firings=firings,
        actions=actions, tasks=connector.crm.tasks("contact", prospect),
        fields=connector.crm.fields("contact", prospect, [PROSPECT_FIELD[connector.settings.crm]]), report=drained,
        mails=[m for m in read_mailbox(mailbox_path(connector.settings.home))
               if m["job_id"] in {job.id for job in actions}],
    )


# Where the prospect's new status goes: a field of the local CRM; on Dynamics 365 a column every contact has.
PROSPECT_FIELD = {"local": "status", "dataverse": "description"}


def demo_rules(home: Path, webhook_url: str, crm: str = "local") -> Path:
    """The example rules file with a webhook to `webhook_url` on its hot-lead trigger (the last one), written to
    <home>/demo-rules.toml for the demo to run with; on Dynamics 365 the status goes to a column contacts have."""
    path = home / "demo-rules.toml"
    home.mkdir(parents=True, exist_ok=True)
    text = EXAMPLE_RULES.read_text(encoding="utf-8").replace(
        'fields = { status = "Prospect" }', f'fields = {{ {PROSPECT_FIELD[crm]} = "Prospect" }}')
    path.write_text(text + f"""
# Added by the demo: the hot lead is also announced to a webhook receiver it runs on loopback.
[[triggers.actions]]
do = "webhook"
url = "{webhook_url}"
data = {{ campaign = "spring" }}
""", encoding="utf-8")
    return path


@contextmanager
def _faults_paused(server: SandboxServer | None) -> Iterator[None]:
    if server is None:
        yield
        return
    faults, server.injector.faults = server.injector.faults, Faults()
    try:
        yield
    finally:
        server.injector.faults = faults


def _queue(connector: Connector) -> tuple[list[str], list[tuple[str, str, str]]]:
    """Queue the demo jobs; returns their ids and the records to show as (kind, CRM id, demo name)."""
    client = connector.dataverse
    if client is not None and connector.settings.job_store == "dataverse":
        # The CRM user's path: records and job rows created through the Web API, as the job form would. The
        # user's own typing is not what the fault flags are about (and a create whose answer is lost cannot be
        # repeated safely), so the Dataverse sandbox's faults are off while the demo sets up.
        with _faults_paused(connector.sandboxes.get("dataverse")):
            ids = ensure_records(client)
            assert isinstance(connector.store, DataverseJobStore)
            rows = create_job_rows(client, connector.store, [*DEMO_JOBS, CARELESS_JOB], ids)
        return rows, [(kind, ids[name], name) for kind, name in SHOWN_RECORDS]
    store = connector.store
    queued = store.add([request_from_fields(fields) for fields in DEMO_JOBS])
    # As if a user had edited the job record in the CRM after it was validated: the runner must catch it.
    careless = store.add_raw(CARELESS_JOB)
    return [job.id for job in [*queued, careless]], [(kind, name, name) for kind, name in SHOWN_RECORDS]
