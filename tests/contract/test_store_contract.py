"""Every guarantee of the job store contract (`jobs.store`), on every store: round trips, claims, per-key order,
leases, outcomes, retries and cancels with their audit entries, request ids, paging, and the records durable
subscribers keep with an outcome. Time is a FakeClock the stores share with the test."""

from __future__ import annotations

import dataclasses
import random
import threading

import pytest

from jobs.kinds import kind_named
from jobs.model import Attempt, JobStatus, Origin
from jobs.store import (
    Batch,
    Effects,
    JobFilter,
    JobNotFound,
    LeaseLost,
    NotAllowed,
    Outcome,
    Record,
    batches,
    semantics,
)
from tests.contract.conftest import LEASE, PERSON, StoreCase


def ids(jobs: list) -> list[str]:
    return [j.id for j in jobs]


def listed(case: StoreCase, **query: object) -> list[str]:
    return ids(case.store.list(JobFilter(**query)).jobs)  # type: ignore[arg-type]


# --- round trips ----------------------------------------------------------------------------------------------


def test_every_field_of_a_job_and_its_attempts_survives_another_store_reading_it(case: StoreCase) -> None:
    job = case.add("Set Score", " Lead ", "-5", "lead", "L-9", request_id="crm-form-17")
    case.clock.advance(10)
    (claimed,) = case.store.claim("runner-a", 5, LEASE)
    t_claim = case.clock.now
    other = case.another()
    running = other.get(job.id)
    assert (running.status, running.lease_owner) == (JobStatus.RUNNING, "runner-a")
    assert running.lease_expires_at == case.at(t_claim + LEASE)
    assert running.request == claimed.request == job.request

    case.clock.advance(1.25)
    t_progress = case.clock.now
    case.store.save_progress("runner-a", job.id, score_before=42, applied=True, posted=True)
    case.clock.advance(0.5)
    attempt = Attempt(job_id=job.id, started_at=t_claim, ended_at=case.clock.now, outcome="retrying",
                      result_code="HTTP_503", http_status=503, message="Spotler answered 503; retrying.")
    case.store.record_attempt("runner-a", attempt)
    case.clock.advance(0.25)
    t_finish = case.clock.now
    case.store.finish("runner-a", job.id, Outcome(JobStatus.PENDING, "HTTP_503", "Spotler is unavailable; retrying.",
                                                  http_status=503, next_attempt_at=t_finish + 60))

    again = case.another().get(job.id)
    assert again.request is not None and again.request.target is not None
    assert (again.request.kind.name, again.request.target.kind.value, again.request.target.id) == \
        ("set_score", "lead", case.record("L-9", "lead"))
    assert again.request.payload.model_dump() == {"tags": ["Lead"], "score": -5}
    assert again.request == job.request
    assert (again.request_id, again.request.request_id) == ("crm-form-17", "crm-form-17")
    assert {k: again.raw[k] for k in ("operation", "tags", "score")} == \
        {"operation": "set_score", "tags": "Lead", "score": -5}
    assert (again.status, again.attempts, again.result_code, again.message, again.http_status) == \
        (JobStatus.PENDING, 1, "HTTP_503", "Spotler is unavailable; retrying.", 503)
    assert (again.lease_owner, again.lease_expires_at) == (None, None)
    assert again.next_attempt_at == case.at(t_finish + 60)
    assert (again.applied_at, again.posted_at) == (case.at(t_progress), case.at(t_progress))
    assert again.score_before == 42
    assert again.created_at == job.created_at
    assert again == case.store.get(job.id)
    (stored,) = other.attempts(job.id)
    assert stored.model_dump() == {**attempt.model_dump(), "number": 1}


def test_where_a_job_comes_from_round_trips(case: StoreCase) -> None:
    cause = Origin(source="trigger", job_id="j-1", trigger="prospect", firing="prospect|contact:c-1")
    request = dataclasses.replace(case.req("add_tag", "Prospect", request_id="firing-1-0"), origin=cause)
    (job,) = case.store.add([request])
    again = case.another().get(job.id)
    assert again.request is not None and again.request.origin == cause
    assert again.to_json()["origin"] == {"source": "trigger", "job_id": "j-1", "trigger": "prospect",
                                         "firing": "prospect|contact:c-1"}
    plain = case.add()
    assert case.another().get(plain.id).request.origin == Origin()  # a CRM user's job
    assert plain.to_json()["origin"] is None


def test_progress_marks_only_what_it_is_told_and_keeps_each_from_the_first_time(case: StoreCase) -> None:
    job = case.add("increase_score", "Lead", 3)
    case.store.claim("runner-a", 1, LEASE)

    def progress() -> tuple[object, ...]:
        again = case.store.get(job.id)
        return again.score_before, again.applied_at, again.posted_at

    case.store.save_progress("runner-a", job.id, score_before=7)  # read, not yet applied: a retry sends it
    assert progress() == (7, None, None)
    case.clock.advance(1)
    case.store.save_progress("runner-a", job.id, applied=True)  # applied, not yet posted: a retry posts it
    applied = case.at(case.clock.now)
    assert progress() == (7, applied, None)
    case.clock.advance(5)
    case.store.save_progress("runner-a", job.id, posted=True)
    posted = case.at(case.clock.now)
    case.clock.advance(5)
    case.store.save_progress("runner-a", job.id, applied=True, posted=True)
    assert progress() == (7, applied, posted)


def test_a_tag_only_job_with_several_tags_round_trips(case: StoreCase) -> None:
    job = case.add("Add Tag", "Newsletter; Webinar", kind=None, target=None)
    again = case.another().get(job.id)
    assert again.request is not None and again.request.target is None
    assert again.request.payload.tags == ["Newsletter", "Webinar"]
    assert again.raw["tags"] == "Newsletter, Webinar"
    assert again == job


