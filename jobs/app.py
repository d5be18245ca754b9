"""The composition root: settings in, a running connector out.

Settings are read once by the CLI and handed here; nothing deeper reads them. In sandbox mode the emulators are
started in-process on loopback ports, with their state under `<home>/sandbox/`, and the real adapters are
pointed at them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from config import defaults
from config.settings import Settings, SettingsError
from connector.crm import Crm
from connector.dataverse.client import DataverseClient
from connector.http import ApiSession, Brake, Redactor
from connector.localcrm import LocalCrm
from connector.mail import MailClient
from connector.mautic import MauticPlatform
from connector.platform import Platform
from connector.sandbox.mautic import MauticSandbox
from connector.sandbox.server import Faults, SandboxServer
from connector.sandbox.smtp import SmtpSink
from connector.sandbox.spotler import SpotlerSandbox
from connector.spotler import SpotlerPlatform
from connector.webhook import WebhookClient
from jobs.dataverse_wiring import dataverse_client, dataverse_crm, dataverse_store, serve_dataverse_sandbox
from jobs.executor import Executor
from jobs.observe import Observer, log_outcome
from jobs.runner import Runner
from jobs.scoring.history import history_effects
from jobs.scoring.rules import RuleSet, load_rules
from jobs.scoring.triggers import TriggerFirings
from jobs.store import JobStore, ReaderStore
from jobs.store.sqlite import SqliteJobStore

log = logging.getLogger(__name__)

SPOTLER_PREFIX = "/integrationservice-1.1.0"
# The Mautic sandbox field holding the CRM id: the local CRM knows records by CRM id only, not by e-mail address.
SANDBOX_MAUTIC_CONTACT_FIELD = "crm_id"
# The automation the embedded Spotler sandbox knows, so that Start Automation can be tried without setup.
SANDBOX_TRIGGER = "welcome"
# The automation the example rules file starts (config/example-rules.toml), known to the embedded sandbox too.
SANDBOX_NURTURE = "prospect-general-nurture"
# The gym example of the product documents, shipped with the package: what `connector demo` scores with.
EXAMPLE_RULES = Path(__file__).resolve().parents[1] / "config" / "example-rules.toml"


@dataclass
class Connector:
    """Everything one command needs, built from settings. Close it to stop sandboxes and release files."""

    settings: Settings
    store: JobStore
    platform: Platform
    crm: Crm
    executor: Executor
    runner: Runner
    sandboxes: dict[str, SandboxServer] = field(default_factory=dict)
    _closers: list[Callable[[], Any]] = field(default_factory=list)
    dataverse: DataverseClient | None = None  # when the job store or the CRM is Dynamics 365
    rules: RuleSet = field(default_factory=RuleSet)
    # Every API session, by API name: the console's metrics hook onto them to count answers and 429s.
    sessions: dict[str, Any] = field(default_factory=dict)

    def close(self) -> None:
        self.runner.close()
        for close in reversed(self._closers):
            close()
        for server in self.sandboxes.values():
            server.stop()

    def __enter__(self) -> Connector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def install_redaction(settings: Settings) -> Redactor:
    """Every log record passes through a filter that masks the configured secrets."""
    redactor = Redactor(settings.secret_values())
    for handler in logging.getLogger().handlers:
        handler.addFilter(redactor)
    return redactor


def _faults(settings: Settings) -> Faults:
    return Faults(**settings.faults.model_dump())


@dataclass
class _Parts:
    """What the pieces of one connector share: its settings, the sandboxes started for it, one brake per API,
    the stop event, and the clock and sleep (tests pass ones that do not wait)."""

    settings: Settings
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], Any] | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    sandboxes: dict[str, SandboxServer] = field(default_factory=dict)
    brakes: dict[str, Brake] = field(default_factory=dict)
    sessions: dict[str, Any] = field(default_factory=dict)

    def brake(self, api: str) -> Brake:
        """One brake per API, shared by every session of that API: a 429 or the cap slows all its workers."""
        if api not in self.brakes:
            settings = self.settings
            if self.sleep is not None:
                # A test's sleep that does not wait needs the brake to read the same (fake) clock, or it would spin.
                timing: dict[str, Any] = {"sleep": self.sleep, "clock": self.clock}
            else:
                # Waiting on the stop event: a shutdown is not held up by an API's long Retry-After.
                timing = {"sleep": self.stop.wait, "stop": self.stop}
            self.brakes[api] = Brake(
                api, max_per_second=settings.http.max_requests_per_second,
                max_pause=settings.retry.retry_after_cap, **timing,
            )
        return self.brakes[api]

    def session(self, api: str) -> ApiSession:
        settings = self.settings
        session = ApiSession(
            api, pool_size=settings.runner.workers,
            timeout=(settings.http.connect_timeout, settings.http.read_timeout), brake=self.brake(api),
        )
        self.sessions[api] = session
        return session

    def dataverse_client(self) -> DataverseClient:
        """The Web API client; in sandbox mode the Dataverse emulator is started first."""
        sandbox_url = None
        if self.settings.dataverse.environment_url is None:
            server = serve_dataverse_sandbox(self.settings)
            self.sandboxes["dataverse"] = server
            sandbox_url = server.url
        client = dataverse_client(
            self.settings, sandbox_url=sandbox_url, brake=self.brake("Dataverse"), sleep=self.sleep or time.sleep
        )
        self.sessions["Dataverse"] = client.session
        return client

    def stop_sandboxes(self) -> None:
        for server in self.sandboxes.values():
            server.stop()


def make_observer(rules: RuleSet, store: ReaderStore, clock: Callable[[], float] = time.time) -> Observer:
    """The subscribers of every connector: the score history, and the triggers of the rules file, both kept with
    each applied change (history first: a trigger reads the history before the change)."""
    observer = Observer()
    observer.subscribe(log_outcome)
    observer.subscribe_durable(history_effects)
    observer.subscribe_durable(TriggerFirings(rules, store, clock))
    return observer


def load_rules_of(settings: Settings) -> RuleSet:
    """The rules file of the settings, checked; what no rule can reach is logged as a warning."""
    rules = load_rules(settings.rules_file)
    for warning in rules.warnings:
        log.warning("%s: %s", settings.rules_file, warning)
    secret = settings.webhook.secret.get_secret_value()
    for trigger in rules.triggers:
        for action in trigger.actions:
            url = str(action.fields().get("url", ""))
            if action.do == "webhook" and not secret:
                raise SettingsError(f"{settings.rules_file}: trigger {trigger.name!r} sends a webhook, but "
                                    f"CONNECTOR_WEBHOOK__SECRET is empty; receivers could not verify it.")
            if action.do == "webhook" and secret == defaults.SANDBOX_WEBHOOK_SECRET and _remote(url):
                raise SettingsError(
                    f"{settings.rules_file}: trigger {trigger.name!r} sends a webhook to {urlsplit(url).hostname}, "
                    f"but CONNECTOR_WEBHOOK__SECRET is not set; set it to the secret the receiver verifies with."
                )
    return rules


def _services(parts: _Parts, rules: RuleSet, closers: list[Callable[[], Any]]) -> dict[str, Any]:
    """The outside services that kinds run on: the webhook client, and the mail client (in sandbox mode a local
    SMTP server that keeps the mails in <home>/sandbox/mail, started only when a trigger sends mail)."""
    settings = parts.settings
    session = ApiSession("Webhook", pool_size=settings.runner.workers, brake=parts.brake("Webhook"),
                         timeout=(settings.http.connect_timeout, settings.webhook.timeout))
    closers.append(session.close)
    parts.sessions["Webhook"] = session
    services: dict[str, Any] = {}
    if secret := settings.webhook.secret.get_secret_value():
        services["webhook"] = WebhookClient(session, secret)
    mail = settings.mail
    if mail.host is not None:
        services["mail"] = MailClient(mail.host, mail.port, security=mail.security, username=mail.username or None,
                                      password=mail.password.get_secret_value() or None, sender=mail.sender)
    elif any(action.do == "email" for trigger in rules.triggers for action in trigger.actions):
        sink = SmtpSink(mailbox_path(settings.home)).start()
        closers.append(sink.stop)
        services["mail"] = MailClient(sink.host, sink.port, security="none", username=None, password=None,
                                      sender=mail.sender)
    return services


def mailbox_path(home: Path) -> Path:
    """Where the sandbox's SMTP server keeps the mails it received (`connector mail list`)."""
    return home / "sandbox" / "mail"


