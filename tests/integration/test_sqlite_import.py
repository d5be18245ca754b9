"""The SQLite store's bulk load of an import (`add_batch`): what it writes, and what it remembers while it writes.

An import writes its rows with a statement of its own, bound by position, with ids drawn a chunk at a time, keys
looked up only when not met before in the import, and a larger page cache for the length of its transaction. None
of that may show: an imported job's row is the row `add` writes for the same request, its head mark is the rule's
whatever the import remembered or forgot of its keys, and the store's connection is left as it was found.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import jobs.store.sqlite as sqlite_store
from jobs.model import JobRequest, Origin
from jobs.store import Batch, JobFilter
from jobs.store.sqlite import SqliteJobStore
from tests.conftest import FakeClock
from tests.integration.helpers import query
from tests.integration.test_sqlite_claim_cost import marks, the_rule, vm_steps

LEASE = 30.0


def req(op: str = "add_tag", tags: str = "T", score: object = None, target: str | None = "C-1",
        request_id: str | None = None, batch: str = "b1") -> JobRequest:
    request = JobRequest.from_input(operation=op, tags=tags, score=score, target_kind="contact" if target else None,
                                    target_id=target, request_id=request_id)
    return dataclasses.replace(request, origin=Origin(source="import", batch=batch))


@dataclasses.dataclass
class Rows:
    """An import's rows, as `add_batch` reads them; `during` runs as each is read, inside its transaction."""

    requests: list[JobRequest]
    during: Callable[[], None] | None = None
    rows: int = 0
    invalid: int = 0

    def __iter__(self) -> Iterator[JobRequest]:
        for request in self.requests:
            self.rows += 1
            if self.during is not None:
                self.during()
            yield request


def stored_rows(path: Path) -> list[tuple[object, ...]]:
    """Every column of every job but its id (random), in the order of creation."""
    columns = [row[1] for row in query(path, "SELECT * FROM pragma_table_info('jobs')") if row[1] != "id"]
    return query(path, f"SELECT {', '.join(columns)} FROM jobs ORDER BY seq")


VARIED = [
    req(), req("increase_score", "Lead", 5, request_id="r-1"), req("remove_tag", "VIP; Webinar", target="C-2"),
    req("add_tag", "Spring campaign", target=None), req("set_score", "Lead", -3, target="C-1"),
    req("decrease_score", "Lead", 2, target="C-3", request_id="r-2"), req("start_automation", "welcome"),
    req("add_tag", "Lead", batch="b2"),
]


def test_an_imported_job_is_stored_as_add_stores_the_same_request(tmp_path: Path) -> None:
    clock = FakeClock()
    added, imported = SqliteJobStore(tmp_path / "added.db", clock=clock), SqliteJobStore(tmp_path / "imported.db",
                                                                                         clock=clock)
    try:
        added.add(VARIED)
        imported.add_batch(Batch(id="b1", file="jobs.csv", sha256="ab" * 32), Rows(VARIED))
        assert stored_rows(tmp_path / "imported.db") == stored_rows(tmp_path / "added.db")
        keys = "SELECT key, seq FROM open_keys ORDER BY seq, key"
        assert query(tmp_path / "imported.db", keys) == query(tmp_path / "added.db", keys)
        assert [job.to_json()["input"] for job in imported.list(JobFilter(limit=20)).jobs] == \
            [job.to_json()["input"] for job in added.list(JobFilter(limit=20)).jobs]
    finally:
        added.close()
        imported.close()


def test_imported_jobs_have_ids_of_twelve_hex_digits_each_its_own(store: SqliteJobStore) -> None:
    count = sqlite_store.IMPORT_CHUNK + 3
    store.add_batch(Batch(id="b1", file="jobs.csv", sha256="ab" * 32),
                    Rows([req(target=f"C-{n}") for n in range(count)]))
    ids = [job_id for (job_id,) in query(store.path, "SELECT id FROM jobs")]
    assert len(ids) == len(set(ids)) == count
    assert all(re.fullmatch("[0-9a-f]{12}", job_id) for job_id in ids)


def test_ids_are_drawn_as_many_as_asked_each_from_bytes_of_its_own() -> None:
    ids = sqlite_store._job_ids(7)
    assert len(ids) == 7 and all(re.fullmatch("[0-9a-f]{12}", job_id) for job_id in ids)


