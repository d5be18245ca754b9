"""What the console and `jobs list` ask of every store: the filters that combine (tag, operation, result code,
free text), a retry and a cancel on a filter, and the numbers of the overview (the oldest pending job, jobs done
per result code, failed attempts per kind and result code, runners' heartbeats)."""

from __future__ import annotations

import pytest

from jobs.model import Attempt, JobStatus
from jobs.store import Actor, JobFilter, Outcome
from tests.contract.conftest import LEASE, PERSON, StoreCase

CONSOLE = Actor(who="bea", via="console")
FAR = 10**10  # later than any time either store keeps


def listed(case: StoreCase, **query: object) -> list[str]:
    return [job.id for job in case.store.list(JobFilter(**query)).jobs]  # type: ignore[arg-type]


def fail_with(case: StoreCase, job_id: str, code: str, message: str, owner: str = "runner-a") -> None:
    attempt = Attempt(job_id=job_id, started_at=case.clock.now, ended_at=case.clock.now, outcome="failed",
                      result_code=code, http_status=400, message=message)
    case.store.finish(owner, job_id, Outcome(JobStatus.FAILED, code, message, http_status=400, attempt=attempt))


def test_list_finds_a_tag_exactly_whatever_its_case_among_several(case: StoreCase) -> None:
    webinar = case.add("add_tag", "Webinar; VIP")
    longer = case.add("add_tag", "Webinar 2026", target="C-2")
    scored = case.add("increase_score", "vip", 5, target="C-3")
    bad = case.store.add_raw({"operation": "Increase Score", "target_kind": "contact",
                              "target_id": case.record("C-4"), "tags": "VIP", "score": -5})
    assert listed(case, tag="webinar") == [webinar.id]
    assert listed(case, tag="VIP") == [bad.id, scored.id, webinar.id]
    assert listed(case, tag="VIP", limit=2) == [bad.id, scored.id]
    assert listed(case, tag="Webinar 2026") == [longer.id]
    assert listed(case, tag="Webin") == []
    assert listed(case, tag="VIP", target_id=case.record("C-3")) == [scored.id]


def test_a_tag_with_a_quote_or_a_backslash_is_found(case: StoreCase) -> None:
    quoted = case.add("add_tag", 'Say "hi"')
    slashed = case.add("increase_score", "a\\b", 2, target="C-2")
    assert listed(case, tag='say "HI"') == [quoted.id]
    assert listed(case, tag="A\\B") == [slashed.id]


def test_list_filters_by_operation_result_code_and_text_combined(case: StoreCase) -> None:
    tagged = case.add("add_tag", "A")
    scored = case.add("set_score", "B", 3, target="C-2")
    other = case.add("add_tag", "C", target="C-3")
    assert listed(case, operation="add_tag") == [other.id, tagged.id]
    assert listed(case, operation="set_score") == [scored.id]
    assert listed(case, operation="remove_tag") == []
    case.store.claim("runner-a", 3, LEASE)
    fail_with(case, tagged.id, "CONTACT_NOT_FOUND", "Spotler has no contact with external id C-1.")
    fail_with(case, scored.id, "INVALID_INPUT", "Score is too large.")
    case.succeed("runner-a", other.id)
    assert listed(case, result_code="CONTACT_NOT_FOUND") == [tagged.id]
    assert listed(case, result_code="OK", operation="add_tag") == [other.id]
    assert listed(case, result_code="OK", operation="set_score") == []
    assert listed(case, text="no contact with EXTERNAL id") == [tagged.id]
    assert listed(case, text="too large", status="failed") == [scored.id]
    assert listed(case, text="too large", status="succeeded") == []
    assert listed(case, text=other.id) == [other.id]
    assert listed(case, text="nothing says this") == []