def _uses_dataverse(settings: Settings) -> bool:
    return settings.job_store == "dataverse" or settings.crm == "dataverse"


def build(
    settings: Settings,
    *,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], Any] | None = None,
) -> Connector:
    """Build the connector described by `settings`. `clock` and `sleep` are for tests that must not wait."""
    home = settings.home
    home.mkdir(parents=True, exist_ok=True)
    parts = _Parts(settings, clock=clock, sleep=sleep)
    closers: list[Callable[[], Any]] = []
    rules = load_rules_of(settings)  # before anything starts: nothing runs half-configured
    try:
        platform = _build_platform(parts)
        client = parts.dataverse_client() if _uses_dataverse(settings) else None
        if client is not None:
            closers.append(client.close)
        store: JobStore
        if client is not None and settings.job_store == "dataverse":
            store = dataverse_store(settings, client, clock=clock)
        elif settings.job_store == "postgres":
            store = postgres_store(settings, clock=clock)
        else:
            store = SqliteJobStore(home / "jobs.db", clock=clock)
        closers.append(store.close)
        crm: Crm
        if client is not None and settings.crm == "dataverse":
            crm = dataverse_crm(settings, client)
        else:
            local_crm = LocalCrm(home / "timeline.db")
            closers.append(local_crm.close)
            crm = local_crm
        services = _services(parts, rules, closers)
        executor = Executor(
            platform, crm, settings.retry, timeline_template=settings.timeline_template, clock=clock, sleep=sleep,
            stop=parts.stop, observer=make_observer(rules, store, clock), services=services,
        )
        runner = Runner(
            store, executor, workers=settings.runner.workers, ahead=settings.runner.claim_ahead,
            batch_size=settings.runner.batch_size,
            lease_seconds=settings.runner.lease_seconds,
        )
    except BaseException:
        for close in reversed(closers):
            close()
        parts.stop_sandboxes()
        raise
    return Connector(settings, store, platform, crm, executor, runner, parts.sandboxes, closers, client, rules,
                     parts.sessions)


