"""/api/v1/fleet: the fleet as a whole."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from fleetkeeper.api.deps import ScopeDep, StateDep
from fleetkeeper.api.routes.devices import FleetQuery
from fleetkeeper.services import overview as fleet_overview
from fleetkeeper.services.overview import DEFAULT_TOP, Overview

router = APIRouter(prefix="/api/v1/fleet", tags=["fleet"])


@router.get(
    "/overview",
    response_model=Overview,
    summary="The fleet at a glance: online, states, models, firmware, health, battery, signal",
)
async def overview(
    state: StateDep,
    scope: ScopeDep,
    q: FleetQuery = None,
    top: Annotated[
        int, Query(ge=1, le=100, description="How many firmware versions to list by name.")
    ] = DEFAULT_TOP,
) -> Overview:
    """Counts of the devices `q` selects (all you may see without it): online and offline
    (each model's own grace honoured), by state, model, firmware version (the `top` most
    common, the rest summed as `other`) and health flag, and the spread of the latest battery
    (%), rssi (dBm) and storage_used (%) readings as fixed bins with min, median and max."""
    async with state.db.read() as session:
        return await fleet_overview.overview(session, scope, q, top=top)
