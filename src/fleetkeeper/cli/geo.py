"""`fleetkeeper map`, `fleetkeeper positions DEVICE_ID` and `fleetkeeper geofences ...`:
where devices are, where they have been, and the areas they enter and leave."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Group, RenderableType
from rich.text import Text

from fleetkeeper.cli import output
from fleetkeeper.cli.client import ApiClient, compact, join
from fleetkeeper.cli.options import Json, Paging, Query, Reason, Tenant
from fleetkeeper.cli.remote import remote

geofences = typer.Typer(
    help="Geofences: a tenant's areas (circles, polygons); devices entering and leaving one "
    "raise events.",
    no_args_is_help=True,
)

PATH = "/api/v1/geofences"
MAP_COLUMNS = (
    output.Column("Serial", "serial", no_wrap=True),
    output.Column("Name", "name"),
    output.Column("Lat", "lat"),
    output.Column("Lon", "lon"),
    output.Column("± m", "accuracy"),
    output.Column("Position at", "position_at"),
    output.Column("Site", "site"),
    output.Column("Online", "online"),
)
POSITION_COLUMNS = (
    output.Column("Time", "ts", no_wrap=True),
    output.Column("Lat", "lat"),
    output.Column("Lon", "lon"),
    output.Column("± m", "accuracy"),
    output.Column("Alt", "alt"),
)
FENCE_COLUMNS = (
    output.Column("ID", "id", no_wrap=True),
    output.Column("Name", "name"),
    output.Column("Site", "site"),
    output.Column("Tenant", "tenant"),
    output.Column("Shape", "shape"),
)
FENCE_FIELDS = ("id", "name", "site", "tenant", "shape", "created_by", "created_at", "updated_at")

DeviceId = Annotated[
    str, typer.Argument(metavar="DEVICE_ID", help="The device's id.", show_default=False)
]
GeofenceId = Annotated[
    str, typer.Argument(metavar="GEOFENCE_ID", help="The geofence's id.", show_default=False)
]


def register(app: typer.Typer) -> None:
    """Add `map`, `positions` and `geofences` to the root command."""
    app.command("map")(fleet_map)
    app.command("positions")(positions)
    app.add_typer(geofences, name="geofences")


def _rows(features: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """GeoJSON points as table rows: their properties plus lat and lon."""
    return [
        {
            **f["properties"],
            "lon": f["geometry"]["coordinates"][0],
            "lat": f["geometry"]["coordinates"][1],
        }
        for f in features
    ]


# Where devices are


@remote
def fleet_map(
    api: ApiClient,
    query: Query = None,
    bbox: Annotated[
        str | None,
        typer.Option(help="Only inside west,south,east,north (degrees), e.g. 13.3,52.4,13.5,52.6."),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=20000, help="Most devices.")] = 5000,
    as_json: Json = False,
) -> None:
    """The last known position of each device: a table, or GeoJSON with --json."""
    data = api.get("/api/v1/fleet/map", {"q": query, "bbox": bbox, "limit": limit})
    output.emit(data, as_json, render_map)


def render_map(data: dict[str, Any]) -> RenderableType:
    rows = _rows(data["features"])
    if not rows:
        return "No device with a known position matches."
    caption = f"{len(rows)} devices"
    if data.get("truncated"):
        caption = f"{len(rows)} of {data['total']} devices: narrow with --query or --bbox"
    return output.table(rows, MAP_COLUMNS, caption=caption)


@remote
def positions(
    api: ApiClient,
    device_id: DeviceId,
    since: Annotated[
        str, typer.Option("--from", help="Start: ISO 8601, Unix seconds, or relative (-1h, -7d).")
    ] = "-7d",
    until: Annotated[str | None, typer.Option("--to", help="End (default: now).")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10000, help="The newest this many.")] = 1000,
    as_json: Json = False,
) -> None:
    """Where a device has been, oldest first: a table, or GeoJSON with --json."""
    params = compact({"from": since, "to": until, "limit": limit})
    data = api.get(join("/api/v1/devices", device_id, "positions"), params)
    output.emit(data, as_json, render_positions)


def render_positions(data: dict[str, Any]) -> RenderableType:
    rows = _rows(data["features"])
    if not rows:
        return "No positions in that range."
    table = output.table(rows, POSITION_COLUMNS, caption=f"{len(rows)} positions")
    if data.get("truncated"):
        return Group(table, Text("Older positions left out: pass --to before the first shown."))
    return table


# Geofences


def outline(shape: dict[str, Any]) -> str:
    """A shape in a few words, e.g. `circle 250 m around 52.52, 13.405`."""
    if shape.get("type") == "circle":
        lon, lat = shape["center"][:2]
        return f"circle {shape['radius_m']:g} m around {lat:g}, {lon:g}"
    return f"polygon of {len(shape.get('coordinates', []))} vertices"


def _shown(fence: dict[str, Any]) -> dict[str, Any]:
    """A fence for people: its shape in words."""
    return {**fence, "shape": outline(fence["shape"])}


def render_fence(fence: dict[str, Any]) -> RenderableType:
    return output.record(_shown(fence), f"Geofence {fence.get('name', '')}", FENCE_FIELDS)


def _numbers(text: str, count: int, option: str, form: str) -> list[float]:
    parts = [p.strip() for p in text.split(",")]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != count:
        raise typer.BadParameter(form, param_hint=option)
    return values


def shape_option(circle: str | None, polygon: str | None, shape: str | None) -> dict[str, Any]:
    """The shape from exactly one of --circle, --polygon and --shape (checked by the server)."""
    given = [o for o, v in (("--circle", circle), ("--polygon", polygon), ("--shape", shape)) if v]
    if len(given) != 1:
        raise typer.BadParameter(
            "give exactly one of --circle, --polygon and --shape", param_hint="shape"
        )
    if circle:
        lon, lat, radius = _numbers(circle, 3, "--circle", "LON,LAT,RADIUS_M, e.g. 13.4,52.5,250")
        return {"type": "circle", "center": [lon, lat], "radius_m": radius}
    if polygon:
        pairs = polygon.replace(";", " ").split()
        form = "'LON,LAT LON,LAT LON,LAT ...', at least 3 vertices"
        return {
            "type": "polygon",
            "coordinates": [_numbers(p, 2, "--polygon", form) for p in pairs],
        }
    assert shape is not None
    text = Path(shape[1:]).read_text(encoding="utf-8") if shape.startswith("@") else shape
    try:
        parsed = json.loads(text)
    except ValueError as exc:
        raise typer.BadParameter(f"not JSON: {exc}", param_hint="--shape") from None
    if not isinstance(parsed, dict):
        raise typer.BadParameter("a JSON object with a type", param_hint="--shape")
    return parsed


@geofences.command("create")
@remote
def create(
    api: ApiClient,
    name: Annotated[str, typer.Argument(metavar="NAME", help="Unique in the tenant.")],
    circle: Annotated[
        str | None, typer.Option(help="LON,LAT,RADIUS_M, e.g. 13.405,52.52,250.")
    ] = None,
    polygon: Annotated[
        str | None,
        typer.Option(help="Vertices 'LON,LAT LON,LAT LON,LAT ...' (3 to 500)."),
    ] = None,
    shape: Annotated[
        str | None,
        typer.Option(help="The shape as JSON, or @FILE (see docs/geo.md)."),
    ] = None,
    site: Annotated[str | None, typer.Option(help="The site the fence belongs to.")] = None,
    tenant: Tenant = None,
    reason: Reason = None,
    as_json: Json = False,
) -> None:
    """Create a geofence from a circle or a polygon (longitude first, as in GeoJSON)."""
    body = {
        "name": name,
        "site": site,
        "shape": shape_option(circle, polygon, shape),
        "tenant": tenant,
        "reason": reason,
    }
    output.emit(api.post(PATH, compact(body)), as_json, render_fence)


@geofences.command("list")
@remote
def list_geofences(
    api: ApiClient,
    site: Annotated[str | None, typer.Option(help="Only this site's fences.")] = None,
    paging: Paging = Paging(),
    as_json: Json = False,
) -> None:
    """List geofences."""
    page = api.page(PATH, {"site": site, **paging.params()}, all_pages=paging.all_pages)
    if not as_json:
        page = {**page, "items": [_shown(f) for f in page["items"]]}
    output.listing(page, as_json, FENCE_COLUMNS, noun="geofences")


@geofences.command("show")
@remote
def show(api: ApiClient, geofence_id: GeofenceId, as_json: Json = False) -> None:
    """Show a geofence."""
    output.emit(api.get(join(PATH, geofence_id)), as_json, render_fence)


@geofences.command("delete")
@remote
def delete(api: ApiClient, geofence_id: GeofenceId, reason: Reason = None) -> None:
    """Delete a geofence (the events it raised stay)."""
    api.delete(join(PATH, geofence_id), {"reason": reason})
    output.note(f"Deleted geofence {geofence_id}.")