@contextmanager
def open_store(settings: Settings, *, clock: Callable[[], float] = time.time) -> Iterator[JobStore]:
    """The job store alone: enough for the commands that only create, list or inspect jobs."""
    settings.home.mkdir(parents=True, exist_ok=True)
    if settings.job_store in ("sqlite", "postgres"):
        store: JobStore = postgres_store(settings, clock=clock) if settings.job_store == "postgres" \
            else SqliteJobStore(settings.home / "jobs.db", clock=clock)
        try:
            yield store
        finally:
            store.close()
        return
    parts = _Parts(settings, clock=clock)
    try:
        client = parts.dataverse_client()
        try:
            yield dataverse_store(settings, client, clock=clock)
        finally:
            client.close()
    finally:
        parts.stop_sandboxes()


def postgres_store(settings: Settings, *, clock: Callable[[], float] = time.time) -> JobStore:
    """The PostgreSQL job store of the settings; refused, naming `connector db upgrade`, on an older schema."""
    # Imported here: psycopg is only loaded by the commands of a connector that uses it.
    from jobs.store.postgres import PostgresJobStore

    pg = settings.postgres
    assert pg.url is not None  # the settings refuse job_store = "postgres" without a URL
    return PostgresJobStore(
        pg.url, password=pg.password.get_secret_value() or None, clock=clock, connect_timeout=pg.connect_timeout,
        pool_size=pg.pool_size or settings.runner.workers + defaults.POSTGRES_SPARE_CONNECTIONS,
    )


def upgrade_postgres(settings: Settings) -> tuple[int, int]:
    """`connector db upgrade` on the PostgreSQL job store: (schema version before, after)."""
    from jobs.store.postgres import upgrade

    pg = settings.postgres
    if pg.url is None:
        raise SettingsError("postgres.url is not set; set it (for instance CONNECTOR_POSTGRES__URL=postgresql://"
                            "connector@db.example.com:5432/connector) and the password in "
                            "CONNECTOR_POSTGRES__PASSWORD.")
    return upgrade(pg.url, password=pg.password.get_secret_value() or None, connect_timeout=pg.connect_timeout)


def _remote(url: str | None) -> bool:
    """A URL of a real service: not unset, not loopback (where `connector sandbox serve` runs its emulators)."""
    if url is None:
        return False
    host = urlsplit(url).hostname or ""
    return host not in ("localhost", "::1") and not host.startswith("127.")


