"""`fleetkeeper provisioning ...` (fleet provisioning tokens) and `fleetkeeper security events`."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.console import Group, RenderableType
from rich.text import Text

from fleetkeeper.cli import output
from fleetkeeper.cli.client import ApiClient, compact, join
from fleetkeeper.cli.options import Json, Paging, Reason, Tenant, reason_header
from fleetkeeper.cli.remote import remote

app = typer.Typer(help="Fleet provisioning tokens: create, list, revoke.", no_args_is_help=True)
security = typer.Typer(
    help="Security events: refused credentials, bad signatures, replays.", no_args_is_help=True
)

PATH = "/api/v1/provisioning-tokens"
COLUMNS = (
    output.Column("ID", "id", no_wrap=True),
    output.Column("Name", "name"),
    output.Column("Tenant", "tenant"),
    output.Column("Model", "model"),
    output.Column("Uses", "uses"),
    output.Column("Max", "max_uses"),
    output.Column("Auto-accept", "auto_accept"),
    output.Column("Expires", "expires_at"),
    output.Column("Revoked", "revoked_at"),
)
EVENT_COLUMNS = (
    output.Column("At", "at"),
    output.Column("Kind", "kind"),
    output.Column("Serial", "serial"),
    output.Column("Device", "device_id", no_wrap=True),
    output.Column("From", "remote_addr"),
    output.Column("Detail", "detail"),
)


def render_new(token: dict[str, Any]) -> RenderableType:
    return Group(
        output.record({k: v for k, v in token.items() if k != "token"}, f"Token {token['name']}"),
        Text(
            "\nThe provisioning token, shown this once: bake it into the firmware now.\n",
            style="bold yellow",
        ),
        Text(f"    {token['token']}\n", style="bold"),
    )


@app.command("create")
@remote
def create(
    api: ApiClient,
    name: Annotated[str, typer.Argument(metavar="NAME", show_default=False)] = "provisioning",
    tenant: Tenant = None,
    model: Annotated[str | None, typer.Option(help="Only devices of this model.")] = None,
    serial_pattern: Annotated[str | None, typer.Option(help="Only serials like SN-2026-*.")] = None,
    max_uses: Annotated[int | None, typer.Option(min=1, help="How many devices at most.")] = None,
    expires_at: Annotated[
        datetime | None, typer.Option(help="ISO time it stops working (UTC unless it says).")
    ] = None,
    auto_accept: Annotated[bool, typer.Option(help="Devices become active at once.")] = False,
    reason: Reason = None,
    as_json: Json = False,
) -> None:
    """Create a fleet provisioning token and print it (once)."""
    body = compact(
        {
            "name": name,
            "tenant": tenant,
            "model": model,
            "serial_pattern": serial_pattern,
            "max_uses": max_uses,
            "auto_accept": auto_accept,
            "reason": reason,
            "expires_at": _aware(expires_at).isoformat() if expires_at else None,
        }
    )
    output.emit(api.post(PATH, body), as_json, render_new)


@app.command("list")
@remote
def list_tokens(api: ApiClient, as_json: Json = False) -> None:
    """List provisioning tokens (never their secrets)."""
    output.listing(api.get(PATH), as_json, COLUMNS, noun="provisioning tokens")


@app.command("revoke")
@remote
def revoke(
    api: ApiClient,
    token_id: Annotated[str, typer.Argument(metavar="TOKEN_ID", show_default=False)],
    reason: Reason = None,
    as_json: Json = False,
) -> None:
    """Revoke a provisioning token: devices can no longer register with it."""
    token = api.request("DELETE", join(PATH, token_id), headers=reason_header(reason))
    output.emit(token, as_json, lambda t: output.record(t, f"Token {t['name']}"))


@security.command("events")
@remote
def events(
    api: ApiClient,
    device: Annotated[str | None, typer.Option(help="Only this device's events.")] = None,
    paging: Paging = Paging(),
    as_json: Json = False,
) -> None:
    """List security events, newest first."""
    page = api.page(
        "/api/v1/security-events",
        {"device_id": device, **paging.params()},
        all_pages=paging.all_pages,
    )
    output.listing(page, as_json, EVENT_COLUMNS, noun="security events")


def _aware(when: datetime) -> datetime:
    """A time typed without a zone is UTC (the server refuses naive times)."""
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)
