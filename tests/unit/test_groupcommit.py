"""The group commit the Dataverse change sets and the Mautic tag edits share: every caller gets its own answer."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest

from connector.groupcommit import Grouped, Room


@dataclass(eq=False)
class Item:
    """A write of a key; its answer is its value times ten. `hold` keeps a lone send on the wire until set."""

    key: str
    value: int
    hold: threading.Event | None = None
    refuse: bool = False

    def alone(self) -> int:
        if self.hold is not None:
            assert self.hold.wait(10)
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


def _queued(grouped: Items, count: int) -> None:
    """Wait until `count` writes are queued behind the one on the wire."""
    with grouped._cond:
        assert grouped._cond.wait_for(lambda: len(grouped._queue) == count, timeout=10)


def _behind_a_held_write(grouped: Items, items: list[Item]) -> tuple[list[Future[int]], Future[int]]:
    """Send a first write that stays on the wire, then `items`, which queue behind it; release the first."""
    hold = threading.Event()
    pool = ThreadPoolExecutor(max_workers=len(items) + 1)
    first = pool.submit(grouped, Item("first", 1, hold=hold))
    with grouped._cond:
        assert grouped._cond.wait_for(lambda: grouped._sending == 1, timeout=10)
    futures = []
    for n, item in enumerate(items, start=1):
        futures.append(pool.submit(grouped, item))
        _queued(grouped, n)
    hold.set()
    pool.shutdown(wait=True)
    return futures, first


def test_every_caller_gets_its_own_answer_alone_and_grouped():
    grouped = Items()
    futures, first = _behind_a_held_write(grouped, [Item(k, v) for k, v in (("a", 2), ("b", 3), ("c", 4))])
    assert first.result() == 10  # sent alone: its own plain request
    assert [f.result() for f in futures] == [20, 30, 40]
    assert grouped.sent == [["a", "b", "c"]]
    assert (grouped.requests, grouped.writes) == (2, 4)


def test_an_answer_refused_fails_its_own_caller_only():
    grouped = Items()
    futures, _ = _behind_a_held_write(grouped, [Item("a", 2), Item("b", 3, refuse=True), Item("c", 4)])
    assert futures[0].result() == 20 and futures[2].result() == 40
    with pytest.raises(ValueError, match="b refused"):
        futures[1].result()


def test_a_request_failing_whole_fails_every_caller_in_it():
    grouped = Items(fail_with=ConnectionError("cut off"))
    futures, first = _behind_a_held_write(grouped, [Item("a", 2), Item("b", 3)])
    assert first.result() == 10
    for future in futures:
        with pytest.raises(ConnectionError, match="cut off"):
            future.result()


def test_a_full_request_leaves_the_rest_for_the_next_and_a_key_goes_once_per_request():
    grouped = Items(limit=2)
    items = [Item("a", 2), Item("a", 3), Item("b", 4), Item("c", 5)]
    futures, _ = _behind_a_held_write(grouped, items)
    assert [f.result() for f in futures] == [20, 30, 40, 50]
    # The second "a" waits for the next request while "b" joins the first; "c" finds the first full.
    assert grouped.sent == [["a", "b"], ["a", "c"]]
