"""Re-arm and cooldown: whether a trigger may fire again for a record, given its earlier firings (plain values)."""

from __future__ import annotations

from jobs.model import Target, TargetKind
from jobs.scoring.rules import Action, Trigger
from jobs.scoring.triggers import firing_key, may_fire
from jobs.store import Entry

C1 = Target(kind=TargetKind.CONTACT, id="C-1")


def trigger(**fields: object) -> Trigger:
    return Trigger.model_validate({"name": "T", "tag": "Lead", "at_least": 3,
                                   "actions": [Action.model_validate({"do": "add_tag", "tags": "X"})], **fields})


def fired_at(*times: float) -> list[Entry]:
    return [Entry(stream="firings", key="contact:C-1", data={"trigger": "T"}, job_id=f"j{n}", at=t)
            for n, t in enumerate(times)]


def test_once_fires_the_first_time_only() -> None:
    once = trigger()
    assert may_fire(once, [], now=100)
    assert not may_fire(once, fired_at(1), now=10**9)
    assert firing_key(once, C1, "job-1") == firing_key(once, C1, "job-2") == "T|contact:C-1"


def test_every_crossing_fires_at_each_crossing_and_keys_it_by_the_job() -> None:
    every = trigger(rearm="every_crossing")
    assert may_fire(every, fired_at(1, 2, 3), now=4)
    assert firing_key(every, C1, "job-1") != firing_key(every, C1, "job-2")


def test_a_cooldown_holds_back_a_crossing_until_it_has_passed_since_the_last_firing() -> None:
    weekly = trigger(rearm="every_crossing", cooldown="7d")
    week = 7 * 86400
    assert may_fire(weekly, [], now=0)
    assert not may_fire(weekly, fired_at(0, 1000), now=1000 + week - 1)
    assert may_fire(weekly, fired_at(0, 1000), now=1000 + week)
