"""The ASGI application: `create_app(settings)` wires settings, database, clock and routes."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from fleetkeeper import __version__
from fleetkeeper.api import problems
from fleetkeeper.api.middleware import BodyLimit, RequestContext
from fleetkeeper.api.routes import (
    alerting,
    alerts,
    artifacts,
    audit,
    deployments,
    device,
    device_artifacts,
    devices,
    fleet,
    geo,
    groups,
    health,
    lifecycle,
    models,
    provisioning,
    security,
    telemetry,
    tokens,
    users,
)
from fleetkeeper.api.state import AppState
from fleetkeeper.clock import Clock, SystemClock
from fleetkeeper.services.bootstrap import bootstrap
from fleetkeeper.services.context import SYSTEM, Change
from fleetkeeper.services.identity import load_server_keys
from fleetkeeper.services.ratelimit import RateLimiter
from fleetkeeper.services.release_keys import load_server_key
from fleetkeeper.settings import Settings
from fleetkeeper.store.artifacts import LocalArtifactStore
from fleetkeeper.store.db import Database
from fleetkeeper.store.indexes import ensure_attribute_indexes, parse_keys
from fleetkeeper.store.migrate import upgrade
from fleetkeeper.web import install as _web_install

log = logging.getLogger("fleetkeeper")

DESCRIPTION = """
Fleetkeeper manages fleets of IoT devices: inventory, groups, fleet queries, audit.

