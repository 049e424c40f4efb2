"""Simulated fleets against the real app, in-process: the server, its clock, and a few waits.

The server and the simulator share a clock that starts at a fixed time and runs at real
speed, so telemetry timestamps are "now" for the server and its rate limits refill. The
tests' settings leave the rollout scheduler to the test (`scheduler_interval_seconds=0`):
`Live.scheduling()` runs it, as `fleetkeeper serve` would, while a block runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy import select

from conftest import ADMIN_TOKEN
from fleetkeeper.api.app import create_app
from fleetkeeper.settings import Settings
from fleetkeeper.sim import Simulator, parse
from fleetkeeper.sim.device import Status
from fleetkeeper.store.db import Database
from fleetkeeper.store.models import TelemetryPoint

SERVER = "http://fleetkeeper.test"
QUICK = {
    "checkin_interval": 0.3,
    "telemetry_interval": 0.3,
    "inventory_interval": 60,
    "update_step": 0.05,
    "reboot_seconds": 0.05,
    "enroll_rate": 200,
    "concurrency": 16,
}
log = logging.getLogger("tests.simkit")
SCHEDULER_EVERY = 0.05  # seconds between two rounds of the rollout scheduler


class RunningClock:
    def __init__(self) -> None:
        self.start = datetime(2026, 1, 1, tzinfo=UTC)
        self.origin = time.monotonic()

    def now(self) -> datetime:
        return self.start + timedelta(seconds=time.monotonic() - self.origin)


class Counting(httpx.AsyncBaseTransport):
    """The app's transport, counting the device API requests that reach the server."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.device_requests = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.startswith("/device/v1/") and not path.endswith("/ping"):
            self.device_requests += 1
        return await self.inner.handle_async_request(request)


@dataclass
class Live:
    app: FastAPI
    transport: Counting
    admin: httpx.AsyncClient
    clock: RunningClock
    db: Database

    def simulator(
        self, transport: httpx.AsyncBaseTransport | None = None, **scenario: Any
    ) -> Simulator:
        return Simulator(
            parse({**QUICK, **scenario}),
            SERVER,
            admin_token=ADMIN_TOKEN,
            transport=transport or self.transport,
            clock=self.clock,
        )

    async def get(self, path: str, **params: Any) -> Any:
        response = await self.admin.get(path, params=params)
        assert response.status_code == 200, response.text
        return response.json()

    async def post(self, path: str, status: int = 200, **kwargs: Any) -> Any:
        response = await self.admin.post(path, **kwargs)
        assert response.status_code == status, response.text
        return response.json()

    async def devices(self) -> dict[str, dict[str, Any]]:
        page = await self.get("/api/v1/devices", limit=1000)
        return {d["serial"]: d for d in page["items"]}

    async def points(self, device_id: str, metric: str | None = None) -> list[TelemetryPoint]:
        stmt = select(TelemetryPoint).where(TelemetryPoint.device_id == device_id)
        if metric is not None:
            stmt = stmt.where(TelemetryPoint.metric == metric)
        async with self.db.read() as session:
            return list((await session.scalars(stmt.order_by(TelemetryPoint.ts))).all())

    @contextlib.asynccontextmanager
    async def scheduling(self) -> AsyncIterator[None]:
        """The server's rollout scheduler and its "who has work" refresh, running meanwhile."""
        state = self.app.state.fleetkeeper

        async def rounds() -> None:
            while True:
                try:
                    await state.scheduler.tick()
                    await state.pending.refresh(state.db, self.clock.now())
                except Exception:  # as the server does: the next round starts afresh
                    log.exception("a rollout scheduler round failed")
                await asyncio.sleep(SCHEDULER_EVERY)

        task = asyncio.create_task(rounds(), name="test-scheduler")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


@contextlib.asynccontextmanager
async def live_server(settings: Settings, db: Database) -> AsyncIterator[Live]:
    clock = RunningClock()
    app = create_app(settings, clock=clock)
    async with app.router.lifespan_context(app):
        transport = Counting(httpx.ASGITransport(app=app))
        async with httpx.AsyncClient(
            transport=transport,
            base_url=SERVER,
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        ) as admin:
            yield Live(app, transport, admin, clock, db)


@dataclass
class Run:
    """A simulator running in the background until `stop`."""

    sim: Simulator
    task: asyncio.Task[dict[str, Any]]

    async def stop(self) -> dict[str, Any]:
        self.sim.stop()
        return await self.task


@contextlib.asynccontextmanager
async def running(sim: Simulator, duration: float = 120.0) -> AsyncIterator[Run]:
    task = asyncio.create_task(sim.run(duration=duration), name="test-simulator")
    try:
        yield Run(sim, task)
    finally:
        if not task.done():
            sim.stop()
            with contextlib.suppress(Exception):
                await task


async def until(condition: Callable[[], bool], within: float = 3.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.02)


def ready(sim: Simulator, count: int) -> Callable[[], bool]:
    return lambda: (
        sum(d.status is Status.ACTIVE and d.reported is not None for d in sim.devices) == count
    )
