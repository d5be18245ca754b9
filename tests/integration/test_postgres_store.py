"""What only the PostgreSQL job store has: the NOTIFY that wakes runners. Every guarantee of the store contract is
in tests/contract, run on PostgreSQL too."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
import pytest

from jobs.model import JobRequest
from jobs.store.postgres import PostgresJobStore, upgrade
from tests import postgres as pg
from tests.integration.helpers import wait_until


@pytest.fixture
def long_schema_url(postgres_server: pg.Server) -> Iterator[str]:
    """A schema whose name takes 60 of PostgreSQL's 63 bytes: the channel named after it could not take it whole."""
    name = "jobs_of_the_marketing_team_in_the_north_west_region_" + "x" * 8
    with psycopg.connect(postgres_server.admin, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {name}" + (f" AUTHORIZATION {pg.ROLE}" if postgres_server.directory else ""))
    parts = urlsplit(postgres_server.url)
    query = "&".join(filter(None, [parts.query, "options=" + quote(f"-csearch_path={name}")]))
    yield urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))
    postgres_server.drop_schema(name)


def test_a_runner_listening_on_a_schema_with_a_long_name_is_woken_by_a_new_job(long_schema_url: str) -> None:
    upgrade(long_schema_url)
    store = PostgresJobStore(long_schema_url)
    woken = threading.Event()
    stop = store.wakeups(woken.set)
    try:
        woken.clear()  # a listener may be woken once as it starts: only the add counts
        store.add([JobRequest.from_input(operation="add_tag", tags="VIP", target_kind="contact", target_id="C-1")])
        wait_until(woken.is_set, "the listener woken by the new job", timeout=10)
    finally:
        stop()
        store.close()
