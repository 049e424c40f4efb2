"""The scheduler against the policy, in simulated time on both databases: pacing, maintenance
windows and the health watch."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

import httpx
from fastapi import FastAPI

from fleetkeeper.clock import FakeClock
from otakit import FAST, Fleet, artifact, deploy, fleet, show


async def imported(client: httpx.AsyncClient, count: int, **fields: Any) -> None:
    """`count` active thermo-v2 devices on 1.0.0, registered in one request."""
    await client.post("/api/v1/models", json={"name": "thermo-v2"})
    rows = [
        {
            "serial": f"IMP-{n:05d}",
            "model": "thermo-v2",
            "state": "active",
            "firmware_version": "1.0.0",
            **fields,
        }
        for n in range(count)
    ]
    r = await client.post("/api/v1/devices/import", json=rows)
    assert r.status_code in (200, 201), r.text


async def executions(client: httpx.AsyncClient, deployment_id: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 1000}
        if cursor:
            params["cursor"] = cursor
        page = (
            await client.get(f"/api/v1/deployments/{deployment_id}/executions", params=params)
        ).json()
        out += page["items"]
        cursor = page["next_cursor"]
        if not cursor:
            return out


def policy_minutes(
    base: float, factor: float, every: int, cap: float, total: int, minutes: int
) -> list[int]:
    """What the policy allows each minute: rate times time, multiplied every `every` starts."""
    step = 0.01
    rate, credit, started, since, t = base, 0.0, 0, 0, 0.0
    per_minute = Counter[int]()
    while t < minutes * 60 and started < total:
        credit += rate / 60 * step
        while credit >= 1 and started < total:
            credit -= 1
            started += 1
            since += 1
            per_minute[int(t // 60)] += 1
            if since >= every:
                rate, since = min(rate * factor, cap), 0
        t += step
    return [per_minute[m] for m in range(minutes)]


async def test_exponential_pacing_follows_the_policy(
    client: httpx.AsyncClient, app: FastAPI, clock: FakeClock
) -> None:
    await imported(client, 300)
    art = await artifact(client)
    rate = {
        "base_per_minute": 10,
        "increment_factor": 2,
        "increase_after_notified": 20,
        "increase_after_succeeded": None,
        "max_per_minute": 80,
        "max_in_progress": 1000,
    }
    dep = await deploy(
        client, artifact_id=art["id"], rollout={"phases": [100], "rate": rate, "jitter": 0}
    )
    start = clock.now()
    f = Fleet(client, app, clock)
    for _ in range(8 * 12):  # eight minutes, a tick every five seconds
        await f.tick(5)
    started = [
        datetime.fromisoformat(e["notified_at"])
        for e in await executions(client, dep["id"])
        if e["notified_at"]
    ]
    actual = Counter(int((t - start).total_seconds() // 60) for t in started)
    got = [actual[m] for m in range(8)]
    wanted = policy_minutes(10, 2, 20, 80, 300, 8)
    print("\nminute  policy  scheduler")
    for minute, (p, s) in enumerate(zip(wanted, got, strict=True)):
        print(f"{minute:>6}  {p:>6}  {s:>9}")
    # A tick every 5 s can lag the continuous policy by one tick's worth (80/min: 7 devices).
    lag = 80 * 5 / 60
    for minute in range(8):
        policy_so_far, scheduler_so_far = sum(wanted[: minute + 1]), sum(got[: minute + 1])
        assert scheduler_so_far <= policy_so_far + 2
        assert scheduler_so_far >= policy_so_far - max(2, 0.05 * policy_so_far) - lag
    assert max(got) <= 80 + 2


async def test_devices_start_only_inside_the_window_with_time_to_finish(
    client: httpx.AsyncClient, app: FastAPI, clock: FakeClock
) -> None:
    clock.set(datetime(2026, 3, 2, 0, 0, tzinfo=UTC))
    await imported(client, 200)
    art = await artifact(client)
    rollout = {
        "phases": [100],
        "jitter": 0,
        "rate": {"base_per_minute": 1, "increase_after_succeeded": None},
        "expected_duration": "15m",
        "schedule": {"windows": [{"cron": "0 2 * * *", "duration": "2h"}]},
    }
    dep = await deploy(client, artifact_id=art["id"], rollout=rollout)
    f = Fleet(client, app, clock)

    async def started() -> int:
        return sum(1 for e in await executions(client, dep["id"]) if e["notified_at"])

    for _ in range(2 * 60 // 5 - 1):  # until 01:55, ticking every 5 minutes
        await f.tick(300)
    assert await started() == 0
    await f.tick(300)
    for _ in range(2 * 60 * 2):  # 02:00 to 04:00 every 30 s
        await f.tick(30)
    inside = await started()
    times = [
        datetime.fromisoformat(e["notified_at"])
        for e in await executions(client, dep["id"])
        if e["notified_at"]
    ]
    assert all(t.hour in (2, 3) for t in times)
    assert max(times) <= datetime(2026, 3, 2, 3, 45, tzinfo=UTC)  # 15 minutes before the end
    assert 100 <= inside <= 107
    for _ in range(22 * 2 - 1):  # until 01:30 the next day, every 30 minutes
        await f.tick(1800)
    assert await started() == inside
    await f.tick(1800)
    await f.tick(30)
    assert await started() > inside
    assert (await show(client, dep["id"]))["state"] == "running"


async def test_a_device_attribute_window_holds_that_device_back(
    client: httpx.AsyncClient, app: FastAPI, clock: FakeClock
) -> None:
    clock.set(datetime(2026, 3, 2, 0, 0, tzinfo=UTC))
    await imported(client, 1, attributes={"window": "0 3 * * *;1h"})
    await client.post(
        "/api/v1/devices",
        json={
            "serial": "FREE",
            "model": "thermo-v2",
            "state": "active",
            "firmware_version": "1.0.0",
        },
    )
    art = await artifact(client)
    rollout = {**FAST, "phases": [100], "schedule": {"window_attribute": "window"}}
    dep = await deploy(client, artifact_id=art["id"], rollout=rollout)
    f = Fleet(client, app, clock)
    await f.tick(1)
    await f.tick(1)
    started = {e["serial"] for e in await executions(client, dep["id"]) if e["notified_at"]}
    assert started == {"FREE"}
    clock.set(datetime(2026, 3, 2, 3, 0, 30, tzinfo=UTC))
    await f.tick(1)
    started = {e["serial"] for e in await executions(client, dep["id"]) if e["notified_at"]}
    assert started == {"FREE", "IMP-00000"}


async def test_the_health_watch_pauses_when_updated_devices_do_worse(
    client: httpx.AsyncClient, app: FastAPI, clock: FakeClock
) -> None:
    f = await fleet(client, app, clock, 40)
    art = await artifact(client)
    rollout = {
        **FAST,
        "phases": [50, 100],
        "soak": 3600,
        "health_watch": {"min_devices": 10, "confidence": 0.95},
    }
    dep = await deploy(client, artifact_id=art["id"], rollout=rollout)
    await f.tick(1)
    await f.tick(1)
    first = await f.jobs()
    assert len(first) == 20
    await f.succeed(first, "2.0.0")
    # Ten minutes on, the updated devices have gone quiet; the others still check in.
    clock.advance(600)
    state = app.state.fleetkeeper
    for device in f.devices:
        if device.serial not in first:
            assert (await device.call("POST", "/checkin", json={})).status_code == 200
    await state.presence.flush(state.db)
    await f.tick(61)
    await f.tick(1)
    d = await show(client, dep["id"])
    assert d["state"] == "paused"
    assert "offline" in (d["reason"] or "")
    kinds = [
        e["kind"]
        for e in (await client.get(f"/api/v1/deployments/{dep['id']}/events")).json()["items"]
    ]
    assert "health_watch" in kinds


async def test_a_group_window_holds_its_members_back(
    client: httpx.AsyncClient, app: FastAPI, clock: FakeClock
) -> None:
    clock.set(datetime(2026, 3, 2, 0, 0, tzinfo=UTC))
    await imported(client, 2)
    night = {"cron": "0 3 * * *", "duration": "1h", "timezone": "UTC"}
    r = await client.post(
        "/api/v1/groups",
        json={"name": "night", "query": "serial = IMP-00001", "maintenance_windows": [night]},
    )
    assert r.status_code == 201, r.text
    assert r.json()["maintenance_windows"][0]["duration"] == 3600
    art = await artifact(client)
    dep = await deploy(client, artifact_id=art["id"], rollout={**FAST, "phases": [100]})
    f = Fleet(client, app, clock)
    await f.tick(1)
    await f.tick(1)
    started = {e["serial"] for e in await executions(client, dep["id"]) if e["notified_at"]}
    assert started == {"IMP-00000"}
    clock.set(datetime(2026, 3, 2, 3, 0, 30, tzinfo=UTC))
    await f.tick(1)
    started = {e["serial"] for e in await executions(client, dep["id"]) if e["notified_at"]}
    assert started == {"IMP-00000", "IMP-00001"}


async def test_a_group_window_with_a_bad_cron_is_refused(
    client: httpx.AsyncClient, app: FastAPI, clock: FakeClock
) -> None:
    r = await client.post(
        "/api/v1/groups",
        json={"name": "bad", "maintenance_windows": [{"cron": "0 25 * * *", "duration": 60}]},
    )
    assert r.status_code == 422
    assert r.json()["field"] == "maintenance_windows.0"


async def test_the_health_watch_notices_updated_devices_rebooting(
    client: httpx.AsyncClient, app: FastAPI, clock: FakeClock
) -> None:
    f = await fleet(client, app, clock, 40)
    art = await artifact(client)
    rollout = {
        **FAST,
        "phases": [50, 100],
        "soak": 3600,
        "health_watch": {"min_devices": 10, "confidence": 0.95, "offline": False},
    }
    dep = await deploy(client, artifact_id=art["id"], rollout=rollout)
    await f.tick(1)
    await f.tick(1)
    updated = await f.jobs()
    await f.succeed(updated, "2.0.0")
    start = clock.now().timestamp()
    for minute in range(1, 11):
        clock.advance(60)
        now = clock.now().timestamp()
        for device in f.devices:
            # Everyone has been up for a day; the updated ones restart every few minutes.
            up = 86400 + now - start if device.serial not in updated else (minute % 3) * 60 + 5
            points = [{"metric": "uptime", "value": up, "ts": now}]
            r = await device.call("POST", "/telemetry", json={"points": points})
            assert r.json()["accepted"] == 1
    await f.tick(61)
    await f.tick(1)
    d = await show(client, dep["id"])
    assert d["state"] == "paused"
    assert "reboot" in (d["reason"] or "")
