"""Group commit of Dataverse writes (`connector.dataverse.changesets`): what `make mutate` found untested.

A `$batch` carries at most 1,000 requests and no more than `parallel` requests are on the wire at once (Dataverse's
service protection); a change set that fails whole is told apart from one answered in part, whose outcome is
unknown and must be asked again, never taken for done."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from connector import errors
from connector.dataverse.batch import BatchPart, BatchResult
from connector.dataverse.changesets import MAX_PARTS, Writes, send_change_sets
from tests.integration.dataverse_env import make_record

DEADLINE = 30.0


def wait_for(condition: Callable[[], bool]) -> None:
    limit = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < limit, "timed out"
        time.sleep(0.01)


@dataclass
class Write:
    """A caller's write: `size` PATCHes of one contact, one change set. `gate`, if given, holds its lone send."""

    contact: str
    size: int = 1
    gate: threading.Event | None = None
    on_wire: list[int] = field(default_factory=list)
    started: threading.Event = field(default_factory=threading.Event)

    @property
    def parts(self) -> tuple[BatchPart, ...]:
        return tuple(BatchPart("PATCH", f"contacts({self.contact})", body={"lastname": f"L{i}"},
                               headers={"If-Match": "*"}) for i in range(self.size))

    def alone(self) -> str:
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(DEADLINE)
        return "alone"

    def answer(self, results: list[BatchResult]) -> str:
        if not all(result.ok for result in results):
            raise errors.Conflict("refused")
        return f"{len(results)} ok"


def in_threads(writes: Writes, changes: list[Write]) -> tuple[list[threading.Thread], dict[int, Any]]:
    answers: dict[int, Any] = {}

    def run(i: int) -> None:
        try:
            answers[i] = writes(changes[i])
        except BaseException as exc:  # the test reads it
            answers[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(changes))]
    return threads, answers


def queued_behind_a_held_write(client, sizes: list[int]) -> tuple[Writes, dict[int, Any]]:
    """One write on the wire (held), then writes of `sizes` parts queued behind it; all answered once it ends."""
    contact = make_record(client)
    writes = Writes(client, parallel=1)
    gate = threading.Event()
    held = Write(contact, gate=gate)
    first, first_answer = in_threads(writes, [held])
    first[0].start()
    assert held.started.wait(DEADLINE)
    threads, answers = in_threads(writes, [Write(contact, size) for size in sizes])
    for thread in threads:
        thread.start()
    wait_for(lambda: len(writes._queue) == len(sizes))
    gate.set()
    for thread in [*first, *threads]:
        thread.join(DEADLINE)
    assert first_answer == {0: "alone"}
    return writes, answers


def test_writes_of_exactly_a_full_batch_leave_in_one_request(client):
    writes, answers = queued_behind_a_held_write(client, [MAX_PARTS // 10] * 10)
    assert answers == {i: f"{MAX_PARTS // 10} ok" for i in range(10)}
    assert (writes.requests, writes.writes) == (2, 11)


def test_writes_beyond_a_full_batch_leave_in_the_next_request(client):
    writes, answers = queued_behind_a_held_write(client, [MAX_PARTS // 10] * 11)
    # The first ten fill a $batch; the eleventh goes next, alone.
    assert answers == {**{i: f"{MAX_PARTS // 10} ok" for i in range(10)}, 10: "alone"}
    assert (writes.requests, writes.writes) == (3, 12)


def test_no_more_writes_are_on_the_wire_than_allowed(client):
    contact = make_record(client)
    writes = Writes(client, parallel=1)
    assert writes(Write(contact)) == "alone"  # one write came and went
    gate = threading.Event()
    held, later = Write(contact, gate=gate), Write(contact)
    first, _ = in_threads(writes, [held])
    first[0].start()
    assert held.started.wait(DEADLINE)
    second, answers = in_threads(writes, [later])
    second[0].start()
    wait_for(lambda: len(writes._queue) == 1 or later.started.is_set())
    # The later write waits for the wire: it has not been sent while the held one is out.
    assert not later.started.is_set()
    gate.set()
    for thread in [*first, *second]:
        thread.join(DEADLINE)
    assert answers == {0: "alone"}


def test_a_change_set_refused_whole_is_answered_with_the_part_that_failed(client):
    first, second = make_record(client), make_record(client)
    sets = [
        [BatchPart("PATCH", f"contacts({first})", body={"lastname": "Changed"}, headers={"If-Match": 'W/"999999"'}),
         BatchPart("POST", "annotations", body={"subject": "kept with it", "notetext": "x",
                                                "objectid_contact@odata.bind": f"/contacts({first})"})],
        [BatchPart("PATCH", f"contacts({second})", body={"lastname": "Changed"}, headers={"If-Match": "*"})],
    ]
    answers = send_change_sets(client, sets)
    assert [[result.status for result in answer] for answer in answers] == [[412], [204]]


def cut(client, what: Callable[[bytes], bytes]) -> None:
    """Every `$batch` answer from now on reaches the client changed by `what`, as if cut on the way."""
    def hook(response, *args, **kwargs):
        if "$batch" in response.request.path_url:
            response._content = what(response.content)
        return response
    client.session.hooks["response"].append(hook)


def _last_part_dropped(body: bytes) -> bytes:
    outer = re.match(rb"--(\S+)\r\n", body)
    assert outer is not None
    delimiter = b"--" + outer.group(1) + b"\r\n"
    return body[:body.rindex(delimiter)] + b"--" + outer.group(1) + b"--\r\n"


def _last_answer_of_first_set_dropped(body: bytes) -> bytes:
    inner = re.search(rb"boundary=(changesetresponse_[0-9a-f-]+)", body)
    assert inner is not None
    delimiter = b"--" + inner.group(1) + b"\r\n"
    closing = b"--" + inner.group(1) + b"--"
    return body[:body.rindex(delimiter)] + body[body.index(closing):]


@pytest.mark.parametrize("what", [_last_part_dropped, _last_answer_of_first_set_dropped])
def test_an_answer_cut_short_leaves_the_outcome_unknown(client, what):
    contact = make_record(client)
    sets = [[BatchPart("PATCH", f"contacts({contact})", body={"lastname": f"L{i}"}, headers={"If-Match": "*"})
             for i in range(2)] for _ in range(2)]
    cut(client, what)
    with pytest.raises(errors.Unavailable) as raised:
        send_change_sets(client, sets)
    answered = 1 if what is _last_part_dropped else 2
    assert raised.value.message == (f"Dataverse answered 2 change sets with {answered} answers, some cut short; "
                                    "their outcome is unknown.")