def test_get_of_an_unknown_id_raises_job_not_found(case: StoreCase) -> None:
    with pytest.raises(JobNotFound):
        case.store.get("00000000-0000-0000-0000-000000000000")
    with pytest.raises(JobNotFound):
        case.store.get("nope")


# --- claiming -------------------------------------------------------------------------------------------------


def test_claim_gives_oldest_first_at_most_limit_and_marks_them_running(case: StoreCase) -> None:
    jobs = [case.add(target=f"C-{i}") for i in range(5)]
    claimed = case.store.claim("runner-a", 3, LEASE)
    assert ids(claimed) == ids(jobs[:3])
    for job in claimed:
        stored = case.store.get(job.id)
        assert (stored.status, stored.lease_owner) == (JobStatus.RUNNING, "runner-a")
        assert stored.lease_expires_at == case.at(case.clock.now + LEASE)
    assert case.store.get(jobs[3].id).status is JobStatus.PENDING
    assert case.claim_ids("runner-b") == ids(jobs[3:])
    assert case.claim_ids("runner-c") == []
    assert case.store.counts() == {"running": 5}


def test_a_claim_takes_the_jobs_due_longest_ago_first_and_a_lost_lease_is_due_when_a_claim_finds_it(
    case: StoreCase
) -> None:
    early = case.add(target="C-1")
    case.store.claim("runner-a", 1, LEASE)
    case.retry_later(early.id, LEASE + 10)  # created first, due after the next one
    held = case.add(target="C-2")
    case.store.claim("runner-x", 1, LEASE)  # runner-x stops renewing: its lease runs out
    waiting = case.add(target="C-3")
    case.clock.advance(LEASE + 20)
    assert [case.claim_ids(owner, 1) for owner in ("runner-b", "runner-c", "runner-d")] == [
        [waiting.id], [early.id], [held.id]]


def test_more_jobs_than_one_request_holds_are_added_all(case: StoreCase) -> None:
    case.store.add([case.req(target="C-1") for _ in range(1001)])  # Dataverse's $batch holds 1,000 requests
    assert case.store.counts() == {"pending": 1001}


def test_within_one_add_the_limit_takes_the_first_given(case: StoreCase) -> None:
    jobs = case.store.add([case.req(target=f"C-{i}") for i in range(6)])
    assert set(case.claim_ids(limit=2)) == set(ids(jobs[:2]))
    assert set(case.claim_ids(limit=2)) == set(ids(jobs[2:4]))


def test_claim_with_nothing_due_returns_nothing(case: StoreCase) -> None:
    assert case.store.claim("runner-a", 10, LEASE) == []
    assert case.store.waiting() == (0, None)


def test_two_runners_claiming_at_once_never_share_a_job_nor_break_key_order(case: StoreCase) -> None:
    # Three keys, each with a sequence that only gives its final value when run in order.
    jobs = []
    for n in range(12):
        tag = f"T{n % 3}"
        jobs.append(case.add("set_score" if n % 2 == 0 else "increase_score", tag, n + 1))
    order: dict[str, list[int]] = {}
    lock = threading.Lock()
    errors: list[BaseException] = []

    def run(owner: str) -> None:
        store = case.another()
        try:
            while True:
                claimed = store.claim(owner, 2, LEASE)
                if not claimed:
                    if not any(j.status in (JobStatus.PENDING, JobStatus.RUNNING)
                               for j in store.list(JobFilter(limit=50)).jobs):
                        return
                    continue
                for job in claimed:
                    with lock:
                        order.setdefault(job.request.payload.tags[0], []).append(job.request.payload.score)
                    store.finish(owner, job.id, Outcome(JobStatus.SUCCEEDED, "OK", ""))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(owner,)) for owner in ("runner-a", "runner-b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    assert {tag: scores for tag, scores in order.items()} == {
        f"T{k}": [n + 1 for n in range(12) if n % 3 == k] for k in range(3)
    }
    assert case.store.counts() == {"succeeded": 12}


# --- per-key order --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("final", [JobStatus.SUCCEEDED, JobStatus.FAILED])
def test_a_job_waits_while_an_earlier_one_for_its_key_runs(case: StoreCase, final: JobStatus) -> None:
    first = case.add("set_score", "Lead", 50)
    second = case.add("increase_score", "Lead", 10)
    assert case.claim_ids() == [first.id]
    assert case.claim_ids("runner-b") == []
    case.store.finish("runner-a", first.id, Outcome(final, None, "Over."))
    assert case.claim_ids("runner-b") == [second.id]


def test_cancelling_the_earlier_job_unblocks_the_later_one(case: StoreCase) -> None:
    first = case.add("set_score", "Lead", 50)
    second = case.add("increase_score", "Lead", 10)
    case.store.cancel(first.id, PERSON)
    assert case.claim_ids() == [second.id]


def test_an_earlier_job_waiting_for_a_retry_keeps_blocking_its_key(case: StoreCase) -> None:
    first = case.add("set_score", "Lead", 50)
    second = case.add("increase_score", "Lead", 10)
    case.store.claim("runner-a", 10, LEASE)
    case.retry_later(first.id, 60)
    assert case.claim_ids() == []
    assert case.store.waiting() == (1, case.at(case.clock.now + 60))  # the later job is not due before it
    case.clock.advance(60)
    assert case.claim_ids() == [first.id]
    assert case.claim_ids() == []
    case.succeed("runner-a", first.id)
    assert case.claim_ids() == [second.id]


def test_different_keys_are_claimed_together(case: StoreCase) -> None:
    jobs = [
        case.add("add_tag", "Webinar", target="C-1"),
        case.add("add_tag", "Lead", target="C-1"),  # same contact, other tag
        case.add("add_tag", "Webinar", target="C-2"),  # same tag, other contact
        case.add("add_tag", "Webinar", kind="lead", target="C-1"),  # a lead of the same name
        case.add("add_tag", "Webinar", kind=None, target=None),  # tag-only
    ]
    assert case.claim_ids() == ids(jobs)


