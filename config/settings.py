"""Settings, read once at the entry point and passed down.

Precedence, highest first: command-line flags (passed to `load_settings` as overrides), environment variables
`CONNECTOR_*` (nested with `__`, e.g. `CONNECTOR_SPOTLER__BASE_URL`), the secrets file named by
`CONNECTOR_SECRETS_FILE` (dotenv format), `connector.toml` in the working directory (or `CONNECTOR_CONFIG`), then
the defaults below. Secrets are `SecretStr`: they print as `**********` and are refused in `connector.toml`.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from pydantic_settings import SettingsError as PydanticSettingsError

from config import defaults
from config.text import shown


class SettingsError(ValueError):
    """The configuration cannot be used; the message says which key and what would be right."""


class _Section(BaseModel):
    """A section of the settings: a key it does not know (`[runner] workerz = 4`) is an error, not ignored."""

    model_config = ConfigDict(extra="forbid")


class RetrySettings(_Section):
    max_age: float = Field(defaults.MAX_AGE, gt=0, description="seconds from a job's first try (since it was "
                           "queued or last retried by hand) within which transient errors are retried")
    max_attempts: int = Field(defaults.MAX_ATTEMPTS, ge=1, le=defaults.MAX_ATTEMPTS_LIMIT,
                              description="a second cap on the tries; with the defaults max_age ends retrying first")
    backoff_initial: float = Field(defaults.BACKOFF_INITIAL, gt=0)
    backoff_max: float = Field(defaults.BACKOFF_MAX, gt=0)
    jitter: float = Field(defaults.BACKOFF_JITTER, ge=0)
    retry_after_cap: float = Field(defaults.RETRY_AFTER_CAP, gt=0)
    inline_wait_max: float = Field(defaults.INLINE_WAIT_MAX, ge=0)


class RunnerSettings(_Section):
    workers: int = Field(defaults.WORKERS, ge=1, le=256)
    claim_ahead: int | None = Field(
        None, ge=0, le=256,
        description="claimed jobs held beyond the workers, so none waits for a claim; unset: half the workers",
    )
    batch_size: int = Field(defaults.BATCH_SIZE, ge=1, le=5000)
    lease_seconds: float = Field(defaults.LEASE_SECONDS, gt=0)
    tick_seconds: float = Field(defaults.TICK_SECONDS, gt=0)


class HttpSettings(_Section):
    connect_timeout: float = Field(defaults.CONNECT_TIMEOUT, gt=0)
    read_timeout: float = Field(defaults.READ_TIMEOUT, gt=0)
    max_requests_per_second: float | None = Field(
        None, gt=0, description="client-side cap per API; unset means only the API's 429s slow us down"
    )


class FaultSettings(_Section):
    """Faults injected by the sandboxes (ignored outside sandbox mode)."""

    latency_ms: float = Field(0.0, ge=0)
    jitter_ms: float = Field(0.0, ge=0)
    rate_limit: float | None = Field(None, gt=0)
    retry_after: float = Field(1.0, ge=0)
    throttle_rate: float = Field(0.0, ge=0, le=1, description="429s at random, whatever the request rate")
    error_rate: float = Field(0.0, ge=0, le=1)
    reset_rate: float = Field(0.0, ge=0, le=1)
    timeout_rate: float = Field(0.0, ge=0, le=1)
    drop_rate: float = Field(0.0, ge=0, le=1)
    hang_seconds: float = Field(35.0, ge=0)
    seed: int | None = None


class SpotlerSettings(_Section):
    base_url: str | None = Field(None, description="unset: the sandbox is started on loopback")
    consumer_key: str = defaults.SANDBOX_CONSUMER_KEY
    consumer_secret: SecretStr = SecretStr(defaults.SANDBOX_CONSUMER_SECRET)
    create_missing_contacts: bool = False


class WebhookSettings(_Section):
    """Webhooks that triggers send: signed with this secret (see the README), so the receiver can trust them."""

    secret: SecretStr = SecretStr(defaults.SANDBOX_WEBHOOK_SECRET)
    timeout: float = Field(defaults.WEBHOOK_TIMEOUT, gt=0, description="seconds to wait for the receiver's answer")


class MailSettings(_Section):
    """E-mail notifications that triggers send, through SMTP."""

    host: str | None = Field(None, description="unset: a local SMTP server keeps the mails in <home>/sandbox/mail")
    port: int = Field(587, ge=1, le=65535)
    security: Literal["starttls", "tls", "none"] = "starttls"
    username: str = ""
    password: SecretStr = SecretStr("")
    sender: str = Field("connector@localhost", description="the From address")


class MauticSettings(_Section):
    base_url: str | None = Field(None, description="unset: the sandbox is started on loopback")
    auth: Literal["basic", "oauth2"] = "basic"
    username: str = defaults.SANDBOX_MAUTIC_USER
    password: SecretStr = SecretStr(defaults.SANDBOX_MAUTIC_PASSWORD)
    client_id: str = ""
    client_secret: SecretStr = SecretStr("")
    contact_field: str | None = Field(
        None, description="alias of a unique Mautic contact field holding the CRM id; unset: find by e-mail"
    )
    batch_tag_edits: bool = Field(
        defaults.MAUTIC_BATCH_TAG_EDITS,
        description="tag edits of jobs running at once share PATCH /api/contacts/batch/edit requests; false: one "
        "contact edit request each",
    )


class EndpointSettings(_Section):
    """The HTTP endpoint of `connector serve`: events and jobs POSTed by other systems. A route whose secret or
    token is empty refuses every request, so nothing is open until it is configured."""

    host: str = Field("127.0.0.1", description="loopback: put a TLS proxy in front to face the internet")
    port: int = Field(8780, ge=0, le=65535, description="0: any free port")
    secret: SecretStr = SecretStr("")
    mautic_secret: SecretStr = SecretStr("")
    token: SecretStr = SecretStr("")
    mautic_record_field: str = Field("crm_id", min_length=1,
                                     description="alias of the Mautic contact field holding the CRM id")
    max_body: int = Field(1_048_576, ge=1, description="bytes; a larger body is refused unread")


class ConsoleSettings(_Section):
    """The web console of `connector console` (and `connector run --console`): pages for support staff and
    operators, `/metrics` and `/healthz`. Another address than loopback needs a password or a token."""

    host: str = Field(defaults.CONSOLE_HOST, description="loopback unless a password or a token is set")
    port: int = Field(defaults.CONSOLE_PORT, ge=0, le=65535, description="0: any free port")
    username: str = Field(defaults.CONSOLE_USERNAME, min_length=1, description="the login of HTTP basic auth")
    password: SecretStr = SecretStr("")
    token: SecretStr = SecretStr("")
    read_only: bool = Field(False, description="true: pages only, no retry or cancel")
    heartbeat_max_age: float = Field(defaults.HEARTBEAT_MAX_AGE, gt=0,
                                     description="seconds since a runner's last heartbeat for /healthz")


class DataverseStatusReasons(_Section):
    """The job table's status reason (`statuscode`) for each job status, and the state (`statecode`, 0 active,
    1 inactive) it belongs to. Custom status reasons get values from 100000000 up in Dataverse."""

    pending: int = 1
    running: int = 100_000_001
    succeeded: int = 2
    failed: int = 100_000_002
    cancelled: int = 100_000_003
    pending_state: int = Field(0, ge=0, le=1)
    running_state: int = Field(0, ge=0, le=1)
    succeeded_state: int = Field(1, ge=0, le=1)
    failed_state: int = Field(1, ge=0, le=1)
    cancelled_state: int = Field(1, ge=0, le=1)

    @model_validator(mode="after")
    def _distinct(self) -> DataverseStatusReasons:
        values = [self.pending, self.running, self.succeeded, self.failed, self.cancelled]
        if len(set(values)) != len(values):
            raise ValueError(f"dataverse.jobs.status_reasons must be five different values; got {values}")
        return self


def _default_operation_values() -> dict[str, int]:
    names = ["add_tag", "remove_tag", "set_score", "increase_score", "decrease_score", "remove_score",
             "start_automation"]
    return {name: 100_000_000 + i for i, name in enumerate(names)}


class DataverseTableSettings(_Section):
    """The custom table CRM users fill in with jobs: entity set, columns and lookups, as named in the organisation.

    Column names are logical names (lower case). Lookups are navigation property names, which are case sensitive
    (usually the lookup column's SchemaName, e.g. `cr_Contact`); the column read back is `_<lowercased>_value`.
    """

    entity_set: str = "cr_connectorjobs"
    primary_key: str = "cr_connectorjobid"
    # What the CRM user fills in.
    operation: str = "cr_operation"
    operation_values: dict[str, int] = Field(
        default_factory=_default_operation_values,
        description="choice value per operation; empty when the operation column is plain text",
    )
    tags: str = "cr_tags"
    score: str = "cr_score"
    contact_lookup: str = "cr_Contact"
    lead_lookup: str = "cr_Lead"
    account_lookup: str = "cr_Account"
    # Creation order: Dataverse keeps `createdon` to the second, so an autonumber column breaks ties ("" = none).
    created_on: str = "createdon"
    modified_on: str = "modifiedon"
    sequence: str = "cr_sequence"
    # What the runner writes back, for the CRM user on the job form and for the runner itself.
    result_code: str = "cr_resultcode"
    message: str = "cr_message"
    http_status: str = "cr_httpstatus"
    attempts: str = "cr_attempts"
    last_attempt_at: str = "cr_lastattemptat"
    next_attempt_at: str = "cr_nextattemptat"
    lease_owner: str = "cr_leaseowner"
    lease_expires_at: str = "cr_leaseexpiresat"
    applied_at: str = "cr_appliedat"
    posted_at: str = "cr_postedat"
    score_before: str = "cr_scorebefore"
    attempt_log: str = Field("cr_attemptlog", description="multiple lines of text: one line per attempt, and "
                             "one per retry or cancel with who asked")
    # What the connector keeps for itself.
    payload: str = Field("cr_payload", description="multiple lines of text: the JSON of a job kind a CRM user "
                         "does not create on the form (the connector's own jobs)")
    request_id: str = Field("cr_requestid", description="text: a caller's request id, so a request is queued once")
    origin: str = Field("cr_origin", description="text: where a job the connector created comes from (JSON: an "
                        "import, a rule, a trigger and the job that fired it); empty on a CRM user's job")
    status_reasons: DataverseStatusReasons = DataverseStatusReasons()

    @field_validator("operation_values")
    @classmethod
    def _operations(cls, value: dict[str, int]) -> dict[str, int]:
        known = set(_default_operation_values())
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"dataverse.jobs.operation_values names unknown operations {unknown}; use {sorted(known)}")
        if len(set(value.values())) != len(value):
            raise ValueError(
                f"dataverse.jobs.operation_values must give each operation its own choice value; got {value}"
            )
        return value


class DataverseEntriesSettings(_Section):
    """The custom table where durable subscribers keep their records (score history, trigger firings), written in
    the same change set as the outcome of the job that caused them."""

    entity_set: str = "cr_connectorentries"
    primary_key: str = "cr_connectorentryid"
    stream: str = "cr_stream"
    key: str = "cr_key"
    job_id: str = "cr_jobid"
    data: str = Field("cr_data", description="multiple lines of text: the record's JSON")
    at: str = Field("cr_at", description="text: when the record was kept, ISO 8601 with milliseconds")


class DataverseSettings(_Section):
    environment_url: str | None = Field(None, description="unset: the sandbox is started on loopback")
    tenant_id: str = ""
    client_id: str = ""
    client_secret: SecretStr = SecretStr("")
    authority_host: str = Field("https://login.microsoftonline.com", description="Microsoft Entra ID")
    page_size: int = Field(1000, ge=1, le=5000, description="odata.maxpagesize of queries")
    # The timeline record written after each job: a post (needs a Dynamics 365 app) or a note (any Dataverse).
    timeline: Literal["post", "annotation"] = "post"
    note_subject: str = Field("Marketing platform", description="subject of notes; the job id is appended")
    # How the platform knows a record: its CRM id (empty) or the value of a column such as emailaddress1.
    identify_column: str = ""
    identify_as: Literal["external_id", "email"] = "external_id"
    pace_by: Literal["parts", "requests"] = Field(
        defaults.DATAVERSE_PACE_BY, description="what the brake counts of a $batch: each of its parts "
        "(the cautious reading of Dataverse's limits) or the one HTTP request"
    )
    jobs: DataverseTableSettings = DataverseTableSettings()
    entries: DataverseEntriesSettings = DataverseEntriesSettings()

    @field_validator("pace_by", mode="before")
    @classmethod
    def _pace_by(cls, value: Any) -> Any:
        choices = ("parts", "requests")
        if isinstance(value, str) and value.strip().lower() in choices:
            return value.strip().lower()
        raise ValueError(f"dataverse.pace_by is {shown(value)}; use \"parts\" (each part of a $batch counts as "
                         f"a request toward Dataverse's limits, the cautious reading) or \"requests\" (a $batch "
                         f"counts once)")


class PostgresSettings(_Section):
    """The PostgreSQL job store (`job_store = "postgres"`): several runners on several hosts share it."""

    url: str | None = Field(None, description="postgresql://user@host:5432/database; a password in it is taken "
                            "out and kept as postgres.password (only from the environment or the secrets file)")
    password: SecretStr = SecretStr("")
    pool_size: int | None = Field(None, ge=2, le=500, description="connections per process; unset: "
                                  "runner.workers + 4 (the workers, the claim, the lease renewer, the heartbeat)")
    connect_timeout: float = Field(defaults.POSTGRES_CONNECT_TIMEOUT, gt=0,
                                   description="seconds to wait for a connection before the store counts as down")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        # Never shown as given: it may hold a password.
        if urlsplit(value).scheme not in ("postgresql", "postgres"):
            raise ValueError("postgres.url must be a URL such as postgresql://user@host:5432/database (the "
                             "password in CONNECTOR_POSTGRES__PASSWORD)")
        return value

    @model_validator(mode="after")
    def _password_apart(self) -> PostgresSettings:
        """A password in the URL is a secret like any other: it moves to `password`, and the URL that is left
        can be shown."""
        if self.url is None:
            return self
        url, password = password_apart(self.url)
        if password is None:
            return self
        if self.password.get_secret_value():
            raise ValueError("postgres.url holds a password and postgres.password is set too; give it once")
        self.password = SecretStr(password)
        self.url = url
        return self


def password_apart(url: str) -> tuple[str, str | None]:
    """A database URL without its password, and the password: libpq reads one after the user name
    (`postgresql://user:secret@host/db`) or as a parameter (`?password=secret`), percent-decoded either way. The
    rest of the URL is kept as written."""
    parts = urlsplit(url)
    netloc, password = parts.netloc, None
    if parts.password is not None:
        netloc = f"{parts.username or ''}@{parts.netloc.rpartition('@')[2]}"
        password = unquote(parts.password)
    kept = []
    for field in parts.query.split("&") if parts.query else []:
        name, _, value = field.partition("=")
        if unquote(name) == "password":
            password = unquote(value)
        else:
            kept.append(field)
    if password is None:
        return url, None
    return urlunsplit((parts.scheme, netloc, parts.path, "&".join(kept), parts.fragment)), password


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CONNECTOR_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    home: Path = Field(Path(defaults.HOME), description="data directory of the embedded default")
    rules_file: Path | None = Field(None, description="the scoring rules and triggers (TOML); unset: none")
    platform: Literal["spotler", "mautic"] = "spotler"
    job_store: Literal["sqlite", "dataverse", "postgres"] = "sqlite"
    crm: Literal["local", "dataverse"] = "local"
    log_level: str = "WARNING"
    log_format: Literal["text", "json"] = Field("text", description="json: one JSON object per line, for collectors")
    timeline_template: str = Field(
        defaults.TIMELINE_TEMPLATE,
        description="text of the timeline post; placeholders {summary} {operation} {tags} {score} {job_id}",
    )

    runner: RunnerSettings = RunnerSettings()
    retry: RetrySettings = RetrySettings()
    http: HttpSettings = HttpSettings()
    faults: FaultSettings = FaultSettings()
    spotler: SpotlerSettings = SpotlerSettings()
    mautic: MauticSettings = MauticSettings()
    webhook: WebhookSettings = WebhookSettings()
    mail: MailSettings = MailSettings()
    endpoint: EndpointSettings = EndpointSettings()
    console: ConsoleSettings = ConsoleSettings()
    dataverse: DataverseSettings = DataverseSettings()
    postgres: PostgresSettings = PostgresSettings()

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        if value.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError(f"log_level is {value!r}; use DEBUG, INFO, WARNING or ERROR")
        return value.upper()

    @field_validator("timeline_template")
    @classmethod
    def _template(cls, value: str) -> str:
        try:
            value.format(summary="", operation="", tags="", score="", job_id="")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"timeline_template {value!r} uses an unknown or malformed placeholder ({exc}); "
                "use {summary}, {operation}, {tags}, {score} and {job_id}"
            ) from None
        return value

    @model_validator(mode="after")
    def _store_reachable(self) -> Settings:
        if self.job_store == "postgres" and self.postgres.url is None:
            raise ValueError("job_store is postgres, but postgres.url is not set; set it (for instance "
                             "CONNECTOR_POSTGRES__URL=postgresql://connector@db.example.com:5432/connector) and "
                             "the password in CONNECTOR_POSTGRES__PASSWORD")
        return self

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
        if secrets_file and not Path(secrets_file).is_file():
            # Like CONNECTOR_CONFIG: a secrets file that is not there would silently leave the secrets unset.
            raise SettingsError(f"CONNECTOR_SECRETS_FILE names {secrets_file!r}, which is not a file.")
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
        url = data.get("postgres", {}).get("url") if isinstance(data.get("postgres"), dict) else None
        if isinstance(url, str) and _has_password(url):
            raise SettingsError(
                f"{self.path} sets postgres.url with a password in it; secrets are not read from {self.path.name}. "
                f"Keep the URL there without it and set CONNECTOR_POSTGRES__PASSWORD in the environment or in the "
                f"file named by CONNECTOR_SECRETS_FILE."
            )
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


def _has_password(url: str) -> bool:
    try:
        return password_apart(url)[1] is not None
    except ValueError:
        return "@" in url  # not a URL one can read: if it may hold a password, treat it as one


def _where(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc)


def _problem(error: Any, secret: set[str]) -> str:
    """One problem of a ValidationError as `key: what is wrong (got value)`, never showing a secret."""
    where = _where(error["loc"])
    message = str(error["msg"])
    if error["type"] == "value_error":
        # Our validators write a sentence that names the key and the value already.
        message = message.removeprefix("Value error, ")
        return message if message.startswith(where) else f"{where}: {message}"
    if error["type"] == "extra_forbidden":
        # A misspelled key (its value may be a secret under a misspelled name: not shown).
        return f"{where}: no such setting (config/example.toml lists every key)"
    # A whole section of the wrong shape may hold secrets; a value is shown only for a key that is not a secret
    # (nor the database URL, which may hold a password until it is taken out).
    hidden = where in secret or where == "postgres.url" or any(path.startswith(where + ".") for path in secret)
    return f"{where}: {message}" + ("" if hidden else f" (got {shown(error.get('input'))})")


def load_settings(**overrides: Any) -> Settings:
    """The effective settings. `overrides` are command-line flags, as nested dicts; None values are ignored."""
    from pydantic import ValidationError

    clean = {k: v for k, v in overrides.items() if v is not None}
    # The environment source reads the variables it knows and skips the rest: a misspelled top-level name
    # (CONNECTOR_PLATFROM) would be dropped without a word, where the same key in connector.toml is refused.
    unknown = [f"{name}: no such setting (config/example.toml lists every key)" for name in sorted(os.environ)
               if name.upper().startswith("CONNECTOR_") and name.upper() not in OWN_VARIABLES
               and name[len("CONNECTOR_"):].split("__")[0].lower() not in Settings.model_fields]
    try:
        settings = Settings(**clean)
    except PydanticSettingsError as exc:
        # A section given as one variable must be JSON (CONNECTOR_MAUTIC='{"base_url": ...}'); its value may hold
        # secrets, so only the variable is named.
        field = re.search(r'field "(\w+)"', str(exc))
        name = f"CONNECTOR_{field.group(1).upper()}" if field else "A CONNECTOR_* variable"
        raise SettingsError(f"The configuration is not valid: {name} is not JSON; set a section as a JSON object, "
                            f"or key by key ({name}__KEY).") from None
    except ValidationError as exc:
        secret = _secret_paths(Settings)
        problems = "; ".join([*unknown, *(_problem(err, secret) for err in exc.errors())])
        raise SettingsError(f"The configuration is not valid: {problems}.") from exc
    if unknown:
        raise SettingsError(f"The configuration is not valid: {'; '.join(unknown)}.")
    return settings


# Variables that name where the settings are, rather than a setting; and the database the test suite may use for
# its PostgreSQL tier (tests/postgres.py), which a developer's shell may keep set while running the connector.
OWN_VARIABLES = frozenset({"CONNECTOR_CONFIG", "CONNECTOR_SECRETS_FILE", "CONNECTOR_TEST_POSTGRES_URL"})
