"""Geo location and context: the fleet map, position history, geofences and their events,
and a site's environment. GeoJSON where the answer is a map layer (docs/geo.md)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from fleetkeeper.api.deps import (
    PrincipalDep,
    ReasonHeader,
    ReasonQuery,
    ScopeDep,
    StateDep,
    make_change,
)
from fleetkeeper.api.pagination import IdCursor
from fleetkeeper.api.routes.devices import Cursor, FleetQuery
from fleetkeeper.errors import Invalid
from fleetkeeper.schemas.common import Input, Name, Page, Reason
from fleetkeeper.schemas.devices import Location
from fleetkeeper.services import telemetry
from fleetkeeper.services.geo import environment, events, fences, geometry, positions
from fleetkeeper.store.models import Geofence, MonitorEvent

router = APIRouter(tags=["geo"])

MAP_LIMIT = 5000
MAP_LIMIT_MAX = 20000
POSITIONS_LIMIT = 1000
POSITIONS_LIMIT_MAX = 10000

SHAPE_EXAMPLES = [
    {"type": "circle", "center": [13.4050, 52.5200], "radius_m": 250},
    {
        "type": "polygon",
        "coordinates": [[13.40, 52.52], [13.41, 52.52], [13.41, 52.53], [13.40, 52.53]],
    },
]
ShapeField = Annotated[
    dict[str, Any],
    Field(
        description='`{"type": "circle", "center": [lon, lat], "radius_m": r}` or '
        '`{"type": "polygon", "coordinates": [[lon, lat], ...]}` (3 to 500 vertices, closing '
        "vertex optional). GeoJSON order: longitude first.",
        examples=SHAPE_EXAMPLES,
    ),
]
Site = Annotated[str, Field(min_length=1, max_length=100)]
Time = Annotated[
    str | None, Query(max_length=40, description="ISO 8601, Unix seconds, or relative (-1h, -7d).")
]


class GeoJSONResponse(JSONResponse):
    media_type = "application/geo+json"


class PointGeometry(BaseModel):
    type: Literal["Point"] = "Point"
    coordinates: list[float] = Field(description="[lon, lat]: GeoJSON order.")


# The fleet map


class DeviceProperties(BaseModel):
    id: str
    serial: str
    name: str
    model: str
    tenant: str
    state: str
    online: bool
    last_seen: datetime | None
    accuracy: float | None = Field(description="Radius in metres, as the device reported it.")
    alt: float | None
    position_at: datetime | None = Field(
        description="When the device reported this position (stored at most hourly while it "
        "stands still); null when it was set by hand."
    )
    site: Any = Field(description="`attributes.site`, when the device has one.")


class DeviceFeature(BaseModel):
    type: Literal["Feature"] = "Feature"
    id: str
    geometry: PointGeometry
    properties: DeviceProperties


class FleetMapOut(BaseModel):
    type: Literal["FeatureCollection"] = "FeatureCollection"
    features: list[DeviceFeature]
    truncated: bool = Field(description="True when more devices matched than `limit`.")
    total: int = Field(description="How many devices with a position matched.")


def _device_feature(entry: positions.MapEntry) -> DeviceFeature:
    d, location = entry.device, entry.device.location or {}
    return DeviceFeature(
        id=d.id,
        geometry=PointGeometry(coordinates=[entry.point.lon, entry.point.lat]),
        properties=DeviceProperties(
            id=d.id,
            serial=d.serial,
            name=d.name,
            model=entry.model,
            tenant=d.tenant_id,
            state=d.state,
            online=entry.online,
            last_seen=d.last_seen,
            accuracy=location.get("accuracy"),
            alt=location.get("alt"),
            position_at=entry.position_at,
            site=d.attributes.get("site"),
        ),
    )


@router.get(
    "/api/v1/fleet/map",
    response_model=FleetMapOut,
    response_class=GeoJSONResponse,
    summary="The fleet on a map: GeoJSON points of the devices with a known position",
)
async def fleet_map(
    state: StateDep,
    scope: ScopeDep,
    q: FleetQuery = None,
    bbox: Annotated[
        str | None,
        Query(
            max_length=200,
            description="west,south,east,north in degrees; west > east spans the antimeridian.",
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAP_LIMIT_MAX, description="Most features.")] = MAP_LIMIT,
) -> FleetMapOut:
    box = geometry.parse_bbox(bbox) if bbox is not None else None
    async with state.db.read() as session:
        found = await positions.fleet_map(session, scope, q, bbox=box, limit=limit)
    return FleetMapOut(
        features=[_device_feature(e) for e in found.entries],
        truncated=found.truncated,
        total=found.total,
    )


# Position history


class PositionProperties(BaseModel):
    ts: datetime
    accuracy: float | None
    alt: float | None


class PositionFeature(BaseModel):
    type: Literal["Feature"] = "Feature"
    geometry: PointGeometry
    properties: PositionProperties


class PositionsOut(BaseModel):
    type: Literal["FeatureCollection"] = "FeatureCollection"
    device: str
    features: list[PositionFeature] = Field(description="Oldest first.")
    truncated: bool = Field(
        description="True when older positions in the range were left out: ask again with "
        "`to` before the first one."
    )


@router.get(
    "/api/v1/devices/{device_id}/positions",
    response_model=PositionsOut,
    response_class=GeoJSONResponse,
    summary="A device's position history: GeoJSON points, oldest first",
)
async def device_positions(
    state: StateDep,
    principal: PrincipalDep,
    device_id: str,
    from_: Annotated[
        str, Query(alias="from", max_length=40, description="ISO 8601, Unix seconds or -7d.")
    ] = "-7d",
    to: Time = None,
    limit: Annotated[
        int, Query(ge=1, le=POSITIONS_LIMIT_MAX, description="The newest this many.")
    ] = POSITIONS_LIMIT,
) -> PositionsOut:
    now = state.clock.now()
    start = telemetry.parse_time(from_, now, "from")
    end = telemetry.parse_time(to, now, "to") if to else now
    if end < start:
        raise Invalid("`to` is before `from`", field="to")
    async with state.db.read() as session:
        rows, truncated = await positions.history(session, principal, device_id, start, end, limit)
    return PositionsOut(
        device=device_id,
        features=[
            PositionFeature(
                geometry=PointGeometry(coordinates=[r.lon, r.lat]),
                properties=PositionProperties(ts=r.ts, accuracy=r.accuracy, alt=r.alt),
            )
            for r in rows
        ],
        truncated=truncated,
    )


# Geofences


class GeofenceIn(Input):
    name: Name
    site: Site | None = None
    shape: ShapeField
    tenant: Name | None = Field(default=None, description="Platform users: the fence's tenant.")
    reason: Reason = None


class GeofencePatch(Input):
    name: Name | None = None
    site: Site | None = Field(default=None, description="null clears it.")
    shape: ShapeField | None = None
    reason: Reason = None


class GeofenceOut(BaseModel):
    id: str
    name: str
    site: str | None
    tenant: str
    shape: dict[str, Any] = Field(description="The definition, as stored.")
    geometry: dict[str, Any] = Field(
        description="A GeoJSON Polygon to draw (a circle as a 64-gon on its boundary)."
    )
    created_by: str
    created_at: datetime
    updated_at: datetime


def _fence_out(fence: Geofence) -> GeofenceOut:
    return GeofenceOut(
        id=fence.id,
        name=fence.name,
        site=fence.site,
        tenant=fence.tenant_id,
        shape=fence.shape,
        geometry=geometry.geojson_geometry(geometry.stored_shape(fence.shape)),
        created_by=fence.created_by,
        created_at=fence.created_at,
        updated_at=fence.updated_at,
    )


@router.post(
    "/api/v1/geofences", status_code=201, response_model=GeofenceOut, summary="Create a geofence"
)
async def create_geofence(
    state: StateDep, scope: ScopeDep, body: GeofenceIn, x_change_reason: ReasonHeader = None
) -> GeofenceOut:
    shape = geometry.parse_shape(body.shape)
    change = make_change(state, scope.principal, body.reason, x_change_reason)
    async with state.db.write() as session:
        fence = await fences.create_geofence(
            session, change, name=body.name, site=body.site, shape=shape, tenant=body.tenant
        )
        return _fence_out(fence)


@router.get("/api/v1/geofences", response_model=Page[GeofenceOut], summary="List geofences")
async def list_geofences(
    state: StateDep,
    principal: PrincipalDep,
    site: Annotated[str | None, Query(max_length=100)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Cursor = None,
) -> Page[GeofenceOut]:
    async with state.db.read() as session:
        rows, next_cursor = await fences.list_geofences(
            session, principal, site=site, limit=limit, cursor=cursor
        )
    return Page(items=[_fence_out(f) for f in rows], next_cursor=next_cursor)


@router.get("/api/v1/geofences/{geofence_id}", response_model=GeofenceOut, summary="A geofence")
async def get_geofence(state: StateDep, principal: PrincipalDep, geofence_id: str) -> GeofenceOut:
    async with state.db.read() as session:
        return _fence_out(await fences.get_geofence(session, principal, geofence_id))


@router.patch(
    "/api/v1/geofences/{geofence_id}",
    response_model=GeofenceOut,
    summary="Rename a geofence, move it to another site, or redraw it",
)
async def update_geofence(
    state: StateDep,
    principal: PrincipalDep,
    geofence_id: str,
    body: GeofencePatch,
    x_change_reason: ReasonHeader = None,
) -> GeofenceOut:
    fields = body.model_fields_set
    if "name" in fields and body.name is None:
        raise Invalid("a geofence keeps a name", field="name")
    if "shape" in fields and body.shape is None:
        raise Invalid("a geofence keeps a shape", field="shape")
    changes = fences.GeofenceChanges(
        name=body.name,
        site=body.site,
        site_set="site" in fields,
        shape=geometry.parse_shape(body.shape) if body.shape is not None else None,
    )
    change = make_change(state, principal, body.reason, x_change_reason, reason_required=True)
    async with state.db.write() as session:
        fence = await fences.get_geofence(session, principal, geofence_id)
        return _fence_out(await fences.update_geofence(session, change, fence, changes))


@router.delete(
    "/api/v1/geofences/{geofence_id}",
    status_code=204,
    summary="Delete a geofence (its events stay)",
)
async def delete_geofence(
    state: StateDep,
    principal: PrincipalDep,
    geofence_id: str,
    reason: ReasonQuery = None,
    x_change_reason: ReasonHeader = None,
) -> Response:
    change = make_change(state, principal, reason, x_change_reason, reason_required=True)
    async with state.db.write() as session:
        fence = await fences.get_geofence(session, principal, geofence_id)
        await fences.delete_geofence(session, change, fence)
    return Response(status_code=204)


class InsideOut(BaseModel):
    id: str
    serial: str
    name: str
    since: datetime = Field(description="Inside since (or since the fence was drawn).")
    location: Location | None


def _inside_out(member: fences.Member) -> InsideOut:
    d = member.device
    return InsideOut(
        id=d.id,
        serial=d.serial,
        name=d.name,
        since=member.since,
        location=Location(**d.location) if d.location else None,
    )


@router.get(
    "/api/v1/geofences/{geofence_id}/devices",
    response_model=Page[InsideOut],
    summary="The devices inside a geofence",
)
async def geofence_devices(
    state: StateDep,
    principal: PrincipalDep,
    geofence_id: str,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: Cursor = None,
) -> Page[InsideOut]:
    async with state.db.read() as session:
        fence = await fences.get_geofence(session, principal, geofence_id)
        members, next_cursor = await fences.devices_inside(
            session, fence, limit=limit, cursor=cursor
        )
    return Page(items=[_inside_out(m) for m in members], next_cursor=next_cursor)


# Monitor events


class EventOut(BaseModel):
    id: int
    device: str
    serial: str
    at: datetime
    kind: str = Field(description="e.g. geofence_enter, geofence_leave")
    detail: dict[str, Any]


def _event_out(event: MonitorEvent, serial: str) -> EventOut:
    return EventOut(
        id=event.id,
        device=event.device_id,
        serial=serial,
        at=event.at,
        kind=event.kind,
        detail=event.detail,
    )


@router.get(
    "/api/v1/monitor/events",
    response_model=Page[EventOut],
    summary="What monitoring saw happen to devices (geofences entered and left, ...), newest first",
)
async def monitor_events(
    state: StateDep,
    principal: PrincipalDep,
    device: Annotated[str | None, Query(max_length=36, description="A device id.")] = None,
    kind: Annotated[list[str] | None, Query(description="Repeatable.")] = None,
    geofence: Annotated[str | None, Query(max_length=36, description="A geofence id.")] = None,
    since: Time = None,
    until: Time = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: IdCursor = None,
) -> Page[EventOut]:
    now = state.clock.now()
    flt = events.EventFilter(
        device=device,
        kinds=events.parse_kinds(kind),
        geofence=geofence,
        since=telemetry.parse_time(since, now, "since") if since else None,
        until=telemetry.parse_time(until, now, "until") if until else None,
    )
    async with state.db.read() as session:
        rows = await events.list_events(session, principal, flt, limit=limit + 1, before_id=cursor)
    page = rows[:limit]
    next_cursor = str(page[-1][0].id) if len(rows) > limit and page else None
    return Page(items=[_event_out(e, s) for e, s in page], next_cursor=next_cursor)


# A site's environment


class ReadingOut(BaseModel):
    value: float
    ts: datetime
    stale: bool = Field(description="Older than max_age: shown, but not counted.")
    deviation: float | None = Field(description="value minus the site median (fresh only).")


class MetricStatsOut(BaseModel):
    count: int
    median: float
    min: float
    max: float


class SiteDeviceOut(BaseModel):
    id: str
    serial: str
    name: str
    online: bool
    readings: dict[str, ReadingOut]


class SiteEnvironmentOut(BaseModel):
    site: str
    metrics: dict[str, MetricStatsOut | None] = Field(
        description="Per metric the site's figures from fresh readings; null without any."
    )
    devices: list[SiteDeviceOut]
    truncated: bool


def _site_device(entry: environment.SiteDevice) -> SiteDeviceOut:
    d = entry.device
    return SiteDeviceOut(
        id=d.id,
        serial=d.serial,
        name=d.name,
        online=entry.online,
        readings={m: ReadingOut(**vars(r)) for m, r in entry.readings.items()},
    )


@router.get(
    "/api/v1/sites/{site:path}/environment",
    response_model=SiteEnvironmentOut,
    summary="A site's temperature and humidity: each device's latest against the site median",
)
async def site_environment(
    state: StateDep,
    scope: ScopeDep,
    site: Annotated[str, Path(min_length=1, max_length=100, description="attributes.site")],
    metric: Annotated[
        list[str] | None, Query(description="Repeatable; default temperature and humidity.")
    ] = None,
    max_age: Annotated[
        str, Query(max_length=20, description="Readings older than this are stale, e.g. 6h.")
    ] = "1d",
    tenant: Annotated[
        str | None, Query(max_length=64, description="Platform users: one tenant's site.")
    ] = None,
) -> SiteEnvironmentOut:
    age = environment.parse_max_age(max_age)
    metrics = environment.parse_metrics(metric)
    async with state.db.read() as session:
        found = await environment.site_environment(
            session, scope, site, metrics=metrics, max_age=age, tenant=tenant
        )
    return SiteEnvironmentOut(
        site=found.site,
        metrics={
            m: MetricStatsOut(**vars(s)) if s is not None else None
            for m, s in found.metrics.items()
        },
        devices=[_site_device(d) for d in found.devices],
        truncated=found.truncated,
    )
