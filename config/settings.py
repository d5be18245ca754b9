"""Settings, read once at the entry point and passed down.

Precedence, highest first: command-line flags (passed to `load_settings` as overrides), environment variables
`CONNECTOR_*` (nested with `__`, e.g. `CONNECTOR_SPOTLER__BASE_URL`), the secrets file named by
`CONNECTOR_SECRETS_FILE` (dotenv format), `connector.toml` in the working directory (or `CONNECTOR_CONFIG`), then
the defaults below. Secrets are `SecretStr`: they print as `**********` and are refused in `connector.toml`.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from config import defaults


class SettingsError(ValueError):
    """The configuration cannot be used; the message says which key and what would be right."""


class RetrySettings(BaseModel):
    max_attempts: int = Field(defaults.MAX_ATTEMPTS, ge=1, le=100)
    backoff_initial: float = Field(defaults.BACKOFF_INITIAL, gt=0)
    backoff_max: float = Field(defaults.BACKOFF_MAX, gt=0)
    jitter: float = Field(defaults.BACKOFF_JITTER, ge=0)
    retry_after_cap: float = Field(defaults.RETRY_AFTER_CAP, gt=0)
    inline_wait_max: float = Field(defaults.INLINE_WAIT_MAX, ge=0)


class RunnerSettings(BaseModel):
    workers: int = Field(defaults.WORKERS, ge=1, le=256)
    batch_size: int = Field(defaults.BATCH_SIZE, ge=1, le=5000)
    lease_seconds: float = Field(defaults.LEASE_SECONDS, gt=0)
    tick_seconds: float = Field(defaults.TICK_SECONDS, gt=0)


class HttpSettings(BaseModel):
    connect_timeout: float = Field(defaults.CONNECT_TIMEOUT, gt=0)
    read_timeout: float = Field(defaults.READ_TIMEOUT, gt=0)
    max_requests_per_second: float | None = Field(
        None, gt=0, description="client-side cap per API; unset means only the API's 429s slow us down"
    )


class FaultSettings(BaseModel):
    """Faults injected by the sandboxes (ignored outside sandbox mode)."""

    latency_ms: float = Field(0.0, ge=0)
    jitter_ms: float = Field(0.0, ge=0)
    rate_limit: float | None = Field(None, gt=0)
    retry_after: float = Field(1.0, ge=0)
    error_rate: float = Field(0.0, ge=0, le=1)
    reset_rate: float = Field(0.0, ge=0, le=1)
    timeout_rate: float = Field(0.0, ge=0, le=1)
    drop_rate: float = Field(0.0, ge=0, le=1)
    hang_seconds: float = Field(35.0, ge=0)
    seed: int | None = None


class SpotlerSettings(BaseModel):
    base_url: str | None = Field(None, description="unset: the sandbox is started on loopback")
    consumer_key: str = defaults.SANDBOX_CONSUMER_KEY
    consumer_secret: SecretStr = SecretStr(defaults.SANDBOX_CONSUMER_SECRET)
    create_missing_contacts: bool = False


class MauticSettings(BaseModel):
    base_url: str | None = Field(None, description="unset: the sandbox is started on loopback")
    auth: Literal["basic", "oauth2"] = "basic"
    username: str = defaults.SANDBOX_MAUTIC_USER
    password: SecretStr = SecretStr(defaults.SANDBOX_MAUTIC_PASSWORD)
    client_id: str = ""
    client_secret: SecretStr = SecretStr("")
    contact_field: str | None = Field(
        None, description="alias of a unique Mautic contact field holding the CRM id; unset: find by e-mail"
    )


class DataverseSettings(BaseModel):
    environment_url: str | None = Field(None, description="unset: the sandbox is started on loopback")
    tenant_id: str = ""
    client_id: str = ""
    client_secret: SecretStr = SecretStr("")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CONNECTOR_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    home: Path = Field(Path(defaults.HOME), description="data directory of the embedded default")
    platform: Literal["spotler", "mautic"] = "spotler"
    job_store: Literal["sqlite", "dataverse"] = "sqlite"
    crm: Literal["local", "dataverse"] = "local"
    log_level: str = "WARNING"

    runner: RunnerSettings = RunnerSettings()
    retry: RetrySettings = RetrySettings()
    http: HttpSettings = HttpSettings()
    faults: FaultSettings = FaultSettings()
    spotler: SpotlerSettings = SpotlerSettings()
    mautic: MauticSettings = MauticSettings()
    dataverse: DataverseSettings = DataverseSettings()

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        value = value.upper()
        if value not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError(f"log_level is {value!r}; use DEBUG, INFO, WARNING or ERROR")
        return value

    @property
    def sandbox_mode(self) -> bool:
        """True when any outside system is the loopback emulator rather than a real service."""
        platform_url = self.spotler.base_url if self.platform == "spotler" else self.mautic.base_url
        uses_dataverse = self.job_store == "dataverse" or self.crm == "dataverse"
        return platform_url is None or (uses_dataverse and self.dataverse.environment_url is None)

    def secret_values(self) -> list[str]:
        """Every configured secret, for redaction and for tests that look for leaks."""
        found: list[str] = []

        def walk(model: BaseModel) -> None:
            for name in type(model).model_fields:
                value = getattr(model, name)
                if isinstance(value, SecretStr) and value.get_secret_value():
                    found.append(value.get_secret_value())
                elif isinstance(value, BaseModel):
                    walk(value)

        walk(self)
        return found

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        secrets_file = os.environ.get("CONNECTOR_SECRETS_FILE")
        if secrets_file:
            sources.append(DotEnvSettingsSource(settings_cls, env_file=secrets_file))
        sources.append(_TomlSource(settings_cls))
        return tuple(sources)


def _secret_paths(model: type[BaseModel], prefix: str = "") -> set[str]:
    paths: set[str] = set()
    for name, info in model.model_fields.items():
        if info.annotation is SecretStr:
            paths.add(prefix + name)
        elif isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            paths |= _secret_paths(info.annotation, prefix + name + ".")
    return paths


class _TomlSource(PydanticBaseSettingsSource):
    """`connector.toml`, refusing secrets: they belong in the environment or the secrets file."""

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        super().__init__(settings_cls)
        self.path = Path(os.environ.get("CONNECTOR_CONFIG", defaults.CONFIG_FILE))

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        if not self.path.is_file():
            if "CONNECTOR_CONFIG" in os.environ:
                raise SettingsError(f"CONNECTOR_CONFIG names {str(self.path)!r}, which is not a file.")
            return {}
        try:
            data = tomllib.loads(self.path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"{self.path} is not valid TOML: {exc}.") from exc
        for path in sorted(_secret_paths(self.settings_cls)):
            section, _, key = path.rpartition(".")
            table = data.get(section, {}) if section else data
            if isinstance(table, dict) and key in table:
                env = "CONNECTOR_" + path.upper().replace(".", "__")
                raise SettingsError(
                    f"{self.path} sets the secret {path}; secrets are not read from {self.path.name}. "
                    f"Set {env} in the environment or in the file named by CONNECTOR_SECRETS_FILE."
                )
        return data


def load_settings(**overrides: Any) -> Settings:
    """The effective settings. `overrides` are command-line flags, as nested dicts; None values are ignored."""
    from pydantic import ValidationError

    clean = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**clean)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']} (got {err.get('input')!r})" for err in exc.errors()
        )
        raise SettingsError(f"The configuration is not valid: {problems}.") from exc
