"""`fleetkeeper audit ...`: who did what, when and why, and whether the trail is intact."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.markup import escape

from fleetkeeper.cli import output, server
from fleetkeeper.cli.client import ApiClient
from fleetkeeper.cli.options import Json, Paging
from fleetkeeper.cli.remote import remote

app = typer.Typer(help="The audit trail.", no_args_is_help=True)

PATH = "/api/v1/audit"
COLUMNS = (
    output.Column("ID", "id", no_wrap=True),
    output.Column("At", "at", no_wrap=True),
    output.Column("Actor", "actor"),
    output.Column("Action", "action"),
    output.Column("Target", "target"),
    output.Column("Reason", "reason"),
)


@app.command("list")
@remote
def list_records(
    api: ApiClient,
    actor: Annotated[str | None, typer.Option(help="e.g. user:admin or token:NAME.")] = None,
    action: Annotated[str | None, typer.Option(help="e.g. device.update.")] = None,
    target: Annotated[str | None, typer.Option(help="e.g. device:ID.")] = None,
    since: Annotated[
        str | None,
        typer.Option(metavar="ISO-TIME", help="From this time on, e.g. 2026-01-01T00:00:00Z."),
    ] = None,
    until: Annotated[str | None, typer.Option(metavar="ISO-TIME", help="Before this time.")] = None,
    paging: Paging = Paging(),
    as_json: Json = False,
) -> None:
    """List audit records, newest first."""
    params = {
        "actor": actor,
        "action": action,
        "target": target,
        "since": since,
        "until": until,
        **paging.params(),
    }
    page = api.page(PATH, params, all_pages=paging.all_pages)
    output.listing(page, as_json, COLUMNS, noun="records")


async def verify_database(url: str) -> dict[str, Any]:
    """Check the hash chain straight in the database (no server needed)."""
    import dataclasses

    from fleetkeeper.services.audit import verify
    from fleetkeeper.store.db import Database

    database = Database(url)
    try:
        async with database.read() as session:
            return dataclasses.asdict(await verify(session))
    finally:
        await database.dispose()


def _render(result: dict[str, Any]) -> str:
    return (
        f"Audit trail intact: {result['checked']} records checked; newest hash "
        f"{result['last_hash']}."
    )


@app.command("verify")
@remote
def verify(
    api: ApiClient,
    database_url: Annotated[
        str | None,
        typer.Option(help="Verify straight in this database (SQLAlchemy URL), without a server."),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            file_okay=False,
            help="Verify straight in the SQLite database of this data folder, without a server.",
        ),
    ] = None,
    as_json: Json = False,
) -> None:
    """Check the hash chain of the whole audit trail; exit 1 naming the first broken record."""
    url = database_url or (server.sqlite_url(data_dir) if data_dir else None)
    if url is None:
        result = api.post(f"{PATH}/verify", None)
    else:
        with server.database_errors(url):
            server.require_existing(url)
            result = asyncio.run(verify_database(url))
    if not result["ok"]:
        _broken(result, as_json)
    output.emit(result, as_json, _render)


def _broken(result: dict[str, Any], as_json: bool) -> NoReturn:
    if as_json:
        output.print_json(result)
    output.say(
        f"[bold red]Audit trail broken at record {result['first_broken_id']}[/] "
        f"(after {result['checked']} intact records): {escape(result['problem'] or '')}"
    )
    raise typer.Exit(1)
