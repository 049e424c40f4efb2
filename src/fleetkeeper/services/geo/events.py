"""Monitor events as the API lists them: what happened to which device, newest first.

Geofence enter and leave events are written here (see `fences`); monitoring's other kinds
(health flags raised and cleared) land in the same table and list the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from fleetkeeper.errors import Invalid
from fleetkeeper.services.context import Principal
from fleetkeeper.store.models import Device, MonitorEvent

MAX_KINDS = 20


def parse_kinds(given: Sequence[str] | None) -> tuple[str, ...]:
    kinds = tuple(dict.fromkeys(given or ()))
    if len(kinds) > MAX_KINDS or any(not 0 < len(k) <= 40 for k in kinds):
        raise Invalid(f"kind: at most {MAX_KINDS} kinds of 1-40 characters", field="kind")
    return kinds


@dataclass(frozen=True)
class EventFilter:
    device: str | None = None
    kinds: Sequence[str] = ()
    geofence: str | None = None
    since: datetime | None = None
    until: datetime | None = None


async def list_events(
    session: AsyncSession,
    principal: Principal,
    flt: EventFilter,
    *,
    limit: int,
    before_id: int | None = None,
) -> list[tuple[MonitorEvent, str]]:
    """Events of devices the principal may see, newest first, each with its device's serial."""
    principal.require("devices:read")
    stmt = (
        select(MonitorEvent, Device.serial)
        .join(Device, Device.id == MonitorEvent.device_id)
        .where(principal.tenant_filter(Device.tenant_id))
    )
    if flt.device is not None:
        stmt = stmt.where(MonitorEvent.device_id == flt.device)
    if flt.kinds:
        stmt = stmt.where(MonitorEvent.kind.in_(list(flt.kinds)))
    if flt.geofence is not None:
        stmt = stmt.where(MonitorEvent.detail["geofence_id"].as_string() == flt.geofence)
    if flt.since is not None:
        stmt = stmt.where(MonitorEvent.at >= flt.since)
    if flt.until is not None:
        stmt = stmt.where(MonitorEvent.at < flt.until)
    if before_id is not None:
        stmt = stmt.where(MonitorEvent.id < before_id)
    rows = await session.execute(stmt.order_by(MonitorEvent.id.desc()).limit(limit))
    return [(event, serial) for event, serial in rows]
