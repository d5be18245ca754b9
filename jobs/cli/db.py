"""`connector db upgrade`: the job store's schema brought to this connector's version."""

from __future__ import annotations

import typer

from jobs import app as composition
from jobs.cli.common import logging_to_stderr, out, reported, settings
from jobs.store.sqlite import SqliteJobStore
from jobs.store.sqlite_schema import LATEST as SQLITE_LATEST

app = typer.Typer(help="The job store's schema.", no_args_is_help=True)


@app.command("upgrade")
def upgrade(ctx: typer.Context) -> None:
    """Apply the job store's schema migrations; a runner refuses to start until they are applied."""
    config = settings(ctx)
    with logging_to_stderr(config), reported():
        if config.job_store == "postgres":
            from jobs.store.postgres import shown_url

            before, after = composition.upgrade_postgres(config)
            where = f"The PostgreSQL job store {shown_url(config.postgres.url or '')}"
        elif config.job_store == "sqlite":
            path = config.home / "jobs.db"
            config.home.mkdir(parents=True, exist_ok=True)
            store = SqliteJobStore(path)  # opening a file upgrades it
            before, after = store.upgraded_from, SQLITE_LATEST
            store.close()
            where = f"The SQLite job store {path}"
        else:
            out().print("The Dataverse job store has no schema of the connector's: its tables are made in Dynamics "
                        "365 (see the README, Connect to Dynamics 365). Nothing to do.", markup=False)
            return
    if before == after:
        out().print(f"{where} is at schema version {after}, this connector's; nothing to do.", markup=False)
    else:
        out().print(f"{where} is upgraded from schema version {before} to {after}.", markup=False)
