"""`fleetkeeper serve` and `fleetkeeper db ...`: commands that run beside the database.

Server modules (FastAPI, SQLAlchemy, uvicorn) are imported inside the commands, so the
management commands, which only speak HTTP, start quickly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from fleetkeeper.cli import output
from fleetkeeper.cli.client import compact
from fleetkeeper.cli.options import DatabaseUrl, DataDir, Json

if TYPE_CHECKING:
    from fleetkeeper.settings import Settings

db = typer.Typer(help="Database maintenance.", no_args_is_help=True)


def settings(data_dir: Path | None, database_url: str | None) -> Settings:
    """Settings from the environment, with the options given on the command line on top."""
    from fleetkeeper.settings import Settings

    return Settings(**compact({"data_dir": data_dir, "database_url": database_url}))


def sqlite_url(data_dir: Path) -> str:
    """The URL of the SQLite database in `data_dir` (whatever the environment says)."""
    from fleetkeeper.settings import Settings

    return Settings(data_dir=data_dir, database_url=None).resolved_database_url()


def shown_url(url: str) -> str:
    """A database URL fit to print: without its password."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


@contextmanager
def database_errors(url: str) -> Iterator[None]:
    """A database that cannot be reached or read ends the command with a message, exit 1."""
    from sqlalchemy.exc import SQLAlchemyError

    try:
        yield
    except (SQLAlchemyError, OSError) as exc:
        reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
        output.error(f"database {shown_url(url)}: {reason}")
        raise typer.Exit(1) from None


def require_existing(url: str) -> None:
    """Refuse a SQLite file that is not there (connecting would create an empty one)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    path = parsed.database if parsed.get_backend_name() == "sqlite" else None
    if path and path != ":memory:" and not Path(path).exists():
        raise FileNotFoundError(f"no database file at {path}")


def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="TCP port.")] = 8080,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Run the server (HTTP API, device API and dashboard). Ctrl-C stops it.

    Other settings come from FLEETKEEPER_* environment variables, e.g. FLEETKEEPER_ADMIN_TOKEN.
    Schema migrations run on start.
    """
    import uvicorn

    from fleetkeeper.api.app import create_app

    config = uvicorn.Config(
        create_app(settings(data_dir, database_url)),
        host=host,
        port=port,
        loop="auto",
        http="auto",
        log_level="info",
        # Long-polls may hold a request for a minute: do not wait for all of them on stop.
        timeout_graceful_shutdown=5,
    )
    # On Ctrl-C uvicorn shuts down gracefully, then re-raises the signal: nothing to report.
    with suppress(KeyboardInterrupt):
        uvicorn.Server(config).run()


@db.command("upgrade")
def upgrade(
    data_dir: DataDir = None, database_url: DatabaseUrl = None, as_json: Json = False
) -> None:
    """Run the schema migrations up to the newest revision and print it."""
    from fleetkeeper.store.migrate import current_revision
    from fleetkeeper.store.migrate import upgrade as run_migrations

    config = settings(data_dir, database_url)
    url = config.resolved_database_url()
    if url.startswith("sqlite"):
        config.data_dir.mkdir(parents=True, exist_ok=True)

    async def migrate() -> str | None:
        await run_migrations(url)
        return await current_revision(url)

    with database_errors(url):
        revision = asyncio.run(migrate())
    output.emit(
        {"database": shown_url(url), "revision": revision},
        as_json,
        lambda r: f"Database {r['database']} is at revision {r['revision']}.",
    )
