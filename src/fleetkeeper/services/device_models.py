"""Device models: the hardware types of the fleet, with the schema of their configuration."""

from __future__ import annotations

from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from fleetkeeper.errors import Conflict, Forbidden, Invalid, NotFound
from fleetkeeper.schemas.inventory import ModelCreate, ModelOut, ModelPatch
from fleetkeeper.services import audit
from fleetkeeper.services.context import Change, Principal
from fleetkeeper.store.models import Device, DeviceModel


def _check_schema(schema: dict[str, Any] | None) -> None:
    if schema is None:
        return
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        where = "/".join(str(p) for p in exc.path) or "(root)"
        raise Invalid(
            f"config_schema is not a valid JSON Schema at {where}: {exc.message}",
            field="config_schema",
        ) from None


def _require_write(principal: Principal) -> None:
    principal.require("models:write")
    if principal.tenant_id is not None:
        raise Forbidden("device models are shared by all tenants: only platform users change them")


def view(model: DeviceModel) -> ModelOut:
    return ModelOut.model_validate(model, from_attributes=True)


def _summary(model: DeviceModel) -> dict[str, Any]:
    return view(model).model_dump(mode="json", exclude={"id", "created_at", "updated_at"})


async def get_model(session: AsyncSession, principal: Principal, name: str) -> DeviceModel:
    principal.require("models:read")
    model = await session.scalar(select(DeviceModel).where(DeviceModel.name == name))
    if model is None:
        raise NotFound(f"no device model {name!r}")
    return model


async def list_models(session: AsyncSession, principal: Principal) -> list[DeviceModel]:
    principal.require("models:read")
    return list((await session.scalars(select(DeviceModel).order_by(DeviceModel.name))).all())


async def create_model(session: AsyncSession, change: Change, data: ModelCreate) -> DeviceModel:
    _require_write(change.principal)
    _check_schema(data.config_schema)
    if await session.scalar(select(DeviceModel.id).where(DeviceModel.name == data.name)):
        raise Conflict(f"device model {data.name!r} exists already", field="name")
    now = change.now()
    model = DeviceModel(**data.model_dump(exclude={"reason"}), created_at=now, updated_at=now)
    session.add(model)
    await session.flush()
    await audit.append(
        session,
        change,
        action="model.create",
        target=f"model:{model.name}",
        tenant_id=None,
        after=_summary(model),
    )
    return model


async def update_model(
    session: AsyncSession, change: Change, name: str, patch: ModelPatch
) -> DeviceModel:
    _require_write(change.principal)
    model = await get_model(session, change.principal, name)
    before = _summary(model)
    fields = patch.model_fields_set - {"reason"}
    if "config_schema" in fields:
        _check_schema(patch.config_schema)
    for field in fields:
        value = getattr(patch, field)
        if field == "capabilities" and value is None:
            value = []
        setattr(model, field, value)
    after = _summary(model)
    if await audit.append_changes(
        session,
        change,
        action="model.update",
        target=f"model:{model.name}",
        tenant_id=None,
        before=before,
        after=after,
    ):
        model.updated_at = change.now()
    return model


async def delete_model(session: AsyncSession, change: Change, name: str) -> None:
    _require_write(change.principal)
    model = await get_model(session, change.principal, name)
    in_use = await session.scalar(
        select(func.count()).select_from(Device).where(Device.model_id == model.id)
    )
    if in_use:
        raise Conflict(f"device model {name!r} is used by {in_use} device(s)")
    before = _summary(model)
    await session.delete(model)
    await audit.append(
        session,
        change,
        action="model.delete",
        target=f"model:{name}",
        tenant_id=None,
        before=before,
    )
