"""The health watch on stored telemetry: flags raised with evidence, kept, cleared, recorded.

Each test enrols a small fleet through the device API, sends it an hour of readings at 10 s
(temperature, battery, rssi) with the fault it is about, and runs the watch in FakeClock time.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select, update

from devicekit import Device, provisioning_token
from fleetkeeper.clock import FakeClock
from fleetkeeper.services.monitoring import maintenance
from fleetkeeper.services.monitoring.watch import HealthWatch
from fleetkeeper.store.models import Device as DeviceRow
from fleetkeeper.store.models import DeviceHealth, MonitorEvent, TelemetryPoint

STEP = 10.0  # seconds between readings
HOUR = 3600.0
Reading = Callable[[str, float, random.Random], dict[str, float]]


@dataclass
class Unit:
    """An enrolled device and the state its readings come from."""

    device: Device
    serial: str
    rng: random.Random
    level: float  # its rssi level, dBm
    battery: float

    @property
    def id(self) -> str:
        assert self.device.device_id is not None
        return self.device.device_id


async def fleet_of(
    client: httpx.AsyncClient,
    count: int,
    *,
    site: str | None = "berlin-1",
    model: str = "thermo-v2",
    prefix: str = "SN",
    token: str | None = None,
) -> list[Unit]:
    """`count` enrolled, accepted, logged-in devices of `model` at `site`."""
    await client.post("/api/v1/models", json={"name": model})
    token = token or await provisioning_token(client, auto_accept=True)
    units = []
    for i in range(count):
        serial = f"{prefix}-{i:03d}"
        device = Device(client, serial, model)
        extra = {"attributes": {"site": site}} if site else {}
        r = await device.enroll(token, **extra)
        assert r.status_code == 201, r.text
        assert (await device.login()).status_code == 200
        rng = random.Random(f"{prefix}{i}")
        units.append(Unit(device, serial, rng, rng.uniform(-85, -55), rng.uniform(60, 90)))
    return units


def healthy(unit: Unit, t: float) -> dict[str, float]:
    """What a sound unit reads at `t`: a daily temperature cycle, a draining battery, a radio."""
    rng = unit.rng
    unit.battery = max(0.0, unit.battery - 0.1 * STEP / HOUR)
    return {
        "temperature": round(12 + 6 * math.sin(2 * math.pi * t / 86400) + rng.gauss(0, 0.3), 2),
        "battery": round(unit.battery, 2),
        "rssi": round(unit.level + rng.gauss(0, 2.5), 1),
    }


async def send(unit: Unit, points: list[tuple[float, str, float]]) -> None:
    """Points (ts, metric, value) through the device API, 1000 a request."""
    for start in range(0, len(points), 1000):
        body = {
            "points": [
                {"metric": m, "value": v, "ts": t} for t, m, v in points[start : start + 1000]
            ]
        }
        r = await unit.device.call("POST", "/telemetry", json=body)
        if r.status_code == 401:  # the access token expired in FakeClock time
            assert (await unit.device.login()).status_code == 200
            r = await unit.device.call("POST", "/telemetry", json=body)
        assert r.status_code == 200 and r.json()["accepted"] == len(body["points"]), r.text


async def report(
    units: list[Unit],
    start: float,
    end: float,
    *,
    faults: dict[str, Callable[[Unit, float, dict[str, float]], dict[str, float] | None]]
    | None = None,
) -> None:
    """Every unit's readings every 10 s in [start, end); a fault may change or drop them."""
    for unit in units:
        fault = (faults or {}).get(unit.serial)
        points: list[tuple[float, str, float]] = []
        t = start + unit.rng.uniform(0, STEP)
        while t < end:
            values: dict[str, float] | None = healthy(unit, t)
            if fault is not None and values is not None:
                values = fault(unit, t, values)
            if values is not None:
                points += [(t, metric, value) for metric, value in values.items()]
            t += STEP
        await send(unit, points)


def watch_of(app: FastAPI, **options: Any) -> HealthWatch:
    state = app.state.fleetkeeper
    return HealthWatch(state.db, state.clock, online_window=state.online_window, **options)


async def flags(app: FastAPI) -> dict[tuple[str, str, str], DeviceHealth]:
    async with app.state.fleetkeeper.db.read() as session:
        rows = await session.scalars(select(DeviceHealth))
        return {(r.device_id, r.flag, r.metric): r for r in rows}


