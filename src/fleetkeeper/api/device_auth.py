"""Authenticating devices on the device API: `DeviceDep` and `ActiveDeviceDep`.

Every refusal of a credential is also written down as a security event, because repeated
refusals are what an intrusion looks like.
"""

from __future__ import annotations

from typing import Annotated, NoReturn
from urllib.parse import unquote

from fastapi import Depends, Request

from fleetkeeper.api.deps import StateDep
from fleetkeeper.api.state import AppState
from fleetkeeper.errors import FleetkeeperError, Forbidden, Unauthenticated
from fleetkeeper.services import security
from fleetkeeper.services.identity import TokenError, certificate_device, verify_token
from fleetkeeper.store.models import Device


class RateLimited(FleetkeeperError):
    status = 429
    title = "Too many requests"


def remote_addr(request: Request) -> str | None:
    return request.client.host if request.client else None


async def refuse(
    state: AppState,
    request: Request,
    error: FleetkeeperError,
    kind: str,
    device_id: str | None = None,
    serial: str | None = None,
) -> NoReturn:
    await security.record(
        state.db,
        at=state.clock.now(),
        kind=kind,
        detail=error.detail,
        device_id=device_id,
        serial=serial,
        remote_addr=remote_addr(request),
    )
    raise error


async def refuse_if_retired(state: AppState, request: Request, device: Device) -> None:
    if device.state == "retired":
        await refuse(
            state,
            request,
            Forbidden("this device was retired", code="device_retired", wipe=device.wipe_pending),
            "retired_device_call",
            device.id,
            device.serial,
        )


async def _credentials(request: Request, state: AppState) -> tuple[str, int | None, str | None]:
    """(device id, token generation, certificate serial) from a bearer token or, behind a
    proxy that terminates mutual TLS, from the forwarded client certificate."""
    now = state.clock.now()
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    cert_header = state.settings.client_cert_header
    if (
        (scheme.lower() != "bearer" or not token)
        and cert_header
        and request.headers.get(cert_header)
    ):
        try:
            device_id, serial = certificate_device(
                state.keys, unquote(request.headers[cert_header]), now
            )
        except TokenError as exc:
            await refuse(state, request, Unauthenticated(exc.detail, code=exc.code), exc.code)
        return device_id, None, serial
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated("send Authorization: Bearer <access token>", code="token_missing")
    try:
        claims = verify_token(state.keys.token_key, token.strip(), now)
    except TokenError as exc:
        error = Unauthenticated(exc.detail, code=exc.code)
        if exc.code == "token_expired":
            raise error from None
        await refuse(state, request, error, "token_invalid")
    return claims.device_id, claims.generation, None


async def authenticated_device(request: Request, state: StateDep) -> Device:
    now = state.clock.now()
    device_id, generation, cert_serial = await _credentials(request, state)
    wait = state.limiter.take(device_id)
    if wait > 0:
        raise RateLimited(
            f"too many requests: retry in {wait:.1f} s",
            code="rate_limited",
            retry_after=max(1, round(wait + 0.5)),
        )
    device = await state.device_cache.get(state.db, device_id)
    if device is None:
        await refuse(
            state,
            request,
            Unauthenticated("unknown device", code="unknown_device"),
            "unknown_device",
            device_id=device_id,
        )
    await refuse_if_retired(state, request, device)
    revoked = (
        generation != device.credential_generation
        if cert_serial is None
        # A certificate is good while it is the device's current one and nothing was revoked.
        else cert_serial != device.certificate_serial or device.credential_generation > 0
    )
    if revoked:
        await refuse(
            state,
            request,
            Forbidden("this device's credentials were revoked", code="credentials_revoked"),
            "revoked_credentials",
            device.id,
            device.serial,
        )
    state.presence.seen(device.id, now)
    return device


DeviceDep = Annotated[Device, Depends(authenticated_device)]


async def active_device(request: Request, state: StateDep, device: DeviceDep) -> Device:
    """A device allowed to send data: not pending (yet) and not quarantined."""
    if device.state == "pending":
        raise Forbidden(
            "the device waits to be accepted: only check-in works", code="device_pending"
        )
    if device.state == "quarantined":
        await refuse(
            state,
            request,
            Forbidden(
                "the device is quarantined: only check-in and command results work",
                code="device_quarantined",
            ),
            "quarantined_device_call",
            device.id,
            device.serial,
        )
    return device


ActiveDeviceDep = Annotated[Device, Depends(active_device)]
