"""`fleetkeeper tokens ...`: API tokens (the secret is shown once, at creation)."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Group, RenderableType
from rich.text import Text

from fleetkeeper.cli import output
from fleetkeeper.cli.client import ApiClient, compact, join
from fleetkeeper.cli.options import Json, Reason, reason_header
from fleetkeeper.cli.remote import remote

app = typer.Typer(help="API tokens: create, list, revoke.", no_args_is_help=True)

PATH = "/api/v1/tokens"
COLUMNS = (
    output.Column("ID", "id", no_wrap=True),
    output.Column("Name", "name"),
    output.Column("Prefix", "prefix"),
    output.Column("Role", "role"),
    output.Column("Expires", "expires_at"),
    output.Column("Revoked", "revoked_at"),
    output.Column("Last used", "last_used_at"),
)
DETAILS = (
    "id",
    "name",
    "prefix",
    "role",
    "user_id",
    "source",
    "created_at",
    "expires_at",
    "revoked_at",
    "last_used_at",
)


def render(token: dict[str, Any]) -> RenderableType:
    return output.record(token, f"Token {token.get('name', '')}", DETAILS)


def render_new(token: dict[str, Any]) -> RenderableType:
    return Group(
        render(token),
        Text(
            "\nThe token's secret, shown this once (only its hash is kept): store it now.\n",
            style="bold yellow",
        ),
        Text(f"    {token['token']}\n", style="bold"),
    )


@app.command("list")
@remote
def list_tokens(api: ApiClient, as_json: Json = False) -> None:
    """List API tokens (never their secrets)."""
    output.listing(api.get(PATH), as_json, COLUMNS, noun="tokens")


@app.command("create")
@remote
def create(
    api: ApiClient,
    name: Annotated[
        str, typer.Argument(metavar="NAME", help="What the token is for.", show_default=False)
    ],
    role: Annotated[
        str | None,
        typer.Option(
            help="admin, operator, viewer or auditor; at most the user's own role "
            "(default: the user's role)."
        ),
    ] = None,
    expires_in_days: Annotated[
        float | None,
        typer.Option(help="Lifetime in days (default: the server's token_ttl_days)."),
    ] = None,
    user: Annotated[
        str | None, typer.Option(help="Username the token acts for (default: yourself).")
    ] = None,
    reason: Reason = None,
    as_json: Json = False,
) -> None:
    """Create an API token and print its secret (once)."""
    body = compact(
        {
            "name": name,
            "role": role,
            "expires_in_days": expires_in_days,
            "user": user,
            "reason": reason,
        }
    )
    output.emit(api.post(PATH, body), as_json, render_new)


@app.command("revoke")
@remote
def revoke(
    api: ApiClient,
    token_id: Annotated[
        str,
        typer.Argument(
            metavar="TOKEN_ID", show_default=False, help="The token's id (see `tokens list`)."
        ),
    ],
    reason: Reason = None,
    as_json: Json = False,
) -> None:
    """Revoke an API token: it stops working at once."""
    token = api.request("DELETE", join(PATH, token_id), headers=reason_header(reason))
    output.emit(token, as_json, render)
