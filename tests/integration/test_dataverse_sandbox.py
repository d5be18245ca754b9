"""The Dataverse sandbox over https on loopback, driven by the real client and real MSAL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from connector import errors
from connector.dataverse.batch import BatchPart
from connector.dataverse.client import DataverseClient, odata_literal
from connector.http import Brake
from connector.sandbox.dataverse import SANDBOX_CLIENT_ID, DataverseSandbox
from connector.sandbox.server import FaultInjector, Faults
from tests.integration.dataverse_env import client_for, make_record, running_sandbox


@pytest.fixture
def raw(sandbox: DataverseSandbox, client: DataverseClient) -> Iterator[requests.Session]:
    """A plain session with a valid token but no OData headers: to see what the sandbox refuses."""
    session = sandbox.http_session()
    token = client.session.auth.token()  # type: ignore[union-attr]
    session.headers["Authorization"] = f"Bearer {token}"
    yield session
    session.close()


ODATA = {"OData-MaxVersion": "4.0", "OData-Version": "4.0", "Accept": "application/json"}


def test_msal_gets_a_token_from_the_sandbox_and_reuses_it(client, sandbox):
    make_record(client)
    make_record(client)
    auth = client.session.auth
    assert auth.tokens_fetched == 1  # type: ignore[union-attr]


def test_a_revoked_token_is_refreshed_once(client, sandbox):
    contact = make_record(client)
    sandbox.app.revoke_tokens()
    assert client.get("contacts", contact)["firstname"] == "Ann"
    assert client.session.auth.refreshes == 1  # type: ignore[union-attr]


def test_a_wrong_secret_is_refused_with_an_auth_error(sandbox):
    with client_for(sandbox, secret="not-the-secret") as bad, pytest.raises(errors.AuthError) as caught:
        make_record(bad)
    assert "AADSTS7000215" in caught.value.message
    assert "not-the-secret" not in caught.value.message


def test_without_a_token_the_api_answers_401(sandbox):
    with sandbox.http_session() as session:
        response = session.get(f"{sandbox.url}/api/data/v9.2/contacts", headers=ODATA)
    assert response.status_code == 401
    assert "error" in response.json()


def test_requests_without_odata_version_headers_are_refused(sandbox, raw):
    response = raw.get(f"{sandbox.url}/api/data/v9.2/contacts")
    assert response.status_code == 400
    assert "OData-MaxVersion" in response.json()["error"]["message"]


def test_skip_and_oversized_pages_are_refused(sandbox, raw):
    skip = raw.get(f"{sandbox.url}/api/data/v9.2/contacts?$skip=10", headers=ODATA)
    assert skip.status_code == 400
    assert "$skip" in skip.json()["error"]["message"]
    big = raw.get(f"{sandbox.url}/api/data/v9.2/contacts",
                  headers={**ODATA, "Prefer": "odata.maxpagesize=5001"})
    assert big.status_code == 400


def test_an_unknown_entity_set_is_the_resource_not_found_error(client):
    with pytest.raises(errors.NotFound, match="segment 'contact'"):
        list(client.query("contact"))


def test_paging_follows_next_link_until_every_row_is_read(client, sandbox):
    for i in range(7):
        make_record(client, lastname=f"Person {i}")
    rows = list(client.query("contacts", select=["lastname"], orderby="lastname desc", page_size=3))
    assert [r["lastname"] for r in rows] == [f"Person {i}" for i in reversed(range(7))]
    assert sandbox.app.requests_by_method["GET"] == 3


def test_filters_cover_comparisons_functions_null_and_lookups(client):
    ann = make_record(client, firstname="Ann", lastname="O'Brien", emailaddress1="ann@example.com")
    bob = make_record(client, firstname="Bob", lastname="Jones")
    account = make_record(client, "account")
    note = client.create("annotations", {"subject": "hello", "objectid_account@odata.bind": f"/accounts({account})"})

    def ids(entity_set: str, query: str) -> list[str]:
        key = {"contacts": "contactid", "annotations": "annotationid"}[entity_set]
        return [r[key] for r in client.query(entity_set, filter=query)]

    assert ids("contacts", f"lastname eq {odata_literal(chr(39).join(['O', 'Brien']))}") == [ann]
    assert ids("contacts", "emailaddress1 ne null and startswith(firstname, 'an')") == [ann]
    # Functions compare without case, as Dataverse does: Jones ends with NES, and O'Brien contains bri.
    assert ids("contacts", "not (contains(lastname, 'bri')) and endswith(lastname, 'NES')") == [bob]
    assert len(ids("contacts", "firstname eq 'Ann' or firstname eq 'Bob'")) == 2
    assert ids("annotations", f"_objectid_value eq {account}") == [note]
    with pytest.raises(errors.InvalidInput, match="Could not find a property named 'nosuch'"):
        ids("contacts", "nosuch eq 1")


def test_navigation_property_names_are_case_sensitive(client):
    contact = make_record(client)
    with pytest.raises(errors.InvalidInput, match="undeclared property 'RegardingObjectId_Contact'"):
        client.create("posts", {"text": "x", "RegardingObjectId_Contact@odata.bind": f"/contacts({contact})"})


def test_if_match_with_a_stale_etag_is_a_conflict(client):
    contact = make_record(client)
    etag = client.get("contacts", contact)["@odata.etag"]
    client.update("contacts", contact, {"lastname": "First"}, etag=etag)
    with pytest.raises(errors.Conflict):
        client.update("contacts", contact, {"lastname": "Second"}, etag=etag)
    assert client.get("contacts", contact)["lastname"] == "First"


def test_a_change_set_is_all_or_nothing(client):
    contact = make_record(client)
    with_missing = [
        BatchPart("PATCH", f"contacts({contact})", body={"lastname": "Changed"}, headers={"If-Match": "*"}),
        BatchPart("PATCH", "contacts(00000000-0000-4000-8000-0000000000ff)", body={"lastname": "x"},
                  headers={"If-Match": "*"}),
    ]
    results = client.batch(with_missing, changeset=True)
    assert [r.status for r in results] == [404]
    assert client.get("contacts", contact)["lastname"] == "Smith"

    results = client.batch(with_missing[:1], changeset=True)
    assert [r.status for r in results] == [204]
    assert client.get("contacts", contact)["lastname"] == "Changed"


def test_batch_without_change_set_stops_at_the_first_failure_unless_told_to_continue(client):
    contact = make_record(client)
    parts = [
        BatchPart("GET", "contacts(00000000-0000-4000-8000-0000000000ff)"),
        BatchPart("GET", f"contacts({contact})?$select=firstname"),
    ]
    assert [r.status for r in client.batch(parts)] == [404]
    results = client.batch(parts, continue_on_error=True)
    assert [r.status for r in results] == [404, 200]
    assert results[1].json()["firstname"] == "Ann"


def test_a_rate_limit_past_the_configured_request_rate_is_honoured(tmp_path, clock):
    # The sandbox's rate window and the client's brake share one fake clock: the Retry-After passes without waiting.
    faults = Faults(rate_limit=3, retry_after=0.5)
    with running_sandbox(tmp_path, faults=faults) as sandbox:
        sandbox.server.injector = FaultInjector(faults, clock=clock)
        with client_for(sandbox, brake=Brake("Dataverse", clock=clock, sleep=clock.sleep)) as client:
            for _ in range(6):
                make_record(client)
            throttled = sandbox.server.injector.counts.get("429", 0)
            assert throttled >= 1
            assert client.session.throttled == throttled
    assert clock.slept and max(clock.slept) <= 0.5


def test_state_survives_a_restart(tmp_path):
    with running_sandbox(tmp_path) as sandbox, client_for(sandbox) as client:
        contact = make_record(client)
    with running_sandbox(tmp_path) as sandbox, client_for(sandbox) as client:
        assert client.get("contacts", contact)["firstname"] == "Ann"


def test_the_sandbox_client_id_is_a_guid_like_real_app_registrations():
    assert len(SANDBOX_CLIENT_ID) == 36
