"""The composition root refuses what would fail every job: a real service with the sandbox's credentials."""

from __future__ import annotations

from pathlib import Path

import pytest

from config import SettingsError, load_settings
from jobs.app import build


@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        ({"spotler": {"base_url": "https://restapi.mailplus.nl/integrationservice-1.1.0"}},
         "CONNECTOR_SPOTLER__CONSUMER_SECRET"),
        ({"platform": "mautic", "mautic": {"base_url": "https://marketing.example.com"}},
         "CONNECTOR_MAUTIC__PASSWORD"),
        ({"platform": "mautic", "mautic": {"base_url": "https://marketing.example.com", "auth": "oauth2"}},
         "CONNECTOR_MAUTIC__CLIENT_SECRET"),
    ],
)
def test_a_real_service_without_its_secret_is_refused_before_any_job_runs(
    tmp_path: Path, overrides: dict[str, object], names: str
) -> None:
    settings = load_settings(home=tmp_path / "home", **overrides)
    with pytest.raises(SettingsError, match=names):
        build(settings)


def test_the_sandboxes_served_on_loopback_accept_their_own_credentials(tmp_path: Path) -> None:
    settings = load_settings(home=tmp_path / "home", spotler={"base_url": "http://127.0.0.1:9/x"})
    build(settings).close()