def test_a_multi_tag_job_blocks_the_jobs_for_each_of_its_tags(case: StoreCase) -> None:
    both = case.add("remove_tag", "A; B")
    on_a, on_b, on_c = case.add("set_score", "A", 1), case.add("set_score", "B", 2), case.add("set_score", "C", 3)
    assert case.claim_ids() == [both.id, on_c.id]
    case.succeed("runner-a", both.id)
    assert case.claim_ids() == [on_a.id, on_b.id]


def test_a_job_waits_for_a_multi_tag_job_that_waits_itself(case: StoreCase) -> None:
    on_a = case.add("set_score", "A", 1)
    both = case.add("remove_tag", "A, B")
    on_b = case.add("set_score", "B", 2)  # B is free, but the earlier job on B waits for A
    assert case.claim_ids() == [on_a.id]
    case.succeed("runner-a", on_a.id)
    assert case.claim_ids() == [both.id]
    case.succeed("runner-a", both.id)
    assert case.claim_ids() == [on_b.id]


def test_keys_are_case_insensitive_on_the_tag(case: StoreCase) -> None:
    first = case.add("add_tag", "Webinar")
    second = case.add("remove_tag", "WEBINAR")
    assert case.claim_ids() == [first.id]
    case.succeed("runner-a", first.id)
    assert case.claim_ids() == [second.id]


def test_a_failed_job_retried_by_hand_waits_while_a_later_job_on_its_key_runs(case: StoreCase) -> None:
    first = case.add()
    second = case.add()
    case.store.claim("runner-a", 10, LEASE)
    case.fail(first.id)
    assert case.claim_ids() == [second.id]
    case.store.retry(first.id, PERSON)
    assert case.claim_ids("runner-b") == []
    case.succeed("runner-a", second.id)
    assert case.claim_ids("runner-b") == [first.id]


@pytest.mark.parametrize("seed", [7, 11])
def test_the_ordering_rule_is_the_one_of_semantics_claimable(case: StoreCase, seed: int) -> None:
    """Random queues of jobs over a few keys, claimed and finished in random ways: every claim takes exactly the
    due jobs `semantics.claimable` lets run. The SQLite and PostgreSQL stores state the rule in SQL, so this is
    their proof; the Dataverse store applies the function itself, so fewer turns there check its claims around it
    (each turn costs sandbox round trips)."""
    turns = 8 if case.name == "dataverse" else 16
    rng = random.Random(seed)
    tags = ["A", "B", "C", "A; B"]
    for _ in range(16):
        case.add("remove_tag" if ";" in (tag := rng.choice(tags)) else "set_score", tag,
                 None if ";" in tag else rng.randint(1, 9), target=rng.choice(["C-1", "C-2"]))
    held: list[str] = []
    failed: list[str] = []
    for _ in range(turns):
        unfinished = [j for j in reversed(case.store.list(JobFilter(limit=100)).jobs) if not j.status.finished]
        now = case.clock.now
        expected = {j.id for j in semantics.claimable(unfinished, now)
                    if (j.next_attempt_at <= now if j.status is JobStatus.PENDING
                        else not semantics.holds_lease(j, now))}
        claimed = case.claim_ids(limit=100)
        assert set(claimed) == expected
        held += claimed
        for job_id in rng.sample(held, k=min(len(held), rng.randint(1, 2))):
            held.remove(job_id)
            action = rng.choice(["succeed", "fail", "retry_later"])
            if action == "succeed":
                case.succeed("runner-a", job_id)
            elif action == "fail":
                case.fail(job_id)
                failed.append(job_id)
            else:
                case.retry_later(job_id, rng.choice([0, 20]))
        if failed and rng.random() < 0.6:  # retried by hand a turn later: later jobs of its key may run by then
            case.store.retry(failed.pop(rng.randrange(len(failed))), PERSON)
        case.store.renew("runner-a", held, LEASE)  # leases held across turns do not expire here
        case.clock.advance(rng.choice([0, 29]))


# --- leases ---------------------------------------------------------------------------------------------------


def test_an_expired_lease_makes_the_job_claimable_by_another_runner(case: StoreCase) -> None:
    job = case.add("increase_score", "Lead", 5)
    case.store.claim("runner-a", 10, LEASE)
    case.clock.advance(LEASE - 1)
    assert case.claim_ids("runner-b") == []
    case.clock.advance(2)
    (taken,) = case.store.claim("runner-b", 10, LEASE)
    assert (taken.id, taken.lease_owner, taken.attempts) == (job.id, "runner-b", 1)
    assert taken.lease_expires_at == case.at(case.clock.now + LEASE)
    assert case.store.get(job.id).next_attempt_at == case.at(case.clock.now)  # due again when the lease ran out
    (expired,) = case.store.attempts(job.id)
    assert (expired.number, expired.outcome, expired.result_code) == (1, "lease_expired", "LEASE_EXPIRED")
    assert "runner-a" in expired.message


def test_the_first_owner_can_no_longer_write_once_its_lease_is_taken(case: StoreCase) -> None:
    job = case.add("increase_score", "Lead", 5)
    case.store.claim("runner-a", 10, LEASE)
    case.clock.advance(LEASE + 2)
    case.store.claim("runner-b", 10, LEASE)
    lost = f"Job {job.id} is no longer held by runner-a."  # what the runner's log says of it
    with pytest.raises(LeaseLost, match=lost):
        case.succeed("runner-a", job.id)
    with pytest.raises(LeaseLost, match=lost):
        case.store.record_attempt("runner-a", Attempt(job_id=job.id, started_at=case.clock.now, outcome="succeeded"))
    with pytest.raises(LeaseLost, match=lost):
        case.store.save_progress("runner-a", job.id, score_before=1, applied=True)
    assert case.store.renew("runner-a", [job.id], LEASE) == [job.id]
    held = case.store.get(job.id)
    assert (held.status, held.lease_owner, held.attempts) == (JobStatus.RUNNING, "runner-b", 1)
    assert (held.applied_at, held.score_before) == (None, None)
    assert [a.outcome for a in case.store.attempts(job.id)] == ["lease_expired"]
    case.succeed("runner-b", job.id)
    assert case.store.get(job.id).status is JobStatus.SUCCEEDED


