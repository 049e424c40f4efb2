"""Getting devices in: provisioning tokens, enrolment, and accepting or rejecting devices.

Two ways in for a device that calls by itself:
- pre-authorised (zero-touch): an operator imported the serial with the device's public key;
- fleet provisioning token: a batch token in the firmware lets a device register into
  `pending` (or straight into `active` when the token says so).
A third way, customer claiming, attaches an already-registered device to a customer's tenant
(`services.claims`).
"""

from __future__ import annotations

import fnmatch
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from fleetkeeper.clock import Clock
from fleetkeeper.errors import (
    Conflict,
    FleetkeeperError,
    Forbidden,
    Invalid,
    NotFound,
    Unauthenticated,
)
from fleetkeeper.ids import uuid7
from fleetkeeper.services import audit, lifecycle
from fleetkeeper.services.auth import hash_token
from fleetkeeper.services.context import Change, Principal
from fleetkeeper.services.devices import get_device, model_by_name, resolve_tenant
from fleetkeeper.services.identity import (
    ServerKeys,
    certificate_pem,
    decode_public_key,
    issue_certificate,
    signature_valid,
)
from fleetkeeper.store.models import Device, DeviceModel, ProvisioningToken
from fleetkeeper.versions import firmware_key

TOKEN_PREFIX = "fkp_"


def enroll_message(serial: str, public_key: str) -> str:
    return f"enroll:{serial}:{public_key}"


def token_view(token: ProvisioningToken, model: str | None) -> dict[str, Any]:
    return {
        "id": token.id,
        "name": token.name,
        "prefix": token.prefix,
        "tenant": token.tenant_id,
        "model": model,
        "serial_pattern": token.serial_pattern,
        "max_uses": token.max_uses,
        "uses": token.uses,
        "auto_accept": token.auto_accept,
        "created_by": token.created_by,
        "created_at": token.created_at,
        "expires_at": token.expires_at,
        "revoked_at": token.revoked_at,
    }


async def create_token(
    session: AsyncSession,
    change: Change,
    *,
    name: str,
    tenant: str | None,
    model: str | None,
    serial_pattern: str | None,
    max_uses: int | None,
    expires_at: datetime | None,
    auto_accept: bool,
) -> tuple[ProvisioningToken, str]:
    """A new provisioning token and its secret (shown once, stored hashed)."""
    change.principal.require("provisioning:write")
    tenant_id = await resolve_tenant(session, change.principal, tenant)
    model_id = (await model_by_name(session, model)).id if model else None
    if max_uses is not None and max_uses < 1:
        raise Invalid("max_uses must be at least 1", field="max_uses")
    if expires_at is not None and expires_at <= change.now():
        raise Invalid("expires_at is in the past", field="expires_at")
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ProvisioningToken(
        id=uuid7(change.now()),
        token_hash=hash_token(secret),
        prefix=secret[:8],
        name=name,
        tenant_id=tenant_id,
        model_id=model_id,
        serial_pattern=serial_pattern,
        max_uses=max_uses,
        uses=0,
        auto_accept=auto_accept,
        created_by=change.principal.actor,
        created_at=change.now(),
        expires_at=expires_at,
    )
    session.add(token)
    await session.flush()
    await audit.append(
        session,
        change,
        action="provisioning_token.create",
        target=f"provisioning_token:{token.id}",
        tenant_id=tenant_id,
        after={
            "name": name,
            "model": model,
            "serial_pattern": serial_pattern,
            "max_uses": max_uses,
            "expires_at": expires_at,
            "auto_accept": auto_accept,
        },
    )
    return token, secret


async def list_tokens(
    session: AsyncSession, principal: Principal
) -> list[tuple[ProvisioningToken, str | None]]:
    principal.require("provisioning:write")
    stmt = (
        select(ProvisioningToken, DeviceModel.name)
        .outerjoin(DeviceModel, DeviceModel.id == ProvisioningToken.model_id)
        .where(principal.tenant_filter(ProvisioningToken.tenant_id))
        .order_by(ProvisioningToken.created_at)
    )
    return [(t, m) for t, m in await session.execute(stmt)]


async def revoke_token(session: AsyncSession, change: Change, token_id: str) -> ProvisioningToken:
    change.principal.require("provisioning:write")
    token = await session.get(ProvisioningToken, token_id)
    if token is None or (change.principal.tenant_id not in (None, token.tenant_id)):
        raise NotFound(f"no provisioning token {token_id!r}")
    if token.revoked_at is None:
        token.revoked_at = change.now()
        await audit.append(
            session,
            change,
            action="provisioning_token.revoke",
            target=f"provisioning_token:{token.id}",
            tenant_id=token.tenant_id,
            after={"name": token.name},
        )
    return token


@dataclass(frozen=True)
class EnrollRequest:
    serial: str
    model: str
    public_key: str
    proof: str
    provisioning_token: str | None = None
    firmware_version: str | None = None
    hardware_revision: str | None = None
    attributes: dict[str, Any] | None = None


@dataclass(frozen=True)
class Enrolled:
    device: Device
    certificate: str
    ca_certificate: str


class EnrollRefused(Exception):
    """Refused enrolments are security events; `kind` names the event."""

    def __init__(self, error: FleetkeeperError, kind: str) -> None:
        super().__init__(str(error))
        self.error = error
        self.kind = kind