async def events(app: FastAPI) -> list[MonitorEvent]:
    async with app.state.fleetkeeper.db.read() as session:
        return list(await session.scalars(select(MonitorEvent).order_by(MonitorEvent.id)))


def stuck_from(onset: float) -> Callable[[Unit, float, dict[str, float]], dict[str, float]]:
    frozen: dict[str, float] = {}

    def fault(unit: Unit, t: float, values: dict[str, float]) -> dict[str, float]:
        if t >= onset:
            values["temperature"] = frozen.setdefault("value", values["temperature"])
        return values

    return fault


def quiet_from(onset: float) -> Callable[[Unit, float, dict[str, float]], dict[str, float] | None]:
    return lambda unit, t, values: None if t >= onset else values


@pytest.fixture
async def units(client: httpx.AsyncClient) -> list[Unit]:
    return await fleet_of(client, 8)


# --- raising flags -----------------------------------------------------------------------------


async def test_a_healthy_group_carries_no_flags(
    app: FastAPI, units: list[Unit], clock: FakeClock
) -> None:
    now = clock.now().timestamp()
    await report(units, now - HOUR, now)
    result = await watch_of(app).tick(force=True)
    assert result.ran and result.sites == 1 and result.devices == 8
    assert result.points == 8 * 360 * 3
    assert await flags(app) == {} and await events(app) == []


async def test_a_stuck_sensor_is_a_faulty_sensor_with_its_evidence(
    app: FastAPI, units: list[Unit], clock: FakeClock
) -> None:
    now = clock.now().timestamp()
    await report(units, now - HOUR, now, faults={"SN-003": stuck_from(now - 1200)})
    result = await watch_of(app).tick(force=True)
    assert result.raised == 1
    (flag,) = (await flags(app)).values()
    assert (flag.device_id, flag.flag, flag.metric) == (units[3].id, "faulty_sensor", "temperature")
    assert flag.detector == "stuck_sensor" and flag.severity == "critical"
    assert flag.evidence["points"] >= 100 and flag.evidence["reference"] == "peers"
    assert flag.since == clock.now() == flag.checked_at
    (event,) = await events(app)
    assert (event.device_id, event.kind) == (units[3].id, "health_raised")
    assert event.detail["flag"] == "faulty_sensor" and event.detail["detector"] == "stuck_sensor"
    assert event.detail["evidence"] == flag.evidence


async def test_a_models_own_range_makes_a_reading_out_of_range(
    app: FastAPI, client: httpx.AsyncClient, units: list[Unit], clock: FakeClock
) -> None:
    ranges = {"metric_ranges": {"temperature": [-10.0, 15.0]}, "reason": "indoor sensor"}
    r = await client.patch("/api/v1/models/thermo-v2", json=ranges)
    assert r.status_code == 200, r.text
    now = clock.now().timestamp()

    def hot(unit: Unit, t: float, values: dict[str, float]) -> dict[str, float]:
        values["temperature"] = 30.0 + unit.rng.gauss(0, 0.3)  # fine for -40..85, not here
        return values

    await report(units, now - HOUR, now, faults={"SN-005": hot})
    await watch_of(app).tick(force=True)
    (flag,) = (await flags(app)).values()
    assert (flag.device_id, flag.detector) == (units[5].id, "out_of_range")
    assert flag.evidence["range"] == [-10.0, 15.0] and flag.evidence["points"] == 360


async def test_a_flood_is_one_flag_for_the_whole_device(
    app: FastAPI, units: list[Unit], clock: FakeClock
) -> None:
    now = clock.now().timestamp()
    await report(units, now - HOUR, now)
    # The last 8 minutes: readings every half second on top.
    times = [now - 480 + k * 0.5 for k in range(960)]
    chatty = units[2]
    await send(chatty, [(t, m, v) for t in times for m, v in healthy(chatty, t).items()])
    await watch_of(app).tick(force=True)
    (flag,) = (await flags(app)).values()
    assert (flag.device_id, flag.flag, flag.metric) == (units[2].id, "flood", "")
    assert flag.evidence["points"] >= 960 and flag.evidence["reference"] == "expected interval"