def test_renew_extends_held_leases_and_reports_lost_ones(case: StoreCase) -> None:
    mine, other, done = case.add(target="C-1"), case.add(target="C-2"), case.add(target="C-3")
    case.store.claim("runner-a", 1, LEASE)
    case.store.claim("runner-b", 1, LEASE)
    case.store.claim("runner-a", 1, LEASE)
    case.succeed("runner-a", done.id)
    case.clock.advance(LEASE - 2)
    assert case.store.renew("runner-a", [mine.id, other.id, done.id], LEASE) == [other.id, done.id]
    assert case.store.get(mine.id).lease_expires_at == case.at(case.clock.now + LEASE)
    case.clock.advance(LEASE - 2)  # past the first lease, within the renewed one
    assert case.claim_ids("runner-c") == [other.id]  # runner-b did not renew
    assert case.store.get(mine.id).lease_owner == "runner-a"
    assert case.store.attempts(mine.id) == []


def test_release_gives_a_job_back_without_counting_an_attempt(case: StoreCase) -> None:
    job = case.add()
    case.store.claim("runner-a", 1, LEASE)
    case.store.release("runner-a", job.id)
    back = case.store.get(job.id)
    assert (back.status, back.attempts, back.lease_owner) == (JobStatus.PENDING, 0, None)
    assert case.store.attempts(job.id) == []
    assert case.claim_ids("runner-b") == [job.id]


# --- outcomes -------------------------------------------------------------------------------------------------


def test_a_job_back_to_pending_waits_for_its_next_attempt_and_shows_as_retrying(case: StoreCase) -> None:
    job = case.add("set_score", "Lead", 1)
    fresh = case.add(target="C-2")
    case.store.claim("runner-a", 1, LEASE)
    case.retry_later(job.id, 120)
    due = case.at(case.clock.now + 120)
    assert case.store.counts() == {"retrying": 1, "pending": 1}
    assert listed(case, status="retrying") == [job.id]
    assert listed(case, status="pending") == [fresh.id, job.id]
    assert case.store.get(job.id).display_status == "retrying"
    assert case.store.waiting() == (1, fresh.next_attempt_at)
    assert case.claim_ids() == [fresh.id]
    case.succeed("runner-a", fresh.id)
    assert case.store.waiting() == (1, due)
    case.clock.advance(due - case.clock.now - 0.5)
    assert case.claim_ids() == []
    case.clock.advance(0.5)
    assert case.claim_ids() == [job.id]
    assert case.store.waiting() == (0, None)


def test_a_job_back_to_pending_without_a_time_is_due_at_once(case: StoreCase) -> None:
    job = case.add()
    case.store.claim("runner-a", 1, LEASE)
    case.store.finish("runner-a", job.id, Outcome(JobStatus.PENDING, "UNAVAILABLE", "Retrying.", http_status=503))
    assert case.store.get(job.id).next_attempt_at == case.at(case.clock.now)
    assert case.claim_ids("runner-b") == [job.id]


def test_the_last_attempt_and_the_posted_mark_go_with_the_outcome(case: StoreCase) -> None:
    job = case.add()
    case.store.claim("runner-a", 1, LEASE)
    attempt = Attempt(job_id=job.id, started_at=case.clock.now, ended_at=case.clock.now, outcome="succeeded",
                      result_code="OK", message="Added tag Webinar")
    case.store.finish("runner-a", job.id, Outcome(JobStatus.SUCCEEDED, "OK", "Added tag Webinar", attempt=attempt,
                                                  posted=True))
    done = case.store.get(job.id)
    assert (done.status, done.result_code, done.attempts, done.posted_at) == \
        (JobStatus.SUCCEEDED, "OK", 1, case.at(case.clock.now))
    assert [(a.number, a.outcome) for a in case.store.attempts(job.id)] == [(1, "succeeded")]


def test_an_outcome_marks_the_post_only_when_it_was_made_and_keeps_an_earlier_mark(case: StoreCase) -> None:
    unposted, posted = case.add(), case.add(target="C-2")
    case.store.claim("runner-a", 2, LEASE)
    case.fail(unposted.id)  # failed before its post: the post is still to be made after a retry
    assert case.store.get(unposted.id).posted_at is None
    case.store.save_progress("runner-a", posted.id, applied=True, posted=True)
    first = case.at(case.clock.now)
    case.clock.advance(5)
    case.store.finish("runner-a", posted.id, Outcome(JobStatus.SUCCEEDED, "OK", "Done.", posted=True))
    assert case.store.get(posted.id).posted_at == first


