"""/api/v1/groups: static and dynamic device groups."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel

from fleetkeeper.api.deps import ReasonHeader, ReasonQuery, ScopeDep, StateDep, make_change
from fleetkeeper.api.pagination import IdCursor, Limit, id_page
from fleetkeeper.schemas.common import Page
from fleetkeeper.schemas.devices import DeviceOut
from fleetkeeper.schemas.inventory import GroupCreate, GroupOut, GroupPatch, Members
from fleetkeeper.services import devices, groups

router = APIRouter(prefix="/api/v1/groups", tags=["groups"])
TenantParam = Annotated[
    str | None,
    Query(max_length=64, description="When names repeat across tenants (platform users only)."),
]


class MembersChanged(BaseModel):
    changed: int
    member_count: int


@router.get("", response_model=Page[GroupOut], summary="List groups")
async def list_groups(
    state: StateDep,
    scope: ScopeDep,
    limit: Limit = 100,
    cursor: IdCursor = None,
) -> Page[GroupOut]:
    async with state.db.read() as session:
        rows = await groups.list_groups(session, scope.principal, limit=limit + 1, after_id=cursor)
    items, next_cursor = id_page(rows, limit, lambda g: g.id)
    return Page(items=[groups.view(g) for g in items], next_cursor=next_cursor)


@router.post(
    "", status_code=201, response_model=GroupOut, summary="Create a static or dynamic group"
)
async def create_group(
    state: StateDep, scope: ScopeDep, body: GroupCreate, x_change_reason: ReasonHeader = None
) -> GroupOut:
    change = make_change(state, scope.principal, body.reason, x_change_reason)
    async with state.db.write() as session:
        group = await groups.create_group(session, change, scope, body)
        return groups.view(group, await groups.member_count(session, scope, group))


@router.get("/{name}", response_model=GroupOut, summary="Show a group with its member count")
async def get_group(
    state: StateDep, scope: ScopeDep, name: str, tenant: TenantParam = None
) -> GroupOut:
    async with state.db.read() as session:
        group = await groups.get_group(session, scope.principal, name, tenant)
        return groups.view(group, await groups.member_count(session, scope, group))


@router.patch("/{name}", response_model=GroupOut, summary="Change a group's query or description")
async def update_group(
    state: StateDep,
    scope: ScopeDep,
    name: str,
    body: GroupPatch,
    tenant: TenantParam = None,
    x_change_reason: ReasonHeader = None,
) -> GroupOut:
    change = make_change(state, scope.principal, body.reason, x_change_reason, reason_required=True)
    async with state.db.write() as session:
        group = await groups.get_group(session, scope.principal, name, tenant)
        group = await groups.update_group(session, change, scope, group, body)
        return groups.view(group, await groups.member_count(session, scope, group))


@router.delete("/{name}", status_code=204, summary="Delete a group (its devices stay)")
async def delete_group(
    state: StateDep,
    scope: ScopeDep,
    name: str,
    tenant: TenantParam = None,
    reason: ReasonQuery = None,
    x_change_reason: ReasonHeader = None,
) -> Response:
    change = make_change(state, scope.principal, reason, x_change_reason, reason_required=True)
    async with state.db.write() as session:
        group = await groups.get_group(session, scope.principal, name, tenant)
        await groups.delete_group(session, change, group)
    return Response(status_code=204)


async def _members(
    state: StateDep,
    scope: ScopeDep,
    name: str,
    body: Members,
    tenant: str | None,
    header_reason: str | None,
    *,
    add: bool,
) -> MembersChanged:
    change = make_change(state, scope.principal, body.reason, header_reason)
    async with state.db.write() as session:
        group = await groups.get_group(session, scope.principal, name, tenant)
        changed = await groups.change_members(session, change, group, body.devices, add=add)
        return MembersChanged(
            changed=changed, member_count=await groups.member_count(session, scope, group)
        )


@router.post(
    "/{name}/members", response_model=MembersChanged, summary="Add devices to a static group"
)
async def add_members(
    state: StateDep,
    scope: ScopeDep,
    name: str,
    body: Members,
    tenant: TenantParam = None,
    x_change_reason: ReasonHeader = None,
) -> MembersChanged:
    return await _members(state, scope, name, body, tenant, x_change_reason, add=True)


@router.post(
    "/{name}/members/remove",
    response_model=MembersChanged,
    summary="Remove devices from a static group",
)
async def remove_members(
    state: StateDep,
    scope: ScopeDep,
    name: str,
    body: Members,
    tenant: TenantParam = None,
    x_change_reason: ReasonHeader = None,
) -> MembersChanged:
    return await _members(state, scope, name, body, tenant, x_change_reason, add=False)


@router.get("/{name}/devices", response_model=Page[DeviceOut], summary="List a group's devices")
async def group_devices(
    state: StateDep,
    scope: ScopeDep,
    name: str,
    tenant: TenantParam = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    cursor: Annotated[str | None, Query(max_length=400)] = None,
) -> Page[DeviceOut]:
    async with state.db.read() as session:
        group = await groups.get_group(session, scope.principal, name, tenant)
        rows, next_cursor = await devices.list_devices(
            session, scope, f'group:"{group.name}"', limit=limit, cursor=cursor
        )
        return Page(items=await devices.render(session, scope, rows), next_cursor=next_cursor)