@pytest.mark.parametrize("remembered", [0, 2, 1000])
def test_an_import_marks_its_heads_by_the_rule_whatever_it_remembers_of_its_keys(
    store: SqliteJobStore, clock: FakeClock, monkeypatch: pytest.MonkeyPatch, remembered: int,
) -> None:
    """Chunks of three rows, and a memory of keys from none to all: a key held by a stored job or by a row of an
    earlier chunk, forgotten or not, keeps the rows behind it from being heads."""
    monkeypatch.setattr(sqlite_store, "IMPORT_CHUNK", 3)
    monkeypatch.setattr(sqlite_store, "IMPORT_HELD_KEYS", remembered)
    store.add([req("set_score", "A", 1, target="C-1", batch="old"), req("add_tag", "B", target="C-9", batch="old")])
    store.claim("runner-a", 1, LEASE)  # C-1's A runs: its key stays held
    rows = [req("add_tag", "Z", target=f"C-{n}") for n in range(4)]  # heads, filling the first chunks
    rows += [req("remove_tag", "A; B", target="C-1"), req("add_tag", "B", target="C-9"),  # behind stored jobs
             req("add_tag", "Z", target="C-2"),  # behind a row of an earlier chunk
             req("add_tag", "Q; Z", target="C-7"), req("add_tag", "Q", target="C-7"),  # a head, then behind it
             req("add_tag", "a", target="C-1")]  # tags are keys without regard to case: behind C-1's A
    kept = store.add_batch(Batch(id="b1", file="jobs.csv", sha256="ab" * 32), Rows(rows))
    assert (kept.rows, kept.queued) == (len(rows), len(rows))
    assert marks(store.path) == the_rule(store, clock.now)
    assert [job.request.brief() + " " + str(job.request.target) for job in store.claim("runner-a", 20, LEASE)
            if job.request] == ["Add Tag B contact C-9", *(f"Add Tag Z contact C-{n}" for n in range(4)),
                                "Add Tag Q, Z contact C-7"]


def test_an_import_gives_back_the_page_cache_it_took_even_when_stopped(store: SqliteJobStore) -> None:
    store.add([req(batch="old")])  # the store's write connection, as every write leaves it
    writer = store._writing()
    before = writer.execute("PRAGMA cache_size").fetchone()[0]
    during: list[int] = []

    def look() -> None:
        during.append(writer.execute("PRAGMA cache_size").fetchone()[0])

    store.add_batch(Batch(id="b1", file="jobs.csv", sha256="ab" * 32), Rows([req(target="C-2")], during=look))
    assert during == [-sqlite_store.IMPORT_CACHE_KIB] != [before]
    assert writer.execute("PRAGMA cache_size").fetchone()[0] == before

    def stop() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store.add_batch(Batch(id="b2", file="jobs.csv", sha256="cd" * 32), Rows([req(target="C-3")], during=stop))
    assert writer.execute("PRAGMA cache_size").fetchone()[0] == before
    assert [job.request.target.id for job in store.list(JobFilter()).jobs
            if job.request and job.request.target] == ["C-2", "C-1"]


@pytest.mark.parametrize(("remembered", "lookups"), [(0, 3), (1, 1), (1000, 1)])
def test_an_import_looks_a_key_up_once_unless_it_remembers_fewer_keys_than_it_met(
    store: SqliteJobStore, monkeypatch: pytest.MonkeyPatch, remembered: int, lookups: int,
) -> None:
    """Three chunks of one key: looked up in the first only, unless the import may not remember even one key."""
    monkeypatch.setattr(sqlite_store, "IMPORT_CHUNK", 2)
    monkeypatch.setattr(sqlite_store, "IMPORT_HELD_KEYS", remembered)
    store.add([req(batch="old")])  # the store's write connection, as every write leaves it
    statements: list[str] = []
    store._writing().set_trace_callback(statements.append)
    store.add_batch(Batch(id="b1", file="jobs.csv", sha256="ab" * 32), Rows([req() for _ in range(6)]))
    store._writing().set_trace_callback(None)
    assert len([sql for sql in statements if "FROM open_keys" in sql]) == lookups
    assert not any(head for (head,) in query(store.path, "SELECT head FROM jobs WHERE batch_id = 'b1'"))


def test_whether_a_key_is_held_costs_the_same_however_many_jobs_wait_on_it(tmp_path: Path) -> None:
    """An import looks up the keys it has not met yet, and `add` a job's keys: a queue of thousands on a key (one
    record's tag, imported over and over) must not make each look read them all."""
    steps = []
    for waiting in (10, 2000):
        store = SqliteJobStore(tmp_path / f"{waiting}.db", clock=FakeClock())
        try:
            store.add_batch(Batch(id="b1", file="jobs.csv", sha256="ab" * 32),
                            Rows([req(target="C-1") for _ in range(waiting)] + [req(target="C-2")]))
        finally:
            store.close()
        keys = '["contact:C-1|t", "contact:C-2|t", "contact:C-3|t"]'
        cost, found = vm_steps(tmp_path / f"{waiting}.db", sqlite_store.OPEN_AMONG, (keys,))
        assert found == 2
        steps.append(cost)
    assert steps[1] == steps[0]
