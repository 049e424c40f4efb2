"""`fleetkeeper users ...` and `fleetkeeper tenants ...`: who may do what, for which tenant."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import RenderableType

from fleetkeeper.cli import output
from fleetkeeper.cli.client import ApiClient, compact, join
from fleetkeeper.cli.options import Json, Reason, require_change
from fleetkeeper.cli.remote import remote

users = typer.Typer(help="Users (people who log in to the dashboard).", no_args_is_help=True)
tenants = typer.Typer(help="Tenants: separate fleets on one server.", no_args_is_help=True)

USERS = "/api/v1/users"
TENANTS = "/api/v1/tenants"
USER_COLUMNS = (
    output.Column("Username", "username", no_wrap=True),
    output.Column("Role", "role"),
    output.Column("Tenant", "tenant"),
    output.Column("Disabled", "disabled"),
    output.Column("Created", "created_at"),
)
TENANT_COLUMNS = (
    output.Column("ID", "id", no_wrap=True),
    output.Column("Name", "name"),
    output.Column("Created", "created_at"),
)

Username = Annotated[
    str, typer.Argument(metavar="USERNAME", help="The user's login name.", show_default=False)
]
ROLE_HELP = "admin, operator, viewer or auditor."
PASSWORD_HELP = "Dashboard password (8 characters or more)."


def render_user(user: dict[str, Any]) -> RenderableType:
    return output.record(user, f"User {user.get('username', '')}")


@users.command("list")
@remote
def list_users(api: ApiClient, as_json: Json = False) -> None:
    """List users."""
    output.listing(api.get(USERS), as_json, USER_COLUMNS, noun="users")


@users.command("create")
@remote
def create_user(
    api: ApiClient,
    username: Username,
    role: Annotated[str, typer.Option(help=ROLE_HELP, show_default=False)],
    password: Annotated[
        str | None,
        typer.Option(
            envvar="FLEETKEEPER_USER_PASSWORD",
            show_default=False,
            help=f"{PASSWORD_HELP} Without one the user can only use API tokens.",
        ),
    ] = None,
    tenant: Annotated[
        str | None, typer.Option(help="The user's tenant (default: none, a platform user).")
    ] = None,
    reason: Reason = None,
    as_json: Json = False,
) -> None:
    """Create a user."""
    body = compact(
        {
            "username": username,
            "role": role,
            "password": password,
            "tenant": tenant,
            "reason": reason,
        }
    )
    output.emit(api.post(USERS, body), as_json, render_user)


@users.command("update")
@remote
def update_user(
    api: ApiClient,
    username: Username,
    role: Annotated[str | None, typer.Option(help=ROLE_HELP)] = None,
    password: Annotated[str | None, typer.Option(help=PASSWORD_HELP, show_default=False)] = None,
    disabled: Annotated[
        bool | None,
        typer.Option(
            "--disable/--enable",
            show_default=False,
            help="Lock the user out (their tokens stop working), or let them back in.",
        ),
    ] = None,
    reason: Reason = None,
    as_json: Json = False,
) -> None:
    """Change a user's role, password or access."""
    body = compact({"role": role, "password": password, "disabled": disabled, "reason": reason})
    output.emit(api.patch(join(USERS, username), require_change(body)), as_json, render_user)


@tenants.command("list")
@remote
def list_tenants(api: ApiClient, as_json: Json = False) -> None:
    """List tenants."""
    output.listing(api.get(TENANTS), as_json, TENANT_COLUMNS, noun="tenants")


@tenants.command("create")
@remote
def create_tenant(
    api: ApiClient,
    tenant_id: Annotated[
        str, typer.Argument(metavar="ID", help="Short id, e.g. acme.", show_default=False)
    ],
    name: Annotated[str, typer.Option(help="Display name.", show_default=False)],
    reason: Reason = None,
    as_json: Json = False,
) -> None:
    """Create a tenant."""
    body = compact({"id": tenant_id, "name": name, "reason": reason})
    output.emit(
        api.post(TENANTS, body), as_json, lambda t: output.record(t, f"Tenant {t.get('id', '')}")
    )
