"""The SQLite store's file and connections, and input queued as a CRM user left it: what `make mutate` found
untested. The store makes its folder, a long-running runner reads without gathering connections (each holds
open files), a store closed and used again opens anew, and valid input written loosely is kept as its request
reads it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from jobs.model import JobRequest, JobStatus, Target, TargetKind, iso
from jobs.store import JobFilter, Outcome
from jobs.store.sqlite import SqliteJobStore
from tests.conftest import FakeClock


def test_the_store_makes_the_folders_of_its_file(tmp_path: Path, clock: FakeClock) -> None:
    store = SqliteJobStore(tmp_path / "data" / "connector" / "jobs.db", clock=clock)
    try:
        assert store.counts() == {}
        assert (tmp_path / "data" / "connector" / "jobs.db").is_file()
    finally:
        store.close()


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts open files through /proc")
def test_reads_do_not_gather_open_files(store: SqliteJobStore) -> None:
    (job,) = store.add([JobRequest.from_input(operation="add_tag", tags="T", target_kind="contact",
                                              target_id="C-1")])
    store.get(job.id)
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(200):
        store.get(job.id)
        store.list(JobFilter(limit=5))
    assert len(os.listdir("/proc/self/fd")) - before < 10


def test_a_store_closed_and_used_again_opens_anew(store: SqliteJobStore) -> None:
    (first,) = store.add([JobRequest.from_input(operation="add_tag", tags="T", target_kind="contact",
                                                target_id="C-1")])
    store.close()
    assert store.get(first.id).id == first.id
    (second,) = store.add([JobRequest.from_input(operation="add_tag", tags="T", target_kind="contact",
                                                 target_id="C-2")])
    assert [job.id for job in store.claim("runner-a", 5, 30.0)] == [first.id, second.id]


def test_valid_input_written_loosely_is_kept_as_its_request_reads_it(store: SqliteJobStore) -> None:
    job = store.add_raw({"operation": "Add Tag", "tags": "T", "target_kind": "Contact", "target_id": " C-1 "})
    assert job.request is not None
    assert job.request.target == Target(kind=TargetKind.CONTACT, id="C-1")
    assert [j.id for j in store.list(JobFilter(target_id="C-1")).jobs] == [job.id]
    assert [j.id for j in store.list(JobFilter(operation="add_tag")).jobs] == [job.id]


def test_input_that_is_not_valid_is_found_by_its_record_and_by_the_operation_it_names(
    store: SqliteJobStore,
) -> None:
    # An Add Tag row without its tags: a person looking at the contact's jobs, or at the Add Tag jobs, sees it.
    bad = store.add_raw({"operation": "add_tag", "target_kind": "contact", "target_id": "C-1"})
    store.add([JobRequest.from_input(operation="set_score", tags="T", score=1, target_kind="contact",
                                     target_id="C-2")])
    assert bad.request is None
    assert [j.id for j in store.list(JobFilter(target_id="C-1")).jobs] == [bad.id]
    assert [j.id for j in store.list(JobFilter(operation="add_tag")).jobs] == [bad.id]


def test_a_job_shows_when_it_last_changed(store: SqliteJobStore, clock: FakeClock) -> None:
    (job,) = store.add([JobRequest.from_input(operation="add_tag", tags="T", target_kind="contact",
                                              target_id="C-1")])
    assert store.get(job.id).updated_at == clock.now
    store.claim("runner-a", 1, 30.0)
    clock.advance(7)
    store.finish("runner-a", job.id, Outcome(JobStatus.SUCCEEDED, "OK", "Done."))
    assert store.get(job.id).to_json()["updated_at"] == iso(clock.now)
