"""The `$filter` and `$orderby` subset the Dataverse sandbox understands, evaluated over rows held as dicts.

The subset is what the connector sends, plus what a person trying the sandbox with curl is likely to type:
comparisons (`eq ne gt ge lt le`), `and or not`, parentheses, `contains startswith endswith`, `null`, `true`,
`false`, numbers, quoted strings (`''` inside is one quote), GUIDs and ISO date-times. As in Dataverse, string
comparisons ignore case. Anything else is refused with the error Dataverse would give, rather than guessed at.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

Row = dict[str, Any]
Predicate = Callable[[Row], bool]


class QueryError(ValueError):
    """The query cannot be run; the message is Dataverse's wording where it has one."""


_TOKEN = re.compile(
    r"""\s*(?:
    (?P<string>'(?:[^']|'')*')
    |(?P<guid>[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})(?![\w-])
    |(?P<datetime>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:\d{2})?)
    |(?P<number>-?\d+(?:\.\d+)?)(?![\w])
    |(?P<name>[A-Za-z_][A-Za-z0-9_.]*)
    |(?P<punct>[(),])
    )""",
    re.VERBOSE,
)
_COMPARISONS = {"eq", "ne", "gt", "ge", "lt", "le"}
_FUNCTIONS = {"contains", "startswith", "endswith"}


@dataclass(frozen=True)
class _Token:
    kind: str
    text: str


def _tokens(text: str) -> list[_Token]:
    out: list[_Token] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        match = _TOKEN.match(text, pos)
        if not match or match.end() == pos:
            raise QueryError(f"Syntax error at position {pos} in '{text}'.")
        kind = match.lastgroup or ""
        out.append(_Token(kind, match.group(kind)))
        pos = match.end()
    return out


Operand = Callable[[Row], Any]


class _Parser:
    def __init__(self, text: str, columns: Callable[[str], bool], entity: str) -> None:
        self.text = text
        self.tokens = _tokens(text)
        self.pos = 0
        self.columns = columns
        self.entity = entity

    def peek(self) -> _Token | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> _Token:
        token = self.peek()
        if token is None:
            raise QueryError(f"Syntax error: '{self.text}' ends too early.")
        self.pos += 1
        return token

    def expect(self, text: str) -> None:
        token = self.take()
        if token.text != text:
            raise QueryError(f"Syntax error: expected '{text}' but found '{token.text}' in '{self.text}'.")

    def parse(self) -> Predicate:
        predicate = self.or_()
        if self.peek() is not None:
            raise QueryError(f"Syntax error at '{self.peek().text}' in '{self.text}'.")  # type: ignore[union-attr]
        return predicate

    def or_(self) -> Predicate:
        left = self.and_()
        while self._keyword("or"):
            right = self.and_()
            left = (lambda a, b: lambda row: a(row) or b(row))(left, right)
        return left

    def and_(self) -> Predicate:
        left = self.unary()
        while self._keyword("and"):
            right = self.unary()
            left = (lambda a, b: lambda row: a(row) and b(row))(left, right)
        return left

    def _keyword(self, word: str) -> bool:
        token = self.peek()
        if token is not None and token.kind == "name" and token.text == word:
            self.pos += 1
            return True
        return False

    def unary(self) -> Predicate:
        if self._keyword("not"):
            inner = self.unary()
            return lambda row: not inner(row)
        token = self.peek()
        if token is not None and token.text == "(":
            self.take()
            inner = self.or_()
            self.expect(")")
            return self._maybe_compare_bool(inner)
        if token is not None and token.kind == "name" and token.text in _FUNCTIONS:
            return self._maybe_compare_bool(self.function())
        left = self.operand()
        op = self.take()
        if op.kind != "name" or op.text not in _COMPARISONS:
            raise QueryError(f"Syntax error: expected a comparison (eq, ne, gt, ge, lt, le) but found '{op.text}'.")
        right = self.operand()
        return _compare(op.text, left, right)

    def _maybe_compare_bool(self, predicate: Predicate) -> Predicate:
        token = self.peek()
        if token is not None and token.kind == "name" and token.text in ("eq", "ne"):
            op = self.take().text
            value = self.operand()
            return _compare(op, predicate, value)
        return predicate

    def function(self) -> Predicate:
        name = self.take().text
        self.expect("(")
        column = self.operand()
        self.expect(",")
        needle = self.operand()
        self.expect(")")

        def test(row: Row) -> bool:
            haystack, value = column(row), needle(row)
            if haystack is None or value is None:
                return False
            if not isinstance(haystack, str) or not isinstance(value, str):
                raise QueryError(f"The function '{name}' takes a text column and a text value.")
            haystack, value = haystack.casefold(), value.casefold()
            if name == "contains":
                return value in haystack
            if name == "startswith":
                return haystack.startswith(value)
            return haystack.endswith(value)

        return test

    def operand(self) -> Operand:
        token = self.take()
        if token.kind == "string":
            value: Any = token.text[1:-1].replace("''", "'")
            return lambda row: value
        if token.kind == "guid":
            lowered = token.text.lower()
            return lambda row: lowered
        if token.kind == "datetime":
            moment = _parse_datetime(token.text)
            return lambda row: moment
        if token.kind == "number":
            number = float(token.text) if "." in token.text else int(token.text)
            return lambda row: number
        if token.kind == "name":
            if token.text == "null":
                return lambda row: None
            if token.text in ("true", "false"):
                flag = token.text == "true"
                return lambda row: flag
            if not self.columns(token.text):
                raise QueryError(
                    f"Could not find a property named '{token.text}' on type 'Microsoft.Dynamics.CRM.{self.entity}'."
                )
            name = token.text
            return lambda row: row.get(name)
        raise QueryError(f"Syntax error: unexpected '{token.text}' in '{self.text}'.")


