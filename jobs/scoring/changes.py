"""Changes to a tag on a record, and the fold of a tag's history into the connector's view of its score.

The platform is the source of truth. The connector's view of a score starts from what the platform reported
(the reading an increment takes first, `before`) or from an exact value the connector set, and adds every change
it applied since. Summing a key's history therefore gives the platform's score when no one else changed it; a
change applied twice, or lost, shows as a difference.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum


class Op(StrEnum):
    TAG = "tag"  # the tag was added; its score did not change
    UNTAG = "untag"  # the tag was removed, and its score with it
    SET = "set"  # the score became exactly `after`
    ADD = "add"  # the score changed by `delta` (negative for a decrease)


@dataclass(frozen=True)
class Change:
    """One change a job applied to one tag of its record. `before` and `after` are the score around it where
    known: an increment reads the score first; a Set Score knows only `after`; a removal leaves 0."""

    tag: str
    op: Op
    before: int | None = None
    after: int | None = None
    delta: int | None = None


def fold(history: Iterable[Change]) -> int | None:
    """The score after every change, oldest first, anchored on the first reading or exact value; None when
    nothing anchors it (only tags added)."""
    score: int | None = None
    for change in history:
        if change.op is Op.SET:
            score = change.after
        elif change.op is Op.UNTAG:
            score = 0  # a missing tag counts as 0 on both platforms
        elif change.op is Op.ADD:
            if score is None:
                score = change.before or 0
            score += change.delta or 0
    return score


def crossed(before: int | None, after: int | None, threshold: int) -> bool:
    """Whether a change takes a score from below `threshold` to `threshold` or above (a missing score is 0)."""
    return (before or 0) < threshold <= (after or 0)
