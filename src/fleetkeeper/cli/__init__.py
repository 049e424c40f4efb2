"""The `fleetkeeper` command: run the server, and manage a fleet through its API.

Exit codes: 0 success, 1 a failure the server or the operation reported, 2 a usage error.
"""

from __future__ import annotations

from typing import Annotated

import typer

from fleetkeeper import __version__
from fleetkeeper.cli import (
    agent,
    alerts,
    artifacts,
    audit,
    demo,
    deploy,
    devices,
    fleet,
    geo,
    groups,
    health,
    lifecycle,  # noqa: F401 - adds its commands to `devices`
    models,
    provisioning,
    server,
    simulate,
    telemetry,
    tokens,
    users,
)
from fleetkeeper.cli.client import DEFAULT_SERVER
from fleetkeeper.cli.remote import Connection, RootServer, RootToken

__all__ = ["app", "main"]

app = typer.Typer(
    name="fleetkeeper",
    help="Fleetkeeper: open-source IoT device management.\n\n"
    "Management commands talk to a server: set FLEETKEEPER_SERVER and FLEETKEEPER_TOKEN, or "
    "pass --server and --token (here or on the command).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"fleetkeeper {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    server_url: RootServer = DEFAULT_SERVER,
    token: RootToken = None,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    ctx.obj = Connection(server_url, token)


app.command("serve")(server.serve)
app.add_typer(server.db, name="db")
app.add_typer(devices.app, name="devices")
app.add_typer(fleet.app, name="fleet")
app.add_typer(models.app, name="models")
app.add_typer(groups.app, name="groups")
app.add_typer(tokens.app, name="tokens")
app.add_typer(users.users, name="users")
app.add_typer(users.tenants, name="tenants")
app.add_typer(deploy.app, name="deploy")
app.add_typer(artifacts.app, name="artifacts")
app.add_typer(audit.app, name="audit")
app.add_typer(provisioning.app, name="provisioning")
app.add_typer(provisioning.security, name="security")
app.command("agent")(agent.agent)
app.command("telemetry")(telemetry.telemetry)
app.add_typer(health.app, name="health")
app.add_typer(alerts.app, name="alerts")
geo.register(app)
app.command("simulate")(simulate.simulate)
app.command("demo")(demo.demo)


def main() -> None:
    app(prog_name="fleetkeeper")