def _refuse_sandbox_credentials(settings: Settings) -> None:
    """A real service with the sandbox's credentials would fail every job with AUTH_FAILED: say so at once."""
    spotler, mautic = settings.spotler, settings.mautic
    if (settings.platform == "spotler" and _remote(spotler.base_url)
            and spotler.consumer_secret.get_secret_value() == defaults.SANDBOX_CONSUMER_SECRET):
        raise SettingsError(
            "spotler.base_url points at a real Spotler API, but CONNECTOR_SPOTLER__CONSUMER_SECRET is not set; "
            "set it (and spotler.consumer_key) from the account's REST API settings."
        )
    if settings.platform == "mautic" and _remote(mautic.base_url):
        if mautic.auth == "basic" and mautic.password.get_secret_value() == defaults.SANDBOX_MAUTIC_PASSWORD:
            raise SettingsError(
                "mautic.base_url points at a real Mautic, but CONNECTOR_MAUTIC__PASSWORD is not set; set it and "
                "mautic.username to an API user's credentials."
            )
        if mautic.auth == "oauth2" and not (mautic.client_id and mautic.client_secret.get_secret_value()):
            raise SettingsError(
                "mautic.auth is oauth2, but mautic.client_id or CONNECTOR_MAUTIC__CLIENT_SECRET is not set; set "
                "both from the Mautic API credentials (client credentials grant)."
            )


def _build_platform(parts: _Parts) -> Platform:
    settings = parts.settings
    _refuse_sandbox_credentials(settings)
    if settings.platform == "spotler":
        spotler = settings.spotler
        base_url = spotler.base_url
        if base_url is None:
            server = serve_spotler_sandbox(settings)
            parts.sandboxes["spotler"] = server
            base_url = server.url + SPOTLER_PREFIX
        return SpotlerPlatform(
            parts.session("Spotler"), base_url=base_url,
            consumer_key=spotler.consumer_key, consumer_secret=spotler.consumer_secret.get_secret_value(),
            create_missing_contacts=spotler.create_missing_contacts,
        )
    if settings.platform == "mautic":
        mautic = settings.mautic
        session = parts.session("Mautic")
        if mautic.base_url is not None:
            return MauticPlatform.from_settings(mautic, session)
        server = serve_mautic_sandbox(settings)
        parts.sandboxes["mautic"] = server
        # The local CRM names a record by its CRM id alone; the sandbox keeps it in a contact field.
        field = mautic.contact_field or SANDBOX_MAUTIC_CONTACT_FIELD
        return MauticPlatform.from_settings(
            mautic.model_copy(update={"contact_field": field}), session, base_url=server.url
        )
    raise NotImplementedError(f"platform {settings.platform!r} is not available")


def serve_spotler_sandbox(settings: Settings, *, port: int = 0) -> SandboxServer:
    """The Spotler emulator of the embedded default, with the settings' faults, started on loopback."""
    spotler = settings.spotler
    app = SpotlerSandbox(
        sandbox_path(settings.home, "spotler"), consumer_key=spotler.consumer_key,
        consumer_secret=spotler.consumer_secret.get_secret_value(), auto_create_contacts=True,
    )
    app.seed_automation(SANDBOX_TRIGGER)
    app.seed_automation(SANDBOX_NURTURE)
    return SandboxServer(app, port=port, faults=_faults(settings)).start()


def serve_mautic_sandbox(settings: Settings, *, port: int = 0) -> SandboxServer:
    """The Mautic emulator of the embedded default, with the settings' faults, started on loopback."""
    mautic = settings.mautic
    app = MauticSandbox(
        sandbox_path(settings.home, "mautic"), username=mautic.username,
        password=mautic.password.get_secret_value(), client_id=mautic.client_id or None,
        client_secret=mautic.client_secret.get_secret_value() or None,
        contact_field=mautic.contact_field or SANDBOX_MAUTIC_CONTACT_FIELD, auto_create_contacts=True,
    )
    return SandboxServer(app, port=port, faults=_faults(settings)).start()


# Every emulator `connector sandbox serve` starts, by name: (start function, what to append to its URL).
SANDBOXES: dict[str, tuple[Callable[..., SandboxServer], str]] = {
    "spotler": (serve_spotler_sandbox, SPOTLER_PREFIX),
    "mautic": (serve_mautic_sandbox, ""),
    # Identity provider and Web API on one https port; clients must trust `sandbox_ca_file(settings)`.
    "dataverse": (serve_dataverse_sandbox, "/api/data/v9.2/"),
}


def start_sandboxes(settings: Settings, ports: dict[str, int] | None = None) -> dict[str, tuple[SandboxServer, str]]:
    """Start every emulator on loopback with the settings' faults: name -> (server, base URL for the adapter)."""
    started: dict[str, tuple[SandboxServer, str]] = {}
    try:
        for name, (serve, suffix) in SANDBOXES.items():
            server = serve(settings, port=(ports or {}).get(name, 0))
            started[name] = (server, server.url + suffix)
    except BaseException:
        for server, _ in started.values():
            server.stop()
        raise
    return started


def sandbox_path(home: Path, name: str) -> Path:
    return home / "sandbox" / f"{name}.db"
