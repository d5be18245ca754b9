"""`connector contact show`: what the platform and the timeline say about a CRM record."""

from __future__ import annotations

from typing import Annotated

import typer

from config.text import shown
from jobs import views
from jobs.cli.common import JsonFlag, connector, fail, out, settings
from jobs.service import contact_view

app = typer.Typer(help="What the platform and the timeline say about a CRM record.", no_args_is_help=True)


@app.command("show")
def show(
    ctx: typer.Context,
    record_id: Annotated[str, typer.Argument(help="CRM id of the contact (or lead / account with --kind).")],
    kind: Annotated[str, typer.Option(help="contact, lead or account.")] = "contact",
    as_json: JsonFlag = False,
) -> None:
    """The tags and scores the platform reports for a record, and its timeline posts."""
    if kind not in ("contact", "lead", "account"):
        fail(f"--kind is {shown(kind)}; use contact, lead or account.", 2)
    config = settings(ctx)
    with connector(config, quiet=as_json) as built:
        view = contact_view(built.platform, built.crm, kind, record_id, store=built.store)
    if as_json:
        out().print_json(data=view)
        return
    out().print(f"{kind} {record_id} on {view['platform']} (as {view['platform_id']})", markup=False)
    if view["platform_error"]:
        out().print(f"  platform: {view['platform_error']}", markup=False)
    out().print(views.tags_table(view["tags"]) if view["tags"] else "  no tags")
    if view["last_changes"]:
        out().print("last changes by the connector:")
        for tag, changes in view["last_changes"].items():
            for change in changes:
                out().print(f"  {tag}: {views.change_line(change)}", markup=False)
    out().print("timeline:")
    for post in view["timeline"] or [{"created_at": "", "text": "(no posts)"}]:
        out().print(f"  {post['created_at']}  {post['text']}", markup=False)