Authenticate with `Authorization: Bearer <token>`. Errors are `application/problem+json`.
Lists are paginated with `limit` and `cursor`. Mutations take a `reason` (body field or
`X-Change-Reason` header) that lands in the audit trail.
"""


async def _housekeeping(state: AppState, every: float = 1.0) -> None:
    """Per-replica background work: last-seen times out, pending commands in."""
    ticks = 0
    while True:
        await asyncio.sleep(every)
        ticks += 1
        try:
            await state.pending.refresh(state.db, state.clock.now())
            await state.device_cache.forget_changed(state.db, state.clock.now())
            if ticks % 2 == 0:
                await state.presence.flush(state.db)
            await state.telemetry_upkeep.tick(state.clock.now())
        except Exception:  # a failed round keeps its data for the next one
            log.exception("background housekeeping failed; will retry")


async def _schedule(state: AppState, every: float) -> None:
    """Move deployments on: every `every` seconds, or at once when kicked."""
    while True:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(every):
                await state.scheduler_kicked.wait()
        state.scheduler_kicked.clear()
        try:
            await state.scheduler.tick()
        except Exception:  # the next round starts from what the database holds
            log.exception("rollout scheduler round failed; will retry")


async def _monitor(state: AppState, every: float) -> None:
    """The health watch: asked every `every` seconds, on one replica at a time."""
    while True:
        await asyncio.sleep(every)
        try:
            async with state.db.exclusive("health-watch") as mine:
                if mine:
                    await state.health_watch.tick()
        except Exception:  # flags stay as they were until a round succeeds
            log.exception("health watch round failed; will retry")


async def _alerting(state: AppState, every: float) -> None:
    """Alert rules judged and notifications queued (on one replica at a time), then the
    queued notifications delivered."""
    held = False
    while True:
        await asyncio.sleep(every)
        try:
            async with state.db.exclusive("alerting") as mine:
                if mine:
                    await state.alert_engine.tick()
                elif held:
                    state.alert_engine.reset()  # another replica took over: reload if back
                held = mine
        except Exception:  # alerts stay as stored; the next round reloads what it needs
            log.exception("alerting round failed; will retry")
            state.alert_engine.reset()
        try:
            for _ in range(20):  # a backlog: whole batches back to back, within reason
                if not (await state.deliverer.tick()).more:
                    break
        except Exception:  # undelivered notifications stay queued
            log.exception("notification delivery failed; will retry")


class _LabelledRoute(Route):
    """A plain Starlette route that names itself in the scope, as FastAPI's routes do: the
    request metrics label requests by it (FastAPI's router sets it only for its own)."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["route"] = self
        await super().handle(scope, receive, send)


# FastAPI 0.165+ looks up OpenTelemetry providers on every request (a fifteenth of a telemetry
# request's CPU); Fleetkeeper reports through /metrics (Prometheus) and does not use them.
_NO_OPENTELEMETRY: dict[str, Any] = (
    {"telemetry": {"tracing": False, "metrics": False, "logs": False}}
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters
    else {}
)


def create_app(settings: Settings | None = None, *, clock: Clock | None = None) -> FastAPI:
    settings = settings or Settings()
    clock = clock or SystemClock()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        url = settings.resolved_database_url()
        if url.startswith("sqlite"):
            settings.data_dir.mkdir(parents=True, exist_ok=True)
        await upgrade(url)
        db = Database(url)
        await ensure_attribute_indexes(db, parse_keys(settings.indexed_attributes))
        start = Change(principal=SYSTEM, reason="server start", clock=clock)
        async with db.write() as session:
            result = await bootstrap(
                session,
                start,
                admin_token=settings.admin_token,
                admin_password=settings.admin_password,
            )
            keys = await load_server_keys(session, clock.now())
            release_key = await load_server_key(session, start)
        artifact_store = LocalArtifactStore(settings.data_dir / "artifacts")
        await asyncio.to_thread(artifact_store.sweep_incoming)
        state = AppState(
            settings=settings,
            db=db,
            clock=clock,
            keys=keys,
            limiter=RateLimiter(
                clock, rate=settings.device_rate_per_second, burst=settings.device_rate_burst
            ),
            artifacts=artifact_store,
            release_key=release_key,
        )
        app.state.fleetkeeper = state
        app.state.new_admin_token = result.new_admin_token
        if result.new_admin_token:
            print(
                "\nFirst start: a new admin API token (shown once, keep it safe):\n"
                f"    {result.new_admin_token}\n",
                file=sys.stderr,
                flush=True,
            )
        await state.pending.refresh(db, clock.now())
        await state.device_cache.forget_changed(db, clock.now())
        tasks = [asyncio.create_task(_housekeeping(state), name="housekeeping")]
        if settings.scheduler_interval_seconds > 0:
            every = settings.scheduler_interval_seconds
            tasks.append(asyncio.create_task(_schedule(state, every), name="scheduler"))
        if settings.alert_interval_seconds > 0:
            every = settings.alert_interval_seconds
            tasks.append(asyncio.create_task(_alerting(state, every), name="alerting"))
        if settings.monitor_interval_seconds > 0:
            every = settings.monitor_interval_seconds
            tasks.append(asyncio.create_task(_monitor(state, every), name="health-watch"))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await state.ingestor.close()
            await state.deliverer.aclose()
            await state.presence.flush(db)
            await db.dispose()

    app = FastAPI(
        title="Fleetkeeper",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        responses={
            401: {"description": "Missing, unknown, expired or revoked token (problem+json)"},
            403: {"description": "The token's role lacks the permission (problem+json)"},
        },
        **_NO_OPENTELEMETRY,
    )
    problems.install(app)
    for router in (
        devices.router,
        fleet.router,
        lifecycle.router,
        models.router,
        groups.router,
        provisioning.router,
        audit.router,
        security.router,
        tokens.router,
        users.router,
        deployments.router,
        telemetry.router,
        health.router,
        device.router,
        artifacts.router,
        device_artifacts.router,
        geo.router,
        alerting.router,
        alerts.router,
    ):
        app.include_router(router)
    _web_install(app)
    # The device API's hottest route, served without FastAPI's per-request machinery; the
    # FastAPI route of the same path stays behind it for the OpenAPI document.
    app.router.routes.insert(
        0, _LabelledRoute("/device/v1/telemetry", device.telemetry_endpoint, methods=["POST"])
    )

    @app.get("/healthz", tags=["server"], summary="200 once the server is ready")
    async def healthz() -> dict[str, str]:
        state: AppState = app.state.fleetkeeper
        async with state.db.read() as session:
            await session.execute(text("SELECT 1"))
        return {"status": "ok", "version": __version__}

    @app.get(
        "/metrics", tags=["server"], summary="Prometheus metrics", response_class=PlainTextResponse
    )
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    app.add_middleware(
        BodyLimit,
        default=settings.max_body_bytes,
        by_prefix=[
            ("/api/v1/devices/import", settings.max_import_bytes),
            # The file streams into the artifact store; the rest is a few form fields.
            ("/api/v1/artifacts", settings.max_artifact_bytes + settings.max_body_bytes),
            ("/artifacts/upload", settings.max_artifact_bytes + settings.max_body_bytes),
            ("/device/v1/logs", settings.device_max_log_bytes),
            ("/device/v1/", settings.device_max_body_bytes),
        ],
    )
    app.add_middleware(RequestContext)
    return app
