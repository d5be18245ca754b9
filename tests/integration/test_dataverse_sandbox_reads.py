"""The Dataverse sandbox reads its candidates through SQLite indexes (`connector/sandbox/dataverse_sql.py`): every
query must answer exactly what testing every row in Python answers. Random rows (numbers, booleans, dates written in
several ways, text in mixed case, missing values), random filters, orders, `$top` and page sizes, against the rules
of `dataverse_query` applied here to every row read straight from the sandbox's file."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from connector.sandbox.dataverse import API, DataverseApp, EntityDef
from connector.sandbox.dataverse_query import compile_filter, sort_rows

ORIGIN = "https://sandbox.test"
WIDGETS = EntityDef(
    entity_set="widgets", logical_name="widget", key="widgetid", autonumber="widgetnumber",
    columns=frozenset({"n", "name", "due", "widgetnumber"}), status_reasons={1: 0, 2: 1, 3: 0},
)
NAMES = ["Ann", "ann", "ÄRGER", "ärger", "straße", "STRASSE", "b", "B-2", ""]
ORDERABLE = ["createdon", "modifiedon", "versionnumber", "widgetid", "widgetnumber", "name", "n", "statuscode", "due"]


def _due(rng: random.Random, base: datetime) -> Any:
    moment = base + timedelta(seconds=rng.randint(-3, 3))
    return rng.choice([
        None, moment.strftime("%Y-%m-%dT%H:%M:%SZ"), moment.strftime("%Y-%m-%dT%H:%M:%SZ"),
        (moment + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S+02:00"),
        moment.strftime("%Y-%m-%dT%H:%M:%S.500Z"),
    ])


def _row(rng: random.Random, base: datetime) -> dict[str, Any]:
    fields = {"n": rng.choice([None, 0, 1, 2, 5, -3, 2.5, True, False]), "name": rng.choice([None, *NAMES]),
              "due": _due(rng, base)}
    return {k: v for k, v in fields.items() if v is not None or rng.random() < 0.5}  # missing, or null


def _literal_date(rng: random.Random, base: datetime) -> str:
    moment = base + timedelta(seconds=rng.randint(-3, 3), milliseconds=rng.choice([0, 0, 250]))
    if rng.random() < 0.3:
        return (moment + timedelta(hours=1)).isoformat(timespec="milliseconds").replace("+00:00", "+01:00")
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + (f".{moment.microsecond // 1000:03d}" if moment.microsecond
                                                   else "") + "Z"


def _filter(rng: random.Random, base: datetime, depth: int = 0) -> str:
    roll = rng.random()
    if depth < 3 and roll < 0.35:
        return f"{_filter(rng, base, depth + 1)} {rng.choice(['and', 'or'])} {_filter(rng, base, depth + 1)}"
    if depth < 3 and roll < 0.45:
        return f"not ({_filter(rng, base, depth + 1)})"
    if depth < 3 and roll < 0.5:
        return f"({_filter(rng, base, depth + 1)}) {rng.choice(['eq', 'ne'])} {rng.choice(['true', 'false'])}"
    op = rng.choice(["eq", "ne", "gt", "ge", "lt", "le"])
    column = rng.choice(["n", "statuscode", "statecode", "due", "createdon", "modifiedon", "name", "versionnumber"])
    if rng.random() < 0.15:
        return f"{column} {rng.choice(['eq', 'ne'])} null"
    if column in ("due", "createdon", "modifiedon"):
        literal = _literal_date(rng, base)
    elif column == "name":
        if rng.random() < 0.4:
            return f"{rng.choice(['contains', 'startswith', 'endswith'])}(name, '{rng.choice(['a', 'STR', 'ß'])}')"
        literal = "'" + rng.choice(NAMES) + "'"
    elif column in ("statuscode", "statecode"):
        literal = str(rng.choice([0, 1, 2, 3]))
    elif column == "versionnumber":
        literal = str(rng.randint(1, 200))
    else:
        literal = rng.choice(["0", "1", "2", "2.5", "-3"])
    return f"{literal} {op} {column}" if rng.random() < 0.2 else f"{column} {op} {literal}"


def _get(app: DataverseApp, query: dict[str, str], page_size: int) -> tuple[list[dict[str, Any]], int]:
    """Every row of every page of a query, following the next links, and the number of pages."""
    args = {k: [v] for k, v in query.items()}
    rows: list[dict[str, Any]] = []
    pages = 0
    while True:
        body = app.handle("GET", WIDGETS.entity_set, args, {"prefer": f"odata.maxpagesize={page_size}"}, b"",
                          ORIGIN).body
        rows += body["value"]
        pages += 1
        link = body.get("@odata.nextLink")
        if link is None:
            return rows, pages
        assert link.startswith(f"{ORIGIN}{API}{WIDGETS.entity_set}?")
        args = parse_qs(urlsplit(link).query, keep_blank_values=True)


def _expected(app: DataverseApp, query: dict[str, str], page_size: int) -> tuple[list[dict[str, Any]], int]:
    """The same query by the rules of `dataverse_query`, over every row in the order rows were created."""
    stored = app.store.read().execute("SELECT data FROM rows WHERE entity_set = ? ORDER BY seq",
                                      (WIDGETS.entity_set,)).fetchall()
    rows = [json.loads(r["data"]) for r in stored]
    if "$filter" in query:
        predicate: Callable[[dict[str, Any]], bool] = compile_filter(query["$filter"], WIDGETS.readable, "widget")
        rows = [row for row in rows if predicate(row)]
    if "$orderby" in query:
        rows = sort_rows(rows, query["$orderby"], WIDGETS.readable, "widget")
    if "$top" in query:
        rows = rows[: int(query["$top"])]
    shaped = [{"@odata.etag": f'W/"{row["versionnumber"]}"', **row} for row in rows]
    return shaped, max(1, -(-len(rows) // page_size))


def _queries(rng: random.Random, base: datetime, count: int) -> list[tuple[dict[str, str], int]]:
    out = []
    for _ in range(count):
        query: dict[str, str] = {}
        if rng.random() < 0.9:
            query["$filter"] = _filter(rng, base)
        if rng.random() < 0.7:
            query["$orderby"] = ",".join(f"{c} {rng.choice(['asc', 'desc'])}" if rng.random() < 0.7 else c
                                         for c in rng.sample(ORDERABLE, rng.randint(1, 3)))
        if rng.random() < 0.3:
            query["$top"] = str(rng.randint(0, 30))
        out.append((query, rng.choice([1, 3, 7, 5000])))
    return out


@pytest.mark.parametrize("seed", range(3))
def test_every_query_answers_what_testing_every_row_answers(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    app = DataverseApp(tmp_path / "dataverse.sqlite3", tables=[WIDGETS])
    base = datetime.now(UTC).replace(microsecond=0)
    ids = []
    for _ in range(60):
        body = json.dumps(_row(rng, base)).encode()
        created = app.handle("POST", WIDGETS.entity_set, {}, {"prefer": "return=representation"}, body, ORIGIN)
        ids.append(created.body["widgetid"])
    for row_id in rng.sample(ids, 25):  # rows changed since: statuses, values, versions
        change = {**_row(rng, base), "statuscode": rng.choice([1, 2, 3])}
        app.handle("PATCH", f"{WIDGETS.entity_set}({row_id})", {}, {}, json.dumps(change).encode(), ORIGIN)

    def check(queries: list[tuple[dict[str, str], int]]) -> None:
        for query, page_size in queries:
            assert _get(app, query, page_size) == _expected(app, query, page_size), query

    check(_queries(rng, base, 150))
    # A client writes the autonumber column: its values are the client's now, sorted as Python sorts them.
    for row_id, number in zip(rng.sample(ids, 3), ["Z-1", "a-2", "0000000001"], strict=True):
        app.handle("PATCH", f"{WIDGETS.entity_set}({row_id})", {}, {},
                   json.dumps({"widgetnumber": number}).encode(), ORIGIN)
    check(_queries(rng, base, 150))
