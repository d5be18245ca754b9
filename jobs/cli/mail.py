"""`connector mail list`: the e-mails triggers sent, as the sandbox's SMTP server received them."""

from __future__ import annotations

import typer
from rich.table import Table

from connector.sandbox.smtp import read_mailbox
from jobs.app import mailbox_path
from jobs.cli.common import JsonFlag, out, settings

app = typer.Typer(help="The e-mails the connector sent in sandbox mode.", no_args_is_help=True)


@app.command("list")
def list_mail(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """The e-mails the sandbox's SMTP server received (mail.host unset), oldest first, with the job that sent each;
    the messages themselves are .eml files in <home>/sandbox/mail."""
    config = settings(ctx)
    mails = read_mailbox(mailbox_path(config.home))
    if as_json:
        out().print_json(data=[{k: v for k, v in m.items() if k != "path"} for m in mails])
        return
    if config.mail.host is not None:
        out().print(f"Mail goes to {config.mail.host}; only what the sandbox received earlier is kept here.",
                    markup=False)
    if not mails:
        out().print(f"No mail in {mailbox_path(config.home)}.", markup=False)
        return
    table = Table(show_edge=False, pad_edge=False)
    for column in ("date", "to", "subject", "job"):
        table.add_column(column)
    for m in mails:
        table.add_row(str(m["date"]), ", ".join(m["to"]), str(m["subject"]), str(m["job_id"] or ""))
    out().print(table)
