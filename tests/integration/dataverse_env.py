"""Helpers for the Dataverse integration tests: the sandbox over https, a real client (real MSAL), records."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from config.settings import DataverseEntriesSettings, DataverseTableSettings
from connector.dataverse import connect
from connector.dataverse.client import DataverseClient
from connector.http import Brake
from connector.sandbox.dataverse import SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET, SANDBOX_TENANT, DataverseSandbox
from connector.sandbox.server import Faults
from jobs.dataverse_wiring import sandbox_entries_table, sandbox_table

TABLE = DataverseTableSettings()


@contextmanager
def running_sandbox(
    home: Path, *, faults: Faults | None = None, table: DataverseTableSettings = TABLE
) -> Iterator[DataverseSandbox]:
    tables = [sandbox_table(table), sandbox_entries_table(DataverseEntriesSettings())]
    sandbox = DataverseSandbox(home / "dataverse", faults=faults, tables=tables)
    with sandbox:
        yield sandbox


@contextmanager
def client_for(
    sandbox: DataverseSandbox, *, secret: str = SANDBOX_CLIENT_SECRET, brake: Brake | None = None
) -> Iterator[DataverseClient]:
    client = connect(
        environment_url=sandbox.url, tenant_id=SANDBOX_TENANT, client_id=SANDBOX_CLIENT_ID, client_secret=secret,
        authority_host=sandbox.url, ca_file=str(sandbox.ca_file), brake=brake,
    )
    try:
        yield client
    finally:
        client.close()


def make_record(client: DataverseClient, kind: str = "contact", **columns: Any) -> str:
    entity_set = {"contact": "contacts", "lead": "leads", "account": "accounts"}[kind]
    defaults: dict[str, Any] = {"contact": {"firstname": "Ann", "lastname": "Smith"},
                                "lead": {"firstname": "Lee", "subject": "Trial"},
                                "account": {"name": "Contoso"}}[kind]
    return client.create(entity_set, {**defaults, **columns})
