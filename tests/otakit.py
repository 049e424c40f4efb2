"""A fleet for rollout tests in a line: enrolled devices that check in and report on jobs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import FastAPI

from devicekit import Device, provisioning_token
from fleetkeeper.clock import FakeClock
from fleetkeeper.services.scheduler import Scheduler, TickReport


@dataclass
class Fleet:
    admin: httpx.AsyncClient
    app: FastAPI
    clock: FakeClock
    devices: list[Device] = field(default_factory=list)

    @property
    def scheduler(self) -> Scheduler:
        scheduler: Scheduler = self.app.state.fleetkeeper.scheduler
        return scheduler

    async def tick(self, seconds: float = 0) -> TickReport:
        if seconds:
            self.clock.advance(seconds)
        return await self.scheduler.tick()

    async def refresh(self) -> None:
        """What the server's housekeeping does every second: learn which devices have work."""
        state = self.app.state.fleetkeeper
        await state.pending.refresh(state.db, self.clock.now())

    async def jobs(self) -> dict[str, list[dict[str, Any]]]:
        """Every device checks in once; the jobs each was handed, by serial."""
        await self.refresh()
        out: dict[str, list[dict[str, Any]]] = {}
        for device in self.devices:
            r = await device.call("POST", "/checkin", json={})
            assert r.status_code == 200, r.text
            if r.json()["jobs"]:
                out[device.serial] = r.json()["jobs"]
        return out

    def by_serial(self, serial: str) -> Device:
        return next(d for d in self.devices if d.serial == serial)

    async def report(self, serial: str, job_id: str, state: str, **fields: Any) -> httpx.Response:
        device = self.by_serial(serial)
        return await device.call("POST", f"/jobs/{job_id}", json={"state": state, **fields})

    async def succeed(self, jobs: dict[str, list[dict[str, Any]]], version: str) -> None:
        for serial, handed in jobs.items():
            for job in handed:
                for step in ("downloading", "installing", "succeeded"):
                    body = {"version": version} if step == "succeeded" else {}
                    r = await self.report(serial, job["id"], step, **body)
                    assert r.status_code == 200, r.text


async def fleet(
    admin: httpx.AsyncClient,
    app: FastAPI,
    clock: FakeClock,
    count: int,
    *,
    model: str = "thermo-v2",
    firmware: str = "1.0.0",
    prefix: str = "OTA",
    attributes: dict[str, Any] | None = None,
) -> Fleet:
    """`count` enrolled, accepted, logged-in devices of `model` running `firmware`."""
    await admin.post("/api/v1/models", json={"name": model})
    token = await provisioning_token(admin, auto_accept=True)
    out = Fleet(admin, app, clock)
    for n in range(count):
        device = Device(admin, f"{prefix}-{n:04d}", model=model)
        extra: dict[str, Any] = {"firmware_version": firmware}
        if attributes:
            extra["attributes"] = attributes
        r = await device.enroll(token, **extra)
        assert r.status_code == 201, r.text
        assert (await device.login()).status_code == 200
        out.devices.append(device)
    return out


async def artifact(
    admin: httpx.AsyncClient,
    version: str = "2.0.0",
    models: str = "thermo-v2",
    payload: bytes | None = None,
    **form: str,
) -> dict[str, Any]:
    data = payload if payload is not None else f"firmware {version}\n".encode() * 64
    r = await admin.post(
        "/api/v1/artifacts",
        files={"file": (f"fw-{version}.bin", data, "application/octet-stream")},
        data={"version": version, "models": models, **form},
    )
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


async def deploy(admin: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    body.setdefault("target", "model = thermo-v2")
    body.setdefault("seed", 7)
    r = await admin.post("/api/v1/deployments", json=body)
    assert r.status_code == 201, r.text
    data: dict[str, Any] = r.json()
    return data


async def show(admin: httpx.AsyncClient, deployment_id: str) -> dict[str, Any]:
    r = await admin.get(f"/api/v1/deployments/{deployment_id}")
    assert r.status_code == 200, r.text
    data: dict[str, Any] = r.json()
    return data


# A policy that leaves pacing out of the way: everything ready starts at once, no jitter.
FAST = {"rate": {"base_per_minute": 10_000, "max_per_minute": 10_000}, "jitter": 0}
