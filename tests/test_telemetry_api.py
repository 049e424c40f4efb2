"""GET /api/v1/devices/{id}/telemetry: raw points for short ranges, buckets for long ones."""

from __future__ import annotations

import httpx

from devicekit import Device, online_device
from fleetkeeper.clock import FakeClock


async def send(device: Device, points: list[tuple[float, float]]) -> None:
    body = {"points": [{"metric": "battery", "value": v, "ts": t} for t, v in points]}
    r = await device.call("POST", "/telemetry", json=body)
    assert r.status_code == 200 and r.json()["accepted"] == len(points), r.text


async def test_a_short_range_comes_back_raw_oldest_first(
    client: httpx.AsyncClient, clock: FakeClock
) -> None:
    device = await online_device(client)
    now = clock.now().timestamp()
    await send(device, [(now - 600, 80.0), (now - 60, 79.5), (now - 7200, 90.0)])
    r = await client.get(
        f"/api/v1/devices/{device.device_id}/telemetry", params={"metric": "battery"}
    )
    assert r.status_code == 200, r.text
    assert [p["v"] for p in r.json()] == [80.0, 79.5]  # the default range is the last hour
    assert set(r.json()[0]) == {"t", "v"}


async def test_a_step_gives_buckets_with_min_max_avg_and_count(
    client: httpx.AsyncClient, clock: FakeClock
) -> None:
    device = await online_device(client)
    hour = 3600.0
    start = clock.now().timestamp() - 3 * hour  # 2025-12-31T21:00Z, on an hour boundary
    await send(device, [(start + 60, 10.0), (start + 120, 20.0), (start + hour + 5, 50.0)])
    r = await client.get(
        f"/api/v1/devices/{device.device_id}/telemetry",
        params={"metric": "battery", "from": "-3h", "step": 3600},
    )
    assert r.status_code == 200, r.text
    first, second = r.json()
    assert (first["min"], first["max"], first["avg"], first["count"]) == (10.0, 20.0, 15.0, 2)
    assert first["v"] == 15.0 and first["t"].startswith("2025-12-31T21:00:00")
    assert (second["v"], second["count"]) == (50.0, 1)


async def test_a_long_range_is_bucketed_by_itself(
    client: httpx.AsyncClient, clock: FakeClock
) -> None:
    device = await online_device(client)
    now = clock.now().timestamp()
    await send(device, [(now - 86400 * 2 + i * 600, 50.0 + i % 3) for i in range(100)])
    r = await client.get(
        f"/api/v1/devices/{device.device_id}/telemetry",
        params={"metric": "battery", "from": "-7d"},
    )
    assert r.status_code == 200, r.text
    assert all("count" in p for p in r.json())
    assert sum(p["count"] for p in r.json()) == 100


async def test_bad_times_and_unknown_devices_are_refused(
    client: httpx.AsyncClient, clock: FakeClock
) -> None:
    device = await online_device(client)
    path = f"/api/v1/devices/{device.device_id}/telemetry"
    r = await client.get(path, params={"metric": "battery", "from": "yesterday"})
    assert r.status_code == 422 and r.json()["field"] == "from"
    r = await client.get(path, params={"metric": "battery", "from": "-1h", "to": "-2h"})
    assert r.status_code == 422 and r.json()["field"] == "to"
    r = await client.get("/api/v1/devices/nope/telemetry", params={"metric": "battery"})
    assert r.status_code == 404
