"""The Dataverse sandbox's reads in SQL: which rows a query can match, and in what order, without decoding them all.

The sandbox keeps rows as JSON documents and answers a query by the rules of `dataverse_query`, in Python. On a
table of 50,000 rows, decoding and testing every row costs a second per query. So a query first asks SQLite for
its *candidates*: a condition every row the filter matches also meets (`where`), read in the query's order where
SQLite can give it exactly (`order_by`). The filter itself is then applied to each candidate as before, so the
rows answered are the same; what SQLite saves is the rows no term could match, and, with the order given, the
rows past the page.

`where` pushes down the comparisons whose outcome SQLite computes as Python does for values of the column's type:
a column against a number (numbers and booleans compare as numbers; a missing value matches only `ne`), against
`null`, and against a date-time, on values written as `2026-05-04T09:12:03Z` (the server's own dates, and the
store's); a date written any other way is left to Python. Everything else (strings, which compare ignoring case,
functions, `not`) counts as true: a candidate for Python to decide. A filter that compares values of different
types (a number in a date column) is refused by Dataverse when the query is made; the sandbox, which has no column
types, finds that out on the rows it reads, so it may now find it on fewer of them.

`order_by` is SQL's order only for columns whose values sort the same in both: the server's dates, the version,
the primary key (a lower-case GUID) and an autonumber column no client has written. Ties keep the order rows were
created in, as Python's stable sort does.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection
from datetime import UTC, datetime, timedelta

from connector.sandbox.dataverse_query import QueryError, _parse_datetime, _Token, _tokens

TRUE = "1"
_SIMPLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SQL_OPS = {"eq": "=", "ne": "!=", "gt": ">", "ge": ">=", "lt": "<", "le": "<="}
_FLIPPED = {"eq": "eq", "ne": "ne", "gt": "lt", "ge": "le", "lt": "gt", "le": "ge"}
_FUNCTIONS = {"contains", "startswith", "endswith"}
# A date-time as the server writes it: whole seconds, UTC. Such values sort as text in time order.
_CANONICAL = "'[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9]Z'"


def column_sql(column: str) -> str:
    """The SQL expression of a top-level column of a row's JSON (as the sandbox's indexes spell it)."""
    return f"json_extract(data, '$.{column}')"


def simple(column: str) -> bool:
    return _SIMPLE_NAME.fullmatch(column) is not None


def where(text: str, canonical_dates: Collection[str]) -> list[str]:
    """SQL conditions, one per term of the filter's outermost `or`, that every row `text` matches meets one of
    (`[TRUE]` when nothing can be said). `canonical_dates`: columns whose every value is a date-time written as the
    server writes it. The filter must have compiled already."""
    try:
        return _Where(_tokens(text), canonical_dates).parse()
    except (QueryError, IndexError, KeyError, ValueError, OverflowError):
        return [TRUE]


def order_by(orderby: str, orderable: Callable[[str], bool]) -> str | None:
    """`ORDER BY` terms giving the order `sort_rows` gives, ties by creation; None when SQL's order may differ."""
    terms: list[str] = []
    for item in orderby.split(","):
        fields = item.split()
        if not fields or len(fields) > 2 or not simple(fields[0]) or not orderable(fields[0]):
            return None
        if len(fields) == 2 and fields[1] not in ("asc", "desc"):
            return None
        terms.append(column_sql(fields[0]) + (" DESC" if fields[1:] == ["desc"] else ""))
    return ", ".join([*terms, "seq"])


def _text(moment: datetime) -> str:
    return (f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}T{moment.hour:02d}:{moment.minute:02d}:"
            f"{moment.second:02d}Z")


def _seconds(moment: datetime, up: bool) -> str:
    """The literal as whole UTC seconds, rounded so that a comparison with whole seconds keeps every match."""
    moment = moment.astimezone(UTC)
    if moment.microsecond:
        moment = moment.replace(microsecond=0) + (timedelta(seconds=1) if up else timedelta(0))
    return "'" + _text(moment) + "'"


