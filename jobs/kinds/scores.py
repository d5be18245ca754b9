"""Set Score, Increase Score and Decrease Score.

Set Score is idempotent. Increments are not: applying one twice changes the result. Before an increment's first
try the handler reads the score and keeps it on the job (`score_before`). Before any later try it reads the score
again: if it already equals `score_before + change`, the earlier try was applied and is not sent again; otherwise
the reading becomes the new `score_before` and the change is sent. What remains uncertain is in the README
(Guarantees): a change someone else makes to the same score between two tries can hide or fake an applied try.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from jobs.kinds import RunContext, register
from jobs.kinds.tagging import TagKind, payload_of
from jobs.scoring.changes import Change, Op

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SetScore(TagKind):
    def run(self, ctx: RunContext) -> None:
        payload = payload_of(ctx)
        assert payload.score is not None
        ctx.platform.set_score(ctx.contact(), payload.tags[0], payload.score, ref=ctx.job.id)
        ctx.changed(Change(payload.tags[0], Op.SET, after=payload.score))


@dataclass(frozen=True)
class ChangeScore(TagKind):
    sign: int = 1

    def check_score(self, score: int) -> None:
        if score > 0:
            return
        if self.sign > 0:
            hint = f" To lower a score, use Decrease Score with {-score}." if score < 0 else \
                " An increase of 0 changes nothing."
        else:
            hint = f" Decrease Score already lowers the score: give {-score}, not {score}." if score < 0 else \
                " A decrease of 0 changes nothing."
        raise ValueError(f"Score is {score}; {self.label} needs a number greater than 0.{hint}")

    def run(self, ctx: RunContext) -> None:
        payload, job = payload_of(ctx), ctx.job
        assert payload.score is not None
        tag, change = payload.tags[0], self.sign * payload.score
        contact = ctx.contact()
        current = ctx.platform.read_score(contact, tag)
        if job.score_before is not None and current == job.score_before + change:
            log.info("job %s: score of %s is already %s; the earlier attempt was applied", job.id, tag, current)
            ctx.changed(Change(tag, Op.ADD, before=job.score_before, after=current, delta=change))
            return
        if job.score_before != current:
            ctx.remember(score_before=current)
        ctx.platform.change_score(contact, tag, change, ref=job.id)
        ctx.changed(Change(tag, Op.ADD, before=current, after=current + change, delta=change))


SET_SCORE = register(SetScore("set_score", "set score {tags} to {score}", takes_score=True))
INCREASE_SCORE = register(ChangeScore("increase_score", "increased score {tags} by {score}", takes_score=True,
                                      idempotent=False, sign=1))
DECREASE_SCORE = register(ChangeScore("decrease_score", "decreased score {tags} by {score}", takes_score=True,
                                      idempotent=False, sign=-1))
