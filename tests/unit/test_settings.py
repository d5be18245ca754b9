"""Settings: a misspelled key is an error that names it, and each message says the value once."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.settings import SettingsError, load_settings


def test_a_misspelled_key_in_a_section_of_connector_toml_is_refused(tmp_path: Path) -> None:
    (tmp_path / "connector.toml").write_text('[runner]\nworkerz = 4\n[dataverse.jobs]\nentity_sett = "x"\n')
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert "runner.workerz: no such setting" in str(raised.value)
    assert "dataverse.jobs.entity_sett: no such setting" in str(raised.value)


def test_a_misspelled_nested_environment_variable_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONNECTOR_RUNNER__WORKERZ", "4")
    with pytest.raises(SettingsError, match=r"runner\.workerz: no such setting"):
        load_settings()


def test_a_misspelled_top_level_environment_variable_is_refused_like_a_key_of_connector_toml(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONNECTOR_PLATFROM", "mautic")
    monkeypatch.setenv("CONNECTOR_MAUTC__PASSWORD", "value-of-a-secret-42")
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert str(raised.value) == (
        "The configuration is not valid: CONNECTOR_MAUTC__PASSWORD: no such setting (config/example.toml lists "
        "every key); CONNECTOR_PLATFROM: no such setting (config/example.toml lists every key).")


def test_a_misspelled_secret_key_is_refused_without_showing_its_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONNECTOR_SPOTLER__CONSUMER_SECRT", "value-of-a-secret-42")
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert "spotler.consumer_secrt" in str(raised.value)
    assert "value-of-a-secret-42" not in str(raised.value)


def test_a_secrets_file_that_is_not_there_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CONNECTOR_SECRETS_FILE", str(tmp_path / "missing.env"))
    with pytest.raises(SettingsError, match=r"CONNECTOR_SECRETS_FILE names '.*missing\.env', which is not a file\."):
        load_settings()


def test_a_bad_log_level_is_named_once_as_given() -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings(log_level="bogus")
    message = str(raised.value)
    assert message == "The configuration is not valid: log_level is 'bogus'; use DEBUG, INFO, WARNING or ERROR."
    assert load_settings(log_level="debug").log_level == "DEBUG"


def test_the_example_toml_is_accepted_as_it_stands(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONNECTOR_CONFIG", str(Path(__file__).resolve().parents[2] / "config" / "example.toml"))
    load_settings()


def test_a_section_given_as_a_variable_that_is_not_json_is_named_without_its_value(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONNECTOR_MAUTIC", "password=value-of-a-secret-42")
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert str(raised.value) == ("The configuration is not valid: CONNECTOR_MAUTIC is not JSON; set a section as a "
                                 "JSON object, or key by key (CONNECTOR_MAUTIC__KEY).")


@pytest.mark.parametrize("source", ["environment", "connector.toml"])
def test_a_section_holding_secrets_of_the_wrong_shape_is_named_without_its_value(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, source: str
) -> None:
    monkeypatch.chdir(tmp_path)
    if source == "environment":
        monkeypatch.setenv("CONNECTOR_SPOTLER", '["value-of-a-secret-42"]')
    else:
        (tmp_path / "connector.toml").write_text('mautic = "value-of-a-secret-42"\n', encoding="utf-8")
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert "Input should be a valid dictionary" in str(raised.value)
    assert "value-of-a-secret-42" not in str(raised.value)
