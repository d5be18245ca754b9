"""Start Automation: start a platform automation for the record. The Tag field carries the trigger code."""

from __future__ import annotations

from dataclasses import dataclass

from jobs.kinds import RunContext, register
from jobs.kinds.tagging import TagKind, payload_of


@dataclass(frozen=True)
class StartAutomation(TagKind):
    def run(self, ctx: RunContext) -> None:
        payload = payload_of(ctx)
        ctx.platform.start_automation(ctx.contact(), payload.tags[0], ref=ctx.job.id)


# Its keys have their own namespace: a trigger code that happens to equal a tag's name does not wait for that tag.
START_AUTOMATION = register(StartAutomation("start_automation", "started automation {tags}",
                                            key_namespace="automation:", tag_hint="an automation trigger code"))
