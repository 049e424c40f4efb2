"""Geofences: a tenant's areas (circles and polygons), which devices are inside, and when
they enter and leave.

Presence changes only when a device reports a position (`update_presence`), and then writes a
`geofence_enter` or `geofence_leave` monitor event. Creating a fence or redrawing it takes its
members as they are now, from each device's last known location, without events: nobody moved.
A device inside leaves only once it is `LEAVE_MARGIN_M` beyond the boundary, so a parked device
whose fixes jitter across the boundary does not flap; a fix less accurate than
`MAX_FENCE_ACCURACY_M` is kept in the history but decides nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, and_, delete, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from fleetkeeper.errors import Conflict, NotFound
from fleetkeeper.ids import uuid7
from fleetkeeper.services import audit
from fleetkeeper.services.context import Change, Principal
from fleetkeeper.services.devices import resolve_tenant
from fleetkeeper.services.geo.geometry import (
    BBox,
    Point,
    Shape,
    boundary_distance_m,
    bounds,
    contains,
    shape_json,
    stored_shape,
)
from fleetkeeper.services.selection import decode_cursor, encode_cursor
from fleetkeeper.store.models import Device, Geofence, GeofencePresence, MonitorEvent

LEAVE_MARGIN_M = 15.0
MAX_FENCE_ACCURACY_M = 250.0
ENTER = "geofence_enter"
LEAVE = "geofence_leave"

T = TypeVar("T")

READ = "devices:read"
WRITE = "geofences:write"


def still_inside(shape: Shape, p: Point, *, was_inside: bool) -> bool:
    """Whether a device at `p` counts as inside: entering needs the boundary crossed, leaving
    needs it left behind by more than the margin."""
    if was_inside:
        return boundary_distance_m(shape, p) <= LEAVE_MARGIN_M
    return contains(shape, p)


def lat_lon() -> tuple[ColumnElement[float], ColumnElement[float]]:
    """A device's last known latitude and longitude in SQL (NULL when it has none)."""
    return Device.location["lat"].as_float(), Device.location["lon"].as_float()


def bbox_clause(box: BBox) -> ColumnElement[bool]:
    lat, lon = lat_lon()
    lons = (
        and_(lon >= box.west, lon <= box.east)
        if box.west <= box.east
        else or_(lon >= box.west, lon <= box.east)
    )
    return and_(lat >= box.south, lat <= box.north, lons)


def location_point(location: dict[str, Any] | None) -> Point | None:
    """The point in a device's stored location, if it holds a usable one."""
    if not location:
        return None
    lat, lon = location.get("lat"), location.get("lon")
    if not isinstance(lat, int | float) or not isinstance(lon, int | float):
        return None
    return Point(float(lat), float(lon))


# Presence


async def update_presence(
    session: AsyncSession, device: Device, p: Point, accuracy: float | None, now: datetime
) -> list[MonitorEvent]:
    """Bring the device's presence up to date with a reported position; the events it caused."""
    fences = (
        await session.scalars(select(Geofence).where(Geofence.tenant_id == device.tenant_id))
    ).all()
    present = {
        row.geofence_id: row
        for row in await session.scalars(
            select(GeofencePresence).where(GeofencePresence.device_id == device.id)
        )
    }
    own = {fence.id for fence in fences}
    # Left over from the tenant the device belonged to before: another tenant's business.
    for geofence_id in present.keys() - own:
        await session.delete(present.pop(geofence_id))
    if accuracy is not None and accuracy > MAX_FENCE_ACCURACY_M:
        return []
    events: list[MonitorEvent] = []
    for fence in fences:
        was_inside = fence.id in present
        inside = still_inside(stored_shape(fence.shape), p, was_inside=was_inside)
        if inside == was_inside:
            continue
        if inside:
            session.add(GeofencePresence(geofence_id=fence.id, device_id=device.id, since=now))
        else:
            await session.delete(present[fence.id])
        detail = {
            "geofence_id": fence.id,
            "geofence": fence.name,
            "site": fence.site,
            "lat": p.lat,
            "lon": p.lon,
        }
        events.append(
            MonitorEvent(
                device_id=device.id, at=now, kind=ENTER if inside else LEAVE, detail=detail
            )
        )
    session.add_all(events)
    await session.flush()
    return events


async def refresh_presence(session: AsyncSession, fence: Geofence, now: datetime) -> None:
    """Set the fence's members from every device's last known location (no events)."""
    shape = stored_shape(fence.shape)
    candidates = await session.execute(
        select(Device.id, Device.location).where(
            Device.tenant_id == fence.tenant_id, bbox_clause(bounds(shape))
        )
    )
    inside = set()
    for device_id, location in candidates:
        p = location_point(location)
        if p is not None and contains(shape, p):
            inside.add(device_id)
    current = set(
        (
            await session.scalars(
                select(GeofencePresence.device_id).where(GeofencePresence.geofence_id == fence.id)
            )
        ).all()
    )
    gone = sorted(current - inside)
    if gone:
        await session.execute(
            delete(GeofencePresence).where(
                GeofencePresence.geofence_id == fence.id, GeofencePresence.device_id.in_(gone)
            )
        )
    session.add_all(
        GeofencePresence(geofence_id=fence.id, device_id=d, since=now)
        for d in sorted(inside - current)
    )
    await session.flush()


