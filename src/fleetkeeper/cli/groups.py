"""`fleetkeeper groups ...`: static groups (members added by hand) and dynamic ones (a query)."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import RenderableType

from fleetkeeper.cli import devices, output
from fleetkeeper.cli.client import ApiClient, compact, join
from fleetkeeper.cli.options import (
    WINDOW_HELP,
    Json,
    Paging,
    Reason,
    Tenant,
    require_change,
    window_option,
)
from fleetkeeper.cli.remote import remote

app = typer.Typer(help="Static and dynamic device groups.", no_args_is_help=True)

PATH = "/api/v1/groups"
COLUMNS = (
    output.Column("Name", "name", no_wrap=True),
    output.Column("Tenant", "tenant"),
    output.Column("Kind", "kind"),
    output.Column("Query", "query"),
    output.Column("Description", "description"),
)

GroupName = Annotated[
    str, typer.Argument(metavar="NAME", help="The group's name.", show_default=False)
]
GroupTenant = Annotated[
    str | None,
    typer.Option("--tenant", help="The group's tenant, when names repeat across tenants."),
]
DeviceIds = Annotated[
    list[str], typer.Argument(metavar="DEVICE_ID", help="Device ids.", show_default=False)
]
Description = Annotated[str | None, typer.Option(help="Free text.")]
GroupQuery = Annotated[
    str | None,
    typer.Option(
        "--query",
        "-q",
        help="Fleet query: the group is dynamic, its members every device that matches.",
    ),
]


Windows = Annotated[
    list[str] | None,
    typer.Option("--window", help=WINDOW_HELP + " Deployments start members only inside one."),
]


def render(group: dict[str, Any]) -> RenderableType:
    return output.record(group, f"Group {group.get('name', '')}")


@app.command("list")
@remote
def list_groups(api: ApiClient, paging: Paging = Paging(), as_json: Json = False) -> None:
    """List groups."""
    page = api.page(PATH, paging.params(), all_pages=paging.all_pages)
    output.listing(page, as_json, COLUMNS, noun="groups")


@app.command("show")
@remote
def show(
    api: ApiClient, name: GroupName, tenant: GroupTenant = None, as_json: Json = False
) -> None:
    """Show a group with its member count."""
    output.emit(api.get(join(PATH, name), {"tenant": tenant}), as_json, render)


@app.command("create")
@remote
def create(
    api: ApiClient,
    name: GroupName,
    query: GroupQuery = None,
    description: Description = None,
    window: Windows = None,
    tenant: Tenant = None,
    reason: Reason = None,
    as_json: Json = False,
) -> None:
    """Create a group: static without --query, dynamic with it."""
    body = {
        "name": name,
        "query": query,
        "description": description,
        "maintenance_windows": [window_option(w) for w in window] if window else None,
        "tenant": tenant,
        "reason": reason,
    }
    output.emit(api.post(PATH, compact(body)), as_json, render)


@app.command("update")
@remote
def update(
    api: ApiClient,
    name: GroupName,
    query: GroupQuery = None,
    description: Description = None,
    window: Windows = None,
    clear_windows: Annotated[
        bool, typer.Option("--clear-windows", help="Remove the group's maintenance windows.")
    ] = False,
    tenant: GroupTenant = None,
    reason: Reason = None,
    as_json: Json = False,
) -> None:
    """Change a dynamic group's query, a group's description or its maintenance windows."""
    body = compact({"query": query, "description": description, "reason": reason})
    if window:
        body["maintenance_windows"] = [window_option(w) for w in window]
    elif clear_windows:
        body["maintenance_windows"] = []
    result = api.patch(join(PATH, name), require_change(body), {"tenant": tenant})
    output.emit(result, as_json, render)


@app.command("delete")
@remote
def delete(
    api: ApiClient, name: GroupName, tenant: GroupTenant = None, reason: Reason = None
) -> None:
    """Delete a group (its devices stay)."""
    api.delete(join(PATH, name), {"tenant": tenant, "reason": reason})
    output.note(f"Deleted group {name}.")


def _change_members(
    api: ApiClient,
    name: str,
    ids: list[str],
    tenant: str | None,
    reason: str | None,
    as_json: bool,
    *,
    add: bool,
) -> None:
    path = join(PATH, name, "members") + ("" if add else "/remove")
    body = compact({"devices": ids, "reason": reason})
    verb = "Added" if add else "Removed"
    output.emit(
        api.post(path, body, {"tenant": tenant}),
        as_json,
        lambda r: (
            f"{verb} {r['changed']} device(s); group {name} has {r['member_count']} member(s)."
        ),
    )


@app.command("add")
@remote
def add(
    api: ApiClient,
    name: GroupName,
    device_ids: DeviceIds,
    tenant: GroupTenant = None,
    reason: Reason = None,
    as_json: Json = False,
) -> None:
    """Add devices to a static group."""
    _change_members(api, name, device_ids, tenant, reason, as_json, add=True)


@app.command("remove")
@remote
def remove(
    api: ApiClient,
    name: GroupName,
    device_ids: DeviceIds,
    tenant: GroupTenant = None,
    reason: Reason = None,
    as_json: Json = False,
) -> None:
    """Remove devices from a static group."""
    _change_members(api, name, device_ids, tenant, reason, as_json, add=False)


@app.command("devices")
@remote
def group_devices(
    api: ApiClient,
    name: GroupName,
    tenant: GroupTenant = None,
    paging: Paging = Paging(),
    as_json: Json = False,
) -> None:
    """List a group's devices."""
    page = api.page(
        join(PATH, name, "devices"),
        {"tenant": tenant, **paging.params()},
        all_pages=paging.all_pages,
    )
    output.listing(page, as_json, devices.COLUMNS, noun="devices")