class _Where:
    """The grammar of `dataverse_query._Parser`, producing SQL instead of a predicate."""

    def __init__(self, tokens: list[_Token], canonical_dates: Collection[str]) -> None:
        self.tokens = tokens
        self.pos = 0
        self.canonical_dates = canonical_dates

    def peek(self) -> _Token | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> _Token:
        token = self.tokens[self.pos]
        self.pos += 1
        return token

    def keyword(self, word: str) -> bool:
        token = self.peek()
        if token is not None and token.kind == "name" and token.text == word:
            self.pos += 1
            return True
        return False

    def parse(self) -> list[str]:
        terms = [self.and_()]
        while self.keyword("or"):
            terms.append(self.and_())
        if self.peek() is not None:
            raise QueryError("trailing tokens")
        return [TRUE] if TRUE in terms else terms

    def or_(self) -> str:
        terms = [self.and_()]
        while self.keyword("or"):
            terms.append(self.and_())
        return TRUE if TRUE in terms else ("(" + " OR ".join(terms) + ")" if len(terms) > 1 else terms[0])

    def and_(self) -> str:
        terms = [self.unary()]
        while self.keyword("and"):
            terms.append(self.unary())
        kept = [t for t in terms if t != TRUE]
        return ("(" + " AND ".join(kept) + ")" if len(kept) > 1 else kept[0]) if kept else TRUE

    def unary(self) -> str:
        if self.keyword("not"):
            self.unary()
            return TRUE
        token = self.peek()
        if token is not None and token.text == "(":
            self.take()
            inner = self.or_()
            if self.take().text != ")":
                raise QueryError("unbalanced")
            return self.compared_flag(inner)
        if token is not None and token.kind == "name" and token.text in _FUNCTIONS:
            self.take()
            depth = 0
            while True:  # the function's arguments: nothing SQL decides
                text = self.take().text
                depth += text == "("
                depth -= text == ")"
                if depth == 0:
                    break
            return self.compared_flag(TRUE)
        left, op, right = self.take(), self.take().text, self.take()
        if left.kind != "name" or left.text in ("null", "true", "false"):
            left, right, op = right, left, _FLIPPED[op]
        return self.comparison(left, op, right)

    def compared_flag(self, inner: str) -> str:
        token = self.peek()
        if token is not None and token.kind == "name" and token.text in ("eq", "ne"):
            self.take()
            self.take()
            return TRUE  # `(a or b) eq false`: left to Python
        return inner

    def comparison(self, column: _Token, op: str, literal: _Token) -> str:
        if column.kind != "name" or column.text in ("null", "true", "false") or not simple(column.text):
            return TRUE
        sql = column_sql(column.text)
        if literal.kind == "name" and literal.text == "null":
            return {"eq": f"{sql} IS NULL", "ne": f"{sql} IS NOT NULL"}.get(op, "0")
        if literal.kind == "number":
            number = float(literal.text) if "." in literal.text else int(literal.text)
            if isinstance(number, float) and not math.isfinite(number):
                return TRUE
            # A missing value is unequal to every number, and neither greater nor smaller.
            return f"({sql} IS NULL OR {sql} != {number!r})" if op == "ne" else f"{sql} {_SQL_OPS[op]} {number!r}"
        if literal.kind == "datetime" and op != "ne":
            moment = _parse_datetime(literal.text)
            bound = _seconds(moment, up=op in ("ge", "lt", "le"))
            compared = f"{sql} {_SQL_OPS[op]} {bound}" if op != "eq" else \
                f"{sql} BETWEEN {_seconds(moment, up=False)} AND {_seconds(moment, up=True)}"
            if column.text in self.canonical_dates:
                return compared
            # A date written another way (an offset, fractions, a number) is for Python to compare.
            return f"({compared} OR ({sql} IS NOT NULL AND NOT {sql} GLOB {_CANONICAL}))"
        return TRUE
