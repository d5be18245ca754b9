"""`connector config show`: the effective settings, secrets masked."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import typer

from jobs.cli.common import JsonFlag, out, settings

app = typer.Typer(help="The effective configuration.", no_args_is_help=True)


@app.command("show")
def show(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """The effective settings, secrets masked."""
    config = settings(ctx)
    data = json.loads(config.model_dump_json())
    data["sandbox_mode"] = config.sandbox_mode
    if as_json:
        out().print_json(data=data)
        return
    for line in _flatten(data):
        out().print(line, markup=False)


def _flatten(data: dict[str, Any], prefix: str = "") -> Iterator[str]:
    for key, value in data.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key} = {json.dumps(value)}"
