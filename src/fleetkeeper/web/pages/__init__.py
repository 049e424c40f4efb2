"""The dashboard's pages, one router per area."""

from __future__ import annotations

from fastapi import APIRouter

from fleetkeeper.web.pages import alerts, audit, auth, deployments, devices, overview, users

ROUTERS: list[APIRouter] = [
    auth.router,
    overview.router,
    devices.router,
    deployments.router,
    alerts.router,
    audit.router,
    users.router,
]
