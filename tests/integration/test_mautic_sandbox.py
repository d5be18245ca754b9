"""The real Mautic adapter against the Mautic sandbox over loopback, through `SandboxServer`.

Each test checks an operation's effect as the README's operations table states it, by looking at the sandbox's
state rather than only at what the adapter reports.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from pydantic import SecretStr
from requests.auth import HTTPBasicAuth

from config.settings import MauticSettings
from connector import errors
from connector.http import ApiSession, Brake
from connector.mautic import MauticOAuth2, MauticPlatform, build_auth
from connector.platform import Contact
from connector.sandbox.mautic import MauticSandbox
from connector.sandbox.server import Faults, SandboxServer

USER, PASSWORD = "sandbox", "sandbox-password"
CLIENT_ID, CLIENT_SECRET = "client-1", "client-secret-value"
ANN = Contact(external_id="crm-ann", email="ann@example.com")


@pytest.fixture
def sandbox(tmp_path: Path) -> MauticSandbox:
    return MauticSandbox(
        tmp_path / "mautic.sqlite3",
        username=USER,
        password=PASSWORD,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
    )


@pytest.fixture
def server(sandbox: MauticSandbox) -> Iterator[SandboxServer]:
    with SandboxServer(sandbox) as running:
        yield running


@pytest.fixture
def session() -> Iterator[ApiSession]:
    # Never sleep for real: a 429 pauses this brake without blocking the test.
    with ApiSession("Mautic", brake=Brake("Mautic", sleep=lambda _: None)) as api:
        yield api


def basic(
    server: SandboxServer, session: ApiSession, password: str = PASSWORD, contact_field: str | None = None
) -> MauticPlatform:
    auth = HTTPBasicAuth(USER, password)
    return MauticPlatform(session, base_url=server.url, auth=auth, contact_field=contact_field)


@pytest.fixture
def mautic(server: SandboxServer, session: ApiSession) -> MauticPlatform:
    return basic(server, session)


@pytest.fixture
def ann(sandbox: MauticSandbox) -> int:
    return sandbox.seed_contact("ann@example.com", external_id="crm-ann", firstname="Ann")


def test_add_tags_tags_the_contact_and_creates_missing_tags(
    mautic: MauticPlatform, sandbox: MauticSandbox, ann: int
) -> None:
    sandbox.seed_contact("bob@example.com", tags=["Existing"])
    mautic.add_tags(ANN, ["Webinar", "Existing"], ref="job-1")
    assert sandbox.tags_of(ann) == ["Existing", "Webinar"]
    assert sandbox.tag_names() == ["Existing", "Webinar"]


def test_create_tags_without_a_contact_creates_each_tag_once(mautic: MauticPlatform, sandbox: MauticSandbox) -> None:
    mautic.create_tags(["Webinar", "Trial"])
    mautic.create_tags(["webinar"])
    assert sandbox.tag_names() == ["Webinar", "Trial"]


def test_remove_of_a_tag_the_contact_lacks_succeeds(mautic: MauticPlatform, sandbox: MauticSandbox, ann: int) -> None:
    mautic.add_tags(ANN, ["Keep"], ref="job-1")
    mautic.remove_tags(ANN, ["Never-had", "Unknown tag"], ref="job-2")
    assert sandbox.tags_of(ann) == ["Keep"]


def test_remove_tags_removes_the_tags_and_their_scores(
    mautic: MauticPlatform, sandbox: MauticSandbox, ann: int
) -> None:
    mautic.set_score(ANN, "Lead", 40, ref="job-1")
    mautic.add_tags(ANN, ["Keep"], ref="job-2")
    mautic.remove_tags(ANN, ["Lead"], ref="job-3")
    assert sandbox.tags_of(ann) == ["Keep"]
    assert sandbox.scores_of(ann) == {"Lead": 0}
    assert mautic.read_scores(ANN) == {"Keep": 0}
    # Adding the tag back later does not bring the old score back.
    mautic.add_tags(ANN, ["Lead"], ref="job-4")
    assert mautic.read_scores(ANN)["Lead"] == 0


def test_set_score_is_exact_including_negative_and_creates_the_tag(
    mautic: MauticPlatform, sandbox: MauticSandbox, ann: int
) -> None:
    mautic.set_score(ANN, "Lead", 10, ref="job-1")
    mautic.set_score(ANN, "Lead", -7, ref="job-2")
    assert sandbox.tags_of(ann) == ["Lead"]
    assert sandbox.group_names() == ["Lead"]
    assert mautic.read_scores(ANN) == {"Lead": -7}


def test_increase_and_decrease_start_from_zero_for_a_missing_tag(
    mautic: MauticPlatform, sandbox: MauticSandbox, ann: int
) -> None:
    mautic.change_score(ANN, "Lead", 5, ref="job-1")
    mautic.change_score(ANN, "Cold", -3, ref="job-2")
    mautic.change_score(ANN, "Lead", 10, ref="job-3")
    assert mautic.read_scores(ANN) == {"Cold": -3, "Lead": 15}


def test_remove_score_clears_the_score(mautic: MauticPlatform, sandbox: MauticSandbox, ann: int) -> None:
    mautic.change_score(ANN, "Lead", 12, ref="job-1")
    mautic.remove_tags(ANN, ["Lead"], ref="job-2")
    mautic.change_score(ANN, "Lead", 1, ref="job-3")
    assert mautic.read_scores(ANN) == {"Lead": 1}


def test_points_log_names_the_job_behind_each_change(mautic: MauticPlatform, sandbox: MauticSandbox, ann: int) -> None:
    mautic.set_score(ANN, "Lead", 10, ref="job-A")
    mautic.change_score(ANN, "Lead", -4, ref="job-B")
    mautic.remove_tags(ANN, ["Lead"], ref="job-C")
    log = sandbox.points_log(ann)
    assert [(e["event_name"], e["delta"]) for e in log] == [
        ("Connector job job-A", 10),
        ("Connector job job-B", -4),
        ("Connector job job-C", -6),
    ]
    assert log[1]["action_name"] == "minus 4 (Lead)"


def test_tag_names_and_groups_match_case_insensitively(
    mautic: MauticPlatform, sandbox: MauticSandbox, ann: int
) -> None:
    mautic.set_score(ANN, "Lead", 3, ref="job-1")
    mautic.change_score(ANN, "LEAD", 2, ref="job-2")
    assert sandbox.group_names() == ["Lead"]
    assert mautic.read_scores(ANN) == {"Lead": 5}


def test_lookup_by_email_is_exact_despite_like_wildcards(mautic: MauticPlatform, sandbox: MauticSandbox) -> None:
    decoy = sandbox.seed_contact("ann.x_y@example.com")
    target = sandbox.seed_contact("ann.x_y@example.org")
    lookalike = sandbox.seed_contact("ann.xzy@example.org")
    mautic.add_tags(Contact(email="Ann.X_Y@example.org"), ["Hit"], ref="job-1")
    assert sandbox.tags_of(target) == ["Hit"]
    assert sandbox.tags_of(decoy) == sandbox.tags_of(lookalike) == []


def test_lookup_by_configured_crm_id_field(server: SandboxServer, session: ApiSession, sandbox: MauticSandbox) -> None:
    sandbox.seed_contact("same@example.com", external_id="crm-1")
    wanted = sandbox.seed_contact("same@example.com", external_id="crm-2")
    mautic = basic(server, session, contact_field="crm_id")
    mautic.add_tags(Contact(external_id="crm-2", email="same@example.com"), ["X"], ref="job-1")
    assert sandbox.tags_of(wanted) == ["X"]


def test_unknown_contact_fails_with_contact_not_found(mautic: MauticPlatform) -> None:
    with pytest.raises(errors.NotFound) as caught:
        mautic.add_tags(Contact(email="nobody@example.com"), ["X"], ref="job-1")
    assert caught.value.result_code == "CONTACT_NOT_FOUND"
    assert "nobody@example.com" in caught.value.message


def test_a_deleted_contact_is_looked_up_again(mautic: MauticPlatform, sandbox: MauticSandbox, ann: int) -> None:
    mautic.add_tags(ANN, ["First"], ref="job-1")
    sandbox.delete_contact(ann)
    merged = sandbox.seed_contact("ann@example.com")
    mautic.add_tags(ANN, ["Second"], ref="job-2")
    assert sandbox.tags_of(merged) == ["Second"]


def test_wrong_basic_password_is_an_auth_error(
    server: SandboxServer, session: ApiSession, sandbox: MauticSandbox, ann: int
) -> None:
    mautic = basic(server, session, password="wrong")
    with pytest.raises(errors.AuthError) as caught:
        mautic.add_tags(ANN, ["X"], ref="job-1")
    assert caught.value.http_status == 401
    assert "wrong" not in str(caught.value)


@pytest.mark.parametrize(("given", "works"), [("wächter-€-密码", True), ("wächter-€-密", False), ("wachter", False)])
def test_basic_credentials_beyond_ascii_are_sent_and_checked_as_utf_8(
    tmp_path: Path, session: ApiSession, given: str, works: bool
) -> None:
    sandbox = MauticSandbox(tmp_path / "utf8.sqlite3", username="zoë", password="wächter-€-密码")
    sandbox.seed_contact("ann@example.com", external_id="crm-ann")
    with SandboxServer(sandbox) as running:
        settings = MauticSettings(base_url=running.url, username="zoë", password=SecretStr(given))
        mautic = MauticPlatform(session, base_url=running.url, auth=build_auth(settings, session, running.url))
        if works:
            mautic.add_tags(ANN, ["Café"], ref="job-1")
            assert mautic.read_scores(ANN) == {"Café": 0}
            return
        with pytest.raises(errors.AuthError) as caught:  # a 401 as for any wrong password, not a 500
            mautic.add_tags(ANN, ["Café"], ref="job-1")
        assert caught.value.http_status == 401 and given not in str(caught.value)


def oauth(
    server: SandboxServer, session: ApiSession, secret: str = CLIENT_SECRET
) -> tuple[MauticPlatform, MauticOAuth2]:
    auth = MauticOAuth2(session, token_url=server.url + "/oauth/v2/token", client_id=CLIENT_ID, client_secret=secret)
    return MauticPlatform(session, base_url=server.url, auth=auth), auth


def test_oauth2_fetches_one_token_and_refreshes_it_once_when_refused(
    server: SandboxServer, session: ApiSession, sandbox: MauticSandbox, ann: int
) -> None:
    mautic, auth = oauth(server, session)
    mautic.set_score(ANN, "Lead", 1, ref="job-1")
    mautic.change_score(ANN, "Lead", 1, ref="job-2")
    assert auth.tokens_fetched == 1
    sandbox.expire_tokens()
    mautic.change_score(ANN, "Lead", 1, ref="job-3")
    assert auth.tokens_fetched == 2
    assert mautic.read_scores(ANN) == {"Lead": 3}


def test_oauth2_wrong_secret_is_an_auth_error_without_the_secret(
    server: SandboxServer, session: ApiSession, ann: int
) -> None:
    mautic, _ = oauth(server, session, secret="not-the-secret")
    with pytest.raises(errors.AuthError) as caught:
        mautic.add_tags(ANN, ["X"], ref="job-1")
    assert "not-the-secret" not in str(caught.value)


def test_state_survives_a_restart(tmp_path: Path, session: ApiSession) -> None:
    path = tmp_path / "mautic.sqlite3"
    first = MauticSandbox(path, username=USER, password=PASSWORD)
    cid = first.seed_contact("ann@example.com")
    with SandboxServer(first) as running:
        basic(running, session).set_score(ANN, "Lead", 9, ref="job-1")
    second = MauticSandbox(path, username=USER, password=PASSWORD)
    with SandboxServer(second) as running:
        assert basic(running, session).read_scores(ANN) == {"Lead": 9}
    assert second.scores_of(cid) == {"Lead": 9}


@pytest.mark.parametrize(
    ("faults", "expected"),
    [
        (Faults(error_rate=1.0, seed=1), errors.Unavailable),
        (Faults(drop_rate=1.0, seed=1), errors.OutcomeUnknown),
        (Faults(reset_rate=1.0, seed=1), errors.TransientError),
    ],
)
def test_injected_faults_reach_the_adapter_as_transient_errors(
    sandbox: MauticSandbox, session: ApiSession, faults: Faults, expected: type[errors.ConnectorError]
) -> None:
    sandbox.seed_contact("ann@example.com")
    with SandboxServer(sandbox, faults=faults) as faulty:
        mautic = basic(faulty, session)
        with pytest.raises(expected):
            mautic.add_tags(ANN, ["X"], ref="job-1")


def test_rate_limit_answers_are_rate_limited_with_retry_after(sandbox: MauticSandbox, session: ApiSession) -> None:
    sandbox.seed_contact("ann@example.com")
    with SandboxServer(sandbox, faults=Faults(rate_limit=1, retry_after=4)) as server:
        mautic = basic(server, session)
        mautic.contact_id(ANN)
        with pytest.raises(errors.RateLimited) as caught:
            mautic.add_tags(ANN, ["X"], ref="job-1")
    assert caught.value.retry_after == 4
    assert session.brake.pauses == 1


def test_concurrent_workers_create_one_group_per_tag(mautic: MauticPlatform, sandbox: MauticSandbox) -> None:
    contacts = [Contact(email=f"c{i}@example.com") for i in range(8)]
    ids = [sandbox.seed_contact(c.email) for c in contacts]
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda c: mautic.change_score(c, "Shared", 2, ref="job-x"), contacts * 3))
    assert sandbox.group_names() == ["Shared"]
    assert all(sandbox.scores_of(cid) == {"Shared": 6} for cid in ids)
