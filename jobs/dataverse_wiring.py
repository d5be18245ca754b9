"""Building the Dataverse pieces from settings, for the composition root (`jobs.app`).

Kept apart from `jobs.app` so that the Dataverse wiring can be read (and tested) in one place; `jobs.app` calls
these four functions when `job_store = "dataverse"` or `crm = "dataverse"`. With `dataverse.environment_url`
unset, the Dataverse sandbox is started on loopback over https, with its own throw-away CA, and the real client
(real MSAL) is pointed at it with the sandbox's credentials.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from config.settings import DataverseEntriesSettings, DataverseTableSettings, Settings
from connector.dataverse import connect
from connector.dataverse.client import DataverseClient
from connector.dataverse.crm import DataverseCrm
from connector.http import Brake
from connector.sandbox.dataverse import (
    SANDBOX_CLIENT_ID,
    SANDBOX_CLIENT_SECRET,
    SANDBOX_TENANT,
    DataverseSandbox,
    EntityDef,
    Lookup,
)
from connector.sandbox.server import Faults, SandboxServer
from jobs.store.dataverse import MESSAGE_MAX, TARGET_SETS, DataverseJobStore, value_column


def sandbox_home(settings: Settings) -> Path:
    return settings.home / "sandbox"


def serve_dataverse_sandbox(settings: Settings, *, port: int = 0) -> SandboxServer:
    """The Dataverse emulator (identity provider and Web API on one https port), with the job table as mapped."""
    sandbox = DataverseSandbox(
        sandbox_home(settings), port=port, faults=Faults(**settings.faults.model_dump()),
        tables=[sandbox_table(settings.dataverse.jobs), sandbox_entries_table(settings.dataverse.entries)],
    )
    return sandbox.start().server


def sandbox_ca_file(settings: Settings) -> Path:
    """The CA a client must trust to talk to the sandbox (curl --cacert, REQUESTS_CA_BUNDLE for a script)."""
    return sandbox_home(settings) / "dataverse-sandbox-ca.pem"


def dataverse_client(
    settings: Settings,
    *,
    sandbox_url: str | None = None,
    brake: Brake | None = None,
    sleep: Callable[[float], Any] = time.sleep,
) -> DataverseClient:
    """The Web API client: the configured environment, or the sandbox at `sandbox_url` with its credentials."""
    dv = settings.dataverse
    timeout = (settings.http.connect_timeout, settings.http.read_timeout)
    if dv.environment_url is None:
        if sandbox_url is None:
            raise ValueError("dataverse.environment_url is unset and no Dataverse sandbox is running")
        return connect(
            environment_url=sandbox_url, tenant_id=SANDBOX_TENANT, client_id=SANDBOX_CLIENT_ID,
            client_secret=SANDBOX_CLIENT_SECRET, authority_host=sandbox_url, ca_file=str(sandbox_ca_file(settings)),
            pool_size=settings.runner.workers, timeout=timeout, brake=brake, sleep=sleep, pace_by=dv.pace_by,
        )
    return connect(
        environment_url=dv.environment_url, tenant_id=dv.tenant_id, client_id=dv.client_id,
        client_secret=dv.client_secret.get_secret_value(), authority_host=dv.authority_host,
        pool_size=settings.runner.workers, timeout=timeout, brake=brake, sleep=sleep, pace_by=dv.pace_by,
    )


def dataverse_store(
    settings: Settings, client: DataverseClient, *, clock: Callable[[], float] = time.time
) -> DataverseJobStore:
    return DataverseJobStore(client, settings.dataverse.jobs, entries=settings.dataverse.entries, clock=clock,
                             page_size=settings.dataverse.page_size)


def dataverse_crm(settings: Settings, client: DataverseClient) -> DataverseCrm:
    dv = settings.dataverse
    return DataverseCrm(client, timeline=dv.timeline, note_subject=dv.note_subject,
                        identify_column=dv.identify_column, identify_as=dv.identify_as)


def sandbox_table(table: DataverseTableSettings) -> EntityDef:
    """The job table as the Dataverse sandbox should define it, from the same mapping the store uses."""
    reasons = table.status_reasons
    lookups = tuple(
        Lookup(navigation, TARGET_SETS[kind], value_column(navigation))
        for kind, navigation in (("contact", table.contact_lookup), ("lead", table.lead_lookup),
                                 ("account", table.account_lookup))
    )
    columns = {
        table.operation, table.tags, table.score, table.result_code, table.message, table.http_status,
        table.attempts, table.last_attempt_at, table.next_attempt_at, table.lease_owner, table.lease_expires_at,
        table.applied_at, table.posted_at, table.score_before, table.attempt_log, table.payload, table.request_id,
        table.origin,
    }
    if table.sequence:
        columns.add(table.sequence)
    return EntityDef(
        entity_set=table.entity_set,
        logical_name=table.entity_set.removesuffix("s"),
        key=table.primary_key,
        columns=frozenset(columns),
        lookups=lookups,
        max_lengths={table.message: MESSAGE_MAX, table.attempt_log: 1_048_576, table.payload: 1_048_576},
        autonumber=table.sequence or None,
        status_reasons={
            reasons.pending: reasons.pending_state, reasons.running: reasons.running_state,
            reasons.succeeded: reasons.succeeded_state, reasons.failed: reasons.failed_state,
            reasons.cancelled: reasons.cancelled_state,
        },
        default_status=reasons.pending,
    )


def sandbox_entries_table(entries: DataverseEntriesSettings) -> EntityDef:
    """The entries table (records kept with a job's outcome) as the sandbox should define it."""
    return EntityDef(
        entity_set=entries.entity_set, logical_name=entries.entity_set.removesuffix("s"), key=entries.primary_key,
        columns=frozenset({entries.stream, entries.key, entries.job_id, entries.data, entries.at}),
        max_lengths={entries.data: 1_048_576},
    )
