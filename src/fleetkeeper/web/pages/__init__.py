"""The dashboard's pages, one router per area."""

from __future__ import annotations

from fastapi import APIRouter

from fleetkeeper.web.pages import auth, overview

ROUTERS: list[APIRouter] = [auth.router, overview.router]
