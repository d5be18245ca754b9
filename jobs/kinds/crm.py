"""Kinds that act on the CRM record itself, for triggers' actions: set fields, create a task for the record's
owner, write a timeline post. Each is idempotent: the same fields set again change nothing, and the CRM keeps one
task and one post per job."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from config.text import shown
from jobs.kinds import RunContext, RunsOn, register
from jobs.kinds.action import ActionKind
from jobs.model import Target

FieldValue = str | int | float | bool | None


class UpdatePayload(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    fields: dict[str, FieldValue] = Field(min_length=1)


class TaskPayload(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    subject: str = Field(min_length=1, max_length=200)
    description: str = ""
    due_in_days: int = Field(0, ge=0, le=3650)


class PostPayload(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    text: str = Field(min_length=1, max_length=1900)


@dataclass(frozen=True)
class _CrmKind(ActionKind):
    runs_on: ClassVar[RunsOn] = RunsOn.CRM
    idempotent: ClassVar[bool] = True

    def _needs_target(self, target: Target | None) -> None:
        if target is None:
            raise ValueError(f"{self.label} needs a contact, lead or account: it acts on that record.")


@dataclass(frozen=True)
class UpdateRecord(_CrmKind):
    payload_model: ClassVar[type[BaseModel]] = UpdatePayload

    def validate(self, fields: Mapping[str, Any], target: Target | None) -> UpdatePayload:
        self._needs_target(target)
        values = fields.get("fields")
        if not isinstance(values, dict) or not values:
            raise ValueError(f"Fields is {shown(values)}; Update Record needs the fields to set, such as "
                             f"fields = {{ statuscode = 3 }}.")
        return UpdatePayload(fields=values)

    def describe(self, payload: UpdatePayload) -> str:
        return "set " + ", ".join(f"{name} to {value}" for name, value in payload.fields.items())

    def brief(self, payload: UpdatePayload) -> str:
        return "Update Record " + ", ".join(f"{name}={value}" for name, value in payload.fields.items())

    def run(self, ctx: RunContext) -> None:
        target = ctx.request.target
        assert target is not None and isinstance(ctx.request.payload, UpdatePayload)
        ctx.crm.update_record(target.kind.value, target.id, ctx.request.payload.fields, ref=ctx.job.id)


@dataclass(frozen=True)
class CreateTask(_CrmKind):
    payload_model: ClassVar[type[BaseModel]] = TaskPayload

    def validate(self, fields: Mapping[str, Any], target: Target | None) -> TaskPayload:
        self._needs_target(target)
        if not str(fields.get("subject") or "").strip():
            raise ValueError("Subject is empty; Create Task needs what the task is, such as 'Call back'.")
        return TaskPayload.model_validate({k: fields[k] for k in ("subject", "description", "due_in_days")
                                           if k in fields})

    def describe(self, payload: TaskPayload) -> str:
        return f"created the task {payload.subject!r} for the owner"

    def brief(self, payload: TaskPayload) -> str:
        return f"Create Task {payload.subject}"

    def run(self, ctx: RunContext) -> None:
        target, payload = ctx.request.target, ctx.request.payload
        assert target is not None and isinstance(payload, TaskPayload)
        # Due counted from when the job was created (the firing), so a retry does not move the date.
        due = (datetime.fromtimestamp(ctx.job.created_at, UTC) + timedelta(days=payload.due_in_days)).date()
        ctx.crm.create_task(target.kind.value, target.id, subject=payload.subject, description=payload.description,
                            due=due.isoformat(), ref=ctx.job.id)


@dataclass(frozen=True)
class Post(_CrmKind):
    payload_model: ClassVar[type[BaseModel]] = PostPayload
    posts_timeline: ClassVar[bool] = False  # it is the post

    def validate(self, fields: Mapping[str, Any], target: Target | None) -> PostPayload:
        self._needs_target(target)
        if not str(fields.get("text") or "").strip():
            raise ValueError("Text is empty; Post needs the line to write on the record's timeline.")
        return PostPayload(text=str(fields["text"]))

    def describe(self, payload: PostPayload) -> str:
        return f"posted {payload.text!r}"

    def brief(self, payload: PostPayload) -> str:
        return f"Post {payload.text}"

    def run(self, ctx: RunContext) -> None:
        target, payload = ctx.request.target, ctx.request.payload
        assert target is not None and isinstance(payload, PostPayload)
        ctx.crm.post(target_kind=target.kind.value, target_id=target.id, job_id=ctx.job.id,
                     text=f"{payload.text} (job {ctx.job.id})")


UPDATE_RECORD = register(UpdateRecord("update_record"))
CREATE_TASK = register(CreateTask("create_task"))
POST = register(Post("post"))
