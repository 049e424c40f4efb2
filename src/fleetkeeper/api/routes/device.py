"""/device/v1: what devices speak (docs/protocol.md)."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field, ValidationError

from fleetkeeper.api.deps import StateDep
from fleetkeeper.api.device_auth import (
    ActiveDeviceDep,
    DeviceDep,
    active_device,
    authenticated_device,
    refuse,
    refuse_if_retired,
)
from fleetkeeper.api.state import AppState
from fleetkeeper.errors import BadRequest, Forbidden, Unauthenticated, Unavailable
from fleetkeeper.ids import uuid7
from fleetkeeper.schemas.common import Input
from fleetkeeper.schemas.deployments import JobAnswerOut, JobOut, JobReportIn
from fleetkeeper.schemas.devices import Attributes, Location, Serial, Version
from fleetkeeper.services import (
    audit,
    commands,
    devices,
    executions,
    geo,
    identity,
    provisioning,
    telemetry,
)
from fleetkeeper.services.context import Change
from fleetkeeper.services.ingest import IngestFailed
from fleetkeeper.services.provisioning import device_principal
from fleetkeeper.store.models import Device, DeviceLog

router = APIRouter(prefix="/device/v1", tags=["device API"])


class EnrollIn(Input):
    serial: Serial
    model: str = Field(min_length=1, max_length=100)
    public_key: str = Field(max_length=64, description="base64 of the 32-byte Ed25519 key")
    proof: str = Field(max_length=200, description="signature of enroll:<serial>:<public_key>")
    provisioning_token: str | None = Field(default=None, max_length=200)
    firmware_version: Version | None = None
    hardware_revision: str | None = Field(default=None, max_length=100)
    attributes: Attributes | None = None


class EnrollOut(BaseModel):
    device_id: str
    state: str
    certificate: str
    ca_certificate: str


class ChallengeIn(Input):
    device_id: str = Field(max_length=36)


class ChallengeOut(BaseModel):
    challenge: str
    expires_at: datetime


class TokenIn(Input):
    device_id: str = Field(max_length=36)
    challenge: str = Field(max_length=100)
    signature: str = Field(max_length=200)


class TokenOut(BaseModel):
    access_token: str
    token_type: str = "Bearer"
    expires_in: int


class CheckinIn(Input):
    wait: float = Field(default=0, ge=0, le=60, description="long-poll up to this many seconds")
    status: dict[str, Any] | None = Field(default=None, description="free-form health summary")


class CommandOut(BaseModel):
    id: str
    name: str
    args: dict[str, Any]
    timeout: int
    expires_at: datetime


class CheckinOut(BaseModel):
    state: str
    commands: list[CommandOut]
    next_checkin: int
    wipe: bool = False
    jobs: list[JobOut] = Field(
        default_factory=list, description="deployment executions to act on (docs/ota.md)"
    )


class ResultIn(Input):
    state: str = Field(description="succeeded or failed")
    result: Any = None
    output: str | None = Field(default=None, max_length=commands.MAX_OUTPUT)


class InventoryIn(Input):
    firmware_version: Version | None = None
    hardware_revision: str | None = Field(default=None, max_length=100)
    attributes: Attributes | None = None
    location: Location | None = None


class InventoryOut(BaseModel):
    device_id: str
    serial: str
    state: str
    firmware_version: str | None
    attributes: dict[str, Any]
    location: Location | None


class TelemetryIn(BaseModel):
    # Points are checked one by one (partial acceptance), so they stay loosely typed here.
    points: list[Any] = Field(max_length=telemetry.MAX_POINTS)


class RejectedPoint(BaseModel):
    index: int
    reason: str


class TelemetryOut(BaseModel):
    accepted: int
    rejected: list[RejectedPoint]


class LogOut(BaseModel):
    id: str
    bytes: int


@router.get("/ping", summary="Reachability check: no authentication, no database")
async def ping() -> dict[str, bool]:
    return {"ok": True}


@router.post("/enroll", status_code=201, response_model=EnrollOut, summary="Enrol a device")
async def enroll(request: Request, state: StateDep, body: EnrollIn) -> EnrollOut:
    req = provisioning.EnrollRequest(**body.model_dump())
    try:
        async with state.db.write() as session:
            done = await provisioning.enroll(session, state.keys, req, state.clock)
    except provisioning.EnrollRefused as refused:
        await refuse(state, request, refused.error, refused.kind, serial=body.serial)
    return EnrollOut(
        device_id=done.device.id,
        state=done.device.state,
        certificate=done.certificate,
        ca_certificate=done.ca_certificate,
    )


@router.post("/auth/challenge", response_model=ChallengeOut, summary="Get a one-time challenge")
async def challenge(request: Request, state: StateDep, body: ChallengeIn) -> ChallengeOut:
    async with state.db.write() as session:
        device = await session.get(Device, body.device_id)
        if device is not None and device.public_key is not None:
            text, expires = await identity.new_challenge(session, device.id, state.clock.now())
            return ChallengeOut(challenge=text, expires_at=expires)
    await refuse(
        state,
        request,
        Unauthenticated("unknown device", code="unknown_device"),
        "unknown_device",
        device_id=body.device_id,
    )


@router.post("/auth/token", response_model=TokenOut, summary="Trade a signed challenge for a token")
async def token(request: Request, state: StateDep, body: TokenIn) -> TokenOut:
    now = state.clock.now()
    async with state.db.write() as session:
        device = await session.get(Device, body.device_id)
        fresh = await identity.consume_challenge(session, body.device_id, body.challenge, now)
    if device is None or device.public_key is None:
        await refuse(
            state,
            request,
            Unauthenticated("unknown device", code="unknown_device"),
            "unknown_device",
            device_id=body.device_id,
        )
    if not fresh:
        await refuse(
            state,
            request,
            Unauthenticated("unknown, used or expired challenge", code="challenge_invalid"),
            "challenge_invalid",
            device.id,
            device.serial,
        )
    message = f"auth:{device.id}:{body.challenge}"
    if not identity.signature_valid(device.public_key, message, body.signature):
        await refuse(
            state,
            request,
            Unauthenticated("the signature does not verify", code="signature_invalid"),
            "signature_invalid",
            device.id,
            device.serial,
        )
    await refuse_if_retired(state, request, device)
    access, ttl = identity.issue_token(
        state.keys.token_key, device.id, device.credential_generation, now
    )
    return TokenOut(access_token=access, expires_in=ttl)


@router.post("/checkin", response_model=CheckinOut, summary="Say alive, learn what to do")
async def checkin(
    request: Request, state: StateDep, device: DeviceDep, body: CheckinIn
) -> CheckinOut:
    interval = state.settings.checkin_interval_seconds
    if device.state == "pending":
        return CheckinOut(state="pending", commands=[], next_checkin=interval)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + body.wait
    while True:
        now = state.clock.now()
        # A device that hung up while waiting must not be handed commands it will never see.
        if device.id in state.pending and not await request.is_disconnected():
            async with state.db.write() as session:
                handed = await commands.deliver(session, device.id, now)
                jobs = await executions.jobs_for(session, device.id, now)
            if len(handed) < commands.DELIVER_BATCH:
                state.pending.discard(device.id)
            out = [
                CommandOut(
                    id=c.id, name=c.name, args=c.args, timeout=c.timeout, expires_at=c.expires_at
                )
                for c in handed
            ]
            if out or jobs:
                return CheckinOut(
                    state=device.state,
                    commands=out,
                    next_checkin=interval,
                    jobs=[JobOut.model_validate(j) for j in jobs],
                )
        remaining = deadline - loop.time()
        if remaining <= 0:
            return CheckinOut(state=device.state, commands=[], next_checkin=interval)
        await state.notifier.wait(device.id, remaining)


@router.post("/commands/{command_id}", status_code=204, summary="Report a command's outcome")
async def command_result(
    state: StateDep, device: DeviceDep, command_id: str, body: ResultIn
) -> None:
    if device.state == "pending":
        raise Forbidden("a pending device has no commands", code="device_pending")
    change = Change(principal=device_principal(device), clock=state.clock)
    async with state.db.write() as session:
        cmd = await commands.complete(
            session,
            device.id,
            command_id,
            state=body.state,
            result=body.result,
            output=body.output,
            now=change.now(),
        )
        await audit.append(
            session,
            change,
            action="command.result",
            target=f"device:{device.id}",
            tenant_id=device.tenant_id,
            after={"command": cmd.id, "name": cmd.name, "state": cmd.state},
        )


@router.post(
    "/jobs/{job_id}", response_model=JobAnswerOut, summary="Report a deployment job's progress"
)
async def job_report(
    request: Request, state: StateDep, device: DeviceDep, job_id: str, body: JobReportIn
) -> JobAnswerOut:
    if device.state == "pending":
        raise Forbidden("a pending device has no jobs", code="device_pending")
    change = Change(
        principal=device_principal(device), reason="reported by the device", clock=state.clock
    )
    async with state.db.write() as session:
        execution, _, refused = await executions.report(
            session, change, device, job_id, body.model_dump(), state.scheduler.rng
        )
        answer = JobAnswerOut(state=execution.state, cancel=execution.cancel_requested)
    if isinstance(refused, executions.ImpossibleReport):
        async with state.db.write() as session:
            await executions.record_impossible(session, change, device, job_id, refused)
        await refuse(state, request, refused, "invalid_transition", device.id, device.serial)
    if refused is not None:
        raise refused
    if execution.state in ("succeeded", "failed", "rolled_back", "canceled", "queued"):
        state.kick_scheduler()
    return answer


@router.post("/inventory", response_model=InventoryOut, summary="Report what the device is")
async def inventory(state: StateDep, device: ActiveDeviceDep, body: InventoryIn) -> InventoryOut:
    change = Change(
        principal=device_principal(device), reason="reported by the device", clock=state.clock
    )
    async with state.db.write() as session:
        row = await devices.report_inventory(
            session, change, device.id, body.model_dump(exclude_unset=True)
        )
        if body.location is not None:
            await geo.record_position(session, row, body.location.model_dump(), state.clock.now())
    return InventoryOut(
        device_id=row.id,
        serial=row.serial,
        state=row.state,
        firmware_version=row.firmware_version,
        attributes=row.attributes,
        location=Location(**row.location) if row.location else None,
    )


@router.post(
    "/telemetry",
    response_model=TelemetryOut,
    summary="Send measurements",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": TelemetryIn.model_json_schema()}},
        }
    },
)
async def send_telemetry(
    request: Request, state: StateDep, device: ActiveDeviceDep
) -> TelemetryOut:
    # Documents the route; `telemetry_endpoint` below serves it (api/app.py puts it first).
    return TelemetryOut.model_validate(await _receive_telemetry(request, state, device))


async def telemetry_endpoint(request: Request) -> Response:
    """POST /device/v1/telemetry as a plain Starlette endpoint: the hottest route skips
    FastAPI's dependency solving and response model. Same authentication (the functions
    behind `ActiveDeviceDep`), same answers, same errors (the app's exception handlers)."""
    state: AppState = request.app.state.fleetkeeper
    device = await active_device(request, state, await authenticated_device(request, state))
    answer = await _receive_telemetry(request, state, device)
    return Response(orjson.dumps(answer), media_type="application/json")


async def _receive_telemetry(request: Request, state: AppState, device: Device) -> dict[str, Any]:
    # The body is parsed with orjson (a tenth of json's time), then checked by the model
    # FastAPI would use, with the same 422 on a bad shape.
    try:
        body = TelemetryIn.model_validate(orjson.loads(await request.body()))
    except orjson.JSONDecodeError as exc:
        raise RequestValidationError(
            [{"type": "json_invalid", "loc": ("body",), "msg": f"JSON decode error: {exc}"}]
        ) from None
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]
        ) from None
    now = state.clock.now()
    rows, rejected = telemetry.validate(body.points, now, state.retention.raw)
    try:
        await state.ingestor.write(telemetry.points_of(device.id, rows), now)
    except IngestFailed as exc:
        raise Unavailable(str(exc), code="telemetry_not_stored") from None
    return {
        "accepted": len(rows),
        "rejected": [{"index": r.index, "reason": r.reason} for r in rejected],
    }


@router.post(
    "/logs",
    status_code=201,
    response_model=LogOut,
    summary="Upload a log excerpt",
    openapi_extra={"requestBody": {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def upload_logs(
    request: Request,
    state: StateDep,
    device: ActiveDeviceDep,
    source: Annotated[str, Query(max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")] = "agent",
) -> LogOut:
    raw = await request.body()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("logs must be UTF-8 text", code="malformed") from None
    now = state.clock.now()
    log_id = uuid7(now)
    async with state.db.write() as session:
        session.add(
            DeviceLog(
                id=log_id, device_id=device.id, at=now, source=source, size=len(raw), text=text
            )
        )
    return LogOut(id=log_id, bytes=len(raw))
