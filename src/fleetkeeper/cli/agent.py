"""`fleetkeeper agent`: run the device agent on this (Linux) machine.

Agent modules (psutil, cryptography) are imported inside the command, so the management
commands start quickly. `open_transport` is the seam tests replace to put a scripted or
in-process server behind the agent.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from typing import Annotated

import httpx
import typer

from fleetkeeper.cli import output
from fleetkeeper.cli.remote import CONNECTION_PANEL, root_connection

AgentServer = Annotated[
    str | None,
    typer.Option(
        "--server",
        rich_help_panel=CONNECTION_PANEL,
        show_default=False,
        help="URL of the Fleetkeeper server (default: the root --server, $FLEETKEEPER_SERVER "
        "or http://127.0.0.1:8080).",
    ),
]
StateDirOption = Annotated[
    Path,
    typer.Option(
        "--state-dir",
        file_okay=False,
        help="Where the agent keeps its key (device.key, 0600), its identity and its telemetry "
        "queue; created if missing.",
    ),
]
ProvisioningToken = Annotated[
    str | None,
    typer.Option(
        "--provisioning-token",
        envvar="FLEETKEEPER_PROVISIONING_TOKEN",
        show_default=False,
        help="Fleet provisioning token for the first enrolment (not needed when the serial was "
        "pre-authorised with this device's key).",
    ),
]
Serial = Annotated[
    str | None,
    typer.Option(
        "--serial",
        show_default=False,
        help="Serial to enrol as (default: the hardware's: DMI or device-tree serial, else "
        "/etc/machine-id, else the host name).",
    ),
]
Model = Annotated[
    str | None,
    typer.Option(
        "--model",
        show_default=False,
        help="Device model to enrol as (default: the DMI product name, else linux-generic).",
    ),
]
ConfigFile = Annotated[
    Path | None,
    typer.Option(
        "--config",
        dir_okay=False,
        show_default=False,
        help="TOML config: telemetry_interval, checkin_wait, allow_shell, and the commands "
        "it runs, as commands.NAME tables (default: only the built-in ping).",
    ),
]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Log every request too.")]


def open_transport(server: str) -> httpx.AsyncBaseTransport | None:
    """The transport the agent reaches `server` through (None: the network)."""
    return None


def agent(
    ctx: typer.Context,
    state_dir: StateDirOption,
    server: AgentServer = None,
    provisioning_token: ProvisioningToken = None,
    serial: Serial = None,
    model: Model = None,
    config: ConfigFile = None,
    verbose: Verbose = False,
) -> None:
    """Run the device agent on this machine: Ctrl-C or SIGTERM stop it.

    The first start makes the device key and enrols; later starts authenticate with the key.
    Commands: ping is built in, any other only as declared in --config.
    Metrics wait in a queue on disk while the server is out of reach.

    Exit codes: 0 stopped, or retired by the server (its credentials are then deleted),
    1 credentials revoked or enrolment refused, 2 a usage or config error.
    """
    from fleetkeeper.agent import (
        Agent,
        AgentExit,
        ConfigError,
        EnrollOptions,
        StateDir,
        load_config,
    )

    try:
        settings = load_config(config)
    except ConfigError as exc:
        raise typer.BadParameter(str(exc), param_hint="--config") from None
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not verbose:
        # httpx logs every request at INFO: one line per long-poll is noise.
        logging.getLogger("httpx").setLevel(logging.WARNING)
    url = server or root_connection(ctx).server
    device = Agent(
        url,
        StateDir(state_dir),
        settings,
        enroll=EnrollOptions(serial=serial, model=model, provisioning_token=provisioning_token),
        transport=open_transport(url),
    )

    async def run() -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, device.stop)
        await device.run()

    try:
        asyncio.run(run())
    except AgentExit as exc:
        if exc.code:
            output.error(str(exc))
        else:
            output.note(str(exc))
        raise typer.Exit(exc.code) from None
