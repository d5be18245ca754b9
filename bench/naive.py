"""The baseline: what a careful user writes in an afternoon to apply the same jobs to Spotler.

One job at a time, in file order: the Spotler calls the operation needs, with `requests` and OAuth1 on one
session; a 429 waits its Retry-After and a 5xx or a dropped connection is tried again after a second; then one
timeline line per job in a local SQLite file, committed. No ordering rule is needed: one job at a time keeps
the file's order.

Usage: python bench/naive.py JOBS.csv SPOTLER_URL TIMELINE.db
Prints one JSON line: {"succeeded": n, "failed": m, "seconds": the time from the first job to the last}.
"""

from __future__ import annotations

import csv
import json
import sqlite3
import sys
import time
from typing import Any
from urllib.parse import quote

import requests
from requests_oauthlib import OAuth1

from config.defaults import SANDBOX_CONSUMER_KEY, SANDBOX_CONSUMER_SECRET


def calls(operation: str, contact: str, tags: list[str], score: str) -> list[tuple[str, str, dict | None]]:
    base = f"contact/{quote(contact, safe='')}/tags"
    tag = quote(tags[0], safe="") if tags else ""
    if operation == "Add Tag":
        return [("POST", base, {"tags": tags})]
    if operation in ("Remove Tag", "Remove Score"):
        return [("DELETE", f"{base}/{quote(t, safe='')}", None) for t in tags]
    if operation == "Set Score":
        return [("PUT", f"{base}/{tag}/score", {"score": int(score)})]
    sign = 1 if operation == "Increase Score" else -1
    return [("POST", f"{base}/{tag}/score", {"change": sign * int(score)})]


def answer(session: requests.Session, method: str, url: str, **kwargs: Any) -> requests.Response | None:
    """The answer to a request tried again on a 429 (after its Retry-After), a 5xx or a dropped connection; None
    after ten tries."""
    for _ in range(10):
        try:
            response = session.request(method, url, timeout=(5, 30), **kwargs)
        except requests.ConnectionError:
            time.sleep(1)
            continue
        if response.status_code == 429:
            time.sleep(float(response.headers.get("Retry-After", "1")))
            continue
        if response.status_code >= 500:
            time.sleep(1)
            continue
        return response
    return None


def send(session: requests.Session, method: str, url: str, body: dict | None) -> bool:
    response = answer(session, method, url, json=body)
    return response is not None and response.ok


def main() -> None:
    jobs, url, timeline = sys.argv[1], sys.argv[2].rstrip("/") + "/", sys.argv[3]
    db = sqlite3.connect(timeline)
    db.execute("CREATE TABLE IF NOT EXISTS posts (job TEXT, contact TEXT, text TEXT)")
    session = requests.Session()
    session.auth = OAuth1(SANDBOX_CONSUMER_KEY, client_secret=SANDBOX_CONSUMER_SECRET, signature_type="AUTH_HEADER")
    succeeded = failed = 0
    started = time.perf_counter()
    with open(jobs, newline="", encoding="utf-8") as handle:
        for n, row in enumerate(csv.DictReader(handle)):
            tags = [t.strip() for t in row["tags"].replace(",", ";").split(";") if t.strip()]
            done = all(send(session, method, url + path, body)
                       for method, path, body in calls(row["operation"], row["contact"], tags, row["score"]))
            if done:
                db.execute("INSERT INTO posts VALUES (?, ?, ?)", (str(n), row["contact"], f"{row['operation']} done"))
                db.commit()
                succeeded += 1
            else:
                failed += 1
    print(json.dumps({"succeeded": succeeded, "failed": failed, "seconds": time.perf_counter() - started}))


if __name__ == "__main__":
    main()
