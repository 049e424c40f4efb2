"""The end of a device's life and its continuation: retirement, replacement, claiming."""

from __future__ import annotations

from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from fleetkeeper.errors import Conflict, Forbidden, Invalid, NotFound
from fleetkeeper.services import audit, lifecycle
from fleetkeeper.services.context import Change
from fleetkeeper.services.devices import get_device
from fleetkeeper.services.identity import claim_code_matches
from fleetkeeper.store.models import Command, Device, DeviceTag, GroupMember


def _revoke(device: Device) -> None:
    """Every token the device holds stops working; a wipe waits for its next call."""
    device.credential_generation += 1
    device.wipe_pending = True


async def retire(session: AsyncSession, change: Change, device_id: str) -> Device:
    change.principal.require("devices:write")
    device = await get_device(session, change.principal, device_id)
    lifecycle.check_transition(device.state, "retired")
    before = device.state
    device.state = "retired"
    _revoke(device)
    device.updated_at = change.now()
    # Open commands die with the device.
    for cmd in (
        await session.scalars(
            select(Command).where(
                Command.device_id == device.id, Command.state.in_(("pending", "delivered"))
            )
        )
    ).all():
        cmd.state = "expired"
        cmd.completed_at = change.now()
    await audit.append(
        session,
        change,
        action="device.retire",
        target=f"device:{device.id}",
        tenant_id=device.tenant_id,
        before={"state": before},
        after={"state": "retired", "credentials": "revoked", "wipe": "queued"},
    )
    return device


async def replace(session: AsyncSession, change: Change, old_id: str, new_id: str) -> Device:
    """Move what the old device had (tenant, groups, tags, attributes, location) to the new
    one, retire the old one, and link both histories. Returns the new device."""
    change.principal.require("devices:write")
    if old_id == new_id:
        raise Invalid("a device cannot replace itself", field="new_device")
    old = await get_device(session, change.principal, old_id)
    new = await get_device(session, change.principal, new_id)
    if old.state == "retired":
        raise Conflict("the old device is retired already", field="device")
    if new.state == "retired" or new.replaces is not None:
        raise Conflict("the new device is retired or replaces another already", field="new_device")
    if old.tenant_id != new.tenant_id:
        change.principal.require("tenants:manage")
    new.tenant_id = old.tenant_id
    new.attributes = {**old.attributes, **new.attributes}
    new.location = new.location or old.location
    new.replaces = old.id
    old.replaced_by = new.id
    tags = set(
        (await session.scalars(select(DeviceTag.tag).where(DeviceTag.device_id == old.id))).all()
    )
    have = set(
        (await session.scalars(select(DeviceTag.tag).where(DeviceTag.device_id == new.id))).all()
    )
    if tags - have:
        await session.execute(
            insert(DeviceTag), [{"device_id": new.id, "tag": t} for t in sorted(tags - have)]
        )
    groups = set(
        (
            await session.scalars(
                select(GroupMember.group_id).where(GroupMember.device_id == old.id)
            )
        ).all()
    )
    in_groups = set(
        (
            await session.scalars(
                select(GroupMember.group_id).where(GroupMember.device_id == new.id)
            )
        ).all()
    )
    if groups - in_groups:
        await session.execute(
            insert(GroupMember),
            [{"group_id": g, "device_id": new.id} for g in sorted(groups - in_groups)],
        )
    await session.execute(delete(GroupMember).where(GroupMember.device_id == old.id))
    new.updated_at = change.now()
    await session.flush()
    await audit.append(
        session,
        change,
        action="device.replace",
        target=f"device:{new.id}",
        tenant_id=new.tenant_id,
        after={
            "replaces": old.id,
            "old_serial": old.serial,
            "new_serial": new.serial,
            "moved": {"tags": sorted(tags), "groups": len(groups), "tenant": old.tenant_id},
        },
    )
    await retire(session, change, old.id)
    return new


async def claim(session: AsyncSession, change: Change, serial: str, code: str) -> Device:
    """A customer's user attaches a device to their tenant with the code on its label, once."""
    principal = change.principal
    principal.require("devices:write")
    if principal.tenant_id is None:
        raise Forbidden("claiming attaches a device to your tenant: use a tenant user's token")
    device = await session.scalar(select(Device).where(Device.serial == serial))
    # The same answer for "no such serial" and "wrong code": serials are not secret, but
    # which ones carry claim codes should not be learnable by guessing.
    if device is None or not claim_code_matches(device.claim_code_hash, code):
        raise NotFound("no device with this serial and claim code")
    if device.claimed_at is not None:
        raise Conflict("this device was claimed already")
    before = device.tenant_id
    device.tenant_id = principal.tenant_id
    device.claimed_at = change.now()
    device.updated_at = change.now()
    device.claim_code_hash = None
    await session.execute(delete(GroupMember).where(GroupMember.device_id == device.id))
    await audit.append(
        session,
        change,
        action="device.claim",
        target=f"device:{device.id}",
        tenant_id=device.tenant_id,
        before={"tenant": before},
        after={"tenant": device.tenant_id, "serial": serial},
    )
    return device
