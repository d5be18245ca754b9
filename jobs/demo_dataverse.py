"""The demo's CRM user path on Dynamics 365: records and job rows created through the Dataverse Web API.

With `connector demo --crm dataverse` the demo does what a CRM user does: it creates contacts, a lead and an
account in the (sandbox) Dataverse, then job rows in the job table with their lookups, exactly as the job form
would. The runner then claims those rows, applies them on the platform, writes the outcome back on each row and
posts on each record's timeline.
"""

from __future__ import annotations

from typing import Any

from config.settings import DataverseTableSettings
from connector.dataverse.client import DataverseClient, odata_literal

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


def job_row(table: DataverseTableSettings, fields: dict[str, Any], ids: dict[str, str]) -> dict[str, Any]:
    """The job row a CRM user's form would create for one demo job."""
    operation = str(fields["operation"]).strip().lower().replace(" ", "_")
    row: dict[str, Any] = {
        table.operation: table.operation_values.get(operation, operation) if table.operation_values else operation,
        table.tags: fields["tags"],
    }
    if fields.get("score") not in (None, ""):
        row[table.score] = int(fields["score"])
    lookups = {"contact": (table.contact_lookup, "contacts"), "lead": (table.lead_lookup, "leads"),
               "account": (table.account_lookup, "accounts")}
    kind = fields.get("target_kind") or next((k for k in lookups if fields.get(k)), None)
    if kind is not None:
        name = fields.get("target_id") or fields[kind]
        navigation, entity_set = lookups[kind]
        row[f"{navigation}@odata.bind"] = f"/{entity_set}({ids[name]})"
    return row


def create_job_rows(
    client: DataverseClient, table: DataverseTableSettings, jobs: list[dict[str, Any]], ids: dict[str, str]
) -> list[str]:
    return [client.create(table.entity_set, job_row(table, fields, ids)) for fields in jobs]
