"""The demo's CRM user path on Dynamics 365: records and job rows created through the Dataverse Web API.

With `connector demo --crm dataverse` the demo does what a CRM user does: it creates contacts, a lead and an
account in the (sandbox) Dataverse, then job rows in the job table with their lookups, exactly as the job form
would. The runner then claims those rows, applies them on the platform, writes the outcome back on each row and
posts on each record's timeline.
"""

from __future__ import annotations

from typing import Any

from connector.dataverse.client import DataverseClient, odata_literal
from jobs.store.dataverse import DataverseJobStore

# The demo's records by their name in DEMO_JOBS: entity set and the columns of a new row. The e-mail address
# finds the row again, so running the demo twice does not duplicate them.
DEMO_RECORDS: dict[str, tuple[str, dict[str, str]]] = {
    "C-1001": ("contacts", {"firstname": "Anna", "lastname": "de Vries", "emailaddress1": "anna@example.com"}),
    "C-1002": ("contacts", {"firstname": "Bram", "lastname": "Jansen", "emailaddress1": "bram@example.com"}),
    "C-1003": ("contacts", {"firstname": "Chloé", "lastname": "Bakker", "emailaddress1": "chloe@example.com"}),
    "L-2001": ("leads", {"firstname": "Daan", "lastname": "Visser", "subject": "Demo lead",
                         "emailaddress1": "daan@example.com"}),
    "A-3001": ("accounts", {"name": "Example Logistics", "emailaddress1": "info@logistics.example.com"}),
}
_KEYS = {"contacts": "contactid", "leads": "leadid", "accounts": "accountid"}


def ensure_records(client: DataverseClient) -> dict[str, str]:
    """Demo record name -> Dataverse id, creating the rows that do not exist yet."""
    ids: dict[str, str] = {}
    for name, (entity_set, columns) in DEMO_RECORDS.items():
        key = _KEYS[entity_set]
        email = odata_literal(columns["emailaddress1"])
        found = list(client.query(entity_set, select=[key], filter=f"emailaddress1 eq {email}", top=1))
        ids[name] = str(found[0][key]) if found else client.create(entity_set, columns)
    return ids


def job_row(store: DataverseJobStore, fields: dict[str, Any], ids: dict[str, str]) -> dict[str, Any]:
    """The job row a CRM user's form would create for one demo job: the store's own column mapping."""
    kind = fields.get("target_kind") or next((k for k in ("contact", "lead", "account") if fields.get(k)), None)
    name = fields.get("target_id") or (fields[kind] if kind else None)
    raw = {"operation": fields["operation"], "tags": fields["tags"], "score": fields.get("score") or None,
           "target_kind": kind, "target_id": ids[name] if name else None}
    return store.input_columns(raw)


def create_job_rows(
    client: DataverseClient, store: DataverseJobStore, jobs: list[dict[str, Any]], ids: dict[str, str]
) -> list[str]:
    return [client.create(store.t.entity_set, job_row(store, fields, ids)) for fields in jobs]
