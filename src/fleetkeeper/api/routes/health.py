"""Health flags with their evidence, and the maintenance due list (docs/monitoring.md)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from fleetkeeper.api.deps import PrincipalDep, ScopeDep, StateDep
from fleetkeeper.api.routes.devices import Cursor, FleetQuery, Limit
from fleetkeeper.errors import Invalid
from fleetkeeper.schemas.common import Page
from fleetkeeper.services.monitoring import health, maintenance
from fleetkeeper.services.monitoring.flags import CATALOGUE
from fleetkeeper.store.models import DeviceHealth

router = APIRouter(tags=["health"])
FLAG_NAMES = [spec.flag.value for spec in CATALOGUE]


class FlagOut(BaseModel):
    flag: str = Field(description=f"One of {', '.join(FLAG_NAMES)}.")
    metric: str = Field(description="The metric it is about; empty for the whole device.")
    detector: str = Field(description="What saw it, e.g. stuck_sensor for a faulty_sensor.")
    severity: str = Field(description="warning or critical.")
    since: datetime = Field(description="When the watch raised it.")
    checked_at: datetime = Field(description="When the watch last saw it.")
    evidence: dict[str, Any] = Field(description="What was seen; times in Unix seconds.")


class DeviceHealthOut(BaseModel):
    device_id: str
    flags: list[FlagOut]
    checked_at: datetime | None = Field(
        description="The newest check of a flag; null when the device carries none."
    )


class FlaggedDeviceOut(BaseModel):
    device_id: str
    serial: str
    name: str
    model: str
    site: str | None
    flags: list[FlagOut]


class VisitOut(BaseModel):
    device_id: str
    serial: str
    name: str
    model: str
    site: str | None
    maintenance: str = Field(description="replace_battery or free_storage.")
    flag: str = Field(description="battery_degraded or storage_filling.")
    severity: str
    due_at: datetime = Field(description="The uncertainty band's earliest date: visit before.")
    expected_at: datetime = Field(description="The fitted date.")
    latest_at: datetime = Field(description="The band's latest date.")
    overdue: bool = Field(description="The fitted date has passed, or the threshold is reached.")
    reason: str
    forecast: dict[str, Any] = Field(description="The forecast behind it (see the flag).")
    since: datetime
    checked_at: datetime


def _flag(row: DeviceHealth) -> FlagOut:
    return FlagOut(
        flag=row.flag,
        metric=row.metric,
        detector=row.detector,
        severity=row.severity,
        since=row.since,
        checked_at=row.checked_at,
        evidence=row.evidence,
    )


@router.get(
    "/api/v1/devices/{device_id}/health",
    response_model=DeviceHealthOut,
    summary="The health flags a device carries, with the evidence behind each",
)
async def device_health(
    state: StateDep, principal: PrincipalDep, device_id: str
) -> DeviceHealthOut:
    async with state.db.read() as session:
        device, rows = await health.device_flags(session, principal, device_id)
    return DeviceHealthOut(
        device_id=device.id,
        flags=[_flag(r) for r in rows],
        checked_at=max((r.checked_at for r in rows), default=None),
    )


@router.get(
    "/api/v1/fleet/health",
    response_model=Page[FlaggedDeviceOut],
    summary="The devices that carry health flags, with their flags and evidence",
)
async def fleet_health(
    state: StateDep,
    scope: ScopeDep,
    q: FleetQuery = None,
    flag: Annotated[
        str | None, Query(max_length=40, description="Only devices with this flag.")
    ] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[FlaggedDeviceOut]:
    if flag is not None and flag not in FLAG_NAMES:
        raise Invalid(f"flag: {flag!r} is none of {', '.join(FLAG_NAMES)}", field="flag")
    async with state.db.read() as session:
        page, next_cursor = await health.fleet_flags(
            session, scope, q, flag=flag, limit=limit, cursor=cursor
        )
    items = [
        FlaggedDeviceOut(
            device_id=f.device.id,
            serial=f.device.serial,
            name=f.device.name,
            model=f.model,
            site=f.site,
            flags=[_flag(r) for r in f.flags],
        )
        for f in page
    ]
    return Page(items=items, next_cursor=next_cursor)


@router.get(
    "/api/v1/fleet/maintenance",
    response_model=Page[VisitOut],
    summary="Devices due for a battery replacement or a storage cleanup within N days",
    description="From the watch's forecasts (a fitted trend with an uncertainty band): the "
    "units whose band starts within `within` (overdue ones included), most urgent first, "
    f"ready to become field work orders. The watch looks {maintenance.HORIZON.days} days "
    "ahead at most.",
)
async def fleet_maintenance(
    state: StateDep,
    scope: ScopeDep,
    within: Annotated[
        str, Query(max_length=20, description="How far ahead: 7d, 30d, 12h (bare number: days).")
    ] = "30d",
    q: FleetQuery = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[VisitOut]:
    span = maintenance.parse_within(within)
    async with state.db.read() as session:
        visits, next_cursor = await maintenance.due_list(
            session, scope, q, within=span, limit=limit, cursor=cursor
        )
    items = [VisitOut.model_validate(v, from_attributes=True) for v in visits]
    return Page(items=items, next_cursor=next_cursor)
