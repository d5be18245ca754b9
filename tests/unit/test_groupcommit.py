"""The group commit the Dataverse change sets and the Mautic tag edits share: every caller gets its own answer."""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from connector.groupcommit import Grouped, Room
from tests.grouping import behind_a_held_write


@dataclass(eq=False)
class Item:
    """A write of a key; its answer is its value times ten. `hold` keeps a lone send on the wire until set."""

    key: str
    value: int
    hold: threading.Event | None = None
    started: threading.Event | None = None
    refuse: bool = False

    def alone(self) -> int:
        if self.started is not None:
            self.started.set()
        if self.hold is not None:
            assert self.hold.wait(30)
        return self.value * 10

    def answer(self, answered: Any) -> int:
        if self.refuse:
            raise ValueError(f"{self.key} refused")
        return int(answered)


@dataclass(eq=False)
class Items(Grouped[Item]):
    """At most `limit` writes per request, a key at most once; `sent` is every grouped request's writes."""

    limit: int = 3
    fail_with: BaseException | None = None
    sent: list[list[str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__(parallel=1)

    def room(self, taken: Sequence[Item], write: Item) -> Room:
        if len(taken) >= self.limit:
            return Room.FULL
        return Room.LATER if any(item.key == write.key for item in taken) else Room.TAKE

    def send_together(self, writes: Sequence[Item]) -> list[int]:
        self.sent.append([item.key for item in writes])
        if self.fail_with is not None:
            raise self.fail_with
        return [item.value * 10 for item in writes]


def _behind_a_held_write(grouped: Items, items: list[Item]) -> tuple[list[Any], Any]:
    """A first write held on the wire, `items` queued behind it in order, then the first released."""
    hold, started = threading.Event(), threading.Event()
    first, answers = behind_a_held_write(grouped, lambda: grouped(Item("first", 1, hold=hold, started=started)),
                                         started, hold.set, [functools.partial(grouped, item) for item in items])
    return answers, first


def test_every_caller_gets_its_own_answer_alone_and_grouped():
    grouped = Items()
    answers, first = _behind_a_held_write(grouped, [Item(k, v) for k, v in (("a", 2), ("b", 3), ("c", 4))])
    assert first == 10  # sent alone: its own plain request
    assert answers == [20, 30, 40]
    assert grouped.sent == [["a", "b", "c"]]
    assert (grouped.requests, grouped.writes) == (2, 4)


def test_an_answer_refused_fails_its_own_caller_only():
    grouped = Items()
    answers, _ = _behind_a_held_write(grouped, [Item("a", 2), Item("b", 3, refuse=True), Item("c", 4)])
    assert answers[0] == 20 and answers[2] == 40
    assert isinstance(answers[1], ValueError) and str(answers[1]) == "b refused"


def test_a_request_failing_whole_fails_every_caller_in_it():
    grouped = Items(fail_with=ConnectionError("cut off"))
    answers, first = _behind_a_held_write(grouped, [Item("a", 2), Item("b", 3)])
    assert first == 10
    assert [(type(error), str(error)) for error in answers] == [(ConnectionError, "cut off")] * 2


def test_a_full_request_leaves_the_rest_for_the_next_and_a_key_goes_once_per_request():
    grouped = Items(limit=2)
    items = [Item("a", 2), Item("a", 3), Item("b", 4), Item("c", 5)]
    answers, _ = _behind_a_held_write(grouped, items)
    assert answers == [20, 30, 40, 50]
    # The second "a" waits for the next request while "b" joins the first; "c" finds the first full.
    assert grouped.sent == [["a", "b"], ["a", "c"]]


class Picky(Items):
    """Items whose `room` refuses to weigh a write of key "boom"."""

    def room(self, taken: Sequence[Item], write: Item) -> Room:
        if write.key == "boom":
            raise RuntimeError("cannot weigh boom")
        return super().room(taken, write)


def test_a_room_that_raises_fails_the_caller_deciding_and_its_write_never_leaves():
    grouped = Picky()
    alone: list[str] = []

    class Logged(Item):
        def alone(self) -> int:
            alone.append(self.key)
            return super().alone()

    answers, _ = _behind_a_held_write(grouped, [Logged("a", 2), Logged("boom", 3)])
    # Whichever of the two took the group met the error, as its own; the other went alone afterwards.
    (failed,) = [i for i, answer in enumerate(answers) if isinstance(answer, RuntimeError)]
    other = 1 - failed
    assert answers[other] == [20, 30][other]
    assert alone == [["a", "boom"][other]] and grouped.sent == []
    assert grouped._sending == 0 and grouped._queue == []
