"""Docs that stay honest: every command has help and is in the README; example.toml names every setting."""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer
from pydantic import BaseModel

from config.settings import Settings
from jobs.cli import app

ROOT = Path(__file__).resolve().parents[2]


def _commands(group: Any, prefix: str = "connector") -> Iterator[tuple[str, Any]]:
    # Typer ships its own copy of click, so groups are recognised by their sub-commands.
    for name, command in group.commands.items():
        path = f"{prefix} {name}"
        if hasattr(command, "commands"):
            yield from _commands(command, path)
        else:
            yield path, command


def test_every_command_has_help_and_is_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    root = typer.main.get_command(app)
    found = list(_commands(root))
    assert len(found) >= 10
    for path, command in found:
        assert (command.help or "").strip(), f"{path} has no help text"
        assert path in readme, f"{path} is not in README.md"


def _keys(model: type[BaseModel], prefix: str = "") -> Iterator[str]:
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from _keys(annotation, f"{prefix}{name}.")
        else:
            yield prefix + name


def test_example_toml_documents_every_setting() -> None:
    text = (ROOT / "config" / "example.toml").read_text(encoding="utf-8")
    tomllib.loads(text)  # it is valid TOML as it stands
    section = ""
    mentioned = set()
    for line in text.splitlines():
        stripped = line.lstrip("# ").strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            section = stripped.strip("[]") + "."
        elif "=" in stripped:
            mentioned.add(section + stripped.split("=", 1)[0].strip())
        if section.endswith(("operation_values.",)):
            mentioned.add(section.rstrip("."))  # a table of values documents its key
    missing = sorted(set(_keys(Settings)) - mentioned)
    assert not missing, f"config/example.toml does not document {missing}"
