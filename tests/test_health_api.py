"""GET /api/v1/devices/{id}/health, /api/v1/fleet/health and /api/v1/fleet/maintenance."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from fleet import as_token_client, fleet, user_token
from fleetkeeper.clock import FakeClock
from fleetkeeper.store.models import DeviceHealth

DAY = 86400.0


async def carry(
    app: FastAPI,
    device_id: str,
    flag: str,
    metric: str = "",
    *,
    detector: str | None = None,
    severity: str = "warning",
    evidence: dict[str, Any] | None = None,
    since: datetime,
    checked_at: datetime | None = None,
) -> None:
    """A flag as the watch stores it."""
    async with app.state.fleetkeeper.db.write() as session:
        session.add(
            DeviceHealth(
                device_id=device_id,
                flag=flag,
                metric=metric,
                detector=detector or flag,
                severity=severity,
                evidence=evidence or {},
                since=since,
                checked_at=checked_at or since,
            )
        )


async def due_flag(
    app: FastAPI, device_id: str, evidence: dict[str, Any], *, since: datetime, **fields: Any
) -> None:
    """A maintenance flag as the watch stores it, from its forecast's evidence."""
    battery = evidence["maintenance"] == "replace_battery"
    flag, metric = (
        ("battery_degraded", "battery") if battery else ("storage_filling", "storage_used")
    )
    detector = "battery_forecast" if battery else "storage_forecast"
    await carry(
        app, device_id, flag, metric, detector=detector, evidence=evidence, since=since, **fields
    )


def battery_due(now: datetime, days: float, *, spread: float = 5.0) -> dict[str, Any]:
    """The evidence of a battery forecast whose fitted date is `days` from `now`."""
    at = now.timestamp() + days * DAY
    return {
        "maintenance": "replace_battery",
        "status": "ok",
        "reason": f"battery health 70 % fading 1.00 points/day: 60 % in {days:g} days",
        "due_at": at - spread * DAY,
        "expected_at": at,
        "latest_at": at + spread * DAY,
        "health_percent": 70.0,
        "fade_per_day": 1.0,
    }


def storage_due(now: datetime, days: float) -> dict[str, Any]:
    at = now.timestamp() + days * DAY
    return {
        "maintenance": "free_storage",
        "status": "ok",
        "reason": f"storage 80.0 % used, filling 1.00 points/day: 95 % in {days:g} days",
        "due_at": at - DAY,
        "expected_at": at,
        "latest_at": at + DAY,
        "used_percent": 80.0,
    }


@pytest.fixture
async def devices(client: httpx.AsyncClient) -> dict[str, str]:
    """Four devices of the default tenant, two at each site: serial -> id."""
    created = await fleet(
        client,
        {"serial": "SN-1", "attributes": {"site": "berlin-1"}},
        {"serial": "SN-2", "attributes": {"site": "berlin-1"}},
        {"serial": "SN-3", "attributes": {"site": "lyon-2"}},
        {"serial": "SN-4", "attributes": {"site": "lyon-2"}},
    )
    return {d["serial"]: d["id"] for d in created}


# --- one device --------------------------------------------------------------------------------


async def test_a_devices_health_lists_its_flags_critical_first_with_evidence(
    app: FastAPI, client: httpx.AsyncClient, devices: dict[str, str], clock: FakeClock
) -> None:
    now = clock.now()
    device = devices["SN-1"]
    stuck = {"value": 21.5, "points": 120, "since": now.timestamp() - 1200}
    await carry(app, device, "flood", severity="critical", since=now - timedelta(minutes=5))
    await carry(
        app,
        device,
        "faulty_sensor",
        "temperature",
        detector="stuck_sensor",
        severity="critical",
        evidence=stuck,
        since=now - timedelta(minutes=20),
        checked_at=now,
    )
    await carry(app, device, "battery_degraded", "battery", since=now - timedelta(days=2))
    r = await client.get(f"/api/v1/devices/{device}/health")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["device_id"] == device
    assert [(f["flag"], f["metric"]) for f in body["flags"]] == [
        ("faulty_sensor", "temperature"),
        ("flood", ""),
        ("battery_degraded", "battery"),
    ]
    first = body["flags"][0]
    assert first["detector"] == "stuck_sensor" and first["severity"] == "critical"
    assert first["evidence"] == stuck
    assert set(first) == {
        "flag",
        "metric",
        "detector",
        "severity",
        "since",
        "checked_at",
        "evidence",
    }
    assert body["checked_at"] == first["checked_at"]
    assert datetime.fromisoformat(body["checked_at"]) == now


async def test_a_healthy_device_carries_no_flags(
    client: httpx.AsyncClient, devices: dict[str, str]
) -> None:
    r = await client.get(f"/api/v1/devices/{devices['SN-2']}/health")
    assert r.status_code == 200
    assert r.json() == {"device_id": devices["SN-2"], "flags": [], "checked_at": None}


