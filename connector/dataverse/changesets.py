"""Change sets from many threads in one `$batch`: group commit for Dataverse writes.

Each worker's write (a job row's PATCH, with the entries that must be kept with it) is one change set: atomic on
its own, independent of the others. While `PARALLEL` requests are on the wire, the writes that arrive wait and
leave together in the next one, so a busy runner sends a few requests per round trip instead of one per write, and
a write that finds room on the wire leaves at once, alone, as it would without this module. A change set that fails
fails its own write only (`Prefer: odata.continue-on-error`); a `$batch` that fails as a whole (throttled,
unavailable, cut off) fails every write in it, each caller seeing the error as its own. The waiting and sending
is `connector.groupcommit`'s; what is Dataverse's here is what fits in one `$batch` and how it is sent and read.
"""

from __future__ import annotations

import threading
import uuid
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from connector import errors
from connector.dataverse.batch import BatchPart, BatchResult, build_change_sets, parse_change_sets
from connector.groupcommit import Grouped, Room, Write

if TYPE_CHECKING:
    from connector.dataverse.client import DataverseClient

# Dataverse's cap on the requests of one `$batch`, change sets included.
MAX_PARTS = 1000
# Requests of grouped writes on the wire at once. Dataverse runs the parts of a `$batch` one after the other, so one
# `$batch` at a time would queue every write behind the others'; its service protection allows 1,200 s of execution
# time per 300 s and user, four requests running at all times, so four at once use what it gives and no more, while
# each still carries the writes that arrived meanwhile.
PARALLEL = 4

R_co = TypeVar("R_co", covariant=True)


class ChangeSet(Write[R_co], Protocol[R_co]):
    """One caller's write: its parts, atomic together; `answer` reads its change set's results."""

    @property
    def parts(self) -> Sequence[BatchPart]: ...


class Writes(Grouped[ChangeSet[Any]]):
    """Change sets, at most `MAX_PARTS` parts to a `$batch`."""

    def __init__(self, client: DataverseClient, *, parallel: int = PARALLEL) -> None:
        super().__init__(parallel=parallel)
        self.client = client

    def room(self, taken: Sequence[ChangeSet[Any]], write: ChangeSet[Any]) -> Room:
        used = sum(len(change.parts) for change in taken) + len(write.parts)
        return Room.FULL if used > MAX_PARTS else Room.TAKE

    def send_together(self, writes: Sequence[ChangeSet[Any]]) -> list[list[BatchResult]]:
        return send_change_sets(self.client, [change.parts for change in writes])


_shared: weakref.WeakKeyDictionary[DataverseClient, Writes] = weakref.WeakKeyDictionary()
_shared_lock = threading.Lock()


def shared_writes(client: DataverseClient) -> Writes:
    """The one `Writes` of `client`: the job store's writes and the timeline's posts leave together."""
    with _shared_lock:
        writes = _shared.get(client)
        if writes is None:
            writes = _shared[client] = Writes(client)
        return writes


def send_change_sets(client: DataverseClient, sets: Sequence[Sequence[BatchPart]]) -> list[list[BatchResult]]:
    """Run each of `sets` as its own change set, all in one `$batch`. Each set is answered with the results of
    all its parts, or with the one result of the part that failed (the set then changed nothing)."""
    if sum(len(parts) for parts in sets) > MAX_PARTS:
        raise ValueError(f"a $batch holds at most {MAX_PARTS} requests")
    boundary = f"batch_{uuid.uuid4()}"
    body = build_change_sets(sets, boundary=boundary, base_url=client.base_url)
    response = client.send(
        "POST", "$batch", data=body,
        headers={"Content-Type": f"multipart/mixed; boundary={boundary}", "Prefer": "odata.continue-on-error"},
    )
    answers = parse_change_sets(response.content, response.headers.get("Content-Type", ""))
    # An answer cut short on the way leaves the outcome of the sets it does not cover unknown: asking again is the
    # only safe reading, as for a single change set answered in part.
    if len(answers) != len(sets) or any(
        len(found) != len(parts) and all(result.ok for result in found)
        for found, parts in zip(answers, sets, strict=True)
    ):
        raise errors.Unavailable(f"Dataverse answered {len(sets)} change sets with {len(answers)} answers, some "
                                 "cut short; their outcome is unknown.")
    return answers
