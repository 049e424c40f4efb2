"""Deployments driving simulated devices against the real app (SQLite, and PostgreSQL when
reachable): what the deployment says happened is what the simulator did and what each device
runs. The rollout scheduler runs beside the fleet (`Live.scheduling`), as in `fleetkeeper serve`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from fleetkeeper.settings import Settings
from fleetkeeper.sim import admin
from fleetkeeper.sim.catalogue import firmware_hash, image_sha256
from fleetkeeper.sim.device import SimDevice
from fleetkeeper.sim.update import UNTOUCHED
from fleetkeeper.store.db import Database
from simkit import Live, live_server, ready, running, until

MODEL, RELEASE = "thermo-v2", "2.4.0"
THERMO = {"mix": {MODEL: 1}}
# Pacing out of the way: every ready device starts at once; no retries unless a test asks.
STEADY: dict[str, Any] = {
    "rate": {"base_per_minute": 10_000, "max_per_minute": 10_000},
    "jitter": 0,
    "retries": [],
}
FINAL = frozenset({"succeeded", "failed", "timed_out", "rolled_back", "canceled", "skipped"})


@pytest.fixture
async def live(settings: Settings, db: Database) -> AsyncIterator[Live]:
    async with live_server(settings, db) as server, server.scheduling():
        yield server


async def release(live: Live, version: str = RELEASE) -> str:
    artifact = await admin.upload_release(live.admin, MODEL, version)
    return str(artifact["id"])


async def deploy(live: Live, **body: Any) -> str:
    body.setdefault("target", f"model = {MODEL}")
    created = await live.post("/api/v1/deployments", 201, json=body)
    return str(created["id"])


async def executions(live: Live, deployment_id: str) -> dict[str, dict[str, Any]]:
    page = await live.get(f"/api/v1/deployments/{deployment_id}/executions", limit=1000)
    return {e["serial"]: e for e in page["items"]}


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, "timed out waiting"
        await asyncio.sleep(0.1)


async def settled(live: Live, deployment_id: str, within: float = 60.0) -> dict[str, Any]:
    """The deployment once every execution is final (and the deployment itself is no longer
    running); then its executions by serial."""

    async def done() -> bool:
        shown = await live.get(f"/api/v1/deployments/{deployment_id}")
        over = all(e["state"] in FINAL for e in (await executions(live, deployment_id)).values())
        return over and shown["state"] != "running"

    await eventually(done, within)
    shown: dict[str, Any] = await live.get(f"/api/v1/deployments/{deployment_id}")
    return shown


def outcome(device: SimDevice) -> tuple[str, str | None]:
    """How an update ends on this device, by the defects it carries (the first one shows)."""
    if device.has("update_download_corrupt"):
        return "failed", "integrity_check_failure"
    if device.has("update_install_fail"):
        return "failed", "update_failed"
    if device.has("update_health_fail"):
        return "rolled_back", "health_check_failed"
    return "succeeded", None


async def test_a_phased_deployment_ends_as_the_simulator_says_on_every_device(
    live: Live,
) -> None:
    faults = {
        "update_download_corrupt": 0.05,
        "update_install_fail": 0.05,
        "update_health_fail": 0.1,
    }
    sim = live.simulator(devices=20, faults=faults, **THERMO)
    async with running(sim) as run:
        await until(ready(sim, 20), within=20)
        before = {d.serial: d.firmware.version for d in sim.devices}
        # At most four devices carry a defect, so each phase reaches 20 % and goes on.
        policy = {**STEADY, "phases": [25, 50, 100], "success_threshold": 20}
        deployment_id = await deploy(
            live, artifact_id=await release(live), rollout={**policy, "error_threshold": 100}
        )
        shown = await settled(live, deployment_id)
        summary = await run.stop()

    assert shown["state"] == "finished"
    assert [p["size"] for p in shown["phases"]] == [5, 5, 10]
    ran = await executions(live, deployment_id)
    assert {s: (e["state"], e["reason"]) for s, e in ran.items()} == {
        d.serial: outcome(d) for d in sim.devices
    }
    counts, updates, jobs = shown["counts"], summary["updates"], summary["jobs"]
    for state in ("succeeded", "failed", "rolled_back"):
        assert counts[state] == updates[state] == jobs[state]
    assert updates["attempted"] == jobs["received"] == 20
    assert summary["errors"] == 0
    on_server = await live.devices()
    for device in sim.devices:
        updated = outcome(device)[0] == "succeeded"
        assert device.firmware.version == (RELEASE if updated else before[device.serial])
        assert on_server[device.serial]["firmware_version"] == device.firmware.version


async def test_a_cancel_before_installing_leaves_the_device_as_it_was(live: Live) -> None:
    sim = live.simulator(devices=1, update_step=2.0, **THERMO)
    async with running(sim) as run:
        await until(ready(sim, 1), within=20)
        (device,) = sim.devices
        before = device.firmware
        deployment_id = await deploy(live, artifact_id=await release(live), rollout=STEADY)

        async def downloading() -> bool:
            ran = await executions(live, deployment_id)
            return ran[device.serial]["state"] == "downloading"

        await eventually(downloading)
        await live.post(f"/api/v1/deployments/{deployment_id}/cancel", json={"reason": "oops"})
        await settled(live, deployment_id)
        summary = await run.stop()

    ran = await executions(live, deployment_id)
    assert ran[device.serial]["state"] == "canceled"
    assert device.firmware == before
    assert summary["updates"]["attempted"] == summary["updates"]["canceled"] == 1
    assert summary["jobs"]["canceled"] == 1


class Gate(httpx.AsyncBaseTransport):
    """Job reports cannot get through while it is closed (everything else can)."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.closed = True

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.closed and "/device/v1/jobs/" in request.url.path:
            raise httpx.ConnectError("no route to host", request=request)
        return await self.inner.handle_async_request(request)