async def test_an_unknown_device_has_no_health(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/v1/devices/nope/health")
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("application/problem+json")


async def test_another_tenants_device_health_is_not_found(
    app: FastAPI, client: httpx.AsyncClient, devices: dict[str, str], clock: FakeClock
) -> None:
    await client.post("/api/v1/tenants", json={"id": "acme", "name": "Acme"})
    r = await client.post(
        "/api/v1/devices", json={"serial": "AC-1", "model": "thermo-v2", "tenant": "acme"}
    )
    acme_device = r.json()["id"]
    await carry(app, acme_device, "silent", since=clock.now())
    async with as_token_client(client, await user_token(client, "vera", "viewer", "default")) as v:
        assert (await v.get(f"/api/v1/devices/{acme_device}/health")).status_code == 404
        assert (await v.get(f"/api/v1/devices/{devices['SN-1']}/health")).status_code == 200
        listed = (await v.get("/api/v1/fleet/health")).json()["items"]
        assert listed == []
    async with as_token_client(client, await user_token(client, "ann", "viewer", "acme")) as a:
        r = await a.get(f"/api/v1/devices/{acme_device}/health")
        assert r.status_code == 200 and r.json()["flags"][0]["flag"] == "silent"
        listed = (await a.get("/api/v1/fleet/health")).json()["items"]
        assert [d["serial"] for d in listed] == ["AC-1"]


async def test_health_needs_a_token(client: httpx.AsyncClient, devices: dict[str, str]) -> None:
    anonymous = httpx.AsyncClient(transport=client._transport, base_url=client.base_url)
    async with anonymous:
        assert (await anonymous.get(f"/api/v1/devices/{devices['SN-1']}/health")).status_code == 401
        assert (await anonymous.get("/api/v1/fleet/maintenance")).status_code == 401


# --- the fleet's flagged devices ---------------------------------------------------------------


async def test_the_fleet_health_lists_only_flagged_devices_with_their_flags(
    app: FastAPI, client: httpx.AsyncClient, devices: dict[str, str], clock: FakeClock
) -> None:
    now = clock.now()
    await carry(app, devices["SN-1"], "faulty_sensor", "temperature", since=now)
    await carry(app, devices["SN-3"], "outage", severity="critical", since=now)
    await carry(app, devices["SN-4"], "outage", severity="critical", since=now)
    r = await client.get("/api/v1/fleet/health")
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    assert sorted(d["serial"] for d in items) == ["SN-1", "SN-3", "SN-4"]
    first = next(d for d in items if d["serial"] == "SN-3")
    assert first["site"] == "lyon-2" and first["model"] == "thermo-v2"
    assert [f["flag"] for f in first["flags"]] == ["outage"]

    r = await client.get("/api/v1/fleet/health", params={"flag": "outage"})
    assert sorted(d["serial"] for d in r.json()["items"]) == ["SN-3", "SN-4"]
    r = await client.get("/api/v1/fleet/health", params={"q": "attributes.site = berlin-1"})
    assert [d["serial"] for d in r.json()["items"]] == ["SN-1"]


async def test_the_fleet_health_pages_by_device(
    app: FastAPI, client: httpx.AsyncClient, devices: dict[str, str], clock: FakeClock
) -> None:
    for device in devices.values():
        await carry(app, device, "silent", since=clock.now())
    r = await client.get("/api/v1/fleet/health", params={"limit": 3})
    page = r.json()
    assert len(page["items"]) == 3 and page["next_cursor"]
    r = await client.get("/api/v1/fleet/health", params={"limit": 3, "cursor": page["next_cursor"]})
    rest = r.json()
    assert len(rest["items"]) == 1 and rest["next_cursor"] is None
    seen = [d["device_id"] for d in page["items"] + rest["items"]]
    assert sorted(seen) == sorted(devices.values())


async def test_an_unknown_flag_is_refused_by_name(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/v1/fleet/health", params={"flag": "haunted"})
    assert r.status_code == 422 and r.json()["field"] == "flag"
    assert "faulty_sensor" in r.json()["detail"]


# --- the maintenance due list ------------------------------------------------------------------


async def test_the_due_list_has_the_units_due_within_the_window_most_urgent_first(
    app: FastAPI, client: httpx.AsyncClient, devices: dict[str, str], clock: FakeClock
) -> None:
    now = clock.now()
    week = now - timedelta(days=7)
    await due_flag(app, devices["SN-1"], battery_due(now, 20), since=week)
    await due_flag(app, devices["SN-2"], storage_due(now, 3), since=week, severity="critical")
    await due_flag(app, devices["SN-3"], battery_due(now, 60), since=week)
    await carry(app, devices["SN-4"], "flood", since=week)  # not maintenance
    r = await client.get("/api/v1/fleet/maintenance", params={"within": "30d"})
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    assert [(v["serial"], v["maintenance"]) for v in items] == [
        ("SN-2", "free_storage"),
        ("SN-1", "replace_battery"),
    ]
    visit = items[1]
    assert visit["flag"] == "battery_degraded" and visit["site"] == "berlin-1"
    due_at = datetime.fromisoformat(visit["due_at"])
    expected = datetime.fromisoformat(visit["expected_at"])
    latest = datetime.fromisoformat(visit["latest_at"])
    assert due_at == now + timedelta(days=15) and expected == now + timedelta(days=20)
    assert latest == now + timedelta(days=25)
    assert visit["overdue"] is False and "battery health 70 %" in visit["reason"]
    assert visit["forecast"]["fade_per_day"] == 1.0

    r = await client.get("/api/v1/fleet/maintenance", params={"within": "90d"})
    assert [v["serial"] for v in r.json()["items"]] == ["SN-2", "SN-1", "SN-3"]
    r = await client.get("/api/v1/fleet/maintenance", params={"within": "2d"})
    assert [v["serial"] for v in r.json()["items"]] == ["SN-2"]  # its band starts tomorrow


async def test_overdue_units_come_first(
    app: FastAPI, client: httpx.AsyncClient, devices: dict[str, str], clock: FakeClock
) -> None:
    now = clock.now()
    await due_flag(app, devices["SN-1"], battery_due(now, 10), since=now)
    await due_flag(app, devices["SN-2"], battery_due(now, -3, spread=0), since=now)
    items = (await client.get("/api/v1/fleet/maintenance")).json()["items"]
    assert [(v["serial"], v["overdue"]) for v in items] == [("SN-2", True), ("SN-1", False)]


async def test_the_due_list_takes_a_fleet_query_and_pages(
    app: FastAPI, client: httpx.AsyncClient, devices: dict[str, str], clock: FakeClock
) -> None:
    now = clock.now()
    for i, device in enumerate(devices.values()):
        await due_flag(app, device, battery_due(now, 10 + i), since=now)
    r = await client.get("/api/v1/fleet/maintenance", params={"q": "attributes.site = lyon-2"})
    assert [v["serial"] for v in r.json()["items"]] == ["SN-3", "SN-4"]
    page = (await client.get("/api/v1/fleet/maintenance", params={"limit": 3})).json()
    assert [v["serial"] for v in page["items"]] == ["SN-1", "SN-2", "SN-3"]
    rest = (
        await client.get(
            "/api/v1/fleet/maintenance", params={"limit": 3, "cursor": page["next_cursor"]}
        )
    ).json()
    assert [v["serial"] for v in rest["items"]] == ["SN-4"] and rest["next_cursor"] is None


async def test_the_due_list_is_kept_inside_the_tenant(
    app: FastAPI, client: httpx.AsyncClient, devices: dict[str, str], clock: FakeClock
) -> None:
    await client.post("/api/v1/tenants", json={"id": "acme", "name": "Acme"})
    r = await client.post(
        "/api/v1/devices", json={"serial": "AC-1", "model": "thermo-v2", "tenant": "acme"}
    )
    now = clock.now()
    await due_flag(app, r.json()["id"], battery_due(now, 5), since=now)
    await due_flag(app, devices["SN-1"], battery_due(now, 6), since=now)
    async with as_token_client(client, await user_token(client, "ann", "viewer", "acme")) as a:
        items = (await a.get("/api/v1/fleet/maintenance")).json()["items"]
        assert [v["serial"] for v in items] == ["AC-1"]
        # A query cannot reach out of the tenant either.
        items = (await a.get("/api/v1/fleet/maintenance", params={"q": "serial = SN-1"})).json()
        assert items["items"] == []
    all_of_them = (await client.get("/api/v1/fleet/maintenance")).json()["items"]
    assert [v["serial"] for v in all_of_them] == ["AC-1", "SN-1"]


@pytest.mark.parametrize("within", ["soon", "-5d", "0", "120d", "30x"])
async def test_a_bad_window_is_refused_by_name(client: httpx.AsyncClient, within: str) -> None:
    r = await client.get("/api/v1/fleet/maintenance", params={"within": within})
    assert r.status_code == 422, r.text
    assert r.json()["field"] == "within"


async def test_a_bad_cursor_or_query_is_refused_by_name(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/v1/fleet/maintenance", params={"cursor": "not-a-cursor"})
    assert r.status_code == 400 and r.json()["field"] == "cursor"
    r = await client.get("/api/v1/fleet/maintenance", params={"q": "battery <"})
    assert r.status_code == 400
