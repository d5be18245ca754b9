"""What the runner needs from a marketing platform, whichever one it is."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Contact:
    """How the platform knows a CRM record: its external id, or failing that its e-mail address."""

    external_id: str | None = None
    email: str | None = None

    def __str__(self) -> str:
        return self.external_id or self.email or "?"


def score_in(scores: dict[str, int], tag: str) -> int:
    """The tag's score in a reading: an exact name first, else one differing only in case (Mautic compares tag
    names case-insensitively and reports the name it stored first); a missing tag is 0."""
    if tag in scores:
        return scores[tag]
    folded = tag.casefold()
    return next((score for name, score in scores.items() if name.casefold() == folded), 0)


class Platform(Protocol):
    """A marketing platform adapter. `ref` names the job behind a change, for the platform's own logs."""

    name: str

    def create_tags(self, tags: Sequence[str]) -> None:
        """Make sure the tags exist, without tagging anyone."""

    def add_tags(self, contact: Contact, tags: Sequence[str], *, ref: str) -> None:
        """Tag the contact; tags that do not exist yet are created."""

    def remove_tags(self, contact: Contact, tags: Sequence[str], *, ref: str) -> None:
        """Untag the contact, scores included. A tag the contact lacks is not an error."""

    def set_score(self, contact: Contact, tag: str, score: int, *, ref: str) -> None:
        """The contact's score for the tag becomes exactly `score`."""

    def change_score(self, contact: Contact, tag: str, delta: int, *, ref: str) -> None:
        """Add `delta` (negative to decrease) to the contact's score for the tag; a missing tag starts at 0."""

    def read_scores(self, contact: Contact) -> dict[str, int]:
        """The contact's tags with their scores (0 for a tag without a score)."""

    def read_score(self, contact: Contact, tag: str) -> int:
        """The contact's score for one tag, as `score_in(read_scores(contact), tag)` would give it: what an
        increment reads back before each try, so an adapter answers it with as few requests as it can."""

    def start_automation(self, contact: Contact, trigger_code: str, *, ref: str) -> None:
        """Start the automation with this trigger code for the contact (a `Rejected` NOT_SUPPORTED where the
        platform has no such thing)."""
