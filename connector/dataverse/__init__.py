"""Dynamics 365 / Dataverse Web API: MSAL auth, OData queries, ETags, $batch, timeline records.

`auth` holds the only import of `msal`; `client` is the thin Web API client; `crm` is the `Crm` the runner uses.
`connect` wires the three together from plain values, so that the composition root stays short.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from config import defaults
from connector.dataverse.auth import DataverseAuth
from connector.dataverse.client import DataverseClient
from connector.http import CONNECT_TIMEOUT, READ_TIMEOUT, ApiSession, Brake

AUTHORITY_HOST = "https://login.microsoftonline.com"


def connect(
    *,
    environment_url: str,
    tenant_id: str,
    client_id: str,
    client_secret: str,
    authority_host: str = AUTHORITY_HOST,
    ca_file: str | None = None,
    pool_size: int = 8,
    timeout: tuple[float, float] | None = None,
    brake: Brake | None = None,
    sleep: Callable[[float], Any] = time.sleep,
    pace_by: str = defaults.DATAVERSE_PACE_BY,
    limit_window: float = defaults.DATAVERSE_LIMIT_WINDOW,
) -> DataverseClient:
    """A client for `environment_url`, authenticated as the app registration `client_id` in `tenant_id`.

    `ca_file` makes both the API session and MSAL's session trust that CA alone (the sandbox's); it also makes
    them ignore REQUESTS_CA_BUNDLE, which would otherwise override it. Close the client to close both sessions.
    `pace_by` and `limit_window` are the client's (see `DataverseClient`).
    """
    environment_url = environment_url.rstrip("/")
    timeout = timeout or (CONNECT_TIMEOUT, READ_TIMEOUT)
    # MSAL ignores its own timeout when given a session: ApiSession brings ours.
    identity = ApiSession("Microsoft Entra ID", pool_size=1, timeout=timeout)
    api = ApiSession("Dataverse", pool_size=pool_size, timeout=timeout, brake=brake)
    for session in (identity, api):
        if ca_file:
            session.verify = ca_file
            session.trust_env = False
    sandbox = authority_host.startswith(("https://127.0.0.1", "https://localhost"))
    api.auth = DataverseAuth(
        client_id=client_id,
        client_secret=client_secret,
        authority=f"{authority_host.rstrip('/')}/{tenant_id}",
        scope=f"{environment_url}/.default",
        http_client=identity,
        # Instance discovery asks Microsoft whether the authority host is known: never for a loopback sandbox.
        instance_discovery=not sandbox,
    )
    return DataverseClient(api, environment_url, sleep=sleep, pace_by=pace_by, limit_window=limit_window)


__all__ = ["DataverseAuth", "DataverseClient", "connect"]
