"""One-off commands to one device: created by an operator, handed out at check-in, answered.

pending ──deliver──► delivered ──result──► succeeded | failed
   └────────────┴──── expiry ──► expired
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from fleetkeeper.errors import Conflict, Invalid, NotFound
from fleetkeeper.ids import uuid7
from fleetkeeper.services import audit
from fleetkeeper.services.context import Change, Principal
from fleetkeeper.services.devices import get_device
from fleetkeeper.store.models import Command

OPEN = ("pending", "delivered")
FINAL = ("succeeded", "failed", "expired")
TRANSITIONS: dict[str, frozenset[str]] = {
    "pending": frozenset({"delivered", "expired"}),
    "delivered": frozenset({"succeeded", "failed", "expired"}),
    "succeeded": frozenset(),
    "failed": frozenset(),
    "expired": frozenset(),
}
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,99}$")
MAX_OUTPUT = 65_536
DELIVER_BATCH = 20  # commands handed out per check-in at most


def effective_state(cmd: Command, now: datetime) -> str:
    """An open command past its expiry is expired, even before a sweep has written so."""
    return "expired" if cmd.state in OPEN and cmd.expires_at <= now else cmd.state


def view(cmd: Command, now: datetime) -> dict[str, Any]:
    return {
        "id": cmd.id,
        "device_id": cmd.device_id,
        "name": cmd.name,
        "args": cmd.args,
        "state": effective_state(cmd, now),
        "timeout": cmd.timeout,
        "created_by": cmd.created_by,
        "created_at": cmd.created_at,
        "expires_at": cmd.expires_at,
        "delivered_at": cmd.delivered_at,
        "completed_at": cmd.completed_at,
        "result": cmd.result,
        "output": cmd.output,
    }


async def create(
    session: AsyncSession,
    change: Change,
    device_id: str,
    *,
    name: str,
    args: dict[str, Any],
    timeout_s: int,
) -> Command:
    change.principal.require("commands:write")
    device = await get_device(session, change.principal, device_id)
    if not _NAME.match(name):
        raise Invalid(f"invalid command name {name!r}", field="name")
    if device.state in ("retired", "pending"):
        raise Conflict(f"device is {device.state}: it takes no commands", field="state")
    now = change.now()
    cmd = Command(
        id=uuid7(now),
        device_id=device.id,
        name=name,
        args=args,
        state="pending",
        timeout=timeout_s,
        created_by=change.principal.actor,
        created_at=now,
        expires_at=now + timedelta(seconds=timeout_s),
    )
    session.add(cmd)
    await session.flush()
    await audit.append(
        session,
        change,
        action="command.create",
        target=f"device:{device.id}",
        tenant_id=device.tenant_id,
        after={"command": cmd.id, "name": name, "args": args, "timeout": timeout_s},
    )
    return cmd


async def get(
    session: AsyncSession, principal: Principal, device_id: str, command_id: str
) -> Command:
    device = await get_device(session, principal, device_id)
    cmd = await session.get(Command, command_id)
    if cmd is None or cmd.device_id != device.id:
        raise NotFound(f"no command {command_id!r} for device {device_id!r}")
    return cmd


async def list_for(
    session: AsyncSession, principal: Principal, device_id: str, *, limit: int = 100
) -> list[Command]:
    device = await get_device(session, principal, device_id)
    stmt = (
        select(Command)
        .where(Command.device_id == device.id)
        .order_by(Command.created_at.desc(), Command.id.desc())
        .limit(limit)
    )
    return list((await session.scalars(stmt)).all())


async def expire_due(session: AsyncSession, device_id: str, now: datetime) -> None:
    await session.execute(
        update(Command)
        .where(Command.device_id == device_id, Command.state.in_(OPEN), Command.expires_at <= now)
        .values(state="expired", completed_at=now)
    )


async def deliver(session: AsyncSession, device_id: str, now: datetime) -> list[Command]:
    """Hand out the device's pending commands, oldest first, each once."""
    await expire_due(session, device_id, now)
    rows = list(
        (
            await session.scalars(
                select(Command)
                .where(Command.device_id == device_id, Command.state == "pending")
                .order_by(Command.created_at, Command.id)
                .limit(20)
                .with_for_update(skip_locked=True)
            )
        ).all()
    )
    for cmd in rows:
        cmd.state = "delivered"
        cmd.delivered_at = now
    return rows


async def complete(
    session: AsyncSession,
    device_id: str,
    command_id: str,
    *,
    state: str,
    result: Any,
    output: str | None,
    now: datetime,
) -> Command:
    if state not in ("succeeded", "failed"):
        raise Invalid("state must be succeeded or failed", field="state", code="invalid")
    await expire_due(session, device_id, now)
    cmd = await session.get(Command, command_id, with_for_update=True)
    if cmd is None or cmd.device_id != device_id:
        raise NotFound(f"no command {command_id!r} for this device", code="invalid")
    if state not in TRANSITIONS[cmd.state]:
        raise Conflict(f"command is {cmd.state}: it takes no result now", code="command_closed")
    cmd.state = state
    cmd.result = result
    cmd.output = output[:MAX_OUTPUT] if output else None
    cmd.completed_at = now
    return cmd
