"""Add Tag, Remove Tag and Remove Score: idempotent by nature, so a retry simply sends the change again."""

from __future__ import annotations

from dataclasses import dataclass

from jobs.kinds import RunContext, register
from jobs.kinds.tagging import TagKind, payload_of
from jobs.scoring.changes import Change, Op


@dataclass(frozen=True)
class AddTag(TagKind):
    def run(self, ctx: RunContext) -> None:
        payload = payload_of(ctx)
        if ctx.request.target is None:
            ctx.platform.create_tags(payload.tags)
        else:
            ctx.platform.add_tags(ctx.contact(), payload.tags, ref=ctx.job.id)
        for tag in payload.tags:
            ctx.changed(Change(tag, Op.TAG))


@dataclass(frozen=True)
class RemoveTags(TagKind):
    """Remove Tag and Remove Score do the same on the platform: the tag goes, and its score with it."""

    def run(self, ctx: RunContext) -> None:
        payload = payload_of(ctx)
        ctx.platform.remove_tags(ctx.contact(), payload.tags, ref=ctx.job.id)
        for tag in payload.tags:
            ctx.changed(Change(tag, Op.UNTAG, after=0))


ADD_TAG = register(AddTag("add_tag", "added tag {tags}", takes_several_tags=True, needs_target=False))
REMOVE_TAG = register(RemoveTags("remove_tag", "removed tag {tags}", takes_several_tags=True))
REMOVE_SCORE = register(RemoveTags("remove_score", "removed score {tags}", takes_several_tags=True))
