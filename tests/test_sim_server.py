"""Small simulated fleets against the real app, in-process (SQLite, and PostgreSQL when
reachable): what the summary says happened is what the server recorded.

The server and the simulator share a clock that starts at a fixed time and runs at real
speed (tests/simkit.py).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from fleetkeeper.settings import Settings
from fleetkeeper.sim.catalogue import firmware_hash
from fleetkeeper.sim.device import SimDevice
from fleetkeeper.store.db import Database
from fleetkeeper.store.models import TelemetryPoint
from simkit import Live, live_server, ready, until


@pytest.fixture
async def live(settings: Settings, db: Database) -> AsyncIterator[Live]:
    async with live_server(settings, db) as server:
        yield server


async def finished(live: Live, device: SimDevice, command_id: str) -> dict[str, Any]:
    path = f"/api/v1/devices/{device.client.device_id}/commands/{command_id}"
    deadline = time.monotonic() + 3.0
    while True:
        command: dict[str, Any] = await live.get(path)
        if command["state"] in ("succeeded", "failed", "expired"):
            return command
        assert time.monotonic() < deadline, f"command still {command['state']}"
        await asyncio.sleep(0.05)


async def command(live: Live, device: SimDevice, name: str, **args: Any) -> str:
    response = await live.admin.post(
        f"/api/v1/devices/{device.client.device_id}/commands", json={"name": name, "args": args}
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def test_the_summary_matches_what_the_server_recorded(live: Live) -> None:
    sim = live.simulator(devices=12, faults={"compromised": 0.09, "sensor_stuck": 0.25})
    summary = await sim.run(duration=1.5)

    assert summary["devices"] == summary["enrolled"] == 12
    assert summary["messages_sent"] == live.transport.device_requests
    on_server = await live.devices()
    assert sorted(on_server) == sorted(d.serial for d in sim.devices)
    for device in sim.devices:
        seen = on_server[device.serial]
        assert seen["model"] == device.model.name
        assert seen["attributes"]["site"] == device.site.name
        assert seen["location"] is not None
        assert seen["firmware_version"] == device.firmware.version
    sites = Counter(d["attributes"]["site"] for d in on_server.values())
    assert dict(sites) == summary["sites"]

    async with live.db.read() as session:
        stored = await session.scalar(select(func.count()).select_from(TelemetryPoint))
        metrics = set((await session.scalars(select(TelemetryPoint.metric).distinct())).all())
    assert stored == summary["telemetry"]["accepted"] > 0
    assert {"battery", "rssi", "storage_used", "temperature"} <= metrics

    (intruder,) = summary["faults"]["compromised"]
    events = await live.get("/api/v1/security-events", device_id=on_server[intruder]["id"])
    refused = [e for e in events["items"] if e["kind"] == "signature_invalid"]
    assert len(refused) == summary["auth_failures"] >= 5
    attributes = on_server[intruder]["attributes"]
    assert 4444 in attributes["open_ports"]
    model, version = on_server[intruder]["model"], on_server[intruder]["firmware_version"]
    assert attributes["firmware_hash"] != firmware_hash(model, version)

    assert len(summary["faults"]["sensor_stuck"]) == 3
    for serial in summary["faults"]["sensor_stuck"]:
        readings = await live.points(on_server[serial]["id"], "temperature")
        assert len(readings) >= 2 and len({p.value for p in readings}) == 1


async def test_an_update_commits_and_a_failed_health_check_rolls_back(live: Live) -> None:
    sim = live.simulator(devices=4, faults={"update_health_fail": 0.5})
    run = asyncio.create_task(sim.run(duration=8))
    await until(ready(sim, 4))
    healthy = next(d for d in sim.devices if not d.has("update_health_fail"))
    sick = next(d for d in sim.devices if d.has("update_health_fail"))
    before = sick.firmware.version

    good = await finished(live, healthy, await command(live, healthy, "update", version="9.9.9"))
    bad = await finished(live, sick, await command(live, sick, "update", version="9.9.9"))
    sim.stop()
    summary = await run

    assert good["state"] == "succeeded"
    assert good["result"]["version"] == "9.9.9"
    assert bad["state"] == "failed"
    assert bad["result"]["error"] == "health_check_failed"
    assert bad["result"]["rolled_back"] is True
    on_server = await live.devices()
    assert on_server[healthy.serial]["firmware_version"] == "9.9.9"
    assert on_server[sick.serial]["firmware_version"] == before
    assert summary["updates"] == {
        "attempted": 2,
        "succeeded": 1,
        "rolled_back": 1,
        "failed": 0,
        "canceled": 0,
    }
    carriers = sorted(d.serial for d in sim.devices if d.has("update_health_fail"))
    assert summary["faults"]["update_health_fail"] == carriers


async def test_devices_answer_ping_and_diagnostics_and_refuse_unknown_commands(
    live: Live,
) -> None:
    sim = live.simulator(devices=1)
    run = asyncio.create_task(sim.run(duration=6))
    await until(ready(sim, 1))
    (device,) = sim.devices
    ids = [
        await command(live, device, "ping"),
        await command(live, device, "get_diagnostics"),
        await command(live, device, "self_destruct"),
    ]
    ping, diagnostics, unknown = [await finished(live, device, i) for i in ids]
    sim.stop()
    summary = await run

    assert (ping["state"], ping["result"]["pong"]) == ("succeeded", True)
    assert diagnostics["state"] == "succeeded"
    assert diagnostics["result"]["firmware_version"] == device.firmware.version
    assert {"uptime", "battery", "slots"} <= set(diagnostics["result"])
    assert unknown["state"] == "failed"
    assert unknown["result"]["error"] == "unknown_command"
    assert summary["commands"] == {"get_diagnostics": 1, "ping": 1, "self_destruct": 1}


async def test_a_flooding_device_is_rate_limited_and_honours_retry_after(live: Live) -> None:
    sim = live.simulator(devices=2, faults={"flood": {"rate": 0.5, "messages_per_second": 200}})
    summary = await sim.run(duration=1.5)

    assert summary["rate_limited"] == summary["statuses"]["429"] >= 1
    # Each 429 says "retry in 1 s": a device that listens meets no more than a couple.
    assert summary["rate_limited"] <= 2
    assert summary["requests"]["telemetry"] >= 40


async def test_disappearing_devices_go_silent_and_an_outage_reboots_a_site(live: Live) -> None:
    sim = live.simulator(
        devices=8,
        sites=[{"name": "north", "lat": 60, "lon": 10}, {"name": "south", "lat": 40, "lon": 0}],
        faults={
            "site_outage": {"rate": 1.0, "site": "north", "at": 0.3, "duration": 0.4},
            "disappear": {"rate": 0.25, "at": 0.6},
        },
    )
    summary = await sim.run(duration=1.8)

    north = sorted(d.serial for d in sim.devices if d.site.name == "north")
    assert summary["outage_site"] == "north"
    assert summary["faults"]["site_outage"] == north
    vanished = summary["faults"]["disappear"]
    assert len(vanished) == 2 and summary["stopped"] == {"disappeared": 2}
    assert all(
        d.boot_count == 2 for d in sim.devices if d.serial in north and d.serial not in vanished
    )

    on_server = await live.devices()
    points = {s: await live.points(d["id"]) for s, d in on_server.items()}
    latest = max(p[-1].ts for p in points.values() if p)
    for serial in vanished:  # silent since they vanished (some never got to say anything)
        assert all(latest - p.ts > timedelta(seconds=0.6) for p in points[serial])


async def test_a_second_run_with_the_same_seed_carries_on_as_the_same_devices(
    live: Live,
) -> None:
    first = await live.simulator(devices=3, seed=4).run(duration=0.5)
    second = await live.simulator(devices=3, seed=4).run(duration=0.5)

    assert first["enrolled"] == 3 and first["resumed"] == 0
    assert second["enrolled"] == 3 and second["resumed"] == 3
    assert second["errors"] == 0
    assert sorted(await live.devices()) == ["sim4-00000", "sim4-00001", "sim4-00002"]
