"""Where devices are: the position history they report, and the fleet map.

A device's last known position is `Device.location` (what it reported last, or what an
operator set). Reports are also kept as history, but sparingly: a report that moved less than
`MIN_MOVE_M` from the last stored position and came less than `KEEPALIVE` after it adds no row,
so a parked device writes one row an hour instead of one per report.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, delete, func, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from fleetkeeper.errors import Invalid
from fleetkeeper.query import online_expression
from fleetkeeper.services.context import Principal
from fleetkeeper.services.devices import get_device
from fleetkeeper.services.geo.fences import bbox_clause, lat_lon, location_point, update_presence
from fleetkeeper.services.geo.geometry import BBox, Point, distance_m, parse_point
from fleetkeeper.services.selection import QueryScope, compile_for, offline_after
from fleetkeeper.store.db import rowcount
from fleetkeeper.store.models import Device, DeviceModel, DevicePosition, MonitorEvent

MIN_MOVE_M = 10.0
KEEPALIVE = timedelta(hours=1)
_CHUNK = 1000  # ids per IN list


def _optional_number(location: Mapping[str, Any], key: str) -> float | None:
    value = location.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise Invalid(f"location.{key} must be a number", field=f"location.{key}")
    if key == "accuracy" and value < 0:
        raise Invalid("location.accuracy is a radius: 0 or more metres", field="location.accuracy")
    return float(value)


def should_store(last: tuple[Point, datetime] | None, p: Point, now: datetime) -> bool:
    """Whether a reported position earns a history row (see the module doc)."""
    if last is None:
        return True
    where, when = last
    return distance_m(where, p) > MIN_MOVE_M or now - when >= KEEPALIVE


async def record_position(
    session: AsyncSession, device: Device, location: Mapping[str, Any], now: datetime
) -> list[MonitorEvent]:
    """Note a position the device reported at `now`: history and geofence presence.

    Returns the geofence enter/leave events it caused (already added to the session).
    """
    p = parse_point(location.get("lat"), location.get("lon"), "location")
    alt = _optional_number(location, "alt")
    accuracy = _optional_number(location, "accuracy")
    last = await session.scalar(
        select(DevicePosition)
        .where(DevicePosition.device_id == device.id)
        .order_by(DevicePosition.ts.desc())
        .limit(1)
    )
    if last is not None and last.ts >= now:
        # A second report within one clock tick (or a clock behind the last row): newest wins.
        last.lat, last.lon, last.alt, last.accuracy = p.lat, p.lon, alt, accuracy
    elif should_store(None if last is None else (Point(last.lat, last.lon), last.ts), p, now):
        session.add(
            DevicePosition(
                device_id=device.id, ts=now, lat=p.lat, lon=p.lon, alt=alt, accuracy=accuracy
            )
        )
    await session.flush()
    return await update_presence(session, device, p, accuracy, now)


async def history(
    session: AsyncSession,
    principal: Principal,
    device_id: str,
    start: datetime,
    end: datetime,
    limit: int,
) -> tuple[list[DevicePosition], bool]:
    """The newest `limit` positions in [start, end], oldest first, and whether more were left."""
    device = await get_device(session, principal, device_id)
    rows = list(
        (
            await session.scalars(
                select(DevicePosition)
                .where(
                    DevicePosition.device_id == device.id,
                    DevicePosition.ts >= start,
                    DevicePosition.ts <= end,
                )
                .order_by(DevicePosition.ts.desc())
                .limit(limit + 1)
            )
        ).all()
    )
    return rows[:limit][::-1], len(rows) > limit


async def prune(session: AsyncSession, before: datetime) -> int:
    """Forget positions older than `before` (for a retention job); how many went."""
    result = await session.execute(delete(DevicePosition).where(DevicePosition.ts < before))
    return rowcount(result)


# The fleet map


async def online_check(session: AsyncSession, scope: QueryScope) -> Callable[[Device], bool]:
    """Whether a device counts as online now: seen within its model's grace, or else within
    the server's online window (as the device list says)."""
    grace = await offline_after(session)

    def online(device: Device) -> bool:
        window = grace.get(device.model_id, scope.online_window)
        return device.last_seen is not None and device.last_seen >= scope.now - window

    return online


