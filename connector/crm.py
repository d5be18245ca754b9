"""What the runner needs from the CRM: who a target is on the platform, and the timeline."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from connector.platform import Contact


@dataclass(frozen=True)
class TimelinePost:
    target_kind: str
    target_id: str
    job_id: str
    text: str
    created_at: str


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
