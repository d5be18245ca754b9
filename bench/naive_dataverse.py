"""The baseline on Dynamics 365: what a careful user writes in an afternoon when the jobs are rows of the job table.

One job at a time: read the first page of pending job rows from the Dataverse Web API in creation order, and for
each row make the Spotler calls its operation needs (with `requests` and OAuth1, as bench/naive.py does), create
a timeline post on the contact, then PATCH the row to succeeded (or failed) with its result code and message;
when the page is done, read the first page again, until no row is pending. Reading the first page again rather
than following the next link keeps every row: the rows just finished no longer match the filter, so an offset
into the pending rows would skip as many. Sign-in is MSAL's client credentials against the sandbox's token
endpoint, with its cached token; a 429 waits its Retry-After, a 5xx or a dropped connection is tried again after
a second.

Usage: python bench/naive_dataverse.py DATAVERSE_URL CA_FILE SPOTLER_URL
(DATAVERSE_URL is the environment URL, without /api/data/v9.2.) Prints one JSON line: {"succeeded": n,
"failed": m, "seconds": the time from the first read of the job table to the last job's PATCH}.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime
from typing import Any

import msal
import requests
from naive import answer, calls, send
from requests_oauthlib import OAuth1

from config.defaults import SANDBOX_CONSUMER_KEY, SANDBOX_CONSUMER_SECRET
from config.settings import DataverseTableSettings
from connector.sandbox.dataverse import SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET, SANDBOX_TENANT

PAGE = 500
NAMES = {"add_tag": "Add Tag", "remove_tag": "Remove Tag", "set_score": "Set Score",
         "increase_score": "Increase Score", "decrease_score": "Decrease Score", "remove_score": "Remove Score"}


def trusting(session: requests.Session, ca_file: str) -> requests.Session:
    session.verify = ca_file
    # Otherwise a REQUESTS_CA_BUNDLE in the environment would win over `verify`.
    session.trust_env = False
    return session


class Token(requests.auth.AuthBase):
    """A bearer token from MSAL, which answers from its cache until the token is about to expire."""

    def __init__(self, url: str, ca_file: str) -> None:
        identity = trusting(requests.Session(), ca_file)
        self.app = msal.ConfidentialClientApplication(
            SANDBOX_CLIENT_ID, client_credential=SANDBOX_CLIENT_SECRET, authority=f"{url}/{SANDBOX_TENANT}",
            http_client=identity, instance_discovery=False)
        self.scopes = [f"{url}/.default"]

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        result = self.app.acquire_token_for_client(scopes=self.scopes)
        if "access_token" not in result:
            raise SystemExit(f"no Dataverse token: {result.get('error')}")
        request.headers["Authorization"] = f"Bearer {result['access_token']}"
        return request


def call(session: requests.Session, method: str, url: str, **kwargs: Any) -> requests.Response:
    """One Web API request, tried again on a 429 (after its Retry-After), a 5xx or a dropped connection."""
    response = answer(session, method, url, **kwargs)
    if response is not None:
        response.raise_for_status()
        return response
    raise SystemExit(f"Dataverse kept failing {method} {url}")


def main() -> None:
    url, ca_file, spotler = sys.argv[1].rstrip("/"), sys.argv[2], sys.argv[3].rstrip("/") + "/"
    t = DataverseTableSettings()  # the job table's default mapping, which the sandbox defines
    api = f"{url}/api/data/v9.2/"
    operations = {value: NAMES[name] for name, value in t.operation_values.items() if name in NAMES}
    contact = f"_{t.contact_lookup.lower()}_value"
    reasons = t.status_reasons

    dataverse = trusting(requests.Session(), ca_file)
    dataverse.auth = Token(url, ca_file)
    dataverse.headers.update({"Accept": "application/json", "OData-MaxVersion": "4.0", "OData-Version": "4.0",
                              "Prefer": f"odata.maxpagesize={PAGE}"})
    platform = requests.Session()
    platform.auth = OAuth1(SANDBOX_CONSUMER_KEY, client_secret=SANDBOX_CONSUMER_SECRET, signature_type="AUTH_HEADER")
    pending = {"$select": ",".join([t.primary_key, t.operation, t.tags, t.score, contact]),
               "$filter": f"statuscode eq {reasons.pending}",
               "$orderby": f"{t.created_on} asc,{t.sequence} asc"}

    succeeded = failed = 0
    started = time.perf_counter()
    while rows := call(dataverse, "GET", api + t.entity_set, params=pending).json()["value"]:
        for row in rows:
            job, operation, target = row[t.primary_key], operations.get(row[t.operation]), row.get(contact)
            tags = [x.strip() for x in (row.get(t.tags) or "").replace(",", ";").split(";") if x.strip()]
            score = "" if row.get(t.score) is None else str(row[t.score])
            done = bool(operation and target) and all(
                send(platform, method, spotler + path, body)
                for method, path, body in calls(str(operation), str(target), tags, score))
            if done:
                call(dataverse, "POST", api + "posts", json={
                    "text": f"{operation} done (job {job})", "source": 1, "type": 7,
                    "regardingobjectid_contact@odata.bind": f"/contacts({target})"})
            status, state = (reasons.succeeded, reasons.succeeded_state) if done else \
                (reasons.failed, reasons.failed_state)
            call(dataverse, "PATCH", f"{api}{t.entity_set}({job})", json={
                "statuscode": status, "statecode": state, t.result_code: "OK" if done else "FAILED",
                t.message: f"{operation} done" if done else f"{operation} failed", t.attempts: 1,
                t.last_attempt_at: datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")})
            succeeded, failed = succeeded + done, failed + (not done)
    print(json.dumps({"succeeded": succeeded, "failed": failed, "seconds": time.perf_counter() - started}))


if __name__ == "__main__":
    main()