async def test_a_cancel_that_comes_after_installing_is_refused_and_the_update_ends(
    live: Live,
) -> None:
    gate = Gate(live.transport)
    sim = live.simulator(transport=gate, devices=1, update_step=0.2, **THERMO)
    async with running(sim) as run:
        await until(ready(sim, 1), within=20)
        (device,) = sim.devices
        deployment_id = await deploy(live, artifact_id=await release(live), rollout=STEADY)
        # Its reports held up, the device is installing while the server thinks it has not
        # even started: the server asks it to cancel.
        await until(lambda: device.update is not None and device.update.phase not in UNTOUCHED, 20)
        await live.post(f"/api/v1/deployments/{deployment_id}/cancel", json={"reason": "oops"})
        gate.closed = False
        await settled(live, deployment_id)
        await run.stop()

    ran = await executions(live, deployment_id)
    assert ran[device.serial]["state"] == "succeeded"
    assert device.firmware.version == RELEASE
    events = await live.get(f"/api/v1/deployments/{deployment_id}/events")
    assert "cancel_refused" in [e["kind"] for e in events["items"]]


async def test_an_abort_with_rollback_returns_devices_to_the_release_they_ran(
    live: Live,
) -> None:
    sim = live.simulator(devices=3, **THERMO)
    async with running(sim) as run:
        await until(ready(sim, 3), within=20)
        before = {d.serial: d.firmware.version for d in sim.devices}
        policy = {**STEADY, "phases": [100]}
        deployment_id = await deploy(
            live, artifact_id=await release(live), rollout=policy, continuous=True
        )

        async def updated() -> bool:
            ran = await executions(live, deployment_id)
            return [e["state"] for e in ran.values()] == ["succeeded"] * 3

        await eventually(updated)
        # One device moves on to another release: its other slot no longer holds the old one.
        moved = sim.devices[0]
        command = await live.post(
            f"/api/v1/devices/{moved.client.device_id}/commands",
            201,
            json={"name": "update", "args": {"version": "2.5.0"}},
        )
        path = f"/api/v1/devices/{moved.client.device_id}/commands/{command['id']}"

        async def answered() -> bool:
            return (await live.get(path))["state"] == "succeeded"

        await eventually(answered)
        await live.post(
            f"/api/v1/deployments/{deployment_id}/abort",
            json={"reason": "bad release", "rollback": True},
        )
        await settled(live, deployment_id)
        summary = await run.stop()

    ran = await executions(live, deployment_id)
    on_server = await live.devices()
    for device in sim.devices:
        execution = ran[device.serial]
        if device is moved:
            assert (execution["state"], execution["reason"]) == ("failed", "rollback_unavailable")
            assert device.firmware.version == "2.5.0"
        else:
            assert (execution["state"], execution["reason"]) == (
                "rolled_back",
                "rollback_requested",
            )
            assert device.firmware.version == before[device.serial]
        assert on_server[device.serial]["firmware_version"] == device.firmware.version
    assert summary["jobs"]["rolled_back"] == 2


