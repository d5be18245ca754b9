"""Validation of a job as a CRM user meets it: what is accepted, what is refused, and the sentence they read."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobs.kinds import all_kinds, kind_named
from jobs.model import MAX_SCORE, MAX_TAG_LENGTH, InvalidJob, JobRequest, TargetKind

# The six tag and score kinds of the job form (more kinds may come; these rules are about these six).
ALL_OPS = ["add_tag", "remove_tag", "set_score", "increase_score", "decrease_score", "remove_score"]
MULTI_TAG_OPS = ["add_tag", "remove_tag", "remove_score"]
ONE_TAG_OPS = ["set_score", "increase_score", "decrease_score"]
SCORE_OPS = ONE_TAG_OPS
NO_SCORE_OPS = MULTI_TAG_OPS


def make(**overrides: Any) -> JobRequest:
    fields: dict[str, Any] = {"operation": "add_tag", "tags": "Webinar", "target_kind": "contact", "target_id": "C-1"}
    fields.update(overrides)
    return JobRequest.from_input(**fields)


def score_of(op: str) -> int | None:
    return 5 if op in SCORE_OPS else None


def problems(**overrides: Any) -> list[str]:
    with pytest.raises(InvalidJob) as info:
        make(**overrides)
    assert info.value.problems, "InvalidJob without a problem to show"
    assert info.value.result_code == "INVALID_INPUT"
    return info.value.problems


def problem(**overrides: Any) -> str:
    found = problems(**overrides)
    assert len(found) == 1, found
    return found[0]


# --- operations -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given_name", "expected"),
    [
        ("add_tag", "add_tag"),
        ("Add Tag", "add_tag"),
        ("remove_tag", "remove_tag"),
        ("Remove Tag", "remove_tag"),
        ("set_score", "set_score"),
        ("Set Score", "set_score"),
        ("increase score", "increase_score"),
        ("INCREASE_SCORE", "increase_score"),
        ("Increase Score", "increase_score"),
        ("  decrease-score ", "decrease_score"),
        ("Decrease Score", "decrease_score"),
        ("remove_score", "remove_score"),
        ("Remove Score", "remove_score"),
    ],
)
def test_operation_accepts_code_and_crm_display_names(given_name: str, expected: str) -> None:
    request = make(operation=given_name, tags="Lead", score=score_of(expected))
    assert request.kind.name == expected


def test_the_six_operations_and_their_labels() -> None:
    assert {op: kind_named(op).label for op in ALL_OPS} == {
        "add_tag": "Add Tag",
        "remove_tag": "Remove Tag",
        "set_score": "Set Score",
        "increase_score": "Increase Score",
        "decrease_score": "Decrease Score",
        "remove_score": "Remove Score",
    }


@pytest.mark.parametrize("bad", ["Add Tags", "tag", "delete_tag", "add tag please"])
def test_unknown_operation_lists_the_valid_ones(bad: str) -> None:
    message = problem(operation=bad)
    assert message.startswith(f"Operation is {bad!r};")
    for kind in all_kinds():
        assert kind.name in message
        assert kind.label in message
    assert message.endswith(".")


@pytest.mark.parametrize("bad", [None, "", "   "])
def test_missing_operation_is_called_empty(bad: str | None) -> None:
    message = problem(operation=bad)
    assert message.startswith("Operation is empty;")
    assert "Add Tag (add_tag)" in message


# --- tags -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("op", ALL_OPS)
def test_tags_are_trimmed(op: str) -> None:
    assert make(operation=op, tags="  Webinar \t", score=score_of(op)).payload.tags == ["Webinar"]


@pytest.mark.parametrize("op", MULTI_TAG_OPS)
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Webinar, Lead", ["Webinar", "Lead"]),
        ("Webinar;Lead", ["Webinar", "Lead"]),
        (" A ; B , C ", ["A", "B", "C"]),
        ("A, B, A", ["A", "B"]),
        ("Webinar; Webinar", ["Webinar"]),
        ("One tag with spaces", ["One tag with spaces"]),
    ],
)
def test_several_tags_split_on_comma_and_semicolon_deduplicated(op: str, text: str, expected: list[str]) -> None:
    assert make(operation=op, tags=text).payload.tags == expected


@pytest.mark.parametrize("op", ONE_TAG_OPS)
@pytest.mark.parametrize("text", ["Lead, Webinar", "Lead;Webinar"])
def test_score_operations_take_exactly_one_tag(op: str, text: str) -> None:
    # A tag holding ',' or ';' could never be removed: Remove Tag / Remove Score split on them.
    message = problem(operation=op, tags=text, score=5)
    assert message.startswith(f"Tag {text!r} ")
    assert kind_named(op).label in message
    assert "one tag" in message
    assert message.endswith(".")


@pytest.mark.parametrize("op", ONE_TAG_OPS)
def test_score_operations_refuse_a_list_of_two_tags(op: str) -> None:
    message = problem(operation=op, tags=["Lead", "Webinar"], score=5)
    assert "one tag" in message


@pytest.mark.parametrize("op", ALL_OPS)
@pytest.mark.parametrize("empty", ["", "   ", None])
def test_empty_tag_is_rejected(op: str, empty: str | None) -> None:
    message = problem(operation=op, tags=empty, score=score_of(op))
    assert message == f"Tag is empty; {kind_named(op).label} needs the name of a tag."


@pytest.mark.parametrize("op", MULTI_TAG_OPS)
@pytest.mark.parametrize("text", ["A,,B", "A; ;B", "A,", ";A", ","])
def test_empty_tag_between_separators_is_rejected(op: str, text: str) -> None:
    message = problem(operation=op, tags=text)
    assert message.startswith(f"Tag {text!r} has an empty tag between separators")
    assert message.endswith(".")


@pytest.mark.parametrize("op", ALL_OPS)
def test_tag_of_255_characters_is_accepted_256_is_not(op: str) -> None:
    longest = "x" * MAX_TAG_LENGTH
    assert make(operation=op, tags=f"  {longest}  ", score=score_of(op)).payload.tags == [longest]
    message = problem(operation=op, tags="y" * (MAX_TAG_LENGTH + 1), score=score_of(op))
    assert message.startswith("Tag 'yyyy")
    assert "256 characters" in message
    assert "at most 255" in message
    assert message.endswith(".")


def test_an_overlong_tag_is_found_among_several() -> None:
    message = problem(operation="remove_tag", tags=f"Lead, {'z' * 300}")
    assert "300 characters" in message


@pytest.mark.parametrize("op", ALL_OPS)
@pytest.mark.parametrize("char", ["\n", "\r", "\t", "\x00", "\x1b", "\x7f", "\x85", "\x9f"])
def test_control_characters_inside_a_tag_are_rejected(op: str, char: str) -> None:
    tag = f"Web{char}inar"
    message = problem(operation=op, tags=tag, score=score_of(op))
    assert message.startswith(f"Tag {tag!r} contains a control character")
    assert message.endswith(".")


@pytest.mark.parametrize("char", ["\n", "\x00", "\x85"])
def test_control_character_in_a_record_id_is_rejected(char: str) -> None:
    message = problem(target_id=f"C{char}1")
    assert "record id" in message
    assert message.endswith(".")


# --- scores ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given_score", "expected"),
    [(10, 10), ("10", 10), ("+7", 7), (" 12 ", 12), ("-3", -3), (0, 0), ("0", 0), (-2_000, -2_000)],
)
def test_set_score_takes_integers_negative_and_zero_included(given_score: object, expected: int) -> None:
    assert make(operation="set_score", tags="Lead", score=given_score).payload.score == expected


@pytest.mark.parametrize("op", ["increase_score", "decrease_score"])
@pytest.mark.parametrize(("given_score", "expected"), [(1, 1), ("+7", 7), (" 12 ", 12), ("10", 10)])
def test_increase_and_decrease_take_positive_integers(op: str, given_score: object, expected: int) -> None:
    assert make(operation=op, tags="Lead", score=given_score).payload.score == expected


@pytest.mark.parametrize("op", SCORE_OPS)
@pytest.mark.parametrize(
    ("bad", "shown"),
    [("10.5", "'10.5'"), ("abc", "'abc'"), (10.5, "'10.5'"), (10.0, "'10.0'"), ("1e3", "'1e3'"), ("5 5", "'5 5'"),
     (True, "True"), (False, "False")],
)
def test_score_must_be_a_whole_number(op: str, bad: object, shown: str) -> None:
    message = problem(operation=op, tags="Lead", score=bad)
    assert message.startswith(f"Score is {shown};")
    assert "whole number" in message
    assert message.endswith(".")


@pytest.mark.parametrize("op", SCORE_OPS)
@pytest.mark.parametrize("missing", [None, "", "  "])
def test_score_operations_need_a_score(op: str, missing: str | None) -> None:
    message = problem(operation=op, tags="Lead", score=missing)
    assert message == f"Score is empty; {kind_named(op).label} needs a whole number."


@pytest.mark.parametrize("op", NO_SCORE_OPS)
@pytest.mark.parametrize("given_score", [5, "5", 0])
def test_tag_operations_refuse_a_score(op: str, given_score: object) -> None:
    message = problem(operation=op, tags="Lead", score=given_score)
    assert message.startswith(f"Score is {given_score!r}, but {kind_named(op).label} does not take a score")
    assert message.endswith(".")


@pytest.mark.parametrize("op", NO_SCORE_OPS)
def test_tag_operations_accept_an_empty_score(op: str) -> None:
    assert make(operation=op, tags="Lead", score="").payload.score is None


def test_negative_increase_suggests_decrease_score_with_the_positive_number() -> None:
    message = problem(operation="Increase Score", tags="Lead", score=-10)
    assert message == (
        "Score is -10; Increase Score needs a number greater than 0. To lower a score, use Decrease Score with 10."
    )


def test_negative_decrease_says_decrease_already_lowers() -> None:
    message = problem(operation="decrease_score", tags="Lead", score="-4")
    assert message == (
        "Score is -4; Decrease Score needs a number greater than 0. "
        "Decrease Score already lowers the score: give 4, not -4."
    )


@pytest.mark.parametrize("op", ["increase_score", "decrease_score"])
def test_zero_increment_changes_nothing(op: str) -> None:
    message = problem(operation=op, tags="Lead", score=0)
    assert message.startswith(f"Score is 0; {kind_named(op).label} needs a number greater than 0.")
    assert "changes nothing." in message


@pytest.mark.parametrize("op", SCORE_OPS)
def test_score_bounds_are_those_of_a_32_bit_integer(op: str) -> None:
    assert make(operation=op, tags="Lead", score=MAX_SCORE).payload.score == MAX_SCORE
    assert make(operation=op, tags="Lead", score=str(MAX_SCORE)).payload.score == MAX_SCORE
    for too_big in (MAX_SCORE + 1, str(MAX_SCORE + 1), 10**12):
        message = problem(operation=op, tags="Lead", score=too_big)
        assert message == f"Score is {int(too_big)}; it must be between -{MAX_SCORE} and {MAX_SCORE}."


def test_set_score_lower_bound() -> None:
    assert make(operation="set_score", tags="Lead", score=-MAX_SCORE).payload.score == -MAX_SCORE
    message = problem(operation="set_score", tags="Lead", score=-MAX_SCORE - 1)
    assert message == f"Score is {-MAX_SCORE - 1}; it must be between -{MAX_SCORE} and {MAX_SCORE}."


# --- targets --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "expected"), [("contact", "contact"), ("lead", "lead"), ("account", "account"),
                                                 ("Contact", "contact"), (" LEAD ", "lead")])
def test_target_kinds(kind: str, expected: str) -> None:
    request = make(target_kind=kind, target_id=" 00000000-aaaa-1111 ")
    assert request.target is not None
    assert request.target.kind is TargetKind(expected)
    assert request.target.id == "00000000-aaaa-1111"


@pytest.mark.parametrize("kind", ["customer", "opportunity", "", None])
def test_unknown_target_kind_is_rejected(kind: str | None) -> None:
    message = problem(target_kind=kind, target_id="C-1")
    assert message == f"Record type is {kind!r}; it must be contact, lead or account."


def test_overlong_record_id_is_rejected_with_the_maximum() -> None:
    message = problem(target_id="9" * 500)
    assert message == f"The record id '{'9' * 38}… is 500 characters long; a CRM id has at most 100 characters."
    assert problem(target_id="9" * 101).startswith("The record id '9999")


def test_record_id_with_a_control_character_is_rejected() -> None:
    assert problem(target_id="C-1\n2").endswith("contains a control character (a line break or tab); it is not a "
                                               "valid CRM id.")


@pytest.mark.parametrize("missing", [None, "", "   "])
def test_add_tag_without_a_target_is_a_tag_only_job(missing: str | None) -> None:
    request = make(operation="Add Tag", tags="Newsletter; Webinar", target_kind=None, target_id=missing)
    assert request.target is None
    assert request.payload.tags == ["Newsletter", "Webinar"]
    assert request.keys == ["tag-only|newsletter", "tag-only|webinar"]


@pytest.mark.parametrize("op", [op for op in ALL_OPS if op != "add_tag"])
def test_other_operations_need_a_target(op: str) -> None:
    message = problem(operation=op, tags="Lead", score=score_of(op), target_kind=None, target_id=None)
    label = kind_named(op).label
    assert message == (
        f"{label} needs a contact, lead or account; only Add Tag can run without one (it then just creates the tag)."
    )


# --- keys -----------------------------------------------------------------------------------------------------


def test_keys_are_per_target_and_tag_case_insensitive_on_the_tag() -> None:
    a = make(operation="remove_tag", tags="Webinar, LEAD", target_kind="contact", target_id="C-1")
    b = make(operation="set_score", tags="lead", score=3, target_kind="contact", target_id="C-1")
    c = make(operation="set_score", tags="Lead", score=3, target_kind="lead", target_id="C-1")
    d = make(operation="set_score", tags="Lead", score=3, target_kind="contact", target_id="C-2")
    assert a.keys == ["contact:C-1|webinar", "contact:C-1|lead"]
    assert b.keys == ["contact:C-1|lead"]
    assert set(a.keys) & set(b.keys) == {"contact:C-1|lead"}
    assert not set(c.keys) & set(b.keys)  # another kind of record
    assert not set(d.keys) & set(b.keys)  # another contact


# --- every message is a sentence naming the field and the value ---------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "field", "value"),
    [
        ({"operation": "Frobnicate"}, "Operation", "'Frobnicate'"),
        ({"tags": ""}, "Tag", "empty"),
        ({"tags": "A,,B"}, "Tag", "'A,,B'"),
        ({"tags": "x" * 300}, "Tag", "'xxxxxxxx"),
        ({"tags": "Web\ninar"}, "Tag", "'Web\\ninar'"),
        ({"operation": "set_score", "tags": "A;B", "score": 1}, "Tag", "'A;B'"),
        ({"operation": "set_score", "score": "ten"}, "Score", "'ten'"),
        ({"operation": "set_score", "score": None}, "Score", "empty"),
        ({"operation": "increase_score", "score": -1}, "Score", "-1"),
        ({"operation": "decrease_score", "score": -1}, "Score", "-1"),
        ({"operation": "add_tag", "score": 3}, "Score", "3"),
        ({"operation": "set_score", "score": MAX_SCORE + 1}, "Score", str(MAX_SCORE + 1)),
        ({"target_kind": "person"}, "Record type", "'person'"),
        ({"target_id": "C\t1"}, "record id", "'C\\t1'"),
    ],
)
def test_every_message_names_field_and_value_and_ends_with_a_full_stop(
    overrides: dict[str, Any], field: str, value: str
) -> None:
    message = problem(**overrides)
    assert field in message
    assert value in message
    assert message.endswith(".")
    assert message[0].isupper()


# --- properties -----------------------------------------------------------------------------------------------

_tag_char = st.characters(blacklist_categories=["Cc", "Cs"], blacklist_characters=",;")
_tag_core = st.text(_tag_char, min_size=1, max_size=MAX_TAG_LENGTH).map(str.strip).filter(bool)
_padding = st.text(" \t", max_size=3)


@given(op=st.sampled_from(ALL_OPS), core=_tag_core, left=_padding, right=_padding)
def test_any_valid_tag_round_trips_trimmed(op: str, core: str, left: str, right: str) -> None:
    request = make(operation=op, tags=f"{left}{core}{right}", score=score_of(op))
    assert request.payload.tags == [core]
    assert request.keys == [f"contact:C-1|{core.casefold()}"]


@given(tags=st.lists(_tag_core, min_size=1, max_size=6), seps=st.lists(st.sampled_from([",", ";", " , ", "; "])))
def test_any_list_of_valid_tags_splits_back_in_order_without_duplicates(tags: list[str], seps: list[str]) -> None:
    text = ""
    for i, tag in enumerate(tags):
        text += (seps[i % len(seps)] if seps else ",") if i else ""
        text += tag
    assert make(operation="remove_tag", tags=text).payload.tags == list(dict.fromkeys(tags))


@given(core=_tag_core, control=st.characters(whitelist_categories=["Cc"]))
def test_any_control_character_inside_a_tag_is_rejected(core: str, control: str) -> None:
    message = problem(operation="add_tag", tags=f"a{control}{core}")
    assert "control character" in message


@given(score=st.integers(min_value=-MAX_SCORE, max_value=MAX_SCORE), as_text=st.booleans())
def test_set_score_accepts_any_int_in_range(score: int, as_text: bool) -> None:
    assert make(operation="set_score", tags="Lead", score=str(score) if as_text else score).payload.score == score


@given(op=st.sampled_from(["increase_score", "decrease_score"]), score=st.integers(min_value=1, max_value=MAX_SCORE),
       as_text=st.booleans())
def test_increase_and_decrease_accept_any_positive_int_in_range(op: str, score: int, as_text: bool) -> None:
    assert make(operation=op, tags="Lead", score=str(score) if as_text else score).payload.score == score


@given(op=st.sampled_from(["increase_score", "decrease_score"]), score=st.integers(max_value=0,
                                                                                   min_value=-MAX_SCORE))
def test_increase_and_decrease_refuse_any_non_positive_int(op: str, score: int) -> None:
    message = problem(operation=op, tags="Lead", score=score)
    assert message.startswith(f"Score is {score}; {kind_named(op).label} needs a number greater than 0.")


def test_tags_that_differ_only_in_case_are_one_tag() -> None:
    assert make(operation="add_tag", tags="Webinar, webinar; WEBINAR").payload.tags == ["Webinar"]


@pytest.mark.parametrize("raw", ["1" * 5000, "-" + "9" * 11])
def test_an_absurdly_long_score_gets_a_sentence_not_a_crash(raw: str) -> None:
    message = problem(operation="set_score", tags="Lead", score=raw)
    assert message.startswith("Score is ")
    assert message.endswith(f"it must be between -{MAX_SCORE} and {MAX_SCORE}.")


def test_scores_in_other_scripts_digits_are_refused() -> None:
    assert "must be a whole number" in problem(operation="set_score", tags="Lead", score="١٢")