# Changes, audited


def _summary(fence: Geofence) -> dict[str, Any]:
    return {"name": fence.name, "site": fence.site, "shape": fence.shape}


async def _name_free(session: AsyncSession, tenant_id: str, name: str) -> None:
    taken = await session.scalar(
        select(Geofence.id).where(Geofence.tenant_id == tenant_id, Geofence.name == name)
    )
    if taken:
        raise Conflict(f"geofence {name!r} exists already", field="name")


async def create_geofence(
    session: AsyncSession,
    change: Change,
    *,
    name: str,
    site: str | None,
    shape: Shape,
    tenant: str | None = None,
) -> Geofence:
    change.principal.require(WRITE)
    tenant_id = await resolve_tenant(session, change.principal, tenant)
    await _name_free(session, tenant_id, name)
    now = change.now()
    fence = Geofence(
        id=uuid7(now),
        tenant_id=tenant_id,
        name=name,
        site=site,
        shape=shape_json(shape),
        created_by=change.principal.actor,
        created_at=now,
        updated_at=now,
    )
    session.add(fence)
    await session.flush()
    await refresh_presence(session, fence, now)
    await audit.append(
        session,
        change,
        action="geofence.create",
        target=f"geofence:{fence.id}",
        tenant_id=tenant_id,
        after=_summary(fence),
    )
    return fence


@dataclass(frozen=True)
class GeofenceChanges:
    """The fields a PATCH sets; None leaves one as it is (`site_set` tells a cleared site)."""

    name: str | None = None
    site: str | None = None
    site_set: bool = False
    shape: Shape | None = None


async def update_geofence(
    session: AsyncSession, change: Change, fence: Geofence, changes: GeofenceChanges
) -> Geofence:
    change.principal.require(WRITE)
    before = _summary(fence)
    if changes.name is not None and changes.name != fence.name:
        await _name_free(session, fence.tenant_id, changes.name)
        fence.name = changes.name
    if changes.site_set:
        fence.site = changes.site
    redrawn = changes.shape is not None and shape_json(changes.shape) != fence.shape
    if changes.shape is not None and redrawn:
        fence.shape = shape_json(changes.shape)
    after = _summary(fence)
    if after == before:
        return fence
    fence.updated_at = change.now()
    await session.flush()
    if redrawn:
        await refresh_presence(session, fence, change.now())
    await audit.append_changes(
        session,
        change,
        action="geofence.update",
        target=f"geofence:{fence.id}",
        tenant_id=fence.tenant_id,
        before=before,
        after=after,
    )
    return fence


async def delete_geofence(session: AsyncSession, change: Change, fence: Geofence) -> None:
    change.principal.require(WRITE)
    before = _summary(fence)
    await session.execute(delete(GeofencePresence).where(GeofencePresence.geofence_id == fence.id))
    await session.delete(fence)
    await session.flush()
    await audit.append(
        session,
        change,
        action="geofence.delete",
        target=f"geofence:{fence.id}",
        tenant_id=fence.tenant_id,
        before=before,
    )


# Reads


async def get_geofence(session: AsyncSession, principal: Principal, geofence_id: str) -> Geofence:
    principal.require(READ)
    fence = await session.scalar(
        select(Geofence).where(
            Geofence.id == geofence_id, principal.tenant_filter(Geofence.tenant_id)
        )
    )
    if fence is None:
        raise NotFound(f"no geofence {geofence_id!r}")
    return fence


async def list_geofences(
    session: AsyncSession,
    principal: Principal,
    *,
    site: str | None,
    limit: int,
    cursor: str | None,
) -> tuple[list[Geofence], str | None]:
    principal.require(READ)
    stmt = select(Geofence).where(principal.tenant_filter(Geofence.tenant_id))
    if site is not None:
        stmt = stmt.where(Geofence.site == site)
    if cursor:
        stmt = stmt.where(Geofence.id > decode_cursor(cursor))
    rows = list((await session.scalars(stmt.order_by(Geofence.id).limit(limit + 1))).all())
    return _page(rows, limit, lambda f: f.id)


@dataclass(frozen=True)
class Member:
    device: Device
    since: datetime


async def devices_inside(
    session: AsyncSession, fence: Geofence, *, limit: int, cursor: str | None
) -> tuple[list[Member], str | None]:
    """The fence's devices (the caller found the fence, so may see them), by device id."""
    stmt = (
        select(Device, GeofencePresence.since)
        .join(GeofencePresence, GeofencePresence.device_id == Device.id)
        .where(GeofencePresence.geofence_id == fence.id, Device.tenant_id == fence.tenant_id)
    )
    if cursor:
        stmt = stmt.where(Device.id > decode_cursor(cursor))
    rows = (await session.execute(stmt.order_by(Device.id).limit(limit + 1))).all()
    members = [Member(device, since) for device, since in rows]
    return _page(members, limit, lambda m: m.device.id)


def _page(rows: Sequence[T], limit: int, key: Callable[[T], str]) -> tuple[list[T], str | None]:
    page = list(rows[:limit])
    more = len(rows) > limit and page
    return page, encode_cursor(key(page[-1])) if more else None