async def test_a_bulk_reboot_reboots_every_device_once(live: Live) -> None:
    sim = live.simulator(devices=4, **THERMO)
    async with running(sim) as run:
        await until(ready(sim, 4), within=20)
        deployment_id = await deploy(live, command={"name": "reboot"}, rollout=STEADY)
        shown = await settled(live, deployment_id)
        summary = await run.stop()

    assert shown["state"] == "finished"
    assert shown["counts"]["succeeded"] == summary["jobs"]["succeeded"] == 4
    assert [d.boot_count for d in sim.devices] == [2, 2, 2, 2]
    assert summary["updates"]["attempted"] == 0


async def test_a_command_the_devices_do_not_know_fails_on_each(live: Live) -> None:
    sim = live.simulator(devices=2, **THERMO)
    async with running(sim) as run:
        await until(ready(sim, 2), within=20)
        rollout = {**STEADY, "phases": [100], "error_threshold": 100}
        deployment_id = await deploy(live, command={"name": "self_destruct"}, rollout=rollout)
        await settled(live, deployment_id)
        summary = await run.stop()

    ran = await executions(live, deployment_id)
    assert {(e["state"], e["reason"]) for e in ran.values()} == {("failed", "command_failed")}
    assert summary["jobs"]["failed"] == 2


async def test_a_retry_is_a_new_attempt_that_runs_the_update_again(live: Live) -> None:
    sim = live.simulator(devices=1, faults={"update_install_fail": 1.0}, **THERMO)
    async with running(sim) as run:
        await until(ready(sim, 1), within=20)
        retries = [{"on": "failed", "limit": 1, "backoff": 0}]
        rollout = {**STEADY, "retries": retries, "error_threshold": 100}
        deployment_id = await deploy(live, artifact_id=await release(live), rollout=rollout)
        await settled(live, deployment_id)
        summary = await run.stop()

    (execution,) = (await executions(live, deployment_id)).values()
    assert (execution["state"], execution["attempt"]) == ("failed", 2)
    assert summary["updates"]["attempted"] == summary["updates"]["failed"] == 2


async def test_a_scenario_rollout_goes_out_as_a_deployment(live: Live) -> None:
    rollout = {"model": MODEL, "version": RELEASE, "percent": [25, 100], "start": 0, "soak": 0}
    sim = live.simulator(devices=12, faults={"update_health_fail": 0.1}, rollout=rollout, **THERMO)
    async with running(sim) as run:
        await until(lambda: sim.rollout is not None and sim.rollout.state == "finished", 60)
        summary = await run.stop()

    view = summary["rollout"]
    assert view["state"] == "finished"
    shown = await live.get(f"/api/v1/deployments/{view['deployment_id']}")
    assert shown["target"] == f'model = "{MODEL}" AND serial = "sim1-*"'
    assert [p["percent"] for p in shown["phases"]] == [25, 100]
    assert shown["rollout"]["error_threshold"] == 50
    for state in ("succeeded", "rolled_back"):
        assert view["counts"][state] == shown["counts"][state] == summary["updates"][state]
    artifact = await live.get(f"/api/v1/artifacts/{view['artifact_id']}")
    assert artifact["sha256"] == image_sha256(MODEL, RELEASE)
    assert artifact["signed_by"] == "server"
    on_server = await live.devices()
    for device in sim.devices:
        if device.firmware.version == RELEASE:
            reported = on_server[device.serial]["attributes"]["firmware_hash"]
            assert reported == firmware_hash(MODEL, RELEASE) == artifact["sha256"][:32]
