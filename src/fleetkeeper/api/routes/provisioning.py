"""/api/v1/provisioning-tokens and /api/v1/claims: how devices get in and to their owners."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse
from pydantic import AwareDatetime, BaseModel, Field

from fleetkeeper.api.deps import (
    PrincipalDep,
    ReasonHeader,
    ReasonQuery,
    ScopeDep,
    StateDep,
    make_change,
)
from fleetkeeper.schemas.common import Input, Page, Reason
from fleetkeeper.schemas.devices import DeviceOut
from fleetkeeper.services import devices, provisioning, retirement

router = APIRouter(prefix="/api/v1", tags=["provisioning"])


class ProvisioningTokenCreate(Input):
    name: str = Field(default="provisioning", min_length=1, max_length=200)
    tenant: str | None = Field(default=None, max_length=64)
    model: str | None = Field(default=None, max_length=100, description="Only this model.")
    serial_pattern: str | None = Field(
        default=None, max_length=200, description="Only serials matching, e.g. SN-2026-*"
    )
    max_uses: int | None = Field(default=None, ge=1)
    expires_at: AwareDatetime | None = Field(
        default=None, description="ISO 8601 with a time zone (a naive time is refused)."
    )
    auto_accept: bool = Field(
        default=False, description="Devices become active at once instead of pending."
    )
    reason: Reason = None


class ProvisioningTokenOut(BaseModel):
    id: str
    name: str
    prefix: str
    tenant: str
    model: str | None
    serial_pattern: str | None
    max_uses: int | None
    uses: int
    auto_accept: bool
    created_by: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


class NewProvisioningToken(ProvisioningTokenOut):
    token: str = Field(description="The secret, shown this once.")


class ClaimIn(Input):
    serial: str = Field(min_length=1, max_length=128)
    claim_code: str = Field(min_length=1, max_length=128)
    reason: Reason = None


@router.post(
    "/provisioning-tokens",
    status_code=201,
    response_model=NewProvisioningToken,
    summary="Create a fleet provisioning token",
)
async def create_token(
    state: StateDep,
    principal: PrincipalDep,
    body: ProvisioningTokenCreate,
    x_change_reason: ReasonHeader = None,
) -> NewProvisioningToken:
    change = make_change(state, principal, body.reason, x_change_reason)
    async with state.db.write() as session:
        token, secret = await provisioning.create_token(
            session,
            change,
            name=body.name,
            tenant=body.tenant,
            model=body.model,
            serial_pattern=body.serial_pattern,
            max_uses=body.max_uses,
            expires_at=body.expires_at,
            auto_accept=body.auto_accept,
        )
    return NewProvisioningToken(**provisioning.token_view(token, body.model), token=secret)


@router.get(
    "/provisioning-tokens",
    response_model=Page[ProvisioningTokenOut],
    summary="List provisioning tokens (never their secrets)",
)
async def list_tokens(state: StateDep, principal: PrincipalDep) -> Page[ProvisioningTokenOut]:
    async with state.db.read() as session:
        rows = await provisioning.list_tokens(session, principal)
    return Page(items=[ProvisioningTokenOut(**provisioning.token_view(t, m)) for t, m in rows])


@router.delete(
    "/provisioning-tokens/{token_id}",
    response_model=ProvisioningTokenOut,
    summary="Revoke a provisioning token",
)
async def revoke_token(
    state: StateDep,
    principal: PrincipalDep,
    token_id: str,
    reason: ReasonQuery = None,
    x_change_reason: ReasonHeader = None,
) -> ProvisioningTokenOut:
    change = make_change(state, principal, reason, x_change_reason)
    async with state.db.write() as session:
        token = await provisioning.revoke_token(session, change, token_id)
    return ProvisioningTokenOut(**provisioning.token_view(token, None))


@router.get(
    "/device-ca",
    response_class=PlainTextResponse,
    summary="The device CA certificate (PEM), for a proxy that verifies device certificates",
)
async def device_ca(state: StateDep, principal: PrincipalDep) -> PlainTextResponse:
    principal.require("devices:read")
    return PlainTextResponse(state.keys.ca_pem, media_type="application/x-pem-file")


@router.post(
    "/claims",
    response_model=DeviceOut,
    summary="Claim a device into your tenant with the code on its label",
)
async def claim(
    state: StateDep, scope: ScopeDep, body: ClaimIn, x_change_reason: ReasonHeader = None
) -> DeviceOut:
    change = make_change(state, scope.principal, body.reason, x_change_reason)
    async with state.db.write() as session:
        device = await retirement.claim(session, change, body.serial, body.claim_code)
        state.device_cache.forget(device.id)
        return (await devices.render(session, scope, [device]))[0]
