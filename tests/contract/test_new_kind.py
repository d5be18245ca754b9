"""A kind of job added through the registry alone runs end to end on every store: the executor, the runner and
the stores are not touched. The `note` kind below is all a new kind needs: a payload, validation sentences, keys,
words for people, and how it runs (here on an outside service the composition root would provide)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
from pydantic import BaseModel

from config.settings import RetrySettings
from connector.localcrm import LocalCrm
from connector.spotler import SpotlerPlatform
from jobs.executor import Executor
from jobs.kinds import RunContext, RunsOn, kind_named, registered, request_from_raw
from jobs.model import InvalidJob, JobStatus, Target
from jobs.runner import Runner
from jobs.scoring.changes import Change, Op
from tests.contract.conftest import StoreCase


class NotePayload(BaseModel):
    note: str


@dataclass(frozen=True)
class Note:
    """Hand a note to an outside service (a stand-in for a webhook or a mailer)."""

    name: ClassVar[str] = "note"
    label: ClassVar[str] = "Note"
    runs_on: ClassVar[RunsOn] = RunsOn.SERVICE
    idempotent: ClassVar[bool] = True
    posts_timeline: ClassVar[bool] = True
    on_crm_form: ClassVar[bool] = False
    payload_model: ClassVar[type[BaseModel]] = NotePayload

    def validate(self, fields: Mapping[str, Any], target: Target | None) -> NotePayload:
        note = str(fields.get("note") or "").strip()
        if not note:
            raise ValueError("Note is empty; a Note job needs the text to hand over.")
        return NotePayload(note=note)

    def raw(self, payload: NotePayload) -> dict[str, Any]:
        return {"note": payload.note}

    def keys(self, payload: NotePayload, target: Target | None) -> list[str]:
        return [f"{target.kind.value}:{target.id}|note" if target else "note"]

    def describe(self, payload: NotePayload) -> str:
        return f"handed over the note {payload.note!r}"

    def brief(self, payload: NotePayload) -> str:
        return f"Note {payload.note}"

    def template_fields(self, payload: NotePayload) -> dict[str, Any]:
        return {"tags": "", "score": ""}

    def to_json(self, payload: NotePayload) -> dict[str, Any]:
        return {"note": payload.note}

    def run(self, ctx: RunContext) -> None:
        ctx.services["notes"].append((ctx.job.id, ctx.request.payload.note))
        ctx.changed(Change(None, Op.TAG))


def test_a_kind_added_through_the_registry_alone_runs_end_to_end(
    case: StoreCase, spotler: SpotlerPlatform, tmp_path: Path
) -> None:
    notes: list[tuple[str, str]] = []
    crm = LocalCrm(tmp_path / "timeline.db")
    with registered(Note()):
        contact = case.record("C-1")
        request = request_from_raw({"operation": "note", "note": "Call back on Monday", "target_kind": "contact",
                                    "target_id": contact})
        (job,) = case.store.add([request])
        assert case.another().get(job.id).request == request  # stored and read back by any store

        executor = Executor(spotler, crm, RetrySettings(), clock=case.clock, sleep=case.clock.sleep,
                            services={"notes": notes})
        runner = Runner(case.store, executor, workers=2)
        try:
            report = runner.drain()
        finally:
            runner.close()

        assert (report.succeeded, report.failed) == (1, 0)
        assert notes == [(job.id, "Call back on Monday")]
        done = case.store.get(job.id)
        assert (done.status, done.result_code, done.message) == \
            (JobStatus.SUCCEEDED, "OK", "Handed over the note 'Call back on Monday' for contact " + contact)
        assert [a.outcome for a in case.store.attempts(job.id)] == ["succeeded"]
        assert [p.text for p in crm.timeline("contact", contact)] == [
            f"Handed over the note 'Call back on Monday' (job {job.id})"]
        assert done.to_json()["note"] == "Call back on Monday"
    crm.close()


def test_a_new_kind_s_input_is_validated_with_its_own_sentences_and_named_like_the_others() -> None:
    with registered(Note()):
        assert kind_named("Note").name == "note"
        with pytest.raises(InvalidJob) as refused:
            request_from_raw({"operation": "note", "note": "  "})
        assert refused.value.problems == ["Note is empty; a Note job needs the text to hand over."]
        with pytest.raises(ValueError, match="Note"):
            kind_named("Notes")
    with pytest.raises(ValueError, match="must be one of"):
        kind_named("note")  # gone with its registration
