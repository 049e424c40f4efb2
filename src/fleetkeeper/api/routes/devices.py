"""/api/v1/devices: the inventory."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel

from fleetkeeper.api.deps import (
    PrincipalDep,
    ReasonHeader,
    ReasonQuery,
    ScopeDep,
    StateDep,
    make_change,
)
from fleetkeeper.errors import BadRequest, PayloadTooLarge
from fleetkeeper.schemas.common import Page
from fleetkeeper.schemas.devices import Aggregate, DeviceCreate, DeviceOut, DevicePatch
from fleetkeeper.services import devices, importer

router = APIRouter(prefix="/api/v1/devices", tags=["devices"])

FleetQuery = Annotated[
    str | None,
    Query(
        max_length=4000,
        description="Fleet query, e.g. `model = thermo AND firmware_version "
        "< 2.0.0 AND attributes.site = berlin-1` (see docs/query-language.md).",
    ),
]
Limit = Annotated[int, Query(ge=1, le=1000, description="Page size.")]
Cursor = Annotated[
    str | None, Query(max_length=400, description="`next_cursor` of the page before.")
]


class ImportResult(BaseModel):
    created: int


@router.get("", response_model=Page[DeviceOut], summary="List devices, optionally by fleet query")
async def list_devices(
    state: StateDep, scope: ScopeDep, q: FleetQuery = None, limit: Limit = 50, cursor: Cursor = None
) -> Page[DeviceOut]:
    async with state.db.read() as session:
        rows, next_cursor = await devices.list_devices(
            session, scope, q, limit=limit, cursor=cursor
        )
        return Page(items=await devices.render(session, scope, rows), next_cursor=next_cursor)


@router.post("", status_code=201, response_model=DeviceOut, summary="Register a device")
async def create_device(
    state: StateDep, scope: ScopeDep, body: DeviceCreate, x_change_reason: ReasonHeader = None
) -> DeviceOut:
    change = make_change(state, scope.principal, body.reason, x_change_reason)
    async with state.db.write() as session:
        device = await devices.create_device(session, change, body)
        return (await devices.render(session, scope, [device]))[0]


@router.get("/aggregate", response_model=Aggregate, summary="Count devices grouped by a field")
async def aggregate(
    state: StateDep,
    scope: ScopeDep,
    by: Annotated[
        str,
        Query(
            max_length=200,
            description="A field, e.g. firmware_version, model, state, tenant or attributes.site.",
        ),
    ],
    q: FleetQuery = None,
) -> Aggregate:
    async with state.db.read() as session:
        return await devices.aggregate(session, scope, q, by)


_IMPORT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "text/csv": {
                "schema": {"type": "string"},
                "example": "serial,model,firmware_version,tags,attributes.site\n"
                "SN-1,thermo-v2,1.4.2,pilot;north,berlin-1\n",
            },
            "application/json": {
                "schema": {"type": "array", "items": DeviceCreate.model_json_schema()}
            },
        },
    }
}


@router.post(
    "/import",
    status_code=201,
    response_model=ImportResult,
    summary="Register many devices at once from CSV or JSON (all or nothing)",
    openapi_extra=_IMPORT_BODY,
    responses={422: {"description": "Per-row errors in `errors`; nothing was imported."}},
)
async def import_devices(
    request: Request,
    state: StateDep,
    principal: PrincipalDep,
    reason: ReasonQuery = None,
    x_change_reason: ReasonHeader = None,
) -> ImportResult:
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = await request.body()
    if len(body) > state.settings.max_import_bytes:
        raise PayloadTooLarge(f"import larger than {state.settings.max_import_bytes} bytes")
    if content_type == "text/csv":
        try:
            rows: list[Any] = importer.parse_csv(body.decode("utf-8-sig"))
        except UnicodeDecodeError:
            raise BadRequest("the CSV is not UTF-8 text", field="body") from None
    elif content_type == "application/json":
        rows = importer.parse_json(body)
    else:
        raise BadRequest(
            f"unsupported content type {content_type!r}: send text/csv or application/json",
            field="content-type",
        )
    change = make_change(state, principal, reason, x_change_reason)
    async with state.db.write() as session:
        result = await importer.import_devices(session, change, rows)
    return ImportResult(created=result.created)


@router.get("/{device_id}", response_model=DeviceOut, summary="Show one device")
async def get_device(state: StateDep, scope: ScopeDep, device_id: str) -> DeviceOut:
    async with state.db.read() as session:
        device = await devices.get_device(session, scope.principal, device_id)
        return (await devices.render(session, scope, [device]))[0]


@router.patch("/{device_id}", response_model=DeviceOut, summary="Change a device")
async def update_device(
    state: StateDep,
    scope: ScopeDep,
    device_id: str,
    body: DevicePatch,
    x_change_reason: ReasonHeader = None,
) -> DeviceOut:
    change = make_change(state, scope.principal, body.reason, x_change_reason, reason_required=True)
    async with state.db.write() as session:
        device = await devices.update_device(session, change, device_id, body)
        state.device_cache.forget(device_id)
        return (await devices.render(session, scope, [device]))[0]


@router.delete("/{device_id}", status_code=204, summary="Remove a device from the inventory")
async def delete_device(
    state: StateDep,
    principal: PrincipalDep,
    device_id: str,
    reason: ReasonQuery = None,
    x_change_reason: ReasonHeader = None,
) -> Response:
    change = make_change(state, principal, reason, x_change_reason, reason_required=True)
    async with state.db.write() as session:
        await devices.delete_device(session, change, device_id)
    state.device_cache.forget(device_id)
    return Response(status_code=204)