def test_an_outcome_whose_message_holds_a_nul_character_is_recorded(case: StoreCase) -> None:
    # A platform's error text is quoted into the message as it came; a store that refused it would leave the job
    # running, retried at each lease expiry and refused again, for ever.
    said = "Spotler: no such field \x00name"
    retrying, failing = case.add(), case.add(target="C-2")
    case.store.claim("runner-a", 2, LEASE)
    case.store.record_attempt("runner-a", Attempt(job_id=retrying.id, started_at=case.clock.now, outcome="retrying",
                                                  result_code="UNAVAILABLE", message=said))
    case.store.finish("runner-a", retrying.id, Outcome(JobStatus.PENDING, "UNAVAILABLE", said,
                                                       next_attempt_at=case.clock.now + 60))
    attempt = Attempt(job_id=failing.id, started_at=case.clock.now, ended_at=case.clock.now, outcome="failed",
                      result_code="INVALID_INPUT", http_status=400, message=said)
    case.store.finish("runner-a", failing.id, Outcome(JobStatus.FAILED, "INVALID_INPUT", said, http_status=400,
                                                      attempt=attempt))
    for job_id, status in ((retrying.id, JobStatus.PENDING), (failing.id, JobStatus.FAILED)):
        job = case.store.get(job_id)
        [kept] = case.store.attempts(job_id)
        assert job.status is status
        for message in (job.message, kept.message):
            assert message.startswith("Spotler: no such field ") and message.endswith("name"), message


def test_every_attempt_counts_on_the_job_and_in_its_log(case: StoreCase) -> None:
    job = case.add()
    case.store.claim("runner-a", 1, LEASE)
    for code, status in (("RATE_LIMITED", 429), (None, None)):  # retried within one claim, after a short wait
        case.store.record_attempt("runner-a", Attempt(job_id=job.id, started_at=case.clock.now, outcome="retrying",
                                                      result_code=code, http_status=status))
        case.clock.advance(2)
    assert case.store.get(job.id).attempts == 2
    case.fail(job.id)
    assert case.store.get(job.id).attempts == 3
    assert [(a.number, a.result_code, a.http_status) for a in case.store.attempts(job.id)] == [
        (1, "RATE_LIMITED", 429), (2, None, None), (3, "NOT_FOUND", 404)]


@pytest.mark.parametrize("write", ["save_progress", "finish"])
def test_effects_whose_lease_is_lost_are_not_written(case: StoreCase, write: str) -> None:
    job = case.add()
    case.store.claim("runner-a", 1, LEASE)
    case.clock.advance(LEASE + 2)
    case.store.claim("runner-b", 1, LEASE)
    effects = Effects((Record("history", "contact|webinar", {"after": 1}),), (case.req(target="C-9"),))
    with pytest.raises(LeaseLost):
        if write == "finish":
            case.store.finish("runner-a", job.id, Outcome(JobStatus.SUCCEEDED, "OK", "done", applied=True,
                                                          effects=effects))
        else:
            case.store.save_progress("runner-a", job.id, applied=True, effects=effects)
    assert case.store.entries("history") == []
    assert case.store.get(job.id).applied_at is None
    assert len(listed(case)) == 1


def test_effects_of_durable_subscribers_are_kept_with_the_applied_mark(case: StoreCase) -> None:
    first, second = case.add(target="C-1"), case.add(target="C-2")
    case.store.claim("runner-a", 2, LEASE)
    records = (Record("history", "contact:c-1|lead", {"before": 1, "after": 4}),
               Record("history", "contact:c-1|lead", {"before": 4, "after": 6}),
               Record("firings", "t1|contact:c-1", {"trigger": "t1"}, unique="t1|contact:c-1|1"))
    action = case.req("add_tag", "Prospect", target="C-1", request_id="firing:t1|contact:c-1|1|0")
    # The same request id twice in one write is one job too.
    case.store.save_progress("runner-a", first.id, applied=True, effects=Effects(records, (action, action)))
    written = case.at(case.clock.now)
    assert case.store.get(first.id).applied_at == written
    case.clock.advance(1)
    # A write that offers a stored firing again, beside new records and a new action: only the new ones are kept.
    again = Record("firings", "t1|contact:c-1", {"trigger": "t1", "again": True}, unique="t1|contact:c-1|1")
    other = Record("firings", "t2|contact:c-1", {"trigger": "t2"}, unique="t2|contact:c-1")
    later = Record("history", "contact:c-1|lead", {"before": 6, "after": 9})
    follow_up = case.req("add_tag", "Hot", target="C-1", request_id="firing:t2|contact:c-1|0")
    case.store.save_progress("runner-a", second.id, applied=True,
                             effects=Effects((again, other, later), (action, follow_up)))

    history = case.another().entries("history", "contact:c-1|lead")
    assert [(e.data, e.job_id, e.at) for e in history] == [({"before": 1, "after": 4}, first.id, written),
                                                           ({"before": 4, "after": 6}, first.id, written),
                                                           ({"before": 6, "after": 9}, second.id, written + 1)]
    firings = case.store.entries("firings")
    # Kept once: the first one stays.
    assert [(f.data, f.job_id) for f in firings] == [({"trigger": "t1"}, first.id), ({"trigger": "t2"}, second.id)]
    assert case.store.entries("history", "elsewhere") == []
    queued = [j for j in case.store.list(JobFilter()).jobs if j.request_id == "firing:t1|contact:c-1|1|0"]
    assert len(queued) == 1 and queued[0].status is JobStatus.PENDING  # queued once, also when offered twice
    assert queued[0].request == action
    assert [j.request for j in case.store.list(JobFilter()).jobs if j.request_id == follow_up.request_id] == [
        follow_up]


