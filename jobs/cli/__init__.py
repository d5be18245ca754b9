"""The `connector` command: parse, call one function, print. Errors become `Error: ...` and an exit code.

One module per noun: `jobs`, `contact`, `config` and `sandbox` are sub-commands of their own; `run` holds `run`
and `demo`; `common` what they share. What a job looks like on screen and in JSON is in `jobs.views`.
"""

from __future__ import annotations

import importlib.metadata
import shlex
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperOption

from config import defaults
from config.text import escaped_byte, is_text, shown
from jobs.cli import config, console, contact, db, events, jobs, mail, run, sandbox, scores, serve, triggers
from jobs.cli.common import RootOptions, err, out

app = typer.Typer(
    help="Apply tag and score jobs from the CRM on the marketing platform, and show what happened.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(jobs.app, name="jobs")
app.add_typer(contact.app, name="contact")
app.add_typer(scores.app, name="scores")
app.add_typer(triggers.app, name="triggers")
app.add_typer(events.app, name="events")
app.add_typer(mail.app, name="mail")
app.add_typer(config.app, name="config")
app.add_typer(sandbox.app, name="sandbox")
app.add_typer(db.app, name="db")
app.command("run")(run.run)
app.command("demo")(run.demo)
app.command("serve")(serve.serve)
app.command("console")(console.console)
app.command("status")(console.status)


def _print_version(wanted: bool) -> None:
    if wanted:
        try:
            version = importlib.metadata.version("connector-job-runner")
        except importlib.metadata.PackageNotFoundError:
            version = "unknown (not installed)"
        out().print(f"connector {version}", markup=False)
        raise typer.Exit()


@app.callback()
def main_options(
    ctx: typer.Context,
    home: Annotated[Path | None, typer.Option(
        help=f"Data directory of the embedded default: {defaults.HOME} unless CONNECTOR_HOME says otherwise. "
             "Give it before the sub-command: connector --home DIR jobs list.")] = None,
    log_level: Annotated[str | None, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = None,
    version: Annotated[bool, typer.Option(
        "--version", is_eager=True, callback=_print_version, help="Print the version and exit.")] = False,
) -> None:
    ctx.obj = RootOptions(home=home, log_level=log_level)


def _flags_without_a_value_type(command: Any) -> Any:
    """Help shows `--json`, not `--json <bool>`.

    This typer's rich help prints a value type after every option, flags included (its plain help skips flags;
    neither `is_flag=True` nor `--json/--no-json` changes the rich one). An empty metavar leaves that column blank
    for the options that take no value, `--help` among them.
    """
    for param in command.get_params(typer.Context(command)):
        if isinstance(param, TyperOption) and param.is_flag and param.metavar is None:
            param.metavar = ""
    for sub in getattr(command, "commands", {}).values():
        _flags_without_a_value_type(sub)
    return command


# The root command's options that take a value; given after the sub-command, they would be "no such option".
ROOT_OPTIONS = ("--home", "--log-level")


def _misplaced_root_option(argv: list[str]) -> tuple[str, list[str]] | None:
    """A root option given after the sub-command's name (`connector jobs list --home X`), and the command line
    with it moved before the sub-command."""
    position = 0
    while position < len(argv) and argv[position].startswith("-"):
        position += 2 if argv[position] in ROOT_OPTIONS else 1
    for index in range(position + 1, len(argv)):
        word = argv[index]
        if word == "--":
            break
        name = word.split("=", 1)[0]
        if name in ROOT_OPTIONS:
            moved = argv[index:index + (1 if "=" in word else 2)]
            return name, [*moved, *argv[:index], *argv[index + len(moved):]]
    return None


def _not_utf8(args: list[str]) -> str | None:
    """What is wrong with an argument that is not UTF-8: Python keeps such bytes as lone surrogates (U+DC80 to
    U+DCFF), which nothing downstream can store or print."""
    for arg in args:
        if not is_text(arg):
            byte = escaped_byte(arg)
            what = f"the byte 0x{byte:02x}" if byte is not None else "a character that is not text"
            return (f"the argument {shown(arg)} has {what}, which is not UTF-8; set the terminal (or the script's "
                    "locale) to UTF-8 and type it again.")
    return None


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns the exit code."""
    args = sys.argv[1:] if argv is None else argv
    if problem := _not_utf8(args):
        err().print(f"Error: {problem}", markup=False)
        return 2
    if misplaced := _misplaced_root_option(args):
        name, fixed = misplaced
        err().print(f"Error: {name} is an option of `connector` itself, so it goes before the sub-command: "
                    f"connector {shlex.join(fixed)}", markup=False)
        return 2
    command = _flags_without_a_value_type(typer.main.get_command(app))
    try:
        command.main(args=argv, prog_name="connector", standalone_mode=True)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0

