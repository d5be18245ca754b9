"""How a refusal quotes what a user gave, the same in every sentence of the connector."""

from __future__ import annotations

QUOTE_LIMIT = 80


def shown(value: object, limit: int = QUOTE_LIMIT) -> str:
    """A value as a refusal quotes it: its repr, so control characters show escaped (`\\x1b`, `\\x00`), cut to
    `limit` characters with `…` so that a pasted document does not flood the screen."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