def _parse_datetime(text: str) -> datetime:
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        raise QueryError(f"The date-time {text} needs a time zone, e.g. {text}Z.")
    return value


def _comparable(a: Any, b: Any) -> tuple[Any, Any]:
    if isinstance(b, datetime) and isinstance(a, str):
        return _parse_datetime(a), b
    if isinstance(a, datetime) and isinstance(b, str):
        return a, _parse_datetime(b)
    if isinstance(a, str) and isinstance(b, str):
        return a.casefold(), b.casefold()
    if isinstance(a, bool) or isinstance(b, bool):
        return a, b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a, b
    raise QueryError(f"A binary operator with incompatible types was detected: {type(a).__name__} and "
                     f"{type(b).__name__}.")


def _compare(op: str, left: Operand, right: Operand) -> Predicate:
    def test(row: Row) -> bool:
        a, b = left(row), right(row)
        if a is None or b is None:
            if op == "eq":
                return a is None and b is None
            if op == "ne":
                return not (a is None and b is None)
            return False
        a, b = _comparable(a, b)
        if op == "eq":
            return bool(a == b)
        if op == "ne":
            return bool(a != b)
        if op == "gt":
            return bool(a > b)
        if op == "ge":
            return bool(a >= b)
        if op == "lt":
            return bool(a < b)
        return bool(a <= b)

    return test


def compile_filter(text: str, columns: Callable[[str], bool], entity: str) -> Predicate:
    """A predicate over rows; `columns(name)` says whether a property exists (unknown ones are refused)."""
    return _Parser(text, columns, entity).parse()


def sort_rows(rows: list[Row], orderby: str, columns: Callable[[str], bool], entity: str) -> list[Row]:
    """Rows sorted by `col [asc|desc], ...`; nulls first in ascending order, as in SQL Server."""
    keys: list[tuple[str, bool]] = []
    for item in orderby.split(","):
        fields = item.split()
        if not fields or len(fields) > 2 or (len(fields) == 2 and fields[1] not in ("asc", "desc")):
            raise QueryError(f"Syntax error in $orderby '{orderby}'.")
        if not columns(fields[0]):
            raise QueryError(
                f"Could not find a property named '{fields[0]}' on type 'Microsoft.Dynamics.CRM.{entity}'."
            )
        keys.append((fields[0], len(fields) == 2 and fields[1] == "desc"))
    ordered = list(rows)
    for name, descending in reversed(keys):
        ordered.sort(key=lambda row: _sort_key(row.get(name)), reverse=descending)
    return ordered


def _sort_key(value: Any) -> tuple[int, Any]:
    if value is None:
        return (0, 0)
    if isinstance(value, str):
        return (1, value.casefold())
    return (1, value)


def select_columns(text: str, columns: Callable[[str], bool], entity: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    for name in names:
        if not columns(name):
            raise QueryError(f"Could not find a property named '{name}' on type 'Microsoft.Dynamics.CRM.{entity}'.")
    return names


def known(names: Iterable[str]) -> Callable[[str], bool]:
    allowed = frozenset(names)
    return lambda name: name in allowed
