"""The store contract suite runs every guarantee of `jobs.store` against every store.

`case` is one store under test: the SQLite store on a real file, the Dataverse store against the Dataverse
sandbox over https with a real client, or the PostgreSQL store on a real server (a schema of its own, made by the
store's migrations; see tests/postgres.py). Each test reads records by name (`case.record("C-1")`): on SQLite the name
is the CRM id; on Dataverse it is a contact, lead or account created in the sandbox the first time it is named,
whose GUID is then used. A new store joins the list by adding a branch to `case`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from jobs.model import Attempt, Job, JobRequest, JobStatus
from jobs.store import Actor, JobStore, Outcome
from jobs.store.dataverse import DataverseJobStore
from jobs.store.postgres import PostgresJobStore, upgrade
from jobs.store.sqlite import SqliteJobStore
from tests.conftest import FakeClock
from tests.integration.dataverse_env import TABLE, client_for, make_record, running_sandbox

LEASE = 30.0
PERSON = Actor(who="ann", via="cli")


@dataclass
class StoreCase:
    name: str
    store: JobStore
    clock: FakeClock
    # Another store on the same data, as a second runner process or host sees it.
    another: Callable[[], JobStore]
    _make_record: Callable[[str, str], str]
    _records: dict[tuple[str, str], str] = field(default_factory=dict)
    # How another process opens the same store (`open_in_process`): picklable, unlike the store itself.
    opener: tuple[str, ...] = ()

    def record(self, name: str = "C-1", kind: str = "contact") -> str:
        """The id of a record of the store's CRM, by a name the test chooses."""
        if (kind, name) not in self._records:
            self._records[(kind, name)] = self._make_record(name, kind)
        return self._records[(kind, name)]

    def req(self, op: str = "add_tag", tags: Any = "Webinar", score: object = None, kind: str | None = "contact",
            target: str | None = "C-1", request_id: str | None = None) -> JobRequest:
        target_id = self.record(target, kind or "contact") if target is not None else None
        return JobRequest.from_input(operation=op, tags=tags, score=score, target_kind=kind, target_id=target_id,
                                     request_id=request_id)

    def add(self, *args: Any, **kwargs: Any) -> Job:
        """Queue one job, one second after the previous one, so creation order is also time order."""
        self.clock.advance(1)
        return self.store.add([self.req(*args, **kwargs)])[0]

    def at(self, ts: float) -> float:
        """A time as the store keeps it: Dataverse's DateTime columns hold whole seconds, rounded up."""
        return float(math.ceil(ts)) if self.name == "dataverse" else ts

    def claim_ids(self, owner: str = "runner-a", limit: int = 10) -> list[str]:
        return [job.id for job in self.store.claim(owner, limit, LEASE)]

    def succeed(self, owner: str, job_id: str) -> None:
        self.store.finish(owner, job_id, Outcome(JobStatus.SUCCEEDED, "OK", "Done."))

    def fail(self, job_id: str, owner: str = "runner-a") -> None:
        attempt = Attempt(job_id=job_id, started_at=self.clock.now, ended_at=self.clock.now, outcome="failed",
                          result_code="NOT_FOUND", http_status=404, message="No such contact.")
        self.store.finish(owner, job_id, Outcome(JobStatus.FAILED, "NOT_FOUND", "No such contact.",
                                                 http_status=404, attempt=attempt))

    def retry_later(self, job_id: str, delay: float, owner: str = "runner-a") -> None:
        self.store.record_attempt(owner, Attempt(job_id=job_id, started_at=self.clock.now, outcome="retrying",
                                                 result_code="UNAVAILABLE", http_status=503))
        self.store.finish(owner, job_id, Outcome(JobStatus.PENDING, "UNAVAILABLE", "Retrying.", http_status=503,
                                                 next_attempt_at=self.clock.now + delay))


@pytest.fixture(params=["sqlite", "dataverse", pytest.param("postgres", marks=pytest.mark.postgres)])
def case(request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock) -> Iterator[StoreCase]:
    with ExitStack() as stack:
        if request.param == "postgres":
            server = request.getfixturevalue("postgres_server")
            schema, url = server.fresh_schema()
            stack.callback(server.drop_schema, schema)  # last: after every store of the test is closed
            upgrade(url)

            def postgres_store() -> JobStore:
                store = PostgresJobStore(url, clock=clock, pool_size=4)
                stack.callback(store.close)
                return store

            yield StoreCase("postgres", postgres_store(), clock, postgres_store, lambda name, kind: name,
                            opener=("postgres", url))
            return
        if request.param == "sqlite":
            def sqlite_store() -> JobStore:
                store = SqliteJobStore(tmp_path / "jobs.db", clock=clock)
                stack.callback(store.close)
                return store

            yield StoreCase("sqlite", sqlite_store(), clock, sqlite_store, lambda name, kind: name,
                            opener=("sqlite", str(tmp_path / "jobs.db")))
            return
        sandbox = stack.enter_context(running_sandbox(tmp_path))
        first = stack.enter_context(client_for(sandbox))

        def dataverse_store() -> JobStore:
            return DataverseJobStore(stack.enter_context(client_for(sandbox)), TABLE, clock=clock)

        def make(name: str, kind: str) -> str:
            names = {"contact": {"lastname": name}, "lead": {"lastname": name}, "account": {"name": name}}[kind]
            return make_record(first, kind, **names)

        yield StoreCase("dataverse", DataverseJobStore(first, TABLE, clock=clock), clock, dataverse_store, make,
                        opener=("dataverse", sandbox.url, str(sandbox.ca_file)))


def open_in_process(opener: tuple[str, ...], now: float) -> JobStore:
    """The store of a case, opened in another process (a runner on another host), its clock standing at `now`."""
    clock = lambda: now  # noqa: E731  (leases never run out under this clock: no runner here dies)
    if opener[0] == "sqlite":
        return SqliteJobStore(opener[1], clock=clock)
    if opener[0] == "postgres":
        return PostgresJobStore(opener[1], clock=clock, pool_size=2)
    from connector.dataverse import connect
    from connector.sandbox.dataverse import SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET, SANDBOX_TENANT

    client = connect(environment_url=opener[1], tenant_id=SANDBOX_TENANT, client_id=SANDBOX_CLIENT_ID,
                     client_secret=SANDBOX_CLIENT_SECRET, authority_host=opener[1], ca_file=opener[2])
    return DataverseJobStore(client, TABLE, clock=clock)