@dataclass(frozen=True)
class MapEntry:
    device: Device
    model: str
    point: Point
    online: bool
    position_at: datetime | None  # the newest stored position, when it is the one shown


@dataclass(frozen=True)
class FleetMap:
    entries: list[MapEntry]
    truncated: bool
    total: int


async def fleet_map(
    session: AsyncSession, scope: QueryScope, q: str | None, *, bbox: BBox | None, limit: int
) -> FleetMap:
    """The devices `q` selects that have a known position (inside `bbox`), by id."""
    conditions = await _map_conditions(session, scope, q, bbox)
    rows = (
        await session.execute(
            select(Device, DeviceModel.name)
            .join(DeviceModel, DeviceModel.id == Device.model_id)
            .where(*conditions)
            .order_by(Device.id)
            .limit(limit + 1)
        )
    ).all()
    truncated = len(rows) > limit
    rows = rows[:limit]
    total = len(rows)
    if truncated:
        count = select(func.count()).select_from(Device).where(*conditions)
        total = int(await session.scalar(count) or 0)
    latest = await _latest_positions(session, [device.id for device, _ in rows])
    online = await online_check(session, scope)
    entries = []
    for device, model in rows:
        p = location_point(device.location)
        if p is None:  # a location without numbers: nothing to draw
            continue
        stored = latest.get(device.id)
        # The stored time belongs to this position only if nobody has moved it by hand since.
        at = stored[1] if stored and distance_m(stored[0], p) <= MIN_MOVE_M else None
        entries.append(MapEntry(device, model, p, online(device), at))
    return FleetMap(entries, truncated, total)


async def _map_conditions(
    session: AsyncSession, scope: QueryScope, q: str | None, bbox: BBox | None
) -> list[ColumnElement[bool]]:
    scope.principal.require("devices:read")
    lat, lon = lat_lon()
    conditions = [await compile_for(session, scope, q), lat.is_not(None), lon.is_not(None)]
    if bbox is not None:
        conditions.append(bbox_clause(bbox))
    return conditions


@dataclass(frozen=True)
class MapPoint:
    id: str
    serial: str
    state: str
    model: str
    lat: float
    lon: float
    online: bool


async def map_points(
    session: AsyncSession, scope: QueryScope, q: str | None, *, limit: int
) -> tuple[list[MapPoint], bool]:
    """What a map draws, and only that: the first `limit` located devices `q` selects (by id)
    as plain points, and whether there were more. One query of six columns: no device rows,
    no count, no position history (the dashboard's overview map)."""
    conditions = await _map_conditions(session, scope, q, None)
    lat, lon = lat_lon()
    online = online_expression(scope.now, scope.online_window, await offline_after(session))
    rows = (
        await session.execute(
            select(Device.id, Device.serial, Device.state, DeviceModel.name, lat, lon, online)
            .join(DeviceModel, DeviceModel.id == Device.model_id)
            .where(*conditions)
            .order_by(Device.id)
            .limit(limit + 1)
        )
    ).all()
    points = [
        MapPoint(r[0], r[1], r[2], r[3], float(r[4]), float(r[5]), bool(r[6]))
        for r in rows[:limit]
        if isinstance(r[4], int | float) and isinstance(r[5], int | float)
    ]
    return points, len(rows) > limit


async def _latest_positions(
    session: AsyncSession, ids: Sequence[str]
) -> dict[str, tuple[Point, datetime]]:
    found: dict[str, tuple[Point, datetime]] = {}
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start : start + _CHUNK]
        newest = (
            select(DevicePosition.device_id, func.max(DevicePosition.ts))
            .where(DevicePosition.device_id.in_(chunk))
            .group_by(DevicePosition.device_id)
        )
        rows = await session.execute(
            select(
                DevicePosition.device_id,
                DevicePosition.lat,
                DevicePosition.lon,
                DevicePosition.ts,
            ).where(tuple_(DevicePosition.device_id, DevicePosition.ts).in_(newest))
        )
        for device_id, lat, lon, ts in rows:
            found[device_id] = (Point(lat, lon), ts)
    return found