def counting_uptime(
    booted: float, reboots: tuple[float, ...] = ()
) -> Callable[[Unit, float, dict[str, float]], dict[str, float]]:
    """The unit also reports `uptime`: seconds since it booted, back to 0 at each reboot."""

    def fault(unit: Unit, t: float, values: dict[str, float]) -> dict[str, float]:
        values["uptime"] = round(t - max([booted, *(r for r in reboots if r <= t)]), 1)
        return values

    return fault


async def test_a_reboot_that_sets_uptime_back_to_zero_raises_no_flag(
    app: FastAPI, units: list[Unit], clock: FakeClock
) -> None:
    now = clock.now().timestamp()
    booted = now - 2 * HOUR
    counting = {
        u.serial: counting_uptime(booted, (now - 1800.0, now - 600.0) if i < 3 else ())
        for i, u in enumerate(units)
    }
    await report(units, now - HOUR, now, faults=counting)
    result = await watch_of(app).tick(force=True)
    assert result.points == 8 * 360 * 4
    assert await flags(app) == {}


async def test_a_device_gone_quiet_is_silent_once_not_per_metric(
    app: FastAPI, units: list[Unit], clock: FakeClock
) -> None:
    now = clock.now().timestamp()
    await report(units, now - HOUR, now, faults={"SN-006": quiet_from(now - 900)})
    await watch_of(app).tick(force=True)
    (flag,) = (await flags(app)).values()
    assert (flag.device_id, flag.flag, flag.metric, flag.detector) == (
        units[6].id,
        "silent",
        "",
        "silent",
    )
    assert 900 <= flag.evidence["silent_seconds"] < 910
    assert flag.evidence["peers_reporting"] == 7


async def test_a_models_offline_grace_holds_silence_back(
    app: FastAPI, client: httpx.AsyncClient, units: list[Unit], clock: FakeClock
) -> None:
    body = {"offline_after_seconds": 1800, "reason": "reports every half hour at worst"}
    assert (await client.patch("/api/v1/models/thermo-v2", json=body)).status_code == 200
    now = clock.now().timestamp()
    faults = {"SN-005": quiet_from(now - 900), "SN-006": quiet_from(now - 2400)}
    await report(units, now - HOUR, now, faults=faults)
    await watch_of(app).tick(force=True)
    (flag,) = (await flags(app)).values()
    assert (flag.device_id, flag.flag) == (units[6].id, "silent")
    assert flag.evidence["quiet_after"] == 1800.0


async def test_a_sensor_that_stops_while_the_others_report_is_a_faulty_sensor(
    app: FastAPI, units: list[Unit], clock: FakeClock
) -> None:
    now = clock.now().timestamp()

    def unplugged(unit: Unit, t: float, values: dict[str, float]) -> dict[str, float]:
        if t >= now - 900:
            del values["temperature"]
        return values

    await report(units, now - HOUR, now, faults={"SN-001": unplugged})
    await watch_of(app).tick(force=True)
    (flag,) = (await flags(app)).values()
    assert (flag.device_id, flag.flag, flag.metric) == (units[1].id, "faulty_sensor", "temperature")
    assert flag.detector == "silent"


async def test_a_site_gone_quiet_together_is_an_outage_for_each_device(
    app: FastAPI, client: httpx.AsyncClient, units: list[Unit], clock: FakeClock
) -> None:
    token = await provisioning_token(client, auto_accept=True)
    lyon = await fleet_of(client, 6, site="lyon-2", prefix="LY", token=token)
    now = clock.now().timestamp()
    dark = {u.serial: quiet_from(now - 1200 + u.rng.uniform(0, 30)) for u in lyon[:5]}
    await report(units + lyon, now - HOUR, now, faults=dark)
    await watch_of(app).tick(force=True)
    found = await flags(app)
    assert {k for k in found} == {(u.id, "outage", "") for u in lyon[:5]}
    evidence = found[(lyon[0].id, "outage", "")].evidence
    assert evidence["scope"] == "site" and evidence["site"] == "lyon-2"
    assert (evidence["quiet"], evidence["reporting"]) == (5, 6)
    assert evidence["silent_seconds"] > 1100


