"""/api/v1/models: device models (hardware types)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from fleetkeeper.api.deps import PrincipalDep, ReasonHeader, ReasonQuery, StateDep, make_change
from fleetkeeper.schemas.common import Page
from fleetkeeper.schemas.inventory import ModelCreate, ModelOut, ModelPatch
from fleetkeeper.services import device_models

router = APIRouter(prefix="/api/v1/models", tags=["models"])


@router.get("", response_model=Page[ModelOut], summary="List device models")
async def list_models(state: StateDep, principal: PrincipalDep) -> Page[ModelOut]:
    async with state.db.read() as session:
        rows = await device_models.list_models(session, principal)
    return Page(items=[device_models.view(m) for m in rows])


@router.post("", status_code=201, response_model=ModelOut, summary="Create a device model")
async def create_model(
    state: StateDep,
    principal: PrincipalDep,
    body: ModelCreate,
    x_change_reason: ReasonHeader = None,
) -> ModelOut:
    change = make_change(state, principal, body.reason, x_change_reason)
    async with state.db.write() as session:
        return device_models.view(await device_models.create_model(session, change, body))


@router.get("/{name}", response_model=ModelOut, summary="Show a device model")
async def get_model(state: StateDep, principal: PrincipalDep, name: str) -> ModelOut:
    async with state.db.read() as session:
        return device_models.view(await device_models.get_model(session, principal, name))


@router.patch("/{name}", response_model=ModelOut, summary="Change a device model")
async def update_model(
    state: StateDep,
    principal: PrincipalDep,
    name: str,
    body: ModelPatch,
    x_change_reason: ReasonHeader = None,
) -> ModelOut:
    change = make_change(state, principal, body.reason, x_change_reason, reason_required=True)
    async with state.db.write() as session:
        return device_models.view(await device_models.update_model(session, change, name, body))


@router.delete("/{name}", status_code=204, summary="Delete a device model no device uses")
async def delete_model(
    state: StateDep,
    principal: PrincipalDep,
    name: str,
    reason: ReasonQuery = None,
    x_change_reason: ReasonHeader = None,
) -> Response:
    change = make_change(state, principal, reason, x_change_reason, reason_required=True)
    async with state.db.write() as session:
        await device_models.delete_model(session, change, name)
    return Response(status_code=204)
