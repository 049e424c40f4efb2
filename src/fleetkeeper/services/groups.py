"""Static groups (members added by hand) and dynamic groups (defined by a fleet query)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from fleetkeeper.errors import Conflict, FleetkeeperError, Invalid, NotFound
from fleetkeeper.query import CompileContext, GroupRef, compile_query, group_names, parse
from fleetkeeper.schemas.inventory import GroupCreate, GroupOut, GroupPatch
from fleetkeeper.services import audit
from fleetkeeper.services.context import Change, Principal
from fleetkeeper.services.devices import resolve_tenant
from fleetkeeper.services.rollout import windows
from fleetkeeper.services.rollout.policy import Window
from fleetkeeper.services.selection import QueryScope, compile_for, visible_groups
from fleetkeeper.store.db import dialect_of
from fleetkeeper.store.models import Device, Group, GroupMember


def view(group: Group, member_count: int | None = None) -> GroupOut:
    return GroupOut(
        id=group.id,
        name=group.name,
        tenant=group.tenant_id,
        kind="dynamic" if group.query is not None else "static",
        query=group.query,
        description=group.description,
        member_count=member_count,
        maintenance_windows=group.maintenance_windows,
        created_at=group.created_at,
        updated_at=group.updated_at,
    )


def _summary(group: Group) -> dict[str, Any]:
    return {
        "name": group.name,
        "query": group.query,
        "description": group.description,
        "maintenance_windows": group.maintenance_windows,
    }


def _windows(given: list[Window] | None) -> list[dict[str, Any]] | None:
    """Windows checked (cron, time zone) and stored as JSON; an empty list clears them."""
    if not given:
        return None
    out = []
    for i, window in enumerate(given):
        try:
            out.append(windows.validate(window).model_dump(mode="json"))
        except windows.WindowError as exc:
            raise Invalid(str(exc), field=f"maintenance_windows.{i}") from None
    return out


async def get_group(
    session: AsyncSession, principal: Principal, name: str, tenant: str | None = None
) -> Group:
    principal.require("groups:read")
    stmt = select(Group).where(Group.name == name, principal.tenant_filter(Group.tenant_id))
    if tenant is not None:
        stmt = stmt.where(Group.tenant_id == tenant)
    found = (await session.scalars(stmt)).all()
    if not found:
        raise NotFound(f"no group {name!r}")
    if len(found) > 1:
        tenants = ", ".join(sorted(g.tenant_id for g in found))
        raise Conflict(f"group {name!r} exists in tenants {tenants}: add ?tenant=", field="tenant")
    return found[0]


async def list_groups(
    session: AsyncSession, principal: Principal, *, limit: int, after_id: int | None
) -> list[Group]:
    principal.require("groups:read")
    stmt = select(Group).where(principal.tenant_filter(Group.tenant_id))
    if after_id is not None:
        stmt = stmt.where(Group.id > after_id)
    return list((await session.scalars(stmt.order_by(Group.id).limit(limit))).all())


async def _check_query(
    session: AsyncSession, scope: QueryScope, tenant_id: str, name: str, query: str
) -> None:
    """A dynamic group's query must compile in its tenant, and no group may reach itself.

    Every dynamic group of the tenant is compiled against the new definition, so a cycle
    that runs through this group is found whichever group closes it.
    """
    groups = await visible_groups(session, tenant_id)
    current = groups.get(name)
    groups[name] = GroupRef(id=current.id if current else -1, query=query, tenant_id=tenant_id)
    ctx = CompileContext(
        dialect=dialect_of(session),
        now=scope.now,
        online_window=scope.online_window,
        groups=groups,
    )
    compile_query(parse(query), ctx)
    for other, ref in groups.items():
        if other == name or ref.query is None:
            continue
        try:
            compile_query(parse(ref.query), ctx)
        except FleetkeeperError as exc:
            raise Invalid(
                f"this query would break group {other!r}: {exc.detail}", field="query"
            ) from None


async def create_group(
    session: AsyncSession, change: Change, scope: QueryScope, data: GroupCreate
) -> Group:
    change.principal.require("groups:write")
    tenant_id = await resolve_tenant(session, change.principal, data.tenant)
    if await session.scalar(
        select(Group.id).where(Group.tenant_id == tenant_id, Group.name == data.name)
    ):
        raise Conflict(f"group {data.name!r} exists already", field="name")
    if data.query is not None:
        await _check_query(session, scope, tenant_id, data.name, data.query)
    now = change.now()
    group = Group(
        tenant_id=tenant_id,
        name=data.name,
        query=data.query,
        description=data.description,
        maintenance_windows=_windows(data.maintenance_windows),
        created_at=now,
        updated_at=now,
    )
    session.add(group)
    await session.flush()
    await audit.append(
        session,
        change,
        action="group.create",
        target=f"group:{group.name}",
        tenant_id=tenant_id,
        after=_summary(group),
    )
    return group


async def update_group(
    session: AsyncSession, change: Change, scope: QueryScope, group: Group, patch: GroupPatch
) -> Group:
    change.principal.require("groups:write")
    before = _summary(group)
    fields = patch.model_fields_set - {"reason"}
    if "query" in fields:
        if (group.query is None) != (patch.query is None):
            raise Conflict(
                "a group cannot switch between static and dynamic; create a new one", field="query"
            )
        if patch.query is not None:
            await _check_query(session, scope, group.tenant_id, group.name, patch.query)
        group.query = patch.query
    if "description" in fields:
        group.description = patch.description
    if "maintenance_windows" in fields:
        group.maintenance_windows = _windows(patch.maintenance_windows)
    after = _summary(group)
    if after != before:
        group.updated_at = change.now()
        await audit.append(
            session,
            change,
            action="group.update",
            target=f"group:{group.name}",
            tenant_id=group.tenant_id,
            before=before,
            after=after,
        )
    return group


async def delete_group(session: AsyncSession, change: Change, group: Group) -> None:
    change.principal.require("groups:write")
    # Refuse to leave dynamic groups that name this one dangling.
    dynamic = await session.execute(
        select(Group.name, Group.query).where(
            Group.tenant_id == group.tenant_id, Group.query.is_not(None), Group.id != group.id
        )
    )
    for other, query in dynamic:
        if group.name in group_names(parse(query or "")):
            raise Conflict(f"group {other!r} uses group {group.name!r} in its query")
    before = _summary(group)
    await session.delete(group)
    await audit.append(
        session,
        change,
        action="group.delete",
        target=f"group:{group.name}",
        tenant_id=group.tenant_id,
        before=before,
    )


async def change_members(
    session: AsyncSession, change: Change, group: Group, device_ids: list[str], *, add: bool
) -> int:
    """Add or remove static members; returns how many memberships changed."""
    change.principal.require("groups:write")
    if group.query is not None:
        raise Conflict(f"group {group.name!r} is dynamic: its query decides its members")
    wanted = sorted(set(device_ids))
    found = set(
        (
            await session.scalars(
                select(Device.id).where(Device.id.in_(wanted), Device.tenant_id == group.tenant_id)
            )
        ).all()
    )
    missing = [d for d in wanted if d not in found]
    if missing:
        raise Invalid(
            f"{len(missing)} device(s) not found in tenant {group.tenant_id!r}: "
            f"{', '.join(missing[:20])}",
            field="devices",
            missing=missing[:1000],
        )
    present = set(
        (
            await session.scalars(
                select(GroupMember.device_id).where(
                    GroupMember.group_id == group.id, GroupMember.device_id.in_(wanted)
                )
            )
        ).all()
    )
    if add:
        todo = [d for d in wanted if d not in present]
        session.add_all(GroupMember(group_id=group.id, device_id=d) for d in todo)
    else:
        todo = [d for d in wanted if d in present]
        await session.execute(
            delete(GroupMember).where(
                GroupMember.group_id == group.id, GroupMember.device_id.in_(todo)
            )
        )
    if todo:
        await session.flush()
        await audit.append(
            session,
            change,
            action="group.add_members" if add else "group.remove_members",
            target=f"group:{group.name}",
            tenant_id=group.tenant_id,
            after={"devices": todo},
        )
    return len(todo)


async def member_count(session: AsyncSession, scope: QueryScope, group: Group) -> int:
    where = await compile_for(session, scope, f'group:"{group.name}"', tenant_id=group.tenant_id)
    return int(await session.scalar(select(func.count()).select_from(Device).where(where)) or 0)
