"""Client-credentials auth for the Dataverse Web API, the only module that imports `msal`.

One `ConfidentialClientApplication` lives as long as the process, with its token cache: MSAL serves tokens from
the cache and asks the identity provider only when the cached token is about to expire, so a busy runner asks
for one token per hour, not one per request. The application is built lazily because MSAL fetches the
authority's OpenID configuration when it is constructed, and building a client should not need the network.

A 401 from Dataverse can mean the cached token was revoked early (an admin changed the app's roles, a sandbox
restarted). The response hook drops the cached token, fetches a fresh one and resends the request once; a second
401 is returned to the caller, which reports it as an auth error. The resend happens in the hook rather than in
the client so that every request sent with this auth gets the same single retry, and no caller can forget it.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import msal
import requests
from requests.auth import AuthBase

from connector import errors
from connector.http import translate_exceptions

log = logging.getLogger(__name__)

# Marks a resent request so that a second 401 is not retried again.
_RETRIED = "_dataverse_token_refreshed"


class DataverseAuth(AuthBase):
    """Attaches `Authorization: Bearer <token>` and refreshes the token once when Dataverse answers 401.

    `authority` is `https://login.microsoftonline.com/<tenant-id>` (or the sandbox's https loopback authority, with
    `instance_discovery=False`). `http_client` is the session MSAL uses to reach the identity provider; it must
    trust the provider's certificate. The secret is held by MSAL only and never appears in `repr` or messages.
    """

    def __init__(
        self,
        *,
        client_id: str,
        client_secret: str,
        authority: str,
        scope: str,
        http_client: requests.Session,
        instance_discovery: bool = True,
    ) -> None:
        if not client_id or not client_secret:
            raise errors.AuthError(
                "The Dataverse client id or client secret is empty; set CONNECTOR_DATAVERSE__CLIENT_ID and "
                "CONNECTOR_DATAVERSE__CLIENT_SECRET to the app registration's values."
            )
        self.client_id = client_id
        self.authority = authority
        self.scopes = [scope]
        self.http_client = http_client
        self._secret = client_secret
        self._instance_discovery = instance_discovery
        self._cache = msal.TokenCache()
        self._app: msal.ConfidentialClientApplication | None = None
        self._lock = threading.Lock()
        self.tokens_fetched = 0
        self.refreshes = 0

    def __repr__(self) -> str:
        return f"DataverseAuth(client_id={self.client_id!r}, authority={self.authority!r})"

    def _application(self) -> msal.ConfidentialClientApplication:
        if self._app is None:
            with translate_exceptions("Microsoft Entra ID"), _msal_errors():
                try:
                    self._app = msal.ConfidentialClientApplication(
                        self.client_id,
                        client_credential=self._secret,
                        authority=self.authority,
                        token_cache=self._cache,
                        http_client=self.http_client,
                        instance_discovery=self._instance_discovery,
                    )
                except ValueError as exc:
                    # MSAL's message names the authority and the discovery URL; it never holds the secret.
                    raise errors.AuthError(f"The Dataverse authority cannot be used: {exc}") from exc
        return self._app

    def token(self) -> str:
        """A valid access token, from MSAL's cache when it has one."""
        with self._lock:
            app = self._application()
            with translate_exceptions("Microsoft Entra ID"), _msal_errors():
                result: dict[str, Any] = app.acquire_token_for_client(scopes=self.scopes) or {}
        token = result.get("access_token")
        if not token:
            code = result.get("error", "unknown_error")
            # The description is Entra's text about the request (e.g. AADSTS7000215 invalid client secret).
            description = str(result.get("error_description", "")).split("\n")[0]
            raise errors.AuthError(
                f"Microsoft Entra ID refused a token for the Dataverse application {self.client_id!r}: "
                f"{code}: {description} Check the tenant id, the client id and the client secret."
            )
        if result.get("token_source") == "identity_provider":
            self.tokens_fetched += 1
            log.info("Fetched a new Dataverse access token for application %s", self.client_id)
        return str(token)

    def refresh(self, rejected: str) -> str:
        """A token other than `rejected`: drops it from the cache unless another thread already did."""
        with self._lock:
            for item in list(self._cache.search(msal.TokenCache.CredentialType.ACCESS_TOKEN)):
                if item.get("secret") == rejected:
                    self._cache.remove_at(item)
                    self.refreshes += 1
        return self.token()

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self.token()}"
        request.register_hook("response", self._on_response)
        return request

    def _on_response(self, response: requests.Response, **kwargs: Any) -> requests.Response:
        request = response.request
        if response.status_code != 401 or getattr(request, _RETRIED, False):
            return response
        header = str(request.headers.get("Authorization", ""))
        rejected = header.removeprefix("Bearer ")
        log.info("Dataverse refused the access token (401); fetching a fresh one and resending once")
        fresh = self.refresh(rejected)
        # Drain the 401 so its connection goes back to the pool before the resend borrows one.
        _ = response.content
        response.close()
        resend = request.copy()
        resend.headers["Authorization"] = f"Bearer {fresh}"
        setattr(resend, _RETRIED, True)
        assert response.connection is not None
        second: requests.Response = response.connection.send(resend, **kwargs)
        second.history.append(response)
        second.request = resend
        return second


@contextmanager
def _msal_errors() -> Iterator[None]:
    """MSAL raises its own error for an identity provider that answers with an HTTP error: map it onto our tree."""
    try:
        yield
    except msal.exceptions.MsalServiceError as exc:
        text = str(exc)
        match = re.search(r"HTTP Error: (\d{3})", text)
        status = int(match.group(1)) if match else None
        if status == 429 or (status is not None and status >= 500):
            raise errors.Unavailable(
                f"Microsoft Entra ID answered HTTP {status}; the token will be asked for again.", http_status=status
            ) from exc
        raise errors.AuthError(f"Microsoft Entra ID refused the request: {text[:200]}", http_status=status) from exc
