"""`connector triggers ...`: the triggers of the rules file, and what fired."""

from __future__ import annotations

from typing import Annotated

import typer

from jobs import views
from jobs.app import load_rules_of
from jobs.cli.common import JsonFlag, job_store, out, record_of, reported, settings
from jobs.scoring.triggers import firings_of

app = typer.Typer(help="The triggers of the rules file, and what they fired.", no_args_is_help=True)


@app.command("list")
def list_triggers(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """The triggers of the rules file (the rules_file setting): tag, threshold, re-arm, cooldown and actions."""
    config = settings(ctx)
    with reported():
        rules = load_rules_of(config)
    if as_json:
        out().print_json(data=[views.trigger_json(t) for t in rules.triggers])
        return
    if not rules.triggers:
        where = f"in {rules.path}" if rules.path else "(no rules_file is set)"
        out().print(f"No triggers {where}.", markup=False)
        return
    out().print(views.triggers_table(list(rules.triggers)))


@app.command("log")
def log(
    ctx: typer.Context,
    contact: Annotated[str | None, typer.Option(help="Only what fired for this contact.")] = None,
    lead: Annotated[str | None, typer.Option(help="Only what fired for this lead.")] = None,
    account: Annotated[str | None, typer.Option(help="Only what fired for this account.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """What fired, oldest first: when, which trigger, for which record, the score's change and the job behind it."""
    config = settings(ctx)
    target = record_of(contact, lead, account, required=False, config=config)
    with job_store(config) as store:
        firings = firings_of(store, target)
    if as_json:
        out().print_json(data=[views.firing_json(f) for f in firings])
        return
    if not firings:
        out().print("Nothing fired.", markup=False)
        return
    out().print(views.firings_table(firings))
