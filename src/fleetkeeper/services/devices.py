"""The device inventory: create, read, list by fleet query, change, delete, aggregate."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from fleetkeeper.errors import Conflict, Invalid, NotFound
from fleetkeeper.ids import uuid7
from fleetkeeper.query import CompileContext, compile_query, field_expression, parse
from fleetkeeper.schemas.devices import (
    Aggregate,
    AggregateBucket,
    DeviceCreate,
    DeviceOut,
    DevicePatch,
    Location,
    MetricReading,
)
from fleetkeeper.services import audit, lifecycle
from fleetkeeper.services.context import Change, Principal
from fleetkeeper.services.identity import decode_public_key, hash_claim_code
from fleetkeeper.services.selection import (
    QueryScope,
    compile_for,
    decode_cursor,
    encode_cursor,
    offline_after,
    visible_groups,
)
from fleetkeeper.store.db import dialect_of
from fleetkeeper.store.models import (
    Device,
    DeviceHealth,
    DeviceModel,
    DeviceTag,
    Group,
    GroupMember,
    TelemetryLatest,
    Tenant,
)
from fleetkeeper.versions import firmware_key

MAX_BUCKETS = 1000


async def model_by_name(session: AsyncSession, name: str, field: str = "model") -> DeviceModel:
    model = await session.scalar(select(DeviceModel).where(DeviceModel.name == name))
    if model is None:
        raise Invalid(
            f"unknown device model {name!r}: create it first (POST /api/v1/models)", field=field
        )
    return model


async def resolve_tenant(
    session: AsyncSession, principal: Principal, tenant: str | None, default: str = "default"
) -> str:
    tenant_id = tenant or principal.tenant_id or default
    principal.check_tenant(tenant_id)
    if await session.get(Tenant, tenant_id) is None:
        raise Invalid(f"unknown tenant {tenant_id!r}", field="tenant")
    return tenant_id


async def get_device(session: AsyncSession, principal: Principal, device_id: str) -> Device:
    principal.require("devices:read")
    device = await session.scalar(
        select(Device).where(Device.id == device_id, principal.tenant_filter(Device.tenant_id))
    )
    if device is None:
        raise NotFound(f"no device {device_id!r}")
    return device


def summary(device: Device, model_name: str, tags: Sequence[str]) -> dict[str, Any]:
    """What the audit trail keeps of a device."""
    return {
        "serial": device.serial,
        "name": device.name,
        "model": model_name,
        "tenant": device.tenant_id,
        "state": device.state,
        "firmware_version": device.firmware_version,
        "hardware_revision": device.hardware_revision,
        "attributes": device.attributes,
        "tags": list(tags),
        "location": device.location,
    }


async def create_device(session: AsyncSession, change: Change, data: DeviceCreate) -> Device:
    principal = change.principal
    principal.require("devices:write")
    model = await model_by_name(session, data.model)
    tenant_id = await resolve_tenant(session, principal, data.tenant)
    state = lifecycle.check_initial(data.state or "registered")
    if data.public_key is not None:
        decode_public_key(data.public_key)
    if await session.scalar(select(Device.id).where(Device.serial == data.serial)):
        raise Conflict(f"a device with serial {data.serial!r} exists already", field="serial")
    now = change.now()
    device = Device(
        id=uuid7(now),
        serial=data.serial,
        name=data.name or data.serial,
        model_id=model.id,
        tenant_id=tenant_id,
        state=state,
        firmware_version=data.firmware_version,
        firmware_key=firmware_key(data.firmware_version),
        hardware_revision=data.hardware_revision,
        attributes=data.attributes,
        location=data.location.model_dump(exclude_none=True) if data.location else None,
        created_at=now,
        updated_at=now,
        public_key=data.public_key,
        claim_code_hash=hash_claim_code(data.claim_code) if data.claim_code else None,
        credential_generation=0,
        wipe_pending=False,
    )
    session.add(device)
    session.add_all(DeviceTag(device_id=device.id, tag=t) for t in data.tags)
    await session.flush()
    await audit.append(
        session,
        change,
        action="device.create",
        target=f"device:{device.id}",
        tenant_id=tenant_id,
        after=summary(device, model.name, data.tags),
    )
    return device


async def update_device(
    session: AsyncSession, change: Change, device_id: str, patch: DevicePatch
) -> Device:
    principal = change.principal
    principal.require("devices:write")
    device = await get_device(session, principal, device_id)
    model_name = await session.scalar(
        select(DeviceModel.name).where(DeviceModel.id == device.model_id)
    )
    old_tags = await _tags_of(session, device.id)
    before = summary(device, model_name or "", old_tags)
    fields = patch.model_fields_set - {"reason"}
    if "model" in fields and patch.model is not None:
        model = await model_by_name(session, patch.model)
        device.model_id, model_name = model.id, model.name
    if "tenant" in fields and patch.tenant is not None and patch.tenant != device.tenant_id:
        principal.require("tenants:manage")
        device.tenant_id = await resolve_tenant(session, principal, patch.tenant)
        # Static memberships belong to the old tenant's groups.
        await session.execute(delete(GroupMember).where(GroupMember.device_id == device.id))
    if "state" in fields and patch.state is not None:
        lifecycle.check_transition(device.state, patch.state)
        device.state = patch.state
    if "name" in fields and patch.name is not None:
        device.name = patch.name
    _apply_reported(device, patch.model_dump(include=fields & REPORTED))
    tags = old_tags
    if "tags" in fields and patch.tags is not None:
        tags = patch.tags
        await session.execute(delete(DeviceTag).where(DeviceTag.device_id == device.id))
        session.add_all(DeviceTag(device_id=device.id, tag=t) for t in tags)
    after = summary(device, model_name or "", tags)
    await session.flush()
    if await audit.append_changes(
        session,
        change,
        action="device.update",
        target=f"device:{device.id}",
        tenant_id=device.tenant_id,
        before=before,
        after=after,
    ):
        device.updated_at = change.now()
    return device


REPORTED = frozenset({"firmware_version", "hardware_revision", "attributes", "location"})


def _apply_reported(device: Device, values: dict[str, Any]) -> None:
    """Set the fields a device may also report itself; attributes merge (None removes)."""
    if "firmware_version" in values:
        device.firmware_version = values["firmware_version"]
        device.firmware_key = firmware_key(values["firmware_version"])
    if "hardware_revision" in values:
        device.hardware_revision = values["hardware_revision"]
    if values.get("attributes") is not None:
        merged = dict(device.attributes)
        for key, value in values["attributes"].items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = value
        device.attributes = merged
    if "location" in values:
        location = values["location"]
        device.location = {k: v for k, v in location.items() if v is not None} if location else None


async def report_inventory(
    session: AsyncSession, change: Change, device_id: str, values: dict[str, Any]
) -> Device:
    """What a device says about itself; audited (as the device) only when something changed.

    A new location is not audited: a moving device reports one every few minutes, and its
    position history (services/geo) is where movements are kept.
    """
    device = await session.get_one(Device, device_id)
    model_name = await session.scalar(
        select(DeviceModel.name).where(DeviceModel.id == device.model_id)
    )
    tags = await _tags_of(session, device.id)
    before = summary(device, model_name or "", tags)
    _apply_reported(device, {k: v for k, v in values.items() if k in REPORTED})
    await session.flush()
    after = summary(device, model_name or "", tags)
    moved = before.pop("location", None) != after.pop("location", None)
    if (
        await audit.append_changes(
            session,
            change,
            action="device.report",
            target=f"device:{device.id}",
            tenant_id=device.tenant_id,
            before=before,
            after=after,
        )
        or moved
    ):
        device.updated_at = change.now()
    return device


async def delete_device(session: AsyncSession, change: Change, device_id: str) -> None:
    change.principal.require("devices:write")
    device = await get_device(session, change.principal, device_id)
    model_name = await session.scalar(
        select(DeviceModel.name).where(DeviceModel.id == device.model_id)
    )
    before = summary(device, model_name or "", await _tags_of(session, device.id))
    await session.delete(device)
    await session.flush()
    await audit.append(
        session,
        change,
        action="device.delete",
        target=f"device:{device.id}",
        tenant_id=device.tenant_id,
        before=before,
    )


async def _tags_of(session: AsyncSession, device_id: str) -> list[str]:
    stmt = select(DeviceTag.tag).where(DeviceTag.device_id == device_id).order_by(DeviceTag.tag)
    return list((await session.scalars(stmt)).all())


async def list_devices(
    session: AsyncSession, scope: QueryScope, q: str | None, *, limit: int, cursor: str | None
) -> tuple[list[Device], str | None]:
    scope.principal.require("devices:read")
    where = await compile_for(session, scope, q)
    stmt = select(Device).where(where)
    if cursor:
        stmt = stmt.where(Device.id > decode_cursor(cursor))
    rows = list((await session.scalars(stmt.order_by(Device.id).limit(limit + 1))).all())
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, encode_cursor(rows[-1].id) if more and rows else None


async def count_devices(session: AsyncSession, scope: QueryScope, q: str | None) -> int:
    scope.principal.require("devices:read")
    where = await compile_for(session, scope, q)
    return int(await session.scalar(select(func.count()).select_from(Device).where(where)) or 0)


async def aggregate(session: AsyncSession, scope: QueryScope, q: str | None, by: str) -> Aggregate:
    scope.principal.require("devices:read")
    where = await compile_for(session, scope, q)
    try:
        expr = field_expression(
            by,
            dialect_of(session),
            now=scope.now,
            online_window=scope.online_window,
            offline_after=await offline_after(session) if by == "online" else None,
        )
    except Invalid as exc:
        raise Invalid(exc.detail, field="by") from None
    count = func.count().label("n")
    stmt = (
        select(expr.label("value"), count)
        .select_from(Device)
        .where(where)
        .group_by(expr)
        .order_by(count.desc())
    )
    rows: list[tuple[Any, int]] = [(v, n) for v, n in await session.execute(stmt)]
    if by == "online":  # SQLite answers 1 and 0
        rows = [(bool(v), n) for v, n in rows]
    buckets = [AggregateBucket(value=v, count=n) for v, n in rows]
    return Aggregate(by=by, total=sum(b.count for b in buckets), buckets=buckets[:MAX_BUCKETS])


async def render(
    session: AsyncSession, scope: QueryScope, devices: Sequence[Device]
) -> list[DeviceOut]:
    """The public JSON of a page of devices: model names, tags and groups loaded in bulk."""
    if not devices:
        return []
    ids = [d.id for d in devices]
    model_ids = {d.model_id for d in devices}
    models: dict[int, str] = {}
    horizons: dict[int, datetime] = {}  # when a device of the model was last online
    for model_id, name, grace in await session.execute(
        select(DeviceModel.id, DeviceModel.name, DeviceModel.offline_after_seconds).where(
            DeviceModel.id.in_(model_ids)
        )
    ):
        models[model_id] = name
        window = timedelta(seconds=grace) if grace else scope.online_window
        horizons[model_id] = scope.now - window
    tags: dict[str, list[str]] = defaultdict(list)
    for device_id, tag in await session.execute(
        select(DeviceTag.device_id, DeviceTag.tag)
        .where(DeviceTag.device_id.in_(ids))
        .order_by(DeviceTag.tag)
    ):
        tags[device_id].append(tag)
    health: dict[str, list[str]] = defaultdict(list)
    for device_id, flag in await session.execute(
        select(DeviceHealth.device_id, DeviceHealth.flag)
        .where(DeviceHealth.device_id.in_(ids))
        .distinct()
        .order_by(DeviceHealth.device_id, DeviceHealth.flag)
    ):
        health[device_id].append(flag)
    metrics: dict[str, dict[str, MetricReading]] = defaultdict(dict)
    for device_id, metric, ts, value in await session.execute(
        select(
            TelemetryLatest.device_id,
            TelemetryLatest.metric,
            TelemetryLatest.ts,
            TelemetryLatest.value,
        )
        .where(TelemetryLatest.device_id.in_(ids))
        .order_by(TelemetryLatest.device_id, TelemetryLatest.metric)
    ):
        metrics[device_id][metric] = MetricReading(value=value, ts=ts)
    groups = await _groups_of(session, scope, devices)
    return [
        DeviceOut(
            id=d.id,
            serial=d.serial,
            name=d.name,
            model=models[d.model_id],
            tenant=d.tenant_id,
            state=d.state,
            firmware_version=d.firmware_version,
            hardware_revision=d.hardware_revision,
            attributes=d.attributes,
            tags=tags[d.id],
            groups=sorted(groups[d.id]),
            location=Location(**d.location) if d.location else None,
            online=d.last_seen is not None and d.last_seen >= horizons[d.model_id],
            last_seen=d.last_seen,
            created_at=d.created_at,
            updated_at=d.updated_at,
            health=health[d.id],
            metrics=metrics[d.id],
        )
        for d in devices
    ]


async def _groups_of(
    session: AsyncSession, scope: QueryScope, devices: Sequence[Device]
) -> dict[str, set[str]]:
    ids = [d.id for d in devices]
    found: dict[str, set[str]] = defaultdict(set)
    static = select(GroupMember.device_id, Group.name).join(Group, Group.id == GroupMember.group_id)
    for device_id, name in await session.execute(static.where(GroupMember.device_id.in_(ids))):
        found[device_id].add(name)
    tenants = {d.tenant_id for d in devices}
    dynamic = (
        await session.execute(
            select(Group.name, Group.query, Group.tenant_id).where(
                Group.query.is_not(None), Group.tenant_id.in_(tenants)
            )
        )
    ).all()
    contexts: dict[str, CompileContext] = {}
    grace = await offline_after(session) if dynamic else {}
    for name, query, tenant in dynamic:
        if tenant not in contexts:
            contexts[tenant] = CompileContext(
                dialect=dialect_of(session),
                now=scope.now,
                online_window=scope.online_window,
                groups=await visible_groups(session, tenant),
                offline_after=grace,
            )
        where = compile_query(parse(query or ""), contexts[tenant])
        members = await session.scalars(
            select(Device.id).where(Device.id.in_(ids), Device.tenant_id == tenant, where)
        )
        for device_id in members:
            found[device_id].add(name)
    return found