async def _usable_token(
    session: AsyncSession, secret: str, req: EnrollRequest, now: datetime
) -> ProvisioningToken:
    token = await session.scalar(
        select(ProvisioningToken)
        .where(ProvisioningToken.token_hash == hash_token(secret))
        .with_for_update()
    )
    problem = None
    if token is None:
        problem = "unknown provisioning token"
    elif token.revoked_at is not None:
        problem = "the provisioning token was revoked"
    elif token.expires_at is not None and token.expires_at <= now:
        problem = "the provisioning token has expired"
    elif token.max_uses is not None and token.uses >= token.max_uses:
        problem = f"the provisioning token is used up ({token.max_uses} uses)"
    elif token.serial_pattern and not fnmatch.fnmatchcase(req.serial, token.serial_pattern):
        problem = f"serial {req.serial!r} is outside the token's pattern"
    elif token.model_id is not None:
        model = await session.get(DeviceModel, token.model_id)
        if model is None or model.name != req.model:
            problem = f"model {req.model!r} is outside the token's scope"
    if problem:
        raise EnrollRefused(Forbidden(problem, code="provisioning_refused"), "provisioning_refused")
    assert token is not None
    return token


async def enroll(
    session: AsyncSession, keys: ServerKeys, req: EnrollRequest, clock: Clock
) -> Enrolled:
    now = clock.now()
    decode_public_key(req.public_key)
    if not signature_valid(req.public_key, enroll_message(req.serial, req.public_key), req.proof):
        raise EnrollRefused(
            Unauthenticated("proof does not verify with public_key", code="signature_invalid"),
            "signature_invalid",
        )
    device = await session.scalar(select(Device).where(Device.serial == req.serial))
    if device is not None and device.enrolled_at is not None:
        same_key = device.public_key == req.public_key
        # The proof showed the caller holds this key: a device that lost its enrolment answer
        # learns its id back and can authenticate. Anyone else learns nothing.
        known = {"device_id": device.id} if same_key else {}
        raise EnrollRefused(
            Conflict(
                f"serial {req.serial!r} is enrolled already; authenticate instead",
                code="already_enrolled",
                **known,
            ),
            "enroll_repeated" if same_key else "enroll_key_mismatch",
        )
    if device is not None and device.state == "retired":
        raise EnrollRefused(
            Forbidden("this device was retired", code="device_retired"), "enroll_retired"
        )
    token = None
    if device is not None and device.public_key is not None:
        if device.public_key != req.public_key:
            raise EnrollRefused(
                Forbidden(
                    "this key is not the one pre-authorised for the serial",
                    code="not_preauthorised",
                ),
                "enroll_key_mismatch",
            )
        state = "active"
    elif req.provisioning_token:
        token = await _usable_token(session, req.provisioning_token, req, now)
        if device is not None and device.tenant_id != token.tenant_id:
            raise EnrollRefused(
                Forbidden(
                    "the token belongs to another tenant than the device",
                    code="provisioning_refused",
                ),
                "provisioning_refused",
            )
        state = "active" if token.auto_accept else "pending"
        token.uses += 1
    else:
        raise EnrollRefused(
            Forbidden(
                f"serial {req.serial!r} is not pre-authorised: a provisioning token is needed",
                code="not_preauthorised",
            ),
            "enroll_not_preauthorised",
        )
    model = await model_by_name(session, req.model)
    if device is None:
        assert token is not None
        device = Device(
            id=uuid7(now),
            serial=req.serial,
            name=req.serial,
            model_id=model.id,
            tenant_id=token.tenant_id,
            state=state,
            attributes={},
            created_at=now,
            updated_at=now,
            credential_generation=0,
            wipe_pending=False,
        )
        session.add(device)
    else:
        lifecycle.check_transition(device.state, state)
        device.state = state
    device.public_key = req.public_key
    device.enrolled_at = now
    device.updated_at = now
    if req.firmware_version is not None:
        device.firmware_version = req.firmware_version
        device.firmware_key = firmware_key(req.firmware_version)
    if req.hardware_revision is not None:
        device.hardware_revision = req.hardware_revision
    if req.attributes:
        device.attributes = {**device.attributes, **req.attributes}
    cert = issue_certificate(keys, req.public_key, serial=req.serial, device_id=device.id, now=now)
    device.certificate_serial = format(cert.serial_number, "x")
    await session.flush()
    change = Change(principal=device_principal(device), reason="enrolment", clock=clock)
    await audit.append(
        session,
        change,
        action="device.enroll",
        target=f"device:{device.id}",
        tenant_id=device.tenant_id,
        after={
            "serial": device.serial,
            "state": state,
            "model": model.name,
            "via": "provisioning_token" if token else "preauthorised",
            "provisioning_token": token.id if token else None,
        },
    )
    return Enrolled(device, certificate_pem(cert), keys.ca_pem)


def device_principal(device: Device) -> Principal:
    return Principal(actor=f"device:{device.serial}", role="device", tenant_id=device.tenant_id)


async def decide(session: AsyncSession, change: Change, device_id: str, *, accept: bool) -> Device:
    """Accept a pending device (→ active) or reject it (→ retired, credentials revoked)."""
    change.principal.require("devices:write")
    device = await get_device(session, change.principal, device_id)
    if device.state != "pending":
        raise Conflict(f"device is {device.state!r}, not pending", field="state")
    new = "active" if accept else "retired"
    lifecycle.check_transition(device.state, new)
    device.state = new
    device.updated_at = change.now()
    if not accept:
        device.credential_generation += 1
    await audit.append(
        session,
        change,
        action="device.accept" if accept else "device.reject",
        target=f"device:{device.id}",
        tenant_id=device.tenant_id,
        before={"state": "pending"},
        after={"state": new},
    )
    return device
