"""Tenants: the customers or business units a fleet is split into."""

from __future__ import annotations

import re

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from fleetkeeper.errors import Conflict, Invalid
from fleetkeeper.services import audit
from fleetkeeper.services.context import Change, Principal
from fleetkeeper.store.models import Tenant

_TENANT_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


async def create_tenant(session: AsyncSession, change: Change, tenant_id: str, name: str) -> Tenant:
    change.principal.require("tenants:manage")
    if change.principal.tenant_id is not None:
        raise Invalid("only platform administrators create tenants")
    if not _TENANT_ID.match(tenant_id):
        raise Invalid("tenant id: lower-case letters, digits, _ and -, at most 64", field="id")
    if await session.get(Tenant, tenant_id) is not None:
        raise Conflict(f"tenant {tenant_id!r} exists already", field="id")
    return await ensure_tenant(session, change, tenant_id, name)


async def ensure_tenant(session: AsyncSession, change: Change, tenant_id: str, name: str) -> Tenant:
    tenant = await session.get(Tenant, tenant_id)
    if tenant is None:
        tenant = Tenant(id=tenant_id, name=name, created_at=change.now())
        session.add(tenant)
        await session.flush()
        await audit.append(
            session,
            change,
            action="tenant.create",
            target=f"tenant:{tenant_id}",
            tenant_id=tenant_id,
            after={"name": name},
        )
    return tenant


async def list_tenants(session: AsyncSession, principal: Principal) -> list[Tenant]:
    stmt = select(Tenant).where(principal.tenant_filter(Tenant.id)).order_by(Tenant.id)
    return list((await session.scalars(stmt)).all())
