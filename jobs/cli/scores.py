"""`connector scores history`: every tag and score change the connector applied to a record."""

from __future__ import annotations

from typing import Annotated

import typer

from jobs import views
from jobs.cli.common import JsonFlag, job_store, out, record_of, settings
from jobs.scoring.history import history_of, record_key, scores_of

app = typer.Typer(help="Score history: the changes the connector applied to a record's tags.", no_args_is_help=True)


@app.command("history")
def history(
    ctx: typer.Context,
    contact: Annotated[str | None, typer.Option(help="CRM id of the contact.")] = None,
    lead: Annotated[str | None, typer.Option(help="CRM id of the lead.")] = None,
    account: Annotated[str | None, typer.Option(help="CRM id of the account.")] = None,
    tag: Annotated[str | None, typer.Option("--tag", "-t", help="Only this tag's changes.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Every change the connector applied to a record's tags and scores, oldest first, with the job behind it;
    the sum of a tag's changes is the connector's view of its score."""
    config = settings(ctx)
    target = record_of(contact, lead, account, config=config)
    assert target is not None
    with job_store(config) as store:
        entries = history_of(store, target, tag)
    scores = scores_of(entries)
    if as_json:
        out().print_json(data={"record": record_key(target), "entries": [e.to_json() for e in entries],
                               "scores": scores})
        return
    if not entries:
        out().print(f"No changes for {target}{f' on tag {tag}' if tag else ''}.", markup=False)
        return
    out().print(views.history_table(entries))
    for name, score in scores.items():
        shown = "unknown (only tags added)" if score is None else str(score)
        out().print(f"{name}: {shown}, the sum of its changes", markup=False)
