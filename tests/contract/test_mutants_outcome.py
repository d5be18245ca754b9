"""The applied mark and the effects written with a job's outcome, on every store: what `make mutate` found untested.

A job's page shows when its change was made (`applied_at`), and the score history and trigger firings show when
each step happened; both must read the moment the change was first marked, whichever write carried it.
"""

from __future__ import annotations

from jobs.model import JobStatus
from jobs.store import Effects, Outcome, Record
from tests.contract.conftest import LEASE, StoreCase


def test_an_outcome_with_the_applied_mark_keeps_the_time_the_change_was_first_marked(case: StoreCase) -> None:
    job = case.add()
    case.store.claim("runner-a", 1, LEASE)
    case.store.save_progress("runner-a", job.id, applied=True)
    first = case.at(case.clock.now)
    case.clock.advance(5)
    case.store.finish("runner-a", job.id, Outcome(JobStatus.SUCCEEDED, "OK", "Done.", applied=True))
    assert case.another().get(job.id).applied_at == first


def test_the_effects_written_with_an_outcome_carry_the_moment_of_the_outcome(case: StoreCase) -> None:
    job = case.add(target="C-1")
    case.store.claim("runner-a", 1, LEASE)
    case.clock.advance(7)
    history = Record("history", "contact:c-1|webinar", {"op": "tag"})
    case.store.finish("runner-a", job.id, Outcome(JobStatus.SUCCEEDED, "OK", "Done.", applied=True,
                                                  effects=Effects((history,), ())))
    [kept] = case.another().entries("history", "contact:c-1|webinar")
    assert (kept.data, kept.job_id, kept.at) == ({"op": "tag"}, job.id, case.at(case.clock.now))