@pytest.mark.parametrize("status", [JobStatus.SUCCEEDED, JobStatus.PENDING, JobStatus.FAILED])
def test_an_outcome_carries_the_applied_mark_and_the_effects_in_its_write(case: StoreCase, status: JobStatus) -> None:
    job = case.add(target="C-1")
    case.store.claim("runner-a", 1, LEASE)
    history = Record("history", "contact:c-1|webinar", {"op": "tag"})
    firing = Record("firings", "t1|contact:c-1", {"trigger": "t1"}, unique="t1|contact:c-1|1")
    action = case.req("add_tag", "Prospect", target="C-2", request_id="firing:t1|contact:c-1|1|0")
    case.clock.advance(3)
    # Applied, then the post failed for now (pending), for good (failed), or all went well (succeeded).
    outcome = Outcome(status, "OK" if status is JobStatus.SUCCEEDED else "SERVER_ERROR", "done",
                      next_attempt_at=case.clock.now + 60 if status is JobStatus.PENDING else None,
                      posted=status is JobStatus.SUCCEEDED, applied=True, effects=Effects((history, firing), (action,)))
    case.store.finish("runner-a", job.id, outcome)
    reader = case.another()
    stored = reader.get(job.id)
    assert (stored.status, stored.applied_at) == (status, case.at(case.clock.now))
    assert [(e.data, e.job_id) for e in reader.entries("history", "contact:c-1|webinar")] == [({"op": "tag"}, job.id)]
    assert [e.data for e in reader.entries("firings")] == [{"trigger": "t1"}]
    assert [j.request for j in reader.list(JobFilter()).jobs if j.request_id == action.request_id] == [action]


def test_an_outcome_without_the_applied_mark_leaves_applied_at_as_it_was(case: StoreCase) -> None:
    job = case.add()
    case.store.claim("runner-a", 1, LEASE)
    case.store.finish("runner-a", job.id, Outcome(JobStatus.FAILED, "NOT_FOUND", "no such contact"))
    assert case.store.get(job.id).applied_at is None


def test_records_of_no_job_are_kept_all_at_once_and_unique_ones_once(case: StoreCase) -> None:
    log = [Record("events", "contact:c-1", {"name": "page_visit", "n": n}) for n in range(3)]
    case.store.keep([*log, Record("events", "contact:c-1", {"name": "x"}, unique="evt-1")])
    case.store.keep([Record("events", "contact:c-1", {"name": "x", "again": True}, unique="evt-1")])
    kept = case.another().entries("events", "contact:c-1")
    assert [e.data for e in kept] == [{"name": "page_visit", "n": 0}, {"name": "page_visit", "n": 1},
                                      {"name": "page_visit", "n": 2}, {"name": "x"}]
    assert {e.job_id for e in kept} == {""}


# --- a person's retry and cancel ------------------------------------------------------------------------------


def test_retry_of_a_failed_job_queues_it_again_with_a_fresh_budget_and_says_who(case: StoreCase) -> None:
    job = case.add("increase_score", "Lead", 4)
    case.store.claim("runner-a", 1, LEASE)
    case.store.save_progress("runner-a", job.id, score_before=9)
    case.fail(job.id)
    assert case.store.get(job.id).attempts == 1
    case.clock.advance(3600)
    assert case.store.retry(job.id, PERSON) == [job.id]
    queued = case.store.get(job.id)
    assert (queued.status, queued.attempts, queued.score_before) == (JobStatus.PENDING, 0, None)
    assert (queued.result_code, queued.http_status, queued.message) == (None, None, semantics.RETRY_MESSAGE)
    assert queued.next_attempt_at == case.at(case.clock.now)
    (entry,) = case.store.audit(job.id)
    assert (entry.action, entry.who, entry.via) == ("retry", "ann", "cli")
    assert entry.at == pytest.approx(case.clock.now, abs=0.001)
    case.store.claim("runner-b", 1, LEASE)
    case.fail(job.id, "runner-b")
    assert case.store.get(job.id).attempts == 1  # the budget restarted
    assert [a.number for a in case.store.attempts(job.id)] == [1, 2]  # the history did not


def test_retry_of_every_failed_job_takes_those_and_nothing_else(case: StoreCase) -> None:
    failed = [case.add(target=f"F-{i}") for i in range(3)]
    ok, waiting = case.add(target="S"), case.add(target="P")
    case.store.claim("runner-a", 4, LEASE)
    for job in failed:
        case.fail(job.id)
    case.succeed("runner-a", ok.id)
    assert sorted(case.store.retry(None, PERSON)) == sorted(ids(failed))
    assert [case.store.get(j.id).status for j in failed] == [JobStatus.PENDING] * 3
    assert (case.store.get(ok.id).status, case.store.get(waiting.id).status) == \
        (JobStatus.SUCCEEDED, JobStatus.PENDING)
    assert [e.action for e in case.store.audit(failed[0].id)] == ["retry"]
    assert case.store.retry(None, PERSON) == []


def test_a_retried_job_takes_its_place_in_its_key_again(case: StoreCase) -> None:
    first = case.add("set_score", "Lead", 4)
    second = case.add("increase_score", "Lead", 1)
    case.store.claim("runner-a", 1, LEASE)
    case.fail(first.id)
    case.store.retry(first.id, PERSON)  # before `second` was claimed: creation order holds again
    assert case.claim_ids() == [first.id]
    case.succeed("runner-a", first.id)
    assert case.claim_ids() == [second.id]


@pytest.mark.parametrize("status", ["pending", "running", "succeeded", "cancelled"])
def test_only_failed_jobs_can_be_retried(case: StoreCase, status: str) -> None:
    job = case.add()
    if status == "cancelled":
        case.store.cancel(job.id, PERSON)
    elif status != "pending":
        case.store.claim("runner-a", 1, LEASE)
        if status == "succeeded":
            case.succeed("runner-a", job.id)
    with pytest.raises(NotAllowed, match="only failed jobs can be retried"):
        case.store.retry(job.id, PERSON)
    assert case.store.get(job.id).status == status


def test_retry_and_cancel_of_an_unknown_job_raise_job_not_found(case: StoreCase) -> None:
    with pytest.raises(JobNotFound):
        case.store.retry("00000000-0000-0000-0000-000000000000", PERSON)
    with pytest.raises(JobNotFound):
        case.store.cancel("nope", PERSON)


