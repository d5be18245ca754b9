"""A record update of several fields is one change: a reader (`contact show`, a trigger reading the record) sees
all of it or none of it, never one field new and the other old."""

from __future__ import annotations

import threading
from pathlib import Path

from connector.localcrm import LocalCrm


def test_a_reader_never_sees_half_of_a_record_update(tmp_path: Path) -> None:
    crm = LocalCrm(tmp_path / "crm.db")
    crm.update_record("contact", "C-1", {"status": 0, "stage": 0}, ref="job-0")
    done = threading.Event()
    torn: list[dict[str, object]] = []

    def write() -> None:
        for n in range(1, 3000):
            crm.update_record("contact", "C-1", {"status": n, "stage": n}, ref=f"job-{n}")
        done.set()

    writer = threading.Thread(target=write)
    writer.start()
    try:
        while not done.is_set() and len(torn) < 5:
            seen = crm.fields("contact", "C-1", ["status", "stage"])
            if seen["status"] != seen["stage"]:
                torn.append(seen)
    finally:
        writer.join()
        crm.close()
    assert torn == [], f"a reader saw a record half updated: {torn[:3]}"
