"""Writes queued behind one held on the wire: how the group commit's tests make a group without timing.

The first write is sent and held on the wire (by the test's own means: a gate in a server's answer), one request
allowed on the wire at a time; the writes after it are started one by one, each queued before the next starts, so
the queue holds them in the order given; then the first is released and the queued ones leave together."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from connector.groupcommit import Grouped
from tests.integration.helpers import wait_until

DEADLINE = 30.0


def behind_a_held_write(grouped: Grouped[Any], first: Callable[[], Any], on_the_wire: threading.Event,
                        release: Callable[[], None], writes: list[Callable[[], Any]]) -> tuple[Any, list[Any]]:
    """What `first` and each of `writes` returned, or the exception it raised. `on_the_wire` is set once the first
    write is held there; `release` lets it go."""
    grouped.parallel = 1
    answers: dict[int, Any] = {}

    def run(i: int, write: Callable[[], Any]) -> None:
        try:
            answers[i] = write()
        except Exception as exc:  # the test reads it
            answers[i] = exc

    threads = [threading.Thread(target=run, args=(-1, first))]
    threads[0].start()
    assert on_the_wire.wait(DEADLINE), "the first write never reached the wire"
    for i, write in enumerate(writes):
        threads.append(threading.Thread(target=run, args=(i, write)))
        threads[-1].start()
        wait_until(lambda n=i + 1: len(grouped._queue) == n, f"{i + 1} writes queued", DEADLINE)
    release()
    for thread in threads:
        thread.join(DEADLINE)
        assert not thread.is_alive(), "a write never came back"
    return answers.pop(-1), [answers[i] for i in range(len(writes))]
