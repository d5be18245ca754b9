"""How the connector's sentences quote what a user gave and count things, the same in every one of them."""

from __future__ import annotations

import re

QUOTE_LIMIT = 80
_ESCAPED = re.compile("[\udc80-\udcff]")


def shown(value: object, limit: int = QUOTE_LIMIT) -> str:
    """A value as a refusal quotes it: its repr, so control characters show escaped (`\\x1b`, `\\x00`), cut to
    `limit` characters with `…` so that a pasted document does not flood the screen."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def escaped_byte(value: object) -> int | None:
    """The first byte that was not UTF-8 in text read with `surrogateescape` (Python's way with such bytes in a
    command line or a file: a lone surrogate U+DC80 to U+DCFF), in a string, a list or a table; None if none."""
    if isinstance(value, dict):
        value = [*value.keys(), *value.values()]
    if isinstance(value, list):
        # One search over the strings together (this runs for every row of an import), one call per nested value.
        found = _ESCAPED.search("".join(v for v in value if isinstance(v, str)))
        if found:
            return ord(found.group()) - 0xDC00
        return next((b for v in value if isinstance(v, dict | list) and (b := escaped_byte(v)) is not None), None)
    if isinstance(value, str):
        found = _ESCAPED.search(value)
        return ord(found.group()) - 0xDC00 if found else None
    return None


def is_text(value: object) -> bool:
    """False for a string (or a list holding one) that no store or screen can take: one with a lone surrogate,
    from bytes that were not UTF-8 or from JSON's "\\ud800"."""
    if isinstance(value, list):
        return all(map(is_text, value))
    if not isinstance(value, str):
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def count(n: int, word: str, words: str | None = None) -> str:
    """`1 job`, `2 jobs`."""
    return f"{n} {word if n == 1 else words or word + 's'}"
