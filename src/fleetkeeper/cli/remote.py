"""How management commands reach a server.

`--server` and `--token` are accepted on the root (`fleetkeeper --server X devices list`, with
FLEETKEEPER_SERVER / FLEETKEEPER_TOKEN as fallbacks) and on every management command
(`fleetkeeper devices list --server X`), the command's winning. Rather than repeat those
options, and the connect / report-errors / close steps, in every command, `@remote` adds them:

    @app.command("show")
    @remote
    def show(api: ApiClient, device_id: DeviceId, as_json: Json = False) -> None: ...

The decorated function receives a connected `ApiClient` first. An `ApiError` it lets escape is
printed for people (title, detail, per-field errors) and ends the command with exit code 1.
"""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated, Any

import typer

from fleetkeeper.cli import client, output
from fleetkeeper.cli.options import expand, set_signature

CONNECTION_PANEL = "Connection"

RootServer = Annotated[
    str,
    typer.Option(
        "--server",
        envvar="FLEETKEEPER_SERVER",
        rich_help_panel=CONNECTION_PANEL,
        help="URL of the Fleetkeeper server.",
    ),
]
RootToken = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="FLEETKEEPER_TOKEN",
        rich_help_panel=CONNECTION_PANEL,
        show_default=False,
        help="API token (prefer the environment variable).",
    ),
]
CommandServer = Annotated[
    str | None,
    typer.Option(
        "--server",
        rich_help_panel=CONNECTION_PANEL,
        show_default=False,
        help="URL of the Fleetkeeper server (default: the root --server, "
        "$FLEETKEEPER_SERVER or http://127.0.0.1:8080).",
    ),
]
CommandToken = Annotated[
    str | None,
    typer.Option(
        "--token",
        rich_help_panel=CONNECTION_PANEL,
        show_default=False,
        help="API token (default: the root --token or $FLEETKEEPER_TOKEN).",
    ),
]


@dataclass(frozen=True)
class Connection:
    server: str
    token: str | None


def root_connection(ctx: typer.Context) -> Connection:
    obj = ctx.find_root().obj
    if isinstance(obj, Connection):
        return obj
    return Connection(
        os.environ.get("FLEETKEEPER_SERVER") or client.DEFAULT_SERVER,
        os.environ.get("FLEETKEEPER_TOKEN"),
    )


@contextmanager
def connect(connection: Connection) -> Iterator[client.ApiClient]:
    with client.ApiClient(connection.server, connection.token) as api:
        try:
            yield api
        except client.ApiError as exc:
            output.report(exc)
            raise typer.Exit(1) from None


_CONNECTION_PARAMS = [
    inspect.Parameter("_ctx", inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context),
    inspect.Parameter(
        "server", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=CommandServer
    ),
    inspect.Parameter(
        "token", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=CommandToken
    ),
]


def remote(func: Callable[..., None]) -> Callable[..., None]:
    """Make `func(api, ...)` a command that takes --server and --token (see the module doc)."""
    params, regroup = expand(func)
    own = params[1:]  # the first parameter receives the ApiClient
    clash = {p.name for p in own} & {p.name for p in _CONNECTION_PARAMS}
    if clash:
        raise TypeError(f"{func.__qualname__}: parameter names reserved by @remote: {clash}")

    @functools.wraps(func)
    def command(**kwargs: Any) -> None:
        ctx: typer.Context = kwargs.pop("_ctx")
        server, token = kwargs.pop("server"), kwargs.pop("token")
        root = root_connection(ctx)
        with connect(Connection(server or root.server, token or root.token)) as api:
            func(api, **regroup(kwargs))

    set_signature(command, own + _CONNECTION_PARAMS)
    return command
