"""The health flags read back: one device's with their evidence, and the fleet's flagged
devices. The watch (`watch.py`) writes them; the API's health routes read them here."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import exists, select
from sqlalchemy.ext.asyncio import AsyncSession

from fleetkeeper.query import field_expression
from fleetkeeper.services.context import Principal
from fleetkeeper.services.devices import get_device
from fleetkeeper.services.selection import QueryScope, compile_for, decode_cursor, encode_cursor
from fleetkeeper.store.db import dialect_of
from fleetkeeper.store.models import Device, DeviceHealth, DeviceModel

__all__ = ["Flagged", "device_flags", "fleet_flags"]
_CHUNK = 500


async def device_flags(
    session: AsyncSession, principal: Principal, device_id: str
) -> tuple[Device, list[DeviceHealth]]:
    """A device the principal may see, and the flags it carries (critical first, oldest first)."""
    device = await get_device(session, principal, device_id)
    rows = await session.scalars(select(DeviceHealth).where(DeviceHealth.device_id == device.id))
    return device, _ordered(rows)


@dataclass(frozen=True)
class Flagged:
    """A device that carries flags, as the fleet's health list shows it."""

    device: Device
    model: str
    site: str | None
    flags: list[DeviceHealth]


async def fleet_flags(
    session: AsyncSession,
    scope: QueryScope,
    q: str | None,
    *,
    flag: str | None = None,
    limit: int,
    cursor: str | None = None,
) -> tuple[list[Flagged], str | None]:
    """The devices of the selection that carry flags (`flag`: that one), by id."""
    scope.principal.require("devices:read")
    where = await compile_for(session, scope, q)
    carries = select(DeviceHealth.device_id).where(DeviceHealth.device_id == Device.id)
    if flag is not None:
        carries = carries.where(DeviceHealth.flag == flag)
    site_of = field_expression("attributes.site", dialect_of(session))
    stmt = (
        select(Device, DeviceModel.name, site_of)
        .join(DeviceModel, DeviceModel.id == Device.model_id)
        .where(where, exists(carries))
    )
    if cursor:
        stmt = stmt.where(Device.id > decode_cursor(cursor))
    rows = (await session.execute(stmt.order_by(Device.id).limit(limit + 1))).all()
    more, rows = len(rows) > limit, rows[:limit]
    flags: dict[str, list[DeviceHealth]] = {}
    ids = [device.id for device, _, _ in rows]
    for start in range(0, len(ids), _CHUNK):
        chunk: Sequence[str] = ids[start : start + _CHUNK]
        for row in await session.scalars(
            select(DeviceHealth).where(DeviceHealth.device_id.in_(chunk))
        ):
            flags.setdefault(row.device_id, []).append(row)
    page = [
        Flagged(device, model, site, _ordered(flags.get(device.id, [])))
        for device, model, site in rows
    ]
    return page, encode_cursor(ids[-1]) if more and ids else None


def _ordered(rows: Iterable[DeviceHealth]) -> list[DeviceHealth]:
    """Critical first, then the oldest."""
    order = {"critical": 0, "warning": 1}
    return sorted(rows, key=lambda r: (order.get(r.severity, 2), r.since, r.flag, r.metric))
