"""Group commit: writes from many threads sent together in one request of an API's batch endpoint.

While `parallel` requests are on the wire, the writes that arrive wait in a queue; when a request comes back, one
waiting caller takes the writes that fit in the next request (oldest first) and sends them for everyone, so a busy
runner sends a few requests per round trip instead of one per write. A write that finds room on the wire and
nobody waiting leaves at once, alone, by its own plain request (`Write.alone`): a quiet runner behaves exactly as
it would without grouping. Each caller gets its own result or its own error: an item the API refused fails that
caller only (`Write.answer` raises), and a request that failed as a whole (throttled, unavailable, cut off) fails
every write in it, each caller seeing the error as its own.

What fits in one request is the API's business (`Grouped.room`): Dataverse counts the parts of a `$batch`, Mautic
counts contacts and never takes one twice.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Generic, Protocol, TypeVar

R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)
W = TypeVar("W", bound="Write[Any]")


class Write(Protocol[R_co]):
    """One caller's write: how to send it alone, and how to read its share of a grouped request's answer."""

    def alone(self) -> R_co:
        """Send the write by itself, as it would be sent without grouping."""

    def answer(self, answered: Any) -> R_co:
        """The write's result from its share of a grouped answer; raises the caller's error when it failed."""


class Room(Enum):
    """Whether a waiting write goes in the request being filled."""

    TAKE = "take"
    LATER = "later"  # not in this request; writes queued after it may be
    FULL = "full"  # the request is full: this write and every one after it wait for the next


@dataclass
class _Ticket(Generic[W]):
    write: W
    done: bool = False
    value: Any = None
    error: BaseException | None = None


class Grouped(ABC, Generic[W]):
    """Writes from many threads, sent in groups: at most `parallel` requests on the wire at a time.

    A subclass says what fits in one request (`room`) and how several writes are sent in one (`send_together`,
    one answer per write, in order). Calling the instance with a write blocks until that write is answered."""

    def __init__(self, *, parallel: int) -> None:
        self.parallel = parallel
        self._cond = threading.Condition()
        self._queue: list[_Ticket[W]] = []
        self._sending = 0
        # Requests sent and the writes they carried: what grouping saved.
        self.requests = 0
        self.writes = 0

    @abstractmethod
    def room(self, taken: Sequence[W], write: W) -> Room:
        """Whether `write` goes in the request that already holds `taken` (never empty)."""

    @abstractmethod
    def send_together(self, writes: Sequence[W]) -> Sequence[Any]:
        """Send `writes` (two or more) in one request; one answer per write, in order, for `Write.answer`. Raises
        when the request failed as a whole."""

    def __call__(self, write: Write[R]) -> R:
        ticket: _Ticket[Any] = _Ticket(write)
        with self._cond:
            self._queue.append(ticket)
            while not ticket.done:
                if self._sending >= self.parallel or ticket not in self._queue:
                    self._cond.wait()
                    continue
                # Room on the wire: this thread sends what waits, oldest first (its own write among them, unless
                # older ones fill the request; then it goes round again).
                try:
                    group = self._take()
                except BaseException:
                    # A `room` that raised: this caller sees the error, so its write must not leave later unseen.
                    self._queue.remove(ticket)
                    raise
                self._sending += 1
                self.requests += 1
                self.writes += len(group)
                self._cond.release()
                try:
                    self._send(group)
                finally:
                    self._cond.acquire()
                    self._sending -= 1
                    self._cond.notify_all()
        if ticket.error is not None:
            raise ticket.error
        value: R = ticket.value
        return value

    def _take(self) -> list[_Ticket[W]]:
        # The oldest write always goes: every request carries at least one, so no caller waits forever.
        group, taken, left = [self._queue[0]], [self._queue[0].write], []
        for i, ticket in enumerate(self._queue[1:], start=1):
            room = self.room(taken, ticket.write)
            if room is Room.FULL:
                left.extend(self._queue[i:])
                break
            if room is Room.TAKE:
                group.append(ticket)
                taken.append(ticket.write)
            else:
                left.append(ticket)
        self._queue = left
        return group

    def _send(self, group: list[_Ticket[W]]) -> None:
        try:
            if len(group) == 1:
                group[0].value = group[0].write.alone()
                return
            answers = self.send_together([ticket.write for ticket in group])
            for ticket, answered in zip(group, answers, strict=True):
                try:
                    ticket.value = ticket.write.answer(answered)
                except Exception as exc:
                    ticket.error = exc
        except BaseException as exc:
            # The request failed as a whole: every write in it failed, each caller sees why.
            for ticket in group:
                ticket.error = exc
        finally:
            for ticket in group:
                ticket.done = True
