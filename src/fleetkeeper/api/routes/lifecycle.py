"""/api/v1/devices/{id}/accept|reject|retire|replace and commands: acting on one device."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from functools import partial
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field
from sqlalchemy.ext.asyncio import AsyncSession

from fleetkeeper.api.deps import ReasonHeader, ScopeDep, StateDep, make_change
from fleetkeeper.schemas.common import Input, Page, Reason
from fleetkeeper.schemas.devices import DeviceOut
from fleetkeeper.services import commands, devices, provisioning, retirement
from fleetkeeper.services.context import Change

router = APIRouter(prefix="/api/v1/devices", tags=["devices"])


class Decision(Input):
    reason: Reason = None


class ReplaceIn(Input):
    new_device: str = Field(description="Id of the device that takes the old one's place.")
    reason: Reason = None


class CommandIn(Input):
    name: str = Field(min_length=1, max_length=100, examples=["ping"])
    args: dict[str, Any] = Field(default_factory=dict)
    timeout: int = Field(
        default=60,
        ge=1,
        le=7 * 86400,
        description="Seconds until the command expires if not answered.",
    )
    reason: Reason = None


class CommandOut(BaseModel):
    id: str
    device_id: str
    name: str
    args: dict[str, Any]
    state: str = Field(description="pending, delivered, succeeded, failed or expired")
    timeout: int
    created_by: str
    created_at: datetime
    expires_at: datetime
    delivered_at: datetime | None
    completed_at: datetime | None
    result: Any
    output: str | None


async def _render(state: StateDep, scope: ScopeDep, device_id: str) -> DeviceOut:
    async with state.db.read() as session:
        device = await devices.get_device(session, scope.principal, device_id)
        return (await devices.render(session, scope, [device]))[0]


Transition = Callable[[AsyncSession, Change, str], Awaitable[Any]]


def _transition_route(action: str, summary: str, act: Transition, *, needs_reason: bool) -> None:
    """POST /{device_id}/<action>: one lifecycle step, answered with the device as it is now."""

    async def transition(
        state: StateDep,
        scope: ScopeDep,
        device_id: str,
        body: Decision | None = None,
        x_change_reason: ReasonHeader = None,
    ) -> DeviceOut:
        reason = body.reason if body else None
        change = make_change(
            state, scope.principal, reason, x_change_reason, reason_required=needs_reason
        )
        async with state.db.write() as session:
            await act(session, change, device_id)
        state.device_cache.forget(device_id)
        return await _render(state, scope, device_id)

    router.post(
        f"/{{device_id}}/{action}",
        response_model=DeviceOut,
        summary=summary,
        name=f"{action}_device",
    )(transition)


_transition_route(
    "accept",
    "Accept a pending device",
    partial(provisioning.decide, accept=True),
    needs_reason=False,
)
_transition_route(
    "reject",
    "Reject a pending device (retired, credentials revoked)",
    partial(provisioning.decide, accept=False),
    needs_reason=False,
)
_transition_route(
    "retire",
    "Retire a device: revoke its credentials, queue a wipe, keep its history",
    retirement.retire,
    needs_reason=True,
)


@router.post(
    "/{device_id}/replace",
    response_model=DeviceOut,
    summary="Replace a device: move tenant, groups, tags, attributes and location to "
    "the new one, retire the old one, link both histories",
)
async def replace(
    state: StateDep,
    scope: ScopeDep,
    device_id: str,
    body: ReplaceIn,
    x_change_reason: ReasonHeader = None,
) -> DeviceOut:
    change = make_change(state, scope.principal, body.reason, x_change_reason, reason_required=True)
    async with state.db.write() as session:
        new = await retirement.replace(session, change, device_id, body.new_device)
    state.device_cache.forget(device_id)
    state.device_cache.forget(new.id)
    return await _render(state, scope, new.id)


@router.post(
    "/{device_id}/commands",
    status_code=201,
    response_model=CommandOut,
    summary="Send a one-off command to the device",
)
async def send_command(
    state: StateDep,
    scope: ScopeDep,
    device_id: str,
    body: CommandIn,
    x_change_reason: ReasonHeader = None,
) -> CommandOut:
    change = make_change(state, scope.principal, body.reason, x_change_reason)
    async with state.db.write() as session:
        cmd = await commands.create(
            session, change, device_id, name=body.name, args=body.args, timeout_s=body.timeout
        )
        out = CommandOut(**commands.view(cmd, change.now()))
    state.pending.add(cmd.device_id)  # after commit: the device may long-poll right now
    return out


@router.get(
    "/{device_id}/commands",
    response_model=Page[CommandOut],
    summary="The device's commands, newest first",
)
async def list_commands(state: StateDep, scope: ScopeDep, device_id: str) -> Page[CommandOut]:
    async with state.db.read() as session:
        rows = await commands.list_for(session, scope.principal, device_id)
    return Page(items=[CommandOut(**commands.view(c, scope.now)) for c in rows])


@router.get(
    "/{device_id}/commands/{command_id}",
    response_model=CommandOut,
    summary="One command with its state and result",
)
async def get_command(
    state: StateDep, scope: ScopeDep, device_id: str, command_id: str
) -> CommandOut:
    async with state.db.read() as session:
        cmd = await commands.get(session, scope.principal, device_id, command_id)
    return CommandOut(**commands.view(cmd, scope.now))
