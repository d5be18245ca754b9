"""A real PostgreSQL for the tests: a throw-away server the suite starts (`initdb` into a temporary directory,
`pg_ctl` on a private port of 127.0.0.1 and a private socket directory), or the database named by
`CONNECTOR_TEST_POSTGRES_URL`. Each test gets a schema of its own in it, dropped afterwards.

As root, the server runs as the `postgres` system user (PostgreSQL refuses to run as root). The connector logs in
over TCP as a role with a password, so what the tests see is what a runner on another host sees; the suite's own
set-up goes through the socket. No database is ever mocked.

Where no server can be had, the tier is left out with one line in the summary saying how to enable it, except in
CI (`CI` set), where it must run and a missing server fails the suite.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg

ENV = "CONNECTOR_TEST_POSTGRES_URL"
ROLE = "connector"
PASSWORD = "pg-test-secret-8d41c"  # only opens the throw-away server; tests look for it in output to find leaks
HOW_TO_ENABLE = (f"install PostgreSQL (Debian: apt-get install postgresql) so that `pg_config --bindir` finds "
                 f"initdb, or set {ENV}=postgresql://user:password@host:5432/database")


def in_ci() -> bool:
    return bool(os.environ.get("CI"))


def bindir() -> Path | None:
    """The folder of initdb and pg_ctl: `pg_config --bindir`, else Debian's versioned folders, else the PATH."""
    candidates: list[Path] = []
    if pg_config := shutil.which("pg_config"):
        try:
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True)
            candidates.append(Path(out.stdout.strip()))
        except (OSError, subprocess.SubprocessError):
            pass
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    if initdb := shutil.which("initdb"):
        candidates.append(Path(initdb).parent)
    return next((c for c in candidates if (c / "initdb").is_file() and (c / "pg_ctl").is_file()), None)


def unavailable() -> str | None:
    """Why the tier cannot run here, or None when it can."""
    if os.environ.get(ENV) or bindir() is not None:
        return None
    return "no PostgreSQL server binaries (initdb, pg_ctl) and no " + ENV


@dataclass
class Server:
    """A PostgreSQL to test on: `url` logs in as the connector would (password, TCP); `admin` sets things up."""

    url: str
    admin: str
    directory: Path | None = None
    bindir: Path | None = None
    as_user: list[str] | None = None

    def stop(self) -> None:
        if self.directory is None or self.bindir is None:
            return
        subprocess.run([*(self.as_user or []), str(self.bindir / "pg_ctl"), "-D", str(self.directory / "data"),
                        "-m", "immediate", "-w", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(self.directory, ignore_errors=True)

    def fresh_schema(self) -> tuple[str, str]:
        """A new empty schema: its name, and the URL whose connections use it."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.admin, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {name}" + (f" AUTHORIZATION {ROLE}" if self.directory else ""))
        parts = urlsplit(self.url)
        query = "&".join(filter(None, [parts.query, "options=" + quote(f"-csearch_path={name}")]))
        return name, urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))

    def drop_schema(self, name: str) -> None:
        with psycopg.connect(self.admin, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")


def start(*, durable: bool = False) -> Server:
    """The server of this test process: the one CONNECTOR_TEST_POSTGRES_URL names, or a throw-away one (`durable`:
    with PostgreSQL's own fsync and synchronous commits, as a benchmark needs them)."""
    if given := os.environ.get(ENV):
        return Server(url=given, admin=given)
    found = bindir()
    if found is None:
        raise RuntimeError(unavailable())
    directory = Path(tempfile.mkdtemp(prefix="connector-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        # PostgreSQL will not run as root: the `postgres` system user owns the cluster and runs the server.
        owner = pwd.getpwnam("postgres")
        os.chown(directory, owner.pw_uid, owner.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, sockets = directory / "data", directory
    port = _free_port()
    try:
        _run([*as_user, str(found / "initdb"), "-D", str(data), "-U", "postgres", "--auth-local=trust",
              "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync"])
        # Durability is not what these tests are about: no fsync makes the suite's many small commits cheap.
        options = f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c max_connections=300"
        if not durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        _run([*as_user, str(found / "pg_ctl"), "-D", str(data), "-l", str(directory / "server.log"), "-w",
              "-t", "60", "-o", options, "start"])
        admin = f"host={sockets} port={port} user=postgres dbname=postgres"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}'")
            conn.execute(f"CREATE DATABASE {ROLE} OWNER {ROLE}")
    except BaseException:
        Server("", "", directory, found, as_user).stop()
        raise
    return Server(url=f"postgresql://{ROLE}:{PASSWORD}@127.0.0.1:{port}/{ROLE}",
                  admin=f"host={sockets} port={port} user=postgres dbname={ROLE}", directory=directory,
                  bindir=found, as_user=as_user)


def _run(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:6])} failed: {(done.stderr or done.stdout).strip()[-600:]}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
