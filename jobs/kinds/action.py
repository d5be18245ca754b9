"""What the kinds of triggers' actions share (CRM actions, webhooks, e-mail): a payload model kept as it is, one
ordering key per record and kind, and no tag or score of their own in the timeline template."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from jobs.model import Target


@dataclass(frozen=True)
class ActionKind:
    name: str
    posts_timeline: ClassVar[bool] = True
    on_crm_form: ClassVar[bool] = False  # the connector creates them; users create jobs on the form

    @property
    def label(self) -> str:
        return self.name.replace("_", " ").title()

    def keys(self, payload: Any, target: Target | None) -> list[str]:
        owner = f"{target.kind.value}:{target.id}" if target else "no record"
        # Their own namespace: a tag that happens to be called "email" does not wait for e-mails.
        return [f"{owner}|action:{self.name}"]

    def template_fields(self, payload: Any) -> dict[str, Any]:
        return {"tags": "", "score": ""}

    def to_json(self, payload: Any) -> dict[str, Any]:
        return dict(payload.model_dump(mode="json"))

    def raw(self, payload: Any) -> dict[str, Any]:
        return dict(payload.model_dump(mode="json"))
