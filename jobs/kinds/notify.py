"""Kinds that tell someone outside: a signed webhook, an e-mail. They run on outside services the composition root
provides (`ctx.services["webhook"]`, `ctx.services["mail"]`). Neither can be made idempotent by the connector:
a delivery whose answer was lost is sent again, with the same `Connector-Delivery` header (the job id) on a
webhook and the same Message-ID on a mail, so the receiver can tell."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field

from config.text import shown
from jobs.kinds import RunContext, RunsOn, register
from jobs.kinds.action import ActionKind
from jobs.model import Target, iso

# What the texts of a mail may name: {record}, {tag}, {score} and {trigger}.
_PLACEHOLDERS = {"record": "", "tag": "", "score": "", "trigger": ""}


class WebhookPayload(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str
    data: dict[str, Any] = Field(default_factory=dict)


class EmailPayload(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    to: list[str] = Field(min_length=1)
    subject: str = Field(min_length=1, max_length=200)
    body: str = ""


@dataclass(frozen=True)
class _Notify(ActionKind):
    runs_on: ClassVar[RunsOn] = RunsOn.SERVICE
    idempotent: ClassVar[bool] = False  # sent again after a lost answer; the receiver can tell (see above)


def _about(ctx: RunContext) -> dict[str, Any]:
    """What the job is about: its record, and the trigger, tag and score behind it when a trigger queued it."""
    target, origin = ctx.request.target, ctx.request.origin
    score = origin.score
    return {
        "record": f"{target.kind.value} {target.id}" if target else "",
        "tag": origin.tag or "", "score": int(score) if score and score.lstrip("-").isdigit() else score or "",
        "trigger": origin.trigger or "",
    }


@dataclass(frozen=True)
class Webhook(_Notify):
    payload_model: ClassVar[type[BaseModel]] = WebhookPayload

    def validate(self, fields: Mapping[str, Any], target: Target | None) -> WebhookPayload:
        url = str(fields.get("url") or "").strip()
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"Url is {shown(url)}; a webhook needs an http:// or https:// address.")
        data = fields.get("data") or {}
        if not isinstance(data, dict):
            raise ValueError(f"Data is {shown(data)}; give a table of values to send along, or leave it out.")
        return WebhookPayload(url=url, data=data)

    def describe(self, payload: WebhookPayload) -> str:
        return f"sent a webhook to {urlsplit(payload.url).hostname}"

    def brief(self, payload: WebhookPayload) -> str:
        return f"Webhook {payload.url}"

    def run(self, ctx: RunContext) -> None:
        payload = ctx.request.payload
        assert isinstance(payload, WebhookPayload)
        about = _about(ctx)
        target = ctx.request.target
        body = {
            "record": {"kind": target.kind.value, "id": target.id} if target else None,
            "tag": about["tag"] or None, "score": about["score"] if about["score"] != "" else None,
            "trigger": about["trigger"] or None, "caused_by_job": ctx.request.origin.job_id,
            "job_id": ctx.job.id, "time": iso(ctx.job.created_at), "data": payload.data,
        }
        ctx.services["webhook"].send(payload.url, body, ref=ctx.job.id)


@dataclass(frozen=True)
class Email(_Notify):
    payload_model: ClassVar[type[BaseModel]] = EmailPayload

    def validate(self, fields: Mapping[str, Any], target: Target | None) -> EmailPayload:
        raw_to = fields.get("to")
        to = [a.strip() for a in (raw_to if isinstance(raw_to, list) else str(raw_to or "").split(",")) if a.strip()]
        if not to or any("@" not in address for address in to):
            raise ValueError(f"To is {shown(raw_to)}; give one or more e-mail addresses, such as sales@example.com.")
        subject, body = str(fields.get("subject") or "").strip(), str(fields.get("body") or "")
        if not subject:
            raise ValueError("Subject is empty; an e-mail needs a subject.")
        for name, text in (("Subject", subject), ("Body", body)):
            try:
                text.format(**_PLACEHOLDERS)
            except (KeyError, IndexError, ValueError) as exc:
                raise ValueError(f"{name} {shown(text)} has an unknown or broken placeholder ({exc}); use {{record}}, "
                                 f"{{tag}}, {{score}} and {{trigger}}.") from None
        return EmailPayload(to=to, subject=subject, body=body)

    def describe(self, payload: EmailPayload) -> str:
        return f"e-mailed {', '.join(payload.to)}"

    def brief(self, payload: EmailPayload) -> str:
        return f"Email {', '.join(payload.to)}: {payload.subject}"

    def run(self, ctx: RunContext) -> None:
        payload = ctx.request.payload
        assert isinstance(payload, EmailPayload)
        about = _about(ctx)
        ctx.services["mail"].send(payload.to, payload.subject.format(**about), payload.body.format(**about),
                                  ref=ctx.job.id)


WEBHOOK = register(Webhook("webhook"))
EMAIL = register(Email("email"))
