"""Security events: refused credentials, bad signatures, replays, out-of-scope enrolments."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from fleetkeeper.services.context import Principal
from fleetkeeper.store.db import Database
from fleetkeeper.store.models import Device, SecurityEvent


async def record(
    db: Database,
    *,
    at: datetime,
    kind: str,
    detail: str,
    device_id: str | None = None,
    serial: str | None = None,
    remote_addr: str | None = None,
) -> None:
    """Written in its own transaction: it must land even though the request is refused."""
    async with db.write() as session:
        session.add(
            SecurityEvent(
                at=at,
                kind=kind,
                detail=detail[:2000],
                device_id=device_id,
                serial=serial,
                remote_addr=remote_addr,
            )
        )


async def list_events(
    session: AsyncSession,
    principal: Principal,
    *,
    device_id: str | None,
    limit: int,
    before_id: int | None,
) -> list[SecurityEvent]:
    principal.require("audit:read")
    stmt = select(SecurityEvent)
    if principal.tenant_id is not None:
        # Events name devices; a tenant sees the events of its own devices only.
        stmt = stmt.join(Device, Device.id == SecurityEvent.device_id).where(
            Device.tenant_id == principal.tenant_id
        )
    if device_id is not None:
        stmt = stmt.where(SecurityEvent.device_id == device_id)
    if before_id is not None:
        stmt = stmt.where(SecurityEvent.id < before_id)
    return list((await session.scalars(stmt.order_by(SecurityEvent.id.desc()).limit(limit))).all())
