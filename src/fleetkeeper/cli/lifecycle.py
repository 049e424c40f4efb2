"""`fleetkeeper devices accept|reject|retire|replace|claim|command|commands`: acting on one
device through its life, and one-off commands."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import typer

from fleetkeeper.cli import output
from fleetkeeper.cli.client import ApiClient, join
from fleetkeeper.cli.devices import PATH, DeviceId, app, render
from fleetkeeper.cli.options import Json, Reason
from fleetkeeper.cli.remote import remote

COMMAND_COLUMNS = (
    output.Column("ID", "id", no_wrap=True),
    output.Column("Name", "name"),
    output.Column("State", "state"),
    output.Column("Created", "created_at"),
    output.Column("By", "created_by"),
    output.Column("Result", "result"),
)
FINAL = {"succeeded", "failed", "expired"}


def _act(api: ApiClient, device_id: str, action: str, body: dict[str, Any], as_json: bool) -> None:
    output.emit(api.post(join(PATH, device_id, action), body), as_json, render)


@app.command("accept")
@remote
def accept(
    api: ApiClient, device_id: DeviceId, reason: Reason = None, as_json: Json = False
) -> None:
    """Accept a pending device: it becomes active."""
    _act(api, device_id, "accept", {"reason": reason}, as_json)


@app.command("reject")
@remote
def reject(
    api: ApiClient, device_id: DeviceId, reason: Reason = None, as_json: Json = False
) -> None:
    """Reject a pending device: it is retired and its credentials revoked."""
    _act(api, device_id, "reject", {"reason": reason}, as_json)


@app.command("retire")
@remote
def retire(
    api: ApiClient, device_id: DeviceId, reason: Reason = None, as_json: Json = False
) -> None:
    """Retire a device: revoke its credentials, queue a wipe, keep its history."""
    _act(api, device_id, "retire", {"reason": reason}, as_json)


@app.command("replace")
@remote
def replace(
    api: ApiClient,
    old: Annotated[
        str, typer.Argument(metavar="OLD_ID", help="The device leaving.", show_default=False)
    ],
    new: Annotated[
        str,
        typer.Argument(metavar="NEW_ID", help="The device taking its place.", show_default=False),
    ],
    reason: Reason = None,
    as_json: Json = False,
) -> None:
    """Replace a device: tenant, groups, tags, attributes and location move to the new one;
    the old one is retired; both histories stay linked."""
    _act(api, old, "replace", {"new_device": new, "reason": reason}, as_json)


@app.command("claim")
@remote
def claim(
    api: ApiClient,
    serial: Annotated[str, typer.Argument(metavar="SERIAL", show_default=False)],
    code: Annotated[
        str, typer.Argument(metavar="CLAIM_CODE", help="The code on the label.", show_default=False)
    ],
    reason: Reason = None,
    as_json: Json = False,
) -> None:
    """Claim a device into your tenant with the code on its label (tenant users only)."""
    body = {"serial": serial, "claim_code": code, "reason": reason}
    output.emit(api.post("/api/v1/claims", body), as_json, render)


def _args(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise typer.BadParameter(f"not JSON: {exc}", param_hint="--args") from None
    if not isinstance(value, dict):
        raise typer.BadParameter("must be a JSON object", param_hint="--args")
    return value


@app.command("command")
@remote
def command(
    api: ApiClient,
    device_id: DeviceId,
    name: Annotated[
        str, typer.Argument(metavar="NAME", help="e.g. ping, reboot.", show_default=False)
    ],
    args: Annotated[
        str | None,
        typer.Option("--args", metavar="JSON", help='Arguments, e.g. \'{"service": "ntp"}\'.'),
    ] = None,
    timeout: Annotated[int, typer.Option(min=1, help="Seconds until it expires.")] = 60,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the outcome.")] = False,
    reason: Reason = None,
    as_json: Json = False,
) -> None:
    """Send a one-off command to a device (exit 1 when --wait sees it fail or expire)."""
    body = {"name": name, "args": _args(args), "timeout": timeout, "reason": reason}
    cmd = api.post(join(PATH, device_id, "commands"), body)
    deadline = time.monotonic() + timeout + 5
    while wait and cmd["state"] not in FINAL and time.monotonic() < deadline:
        time.sleep(0.5)
        cmd = api.get(join(PATH, device_id, "commands", cmd["id"]))
    output.emit(cmd, as_json, lambda c: output.record(c, f"Command {c['name']}"))
    if wait and cmd["state"] != "succeeded":
        raise typer.Exit(1)


@app.command("commands")
@remote
def commands(api: ApiClient, device_id: DeviceId, as_json: Json = False) -> None:
    """List a device's commands, newest first."""
    output.listing(
        api.get(join(PATH, device_id, "commands")), as_json, COMMAND_COLUMNS, noun="commands"
    )