def test_retry_where_retries_the_failed_jobs_it_finds_each_audited(case: StoreCase) -> None:
    first, second, third, pending = (case.add("add_tag", tag, target=f"C-{n}")
                                     for n, tag in enumerate(["VIP", "VIP", "Other", "VIP"]))
    case.store.claim("runner-a", 3, LEASE)
    for job in (first, second, third):
        fail_with(case, job.id, "CONTACT_NOT_FOUND", "No such contact.")
    retried = case.store.retry_where(JobFilter(tag="vip", limit=1), CONSOLE)
    assert sorted(retried) == sorted([first.id, second.id])
    for job_id in retried:
        again = case.store.get(job_id)
        assert (again.status, again.attempts) == (JobStatus.PENDING, 0)
        assert [(e.action, e.who, e.via) for e in case.store.audit(job_id)] == [("retry", "bea", "console")]
    assert case.store.get(third.id).status is JobStatus.FAILED
    assert case.store.get(pending.id).status is JobStatus.PENDING and case.store.audit(pending.id) == []
    assert case.store.retry_where(JobFilter(tag="VIP", status="pending"), CONSOLE) == []
    assert case.store.retry_where(JobFilter(tag="VIP"), CONSOLE) == []  # none failed any more


def test_cancel_where_takes_the_new_filters_too(case: StoreCase) -> None:
    vip = case.add("add_tag", "VIP")
    other = case.add("add_tag", "VIP 2", target="C-2")
    assert case.store.cancel_where(JobFilter(tag="vip", operation="add_tag"), PERSON) == [vip.id]
    assert case.store.get(other.id).status is JobStatus.PENDING


def test_oldest_pending_is_the_first_created_still_waiting(case: StoreCase) -> None:
    assert case.store.oldest_pending() is None
    first, second, _third = (case.add(target=f"C-{n}") for n in range(3))
    oldest = case.store.oldest_pending()
    assert oldest is not None and oldest.id == first.id
    case.store.claim("runner-a", 1, LEASE)
    case.succeed("runner-a", first.id)
    oldest = case.store.oldest_pending()
    assert oldest is not None and oldest.id == second.id


def test_finished_since_counts_outcomes_per_result_code(case: StoreCase) -> None:
    jobs = [case.add(target=f"C-{n}") for n in range(4)]
    case.store.claim("runner-a", 4, LEASE)
    case.succeed("runner-a", jobs[0].id)
    case.succeed("runner-a", jobs[1].id)
    fail_with(case, jobs[2].id, "CONTACT_NOT_FOUND", "No such contact.")
    case.retry_later(jobs[3].id, 60)  # not finished
    assert case.store.finished_since(0) == {"OK": 2, "CONTACT_NOT_FOUND": 1}
    assert case.store.finished_since(FAR) == {}


def test_failed_attempts_since_counts_per_kind_and_result_code(case: StoreCase) -> None:
    tag = case.add("add_tag", "A")
    score = case.add("increase_score", "B", 2, target="C-2")
    case.store.claim("runner-a", 2, LEASE)
    case.retry_later(tag.id, 0)
    case.retry_later(score.id, 0)
    case.clock.advance(1)
    case.store.claim("runner-a", 2, LEASE)
    case.succeed("runner-a", score.id)
    case.store.record_attempt("runner-a", Attempt(job_id=tag.id, started_at=case.clock.now, outcome="retrying",
                                                  result_code="RATE_LIMITED", http_status=429))
    assert case.store.failed_attempts_since(0) == {
        ("add_tag", "UNAVAILABLE"): 1, ("add_tag", "RATE_LIMITED"): 1, ("increase_score", "UNAVAILABLE"): 1}
    assert case.store.failed_attempts_since(FAR) == {}


def test_runners_are_seen_by_their_last_heartbeat(case: StoreCase) -> None:
    assert case.store.runners(0) == []
    case.store.heartbeat("host:1:a")
    case.clock.advance(10)
    case.store.heartbeat("host:2:b")
    case.clock.advance(10)
    case.store.heartbeat("host:1:a")
    seen = case.another().runners(0)
    assert [(r.owner, r.seen_at) for r in seen] == [("host:1:a", pytest.approx(case.clock.now, abs=0.01)),
                                                    ("host:2:b", pytest.approx(case.clock.now - 10, abs=0.01))]
    assert [r.owner for r in case.store.runners(case.clock.now - 5)] == ["host:1:a"]
