"""The fold of a tag's history into a score, and threshold crossings: plain values, no I/O."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from jobs.scoring.changes import Change, Op, crossed, fold


def test_a_history_of_increments_adds_up_from_the_first_reading() -> None:
    history = [Change("Lead", Op.ADD, before=5, after=15, delta=10), Change("Lead", Op.ADD, 15, 12, -3)]
    assert fold(history) == 12


def test_an_exact_value_or_a_removal_starts_the_sum_anew() -> None:
    assert fold([Change("Lead", Op.ADD, 5, 15, 10), Change("Lead", Op.SET, after=40),
                 Change("Lead", Op.ADD, 40, 41, 1)]) == 41
    assert fold([Change("Lead", Op.SET, after=40), Change("Lead", Op.UNTAG, after=0),
                 Change("Lead", Op.ADD, 0, 2, 2)]) == 2


def test_tags_alone_anchor_nothing() -> None:
    assert fold([]) is None
    assert fold([Change("VIP", Op.TAG)]) is None


def test_the_sum_goes_by_the_deltas_not_by_later_readings() -> None:
    # A later reading that disagrees (someone else changed the score, or a change was doubled) is not trusted:
    # the fold then differs from the platform, which is what shows the difference.
    assert fold([Change("Lead", Op.ADD, 0, 10, 10), Change("Lead", Op.ADD, 20, 30, 10)]) == 20


@given(st.integers(-50, 50), st.lists(st.integers(-20, 20).filter(bool), max_size=30))
def test_increments_from_a_reading_fold_to_the_reading_plus_their_sum(start: int, deltas: list[int]) -> None:
    history, score = [], start
    for delta in deltas:
        history.append(Change("Lead", Op.ADD, score, score + delta, delta))
        score += delta
    assert fold(history) == (start + sum(deltas) if deltas else None)


def test_a_crossing_goes_from_below_to_at_or_above() -> None:
    assert crossed(2, 3, 3)
    assert crossed(None, 5, 3)  # a missing score is 0
    assert crossed(-10, 100, 3)
    assert not crossed(3, 4, 3)  # already there
    assert not crossed(5, 2, 3)  # falling
    assert not crossed(1, 2, 3)
    assert crossed(-5, -2, -3)  # negative thresholds too


def test_a_removal_leaves_zero_and_a_zero_change_changes_nothing() -> None:
    assert fold([Change("Lead", Op.SET, after=40), Change("Lead", Op.UNTAG, after=0)]) == 0
    assert fold([Change("Lead", Op.ADD, before=7, after=7, delta=0)]) == 7


def test_a_missing_score_is_zero_on_either_side_of_a_crossing() -> None:
    assert crossed(None, 1, 1)  # from nothing to the threshold of 1
    assert not crossed(0, None, 1)  # a removed tag never reaches a positive threshold
    assert crossed(-1, None, 0)  # but it does reach 0