async def test_devices_without_a_site_are_judged_on_their_own(
    app: FastAPI, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    loners = await fleet_of(client, 3, site=None, prefix="LN")
    now = clock.now().timestamp()
    await report(loners, now - HOUR, now, faults={"LN-000": stuck_from(now - 1800)})
    result = await watch_of(app).tick(force=True)
    assert result.devices == 3
    (flag,) = (await flags(app)).values()
    assert (flag.device_id, flag.detector) == (loners[0].id, "stuck_sensor")
    assert flag.evidence["reference"] == "own history"


# --- keeping and clearing ----------------------------------------------------------------------


async def test_a_flag_still_seen_keeps_its_since_and_takes_fresh_evidence(
    app: FastAPI, units: list[Unit], clock: FakeClock
) -> None:
    now = clock.now().timestamp()
    stuck = stuck_from(now - 1200)
    await report(units, now - HOUR, now, faults={"SN-003": stuck})
    watch = watch_of(app)
    await watch.tick(force=True)
    raised = clock.now()
    clock.advance(300)
    await report(units, now, now + 300, faults={"SN-003": stuck})
    result = await watch.tick(force=True)
    assert (result.raised, result.kept, result.cleared) == (0, 1, 0)
    (flag,) = (await flags(app)).values()
    assert flag.since == raised and flag.checked_at == clock.now()
    assert flag.evidence["seconds"] > 1200 + 270  # the run grew by the 5 minutes since
    assert [e.kind for e in await events(app)] == ["health_raised"]


async def test_a_flag_clears_when_the_fault_ends(
    app: FastAPI, units: list[Unit], clock: FakeClock
) -> None:
    now = clock.now().timestamp()
    await report(units, now - HOUR, now, faults={"SN-006": quiet_from(now - 900)})
    watch = watch_of(app)
    await watch.tick(force=True)
    clock.advance(60)
    await report(units, now, now + 60)
    result = await watch.tick(force=True)
    assert result.cleared == 1 and await flags(app) == {}
    raised, cleared = await events(app)
    assert (raised.kind, cleared.kind) == ("health_raised", "health_cleared")
    assert cleared.device_id == units[6].id and cleared.detail["flag"] == "silent"
    assert cleared.detail["since"] == raised.at.isoformat()


async def test_a_device_that_leaves_service_loses_its_flags(
    app: FastAPI, units: list[Unit], clock: FakeClock
) -> None:
    now = clock.now().timestamp()
    await report(units, now - HOUR, now, faults={"SN-003": stuck_from(now - 1200)})
    watch = watch_of(app)
    await watch.tick(force=True)
    async with app.state.fleetkeeper.db.write() as session:
        await session.execute(
            update(DeviceRow).where(DeviceRow.id == units[3].id).values(state="maintenance")
        )
    await watch.tick(force=True)
    assert await flags(app) == {}
    cleared = (await events(app))[-1]
    assert cleared.kind == "health_cleared" and cleared.detail["reason"] == "device is maintenance"


async def test_a_silent_device_stays_silent_after_its_points_leave_the_window(
    app: FastAPI, units: list[Unit], clock: FakeClock
) -> None:
    now = clock.now().timestamp()
    await report(units, now - HOUR, now, faults={"SN-006": quiet_from(now - 900)})
    watch = watch_of(app)
    await watch.tick(force=True)
    clock.advance(HOUR)
    await report(units, now, now + HOUR, faults={"SN-006": quiet_from(now - 900)})
    result = await watch.tick(force=True)
    assert (result.raised, result.kept, result.cleared) == (0, 1, 0)
    (flag,) = (await flags(app)).values()
    assert flag.flag == "silent" and flag.evidence["silent_seconds"] >= 4500


# --- cadence and budget ------------------------------------------------------------------------


async def test_a_tick_does_nothing_until_a_round_is_due(
    app: FastAPI, units: list[Unit], clock: FakeClock
) -> None:
    watch = watch_of(app, every=timedelta(seconds=60), maintenance_every=timedelta(hours=1))
    assert (await watch.tick()).ran
    assert not (await watch.tick()).ran
    clock.advance(59)
    assert not (await watch.tick()).ran
    clock.advance(1)
    result = await watch.tick()
    assert result.ran and result.forecasts == 0  # maintenance waits for its own hour


async def test_a_round_larger_than_the_budget_is_spread_over_ticks(
    app: FastAPI, client: httpx.AsyncClient, units: list[Unit], clock: FakeClock
) -> None:
    token = await provisioning_token(client, auto_accept=True)
    await fleet_of(client, 4, site="lyon-2", prefix="LY", token=token)
    await fleet_of(client, 4, site="oslo-3", prefix="OS", token=token)
    watch = watch_of(app, max_devices=8)
    ticks = [await watch.tick() for _ in range(4)]
    # Berlin's 8 fill the first tick; Lyon's and Oslo's 4 each the second; then the same for
    # the maintenance round.
    assert [(t.sites, t.devices, t.pending) for t in ticks] == [
        (1, 8, 5),
        (2, 8, 3),
        (0, 0, 2),
        (0, 0, 0),
    ]
    assert not (await watch.tick()).ran


async def test_a_slow_round_rests_in_proportion_to_keep_the_watch_to_its_share(
    app: FastAPI, units: list[Unit], clock: FakeClock
) -> None:
    ticks = iter([0.0, 20.0] * 10)  # every round takes 20 s of work
    watch = watch_of(app, every=timedelta(seconds=10), duty=0.25, timer=lambda: next(ticks))
    assert (await watch.tick()).ran
    clock.advance(59)  # 20 s of work, so 60 s of rest: a quarter of the time at most
    assert not (await watch.tick()).ran
    clock.advance(1)
    assert (await watch.tick()).ran


# --- predictive maintenance --------------------------------------------------------------------


def solar(days: float, *, fade: float, rng: random.Random, end: float) -> list[tuple[float, float]]:
    """A solar unit's battery every 10 minutes for `days`: full by day, draining by night,
    faster as its capacity fades by `fade` a day."""
    points = []
    start = end - days * 86400
    battery, capacity = 100.0, 1.0
    t = start
    while t < end:
        hour = (t % 86400) / 3600
        load = 0.6 + 0.8 * (0.05 + abs(rng.gauss(0, 0.02)))
        battery += (6.0 * max(0.0, math.sin(math.pi * (hour - 6) / 12)) - 2.4 * load / capacity) / 6
        battery = min(100.0, max(0.0, battery))
        capacity = max(0.3, capacity - fade / 144)
        points.append((t, round(battery, 2)))
        t += 600
    return points


async def test_a_fading_battery_is_flagged_for_replacement_with_its_forecast(
    app: FastAPI, units: list[Unit], clock: FakeClock
) -> None:
    now = clock.now().timestamp()
    for i, unit in enumerate(units[:4]):
        history = solar(25, fade=0.012 if i == 0 else 0.0, rng=unit.rng, end=now)
        await send(unit, [(t, "battery", v) for t, v in history])
    result = await watch_of(app).tick(force=True)
    assert result.forecasts == 4
    (flag,) = (await flags(app)).values()
    assert (flag.device_id, flag.flag, flag.metric) == (units[0].id, "battery_degraded", "battery")
    assert flag.detector == "battery_forecast"
    evidence = flag.evidence
    assert evidence["maintenance"] == "replace_battery" and evidence["status"] == "ok"
    assert evidence["due_at"] <= evidence["expected_at"] <= evidence["latest_at"]
    assert now < evidence["expected_at"] < now + 90 * 86400
    assert evidence["health_percent"] < 85 and evidence["fade_per_day"] > 0.5
    assert "battery health" in evidence["reason"]


async def test_history_is_hourly_from_the_rollups_or_else_from_raw_points(
    app: FastAPI, units: list[Unit], clock: FakeClock
) -> None:
    now = clock.now()
    start = now.timestamp() - 3 * HOUR  # on an hour boundary
    readings = [(start + k * 600, 50.0 + k) for k in range(18)]
    await send(units[0], [(t, "battery", v) for t, v in readings])  # the ingestion rolls up
    async with app.state.fleetkeeper.db.write() as session:  # raw points only
        session.add_all(
            TelemetryPoint(
                device_id=units[1].id,
                metric="battery",
                ts=datetime.fromtimestamp(t, UTC),
                value=v,
                received_at=now,
            )
            for t, v in readings
        )
    async with app.state.fleetkeeper.db.read() as session:
        found = await maintenance.load_history(
            session, [units[0].id, units[1].id], now - timedelta(days=1), now
        )
    hourly = [(start + h * HOUR + HOUR / 2, 52.5 + 6 * h) for h in range(3)]
    assert found[units[0].id]["battery"] == hourly
    assert found[units[1].id]["battery"] == hourly
