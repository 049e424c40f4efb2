"""Selecting devices: a fleet query plus the caller's tenant scope, compiled to one WHERE clause.

Every device read goes through `device_filter`, so a tenant's users cannot reach another
tenant's devices whatever query they write.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, select
from sqlalchemy.ext.asyncio import AsyncSession

from fleetkeeper.errors import BadRequest
from fleetkeeper.query import CompileContext, GroupRef, compile_query, group_names, parse
from fleetkeeper.services.context import Principal
from fleetkeeper.store.db import dialect_of
from fleetkeeper.store.models import Device, DeviceModel, Group


@dataclass(frozen=True)
class QueryScope:
    """Everything a query needs besides its text."""

    principal: Principal
    now: datetime
    online_window: timedelta


async def visible_groups(
    session: AsyncSession, tenant_id: str | None, used: set[str] | frozenset[str] = frozenset()
) -> dict[str, GroupRef]:
    """Groups by name as a query inside `tenant_id` sees them (None: every tenant's).

    All of them, since a dynamic group's query may name further groups; a name that several
    tenants use is an error only when the query at hand uses it.
    """
    stmt = select(Group.id, Group.name, Group.query, Group.tenant_id)
    if tenant_id is not None:
        stmt = stmt.where(Group.tenant_id == tenant_id)
    groups: dict[str, GroupRef] = {}
    for gid, name, query, tenant in await session.execute(stmt):
        if name in groups and name in used:
            raise BadRequest(
                f"group {name!r} exists in several tenants; query it as a user of one tenant",
                field="q",
            )
        groups[name] = GroupRef(id=gid, query=query, tenant_id=tenant)
    return groups


async def compile_for(
    session: AsyncSession, scope: QueryScope, text: str | None, *, tenant_id: str | None = None
) -> ColumnElement[bool]:
    """The WHERE clause for `text` as the scope's principal sees it, optionally in one tenant."""
    tenant = tenant_id if tenant_id is not None else scope.principal.tenant_id
    clauses = [scope.principal.tenant_filter(Device.tenant_id)]
    if tenant_id is not None:
        clauses.append(Device.tenant_id == tenant_id)
    if text and text.strip():
        query = parse(text)
        names = group_names(query)
        # `online` (here or in a group's query) needs the models' grace; skip the look-up
        # for the many queries that cannot reach it.
        grace = await offline_after(session) if names or "online" in text else {}
        ctx = CompileContext(
            dialect=dialect_of(session),
            now=scope.now,
            online_window=scope.online_window,
            groups=await visible_groups(session, tenant, names) if names else {},
            offline_after=grace,
        )
        clauses.append(compile_query(query, ctx))
    return and_(*clauses)


async def offline_after(session: AsyncSession) -> dict[int, timedelta]:
    """The device models' own grace before a device counts as offline, by model id (only the
    models that set one; the others use the server's online window)."""
    column = DeviceModel.offline_after_seconds
    rows = await session.execute(select(DeviceModel.id, column).where(column.is_not(None)))
    return {model_id: timedelta(seconds=seconds) for model_id, seconds in rows if seconds}


def encode_cursor(last_id: str) -> str:
    return base64.urlsafe_b64encode(last_id.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        value = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        raise BadRequest(
            "invalid cursor: pass back the next_cursor of a previous page", field="cursor"
        ) from None
    if not value or len(value) > 200:
        raise BadRequest(
            "invalid cursor: pass back the next_cursor of a previous page", field="cursor"
        )
    return value
