"""The rules file: what a marketer writes, and the sentences a mistake gets before anything runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.settings import SettingsError
from jobs.scoring.rules import load_rules

GYM = """
[[rules]]
event = "page_visit"
tag = "Nutrition Interest"
change = "+1"

[[rules]]
event = "purchase"
tag = "Hot lead"
change = "+100"
occurrences = "first"

[[rules]]
event = "unsubscribe"
tag = "Hot lead"
change = "erase"

[[triggers]]
name = "Nutrition prospect"
tag = "Nutrition Interest"
at_least = 3
cooldown = "7d"

[[triggers.actions]]
do = "Start Automation"
tags = "prospect-general-nurture"

[[triggers.actions]]
do = "add_tag"
tags = "Prospect"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rules.toml"
    path.write_text(text, encoding="utf-8")
    return path


def refusal(tmp_path: Path, text: str) -> str:
    with pytest.raises(SettingsError) as refused:
        load_rules(write(tmp_path, text))
    return str(refused.value)


def test_a_rules_file_maps_events_to_jobs_and_tags_to_triggers(tmp_path: Path) -> None:
    rules = load_rules(write(tmp_path, GYM))
    assert rules.rule_for("page_visit").job_fields() == {"operation": "increase_score", "tags": "Nutrition Interest",
                                                         "score": 1}
    assert rules.rule_for("unsubscribe").job_fields() == {"operation": "remove_score", "tags": "Hot lead"}
    assert rules.rule_for("purchase").occurrences == "first"
    assert rules.rule_for("page visit") is None
    (trigger,) = rules.triggers_on("nutrition interest")
    assert (trigger.at_least, trigger.rearm, trigger.cooldown) == (3, "once", 7 * 86400)
    assert [a.fields() for a in trigger.actions] == [
        {"operation": "start_automation", "tags": "prospect-general-nurture"},
        {"operation": "add_tag", "tags": "Prospect"},
    ]
    assert rules.warnings == ()


def test_no_rules_file_means_no_rules() -> None:
    assert load_rules(None).rules == {} and load_rules(None).triggers == ()


@pytest.mark.parametrize(("text", "expected"), [
    ('[[rules]]\nevent = "visit"\ntag = "A"\nchange = "plus one"\n',
     "rules[0] 'visit' change: change is 'plus one'; use +n, -n or =n with a whole number n"),
    ('[[triggers]]\nname = "T"\ntag = "A"\nat_least = "three"\n[[triggers.actions]]\ndo = "add_tag"\ntags = "X"\n',
     "triggers[0] 'T' at_least: at_least is 'three'; it must be a whole number such as 3"),
    ('[[triggers]]\nname = "T"\ntag = "A"\nat_least = 3\n[[triggers.actions]]\ndo = "send_fax"\n',
     "triggers[0] 'T' actions[0] do: Operation is 'send_fax'; it must be one of"),
    ('[[triggers]]\nname = "T"\ntag = "A"\nat_least = 3\n[[triggers.actions]]\ndo = "increase_score"\ntags = "B"\n',
     "triggers[0] 'T' actions[0]: Score is empty; Increase Score needs a whole number."),
    ('[[triggers]]\nname = "T"\ntag = "A"\nat_least = 3\ncooldown = "a week"\n[[triggers.actions]]\ndo = "add_tag"\n'
     'tags = "X"\n', "cooldown is 'a week'; give a number and a unit, such as 30m, 12h or 7d"),
    ('[[rules]]\nevent = "visit"\ntag = "A"\nchange = "+1"\nweight = 2\n',
     "rules[0] 'visit' weight: is not a key of the rules file here"),
    ('[[triggers]]\nname = "T"\ntag = "A"\nat_least = 3\n', "triggers[0] 'T' actions: is missing"),
    ('[[triggers]]\nname = "T"\ntag = "A"\nat_least = 3\n' + '[[triggers.actions]]\ndo = "add_tag"\ntags = "X"\n' * 21,
     "triggers[0] 'T' actions: List should have at most 20 items after validation, not 21"),
    ('[[rules]]\nevent = "v"\ntag = "A"\nchange = "+1"\n[[rules]]\nevent = "v"\ntag = "B"\nchange = "+2"\n',
     "rules.toml: the file: event 'v' has more than one rule; an event becomes at most one job"),
    ('triggers = [{ name = "T", tag = "A", at_least = 3, actions = ["add_tag"] }]\n',
     "rules.toml: triggers[0] 'T' actions[0]: Input should be a valid dictionary"),
    ('triggers = [{ name = "T", tag = "A", at_least = [3], actions = [{ do = ["add_tag"] }] }]\n',
     "rules.toml: triggers[0] 'T' at_least: at_least is [3]; it must be a whole number such as 3; "
     "triggers[0] 'T' actions[0] do: Input should be a valid string."),
    ("[[rules]\n", "is not valid TOML"),
])
def test_a_mistake_is_refused_with_the_file_the_entry_and_what_would_be_right(
    tmp_path: Path, text: str, expected: str
) -> None:
    message = refusal(tmp_path, text)
    assert message.startswith(str(tmp_path / "rules.toml"))
    assert expected in message


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="does not exist; create it or unset rules_file"):
        load_rules(tmp_path / "nope.toml")


def test_a_file_that_is_not_utf_8_is_named_with_why(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_bytes('[[rules]]\nevent = "café"\n'.encode("latin-1"))
    with pytest.raises(SettingsError) as refused:
        load_rules(path)
    assert str(refused.value).startswith(f"rules_file {path} cannot be read ('utf-8' codec can't decode byte 0xe9")


def test_a_trigger_no_rule_can_reach_is_a_warning(tmp_path: Path) -> None:
    rules = load_rules(write(tmp_path, '[[triggers]]\nname = "T"\ntag = "Lead"\nat_least = 3\n'
                                       '[[triggers.actions]]\ndo = "add_tag"\ntags = "X"\n'))
    assert rules.warnings == ("trigger 'T' watches tag 'Lead', which no rule changes; only jobs can reach it.",)


def test_the_example_rules_file_is_valid() -> None:
    example = Path(__file__).resolve().parents[2] / "config" / "example-rules.toml"
    rules = load_rules(example)
    assert len(rules.rules) == 7 and [t.name for t in rules.triggers] == ["Nutrition prospect", "Hot lead"]
    assert rules.warnings == ()


@pytest.mark.parametrize(("change", "operation", "score"), [
    ("+3", "increase_score", 3), ("-3", "decrease_score", 3), ("=0", "set_score", 0), (" = 12 ", "set_score", 12)])
def test_each_sign_of_a_change_is_its_own_kind_of_job(tmp_path: Path, change: str, operation: str, score: int) -> None:
    rules = load_rules(write(tmp_path, f'[[rules]]\nevent = "e"\ntag = "Lead"\nchange = "{change}"\n'))
    assert rules.rule_for("e").job_fields() == {"operation": operation, "tags": "Lead", "score": score}
    assert rules.path == tmp_path / "rules.toml"  # named in every later message about the rules

