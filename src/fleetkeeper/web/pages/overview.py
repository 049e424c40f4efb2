"""The fleet at a glance: online share, states, firmware, open alerts and incidents,
deployments in progress, and the fleet map."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy import func, select

from fleetkeeper.api.deps import StateDep
from fleetkeeper.services import overview as fleet_overview
from fleetkeeper.services.geo import positions
from fleetkeeper.services.selection import QueryScope
from fleetkeeper.store.models import AlertIncident, AlertRecord, Deployment
from fleetkeeper.web.common import UserDep, render

router = APIRouter(include_in_schema=False)

ACTIVE_DEPLOYMENTS = ("scheduled", "running", "paused")
MAP_POINTS = 5000


def scope_of(request: Request, user: Any) -> QueryScope:
    state = request.app.state.fleetkeeper
    return QueryScope(
        principal=user.principal, now=state.clock.now(), online_window=state.online_window
    )


@router.get("/", response_class=HTMLResponse)
async def overview_page(request: Request, state: StateDep, user: UserDep) -> HTMLResponse:
    scope = scope_of(request, user)
    principal = user.principal
    async with state.db.read() as session:
        summary = await fleet_overview.overview(session, scope, None)
        alerts: dict[str, int] = {}
        incidents = 0
        if principal.can("alerts:read"):
            rows = await session.execute(
                select(AlertRecord.severity, func.count())
                .where(
                    AlertRecord.state == "firing",
                    principal.tenant_filter(AlertRecord.tenant_id),
                )
                .group_by(AlertRecord.severity)
            )
            alerts = {severity: count for severity, count in rows}
            incidents = int(
                await session.scalar(
                    select(func.count())
                    .select_from(AlertIncident)
                    .where(
                        AlertIncident.closed_at.is_(None),
                        principal.tenant_filter(AlertIncident.tenant_id),
                    )
                )
                or 0
            )
        deployments = []
        if principal.can("deployments:read"):
            deployments = list(
                (
                    await session.scalars(
                        select(Deployment)
                        .where(
                            Deployment.state.in_(ACTIVE_DEPLOYMENTS),
                            principal.tenant_filter(Deployment.tenant_id),
                        )
                        .order_by(Deployment.id.desc())
                        .limit(10)
                    )
                ).all()
            )
    online_pct = round(100 * summary.online / summary.total, 1) if summary.total else 0.0
    return render(
        request,
        "overview.html",
        user,
        summary=summary,
        online_pct=online_pct,
        alerts=alerts,
        firing=sum(alerts.values()),
        incidents=incidents,
        deployments=deployments,
    )


@router.get("/ui/data/map")
async def map_data(
    request: Request,
    state: StateDep,
    user: UserDep,
    q: Annotated[str | None, Query(max_length=4000)] = None,
) -> Response:
    """The fleet map's points as GeoJSON, for the dashboard's own scripts."""
    async with state.db.read() as session:
        points, truncated = await positions.map_points(
            session, scope_of(request, user), q, limit=MAP_POINTS
        )
    features = [
        {
            "type": "Feature",
            "id": p.id,
            "geometry": {"type": "Point", "coordinates": [p.lon, p.lat]},
            "properties": {
                "serial": p.serial,
                "online": p.online,
                "state": p.state,
                "model": p.model,
            },
        }
        for p in points
    ]
    body = {"type": "FeatureCollection", "features": features, "truncated": truncated}
    return Response(orjson.dumps(body), media_type="application/geo+json")