def test_cancel_a_pending_job_and_say_who(case: StoreCase) -> None:
    job = case.add()
    cancelled = case.store.cancel(job.id, PERSON)
    assert (cancelled.status, cancelled.result_code, cancelled.message) == \
        (JobStatus.CANCELLED, "CANCELLED", semantics.CANCEL_MESSAGE)
    assert case.store.get(job.id) == cancelled
    assert [(e.action, e.who) for e in case.store.audit(job.id)] == [("cancel", "ann")]
    assert case.claim_ids() == []


def test_cancelling_a_job_that_was_tried_says_how_often(case: StoreCase) -> None:
    job = case.add()
    case.store.claim("runner-a", 1, LEASE)
    case.retry_later(job.id, 60)
    assert case.store.cancel(job.id, PERSON).message == "Cancelled after 1 attempt; it is not tried again."
    again = case.add(target="C-2")
    case.store.claim("runner-a", 1, LEASE)
    case.fail(again.id)
    case.store.retry(again.id, PERSON)  # a fresh budget; its log keeps the try before
    case.store.claim("runner-a", 1, LEASE)
    case.retry_later(again.id, 60)
    assert case.store.cancel(again.id, PERSON).message == "Cancelled after 2 attempts; it is not tried again."


@pytest.mark.parametrize("status", ["running", "succeeded", "failed", "cancelled"])
def test_only_pending_jobs_can_be_cancelled(case: StoreCase, status: str) -> None:
    job = case.add()
    if status == "cancelled":
        case.store.cancel(job.id, PERSON)
    else:
        case.store.claim("runner-a", 1, LEASE)
        if status == "succeeded":
            case.succeed("runner-a", job.id)
        elif status == "failed":
            case.fail(job.id)
    before = case.store.get(job.id)
    with pytest.raises(NotAllowed, match="only pending jobs can be cancelled"):
        case.store.cancel(job.id, PERSON)
    assert case.store.get(job.id) == before


def test_a_retrying_job_can_be_cancelled(case: StoreCase) -> None:
    job = case.add()
    case.store.claim("runner-a", 1, LEASE)
    case.retry_later(job.id, 30)
    assert case.store.cancel(job.id, PERSON).status is JobStatus.CANCELLED
    case.clock.advance(60)
    assert case.claim_ids() == []


# --- adding ---------------------------------------------------------------------------------------------------


def test_add_keeps_the_order_given(case: StoreCase) -> None:
    jobs = case.store.add([case.req("set_score", "Lead", n) for n in (1, 2, 3)])
    assert [j.request.payload.score for j in jobs if j.request] == [1, 2, 3]
    for expected in jobs:
        (job,) = case.store.claim("runner-a", 10, LEASE)
        assert job.id == expected.id
        case.succeed("runner-a", job.id)


def test_a_request_id_is_queued_once(case: StoreCase) -> None:
    first = case.add("increase_score", "Lead", 10, request_id="webhook-1")
    again, other, same_batch_a, same_batch_b = case.store.add([
        case.req("increase_score", "Lead", 10, request_id="webhook-1"),
        case.req("increase_score", "Lead", 10, request_id="webhook-2"),
        case.req("increase_score", "Lead", 5, request_id="webhook-3"),
        case.req("increase_score", "Lead", 5, request_id="webhook-3"),
    ])
    assert again == first
    assert other.id != first.id and other.request_id == "webhook-2"
    assert same_batch_a == same_batch_b
    assert len(listed(case)) == 3
    case.store.claim("runner-a", 1, LEASE)
    case.succeed("runner-a", first.id)
    (after_it_ran,) = case.store.add([case.req("increase_score", "Lead", 10, request_id="webhook-1")])
    assert (after_it_ran.id, after_it_ran.status) == (first.id, JobStatus.SUCCEEDED)


@dataclasses.dataclass
class Rows:
    """An import's requests as a store reads them; `broken_at` raises there, as an interrupted import does."""

    requests: list
    broken_at: int | None = None
    invalid: int = 0
    rows: int = 0

    def __iter__(self):  # type: ignore[no-untyped-def]
        for n, request in enumerate(self.requests):
            if n == self.broken_at:
                raise KeyboardInterrupt
            self.rows += 1
            yield request


def in_batch(request, batch_id: str = "b1"):  # type: ignore[no-untyped-def]
    return dataclasses.replace(request, origin=Origin(source="import", batch=batch_id))


def test_an_import_is_one_batch_queued_in_order_and_kept_with_its_counts(case: StoreCase) -> None:
    before = case.add("increase_score", "Lead", 1, request_id="row-1")
    case.clock.advance(1)
    rows = Rows([in_batch(case.req("increase_score", "Lead", n, request_id=f"row-{n}")) for n in (1, 2, 3)]
                + [in_batch(case.req("increase_score", "Lead", 9, request_id="row-3"))], invalid=2)
    kept = case.store.add_batch(Batch(id="b1", file="jobs.csv", sha256="ab" * 32, who="ann"), rows)
    assert (kept.id, kept.file, kept.who, kept.rows, kept.queued, kept.already, kept.invalid) == \
        ("b1", "jobs.csv", "ann", 4, 2, 2, 2)
    assert kept.at == pytest.approx(case.clock.now)
    assert batches(case.another(), "ab" * 32) == [kept] and batches(case.store, "cd" * 32) == []
    queued = case.store.list(JobFilter(batch="b1")).jobs
    assert [j.request.payload.score for j in queued if j.request] == [3, 2]  # newest first
    assert all(j.request and j.request.origin == Origin(source="import", batch="b1") for j in queued)
    assert before.id not in ids(queued)
    for expected in [before, *reversed(queued)]:  # the batch's jobs after the one before, in the order read
        (job,) = case.store.claim("runner-a", 10, LEASE)
        assert job.id == expected.id
        case.succeed("runner-a", job.id)


