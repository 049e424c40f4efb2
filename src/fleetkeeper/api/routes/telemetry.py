"""/api/v1/devices/{id}/telemetry: a device's measurements, raw or in buckets."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from fleetkeeper.api.deps import PrincipalDep, StateDep
from fleetkeeper.errors import Invalid
from fleetkeeper.services import telemetry
from fleetkeeper.services.devices import get_device

router = APIRouter(prefix="/api/v1/devices", tags=["telemetry"])


class PointOut(BaseModel):
    t: datetime = Field(description="the point's time, or its bucket's start")
    v: float = Field(description="the value, or the bucket's average")
    min: float | None = None
    max: float | None = None
    avg: float | None = None
    count: int | None = None


@router.get(
    "/{device_id}/telemetry",
    response_model=list[PointOut],
    response_model_exclude_none=True,
    summary="A device's measurements of one metric, raw or in buckets",
    description="Without `step`, ranges up to 6 hours come back raw (at most 10,000 points) "
    "and longer ones in about 500 buckets; `step=0` forces raw points. Buckets carry `min`, "
    "`max`, `avg` and `count`; `v` is the average.",
)
async def device_telemetry(
    state: StateDep,
    principal: PrincipalDep,
    device_id: str,
    metric: Annotated[str, Query(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")],
    from_: Annotated[
        str, Query(alias="from", max_length=40, description="ISO 8601, Unix seconds or -1h")
    ] = "-1h",
    to: Annotated[str | None, Query(max_length=40, description="default: now")] = None,
    step: Annotated[float | None, Query(ge=0, le=30 * 86400, description="seconds")] = None,
) -> list[PointOut]:
    now = state.clock.now()
    start = telemetry.parse_time(from_, now, "from")
    end = telemetry.parse_time(to, now, "to") if to else now
    if end <= start:
        raise Invalid("`to` is not after `from`", field="to")
    async with state.db.read() as session:
        device = await get_device(session, principal, device_id)
        rows = await telemetry.series(
            session, device.id, metric, start, end, telemetry.pick_step(start, end, step)
        )
    return [PointOut.model_validate(r) for r in rows]
