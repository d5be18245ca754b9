"""The Start Automation operation as a CRM user fills it in: trigger code in the Tag field, a record, no score."""

from __future__ import annotations

import pytest

from jobs.kinds import kind_named
from jobs.model import InvalidJob, JobRequest


def test_the_crm_label_parses_and_the_trigger_code_is_the_tag() -> None:
    request = JobRequest.from_input(operation="Start Automation", tags=" welcome ", target_kind="contact",
                                    target_id="C-1")
    assert request.kind is kind_named("start_automation")
    assert request.kind.label == "Start Automation"
    assert request.payload.tags == ["welcome"]
    assert request.describe() == "started automation welcome"


def test_its_ordering_key_is_per_record_and_trigger_apart_from_tags() -> None:
    automation = JobRequest.from_input(operation="start_automation", tags="Webinar", target_kind="contact",
                                       target_id="C-1")
    tag = JobRequest.from_input(operation="add_tag", tags="Webinar", target_kind="contact", target_id="C-1")
    assert automation.keys == ["contact:C-1|automation:webinar"]
    assert automation.keys != tag.keys


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"tags": "welcome"}, "Start Automation needs a contact, lead or account"),
        ({"tags": "", "target_kind": "contact", "target_id": "C-1"},
         "Tag is empty; Start Automation needs an automation trigger code."),
        ({"tags": "welcome", "score": "3", "target_kind": "contact", "target_id": "C-1"},
         "Score is '3', but Start Automation does not take a score"),
        ({"tags": "a; b", "target_kind": "contact", "target_id": "C-1"}, "Start Automation takes exactly one tag"),
    ],
)
def test_bad_input_is_refused_with_a_sentence(fields: dict[str, str], message: str) -> None:
    with pytest.raises(InvalidJob) as refused:
        JobRequest.from_input(operation="Start Automation", **fields)
    assert message in str(refused.value)