def test_an_import_interrupted_while_read_queues_nothing_and_keeps_no_batch(case: StoreCase) -> None:
    rows = Rows([in_batch(case.req("add_tag", "VIP", target=f"C-{n}")) for n in range(3)], broken_at=2)
    with pytest.raises(KeyboardInterrupt):
        case.store.add_batch(Batch(id="b1", file="jobs.csv", sha256="ab" * 32), rows)
    assert listed(case) == [] and batches(case.store) == []


def test_cancel_where_cancels_the_pending_jobs_it_finds_and_says_who(case: StoreCase) -> None:
    outside = case.add(target="C-9")
    case.clock.advance(1)
    case.store.add_batch(Batch(id="b1", file="a.csv", sha256="ab" * 32),
                         Rows([in_batch(case.req("add_tag", "VIP", target=f"C-{n}")) for n in range(4)]))
    claimed = case.store.claim("runner-a", 4, LEASE)  # the job outside and the batch's first three
    assert claimed[0].id == outside.id
    running, retrying, done = claimed[1:]
    case.retry_later(retrying.id, 60)
    case.succeed("runner-a", done.id)
    cancelled = case.store.cancel_where(JobFilter(batch="b1", limit=1), PERSON)
    assert len(cancelled) == 2 and retrying.id in cancelled
    for job_id in cancelled:
        assert case.store.get(job_id).status is JobStatus.CANCELLED
        assert [(e.action, e.who, e.via) for e in case.store.audit(job_id)] == [("cancel", "ann", "cli")]
    assert case.store.get(running.id).status is JobStatus.RUNNING
    assert case.store.get(done.id).status is JobStatus.SUCCEEDED
    assert case.store.get(outside.id).status is JobStatus.RUNNING
    assert case.store.cancel_where(JobFilter(batch="b1", status="failed"), PERSON) == []
    assert case.store.cancel_where(JobFilter(batch="b2"), PERSON) == []


def test_add_raw_keeps_invalid_input_as_given_without_blocking_others(case: StoreCase) -> None:
    raw = {"operation": "Increase Score", "target_kind": "contact", "target_id": case.record("C-1"),
           "tags": "Lead", "score": -5}
    bad = case.store.add_raw(raw)
    case.clock.advance(1)
    good = case.add("increase_score", "Lead", 5)
    again = case.another().get(bad.id)
    assert again.request is None
    # The form's operation column holds a kind, by its choice value on Dataverse: the name comes back canonical.
    assert kind_named(again.raw["operation"]).name == "increase_score"
    assert {k: again.raw[k] for k in raw if k != "operation"} == {k: v for k, v in raw.items() if k != "operation"}
    assert again.status is JobStatus.PENDING
    assert case.claim_ids() == [bad.id, good.id]


def test_valid_input_queued_raw_keeps_its_place_in_the_key_order(case: StoreCase) -> None:
    raw = case.store.add_raw({"operation": "set_score", "target_kind": "contact", "target_id": case.record("C-1"),
                              "tags": "Lead", "score": 3})
    case.clock.advance(1)
    later = case.add("increase_score", "Lead", 1)
    assert raw.request is not None
    assert case.claim_ids() == [raw.id]
    case.succeed("runner-a", raw.id)
    assert case.claim_ids() == [later.id]


# --- reading --------------------------------------------------------------------------------------------------


def test_list_filters_and_is_newest_first(case: StoreCase) -> None:
    j1 = case.add(target="C-1")
    case.clock.advance(10)
    j2 = case.add(target="C-2")
    case.clock.advance(10)
    j3 = case.add(target="C-1")
    case.store.claim("runner-a", 1, LEASE)
    case.succeed("runner-a", j1.id)
    assert listed(case) == [j3.id, j2.id, j1.id]
    assert listed(case, status="succeeded") == [j1.id]
    assert listed(case, status="pending") == [j3.id, j2.id]
    assert listed(case, status="failed") == []
    assert listed(case, target_id=case.record("C-1")) == [j3.id, j1.id]
    # Creation times are the store's: Dataverse stamps them itself, to the second.
    for since in (j1.created_at, j3.created_at, j3.created_at + 1):
        assert listed(case, since=since) == [j.id for j in (j3, j2, j1) if j.created_at >= since]


def test_list_pages_with_a_cursor(case: StoreCase) -> None:
    jobs = case.store.add([case.req(target=f"C-{i}") for i in range(7)])
    newest_first = list(reversed(ids(jobs)))
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = case.store.list(JobFilter(limit=3, after=cursor))
        seen += ids(page.jobs)
        pages += 1
        cursor = page.next_cursor
        if cursor is None:
            break
    assert (seen, pages) == (newest_first, 3)
    first = case.store.list(JobFilter(limit=7))
    assert (ids(first.jobs), first.next_cursor) == (newest_first, None)


@pytest.mark.parametrize("cursor", ["not-a-cursor", "99999999999999999999999", "-1|x"])
def test_a_page_cursor_the_store_never_gave_out_is_refused_with_a_sentence(case: StoreCase, cursor: str) -> None:
    """A cursor comes back in a URL a person can edit (the console's next-page link)."""
    case.add()
    with pytest.raises(NotAllowed, match="is not one this store gave out"):
        case.store.list(JobFilter(after=cursor))


def test_counts_has_every_display_status(case: StoreCase) -> None:
    pending = case.add(target="P")
    retrying, running, succeeded, failed = (case.add(target=name) for name in ("R", "RUN", "S", "F"))
    cancelled = case.add(target="X")
    case.store.cancel(cancelled.id, PERSON)
    case.store.claim("runner-a", 10, LEASE)
    case.store.release("runner-a", pending.id)
    case.retry_later(retrying.id, 5)
    case.succeed("runner-a", succeeded.id)
    case.fail(failed.id)
    assert case.store.get(running.id).status is JobStatus.RUNNING
    assert case.store.counts() == {"pending": 1, "retrying": 1, "running": 1, "succeeded": 1, "failed": 1,
                                   "cancelled": 1}
