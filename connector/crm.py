"""What the runner needs from the CRM: who a target is on the platform, the timeline, and the record itself
(fields set on it, tasks for its owner) for the actions of triggers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from connector.platform import Contact


@dataclass(frozen=True)
class TimelinePost:
    target_kind: str
    target_id: str
    job_id: str
    text: str
    created_at: str


@dataclass(frozen=True)
class Task:
    """A task for a record's owner, regarding the record."""

    target_kind: str
    target_id: str
    job_id: str
    subject: str
    description: str
    due: str  # ISO 8601 date
    owner: str | None


class Crm(Protocol):
    name: str

    def identify(self, target_kind: str, target_id: str) -> Contact:
        """How the platform knows this CRM record."""

    def post(self, *, target_kind: str, target_id: str, job_id: str, text: str, may_exist: bool = True) -> None:
        """Write one line on the record's timeline. Idempotent per job: a job never gets two posts.

        `may_exist=False` says this is the job's first try at posting, so no earlier post can exist and a CRM
        that must look before it writes may skip the look.
        """

    def timeline(self, target_kind: str, target_id: str) -> list[TimelinePost]:
        """The record's posts written by the connector, oldest first."""

    def update_record(self, target_kind: str, target_id: str, fields: Mapping[str, Any], *, ref: str) -> None:
        """Set fields of the record (a status reason, say). Setting the same values again changes nothing; a record
        that does not exist is a NotFound, never a new record."""

    def create_task(self, target_kind: str, target_id: str, *, subject: str, description: str, due: str,
                    ref: str) -> None:
        """A task for the record's owner, regarding the record, due on `due` (ISO date). One per job (`ref`)."""

    def tasks(self, target_kind: str, target_id: str) -> list[Task]:
        """The tasks the connector created regarding the record, oldest first."""

    def fields(self, target_kind: str, target_id: str, names: list[str]) -> dict[str, Any]:
        """The current values of some fields of the record."""
