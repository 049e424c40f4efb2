from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import httpx
from fastapi import FastAPI

from devicekit import online_device
from fleetkeeper.clock import FakeClock


async def test_command_round_trip_through_long_poll(client: httpx.AsyncClient) -> None:
    dev = await online_device(client)
    poll = asyncio.create_task(dev.call("POST", "/checkin", json={"wait": 30}))
    await asyncio.sleep(0.2)  # the device is now waiting
    assert not poll.done()
    started = time.monotonic()
    r = await client.post(
        f"/api/v1/devices/{dev.device_id}/commands", json={"name": "ping", "timeout": 30}
    )
    assert r.status_code == 201 and r.json()["state"] == "pending"
    command_id = r.json()["id"]
    answer = (await asyncio.wait_for(poll, 5)).json()
    assert [c["name"] for c in answer["commands"]] == ["ping"]
    r = await dev.call(
        "POST", f"/commands/{command_id}", json={"state": "succeeded", "result": {"pong": True}}
    )
    assert r.status_code == 204
    elapsed = time.monotonic() - started
    shown = (await client.get(f"/api/v1/devices/{dev.device_id}/commands/{command_id}")).json()
    assert shown["state"] == "succeeded" and shown["result"] == {"pong": True}
    print(f"command round trip through long-poll: {elapsed * 1000:.0f} ms")


async def test_a_command_is_handed_out_once(client: httpx.AsyncClient) -> None:
    dev = await online_device(client)
    await client.post(f"/api/v1/devices/{dev.device_id}/commands", json={"name": "ping"})
    first = (await dev.call("POST", "/checkin", json={})).json()
    second = (await dev.call("POST", "/checkin", json={})).json()
    assert len(first["commands"]) == 1 and second["commands"] == []
    assert first["next_checkin"] == 30


async def test_unanswered_command_expires(client: httpx.AsyncClient, clock: FakeClock) -> None:
    dev = await online_device(client)
    r = await client.post(
        f"/api/v1/devices/{dev.device_id}/commands", json={"name": "ping", "timeout": 10}
    )
    command_id = r.json()["id"]
    clock.advance(seconds=11)
    shown = (await client.get(f"/api/v1/devices/{dev.device_id}/commands/{command_id}")).json()
    assert shown["state"] == "expired"
    assert (await dev.call("POST", "/checkin", json={})).json()["commands"] == []
    await dev.login()  # the access token outlived the clock jump? renew to be sure
    r = await dev.call("POST", f"/commands/{command_id}", json={"state": "succeeded"})
    assert r.status_code == 409 and r.json()["code"] == "command_closed"


async def test_long_poll_returns_empty_after_wait(client: httpx.AsyncClient) -> None:
    dev = await online_device(client)
    started = time.monotonic()
    r = await dev.call("POST", "/checkin", json={"wait": 0.3})
    assert r.json()["commands"] == [] and time.monotonic() - started >= 0.25


async def test_telemetry_keeps_good_points_and_names_bad_ones(
    client: httpx.AsyncClient, clock: FakeClock, app: FastAPI
) -> None:
    from sqlalchemy import func, select

    from fleetkeeper.store.models import TelemetryPoint

    dev = await online_device(client)
    now = clock.now()
    points = [
        {"metric": "battery", "value": 87.5, "ts": now.isoformat()},
        {"metric": "rssi", "value": -71, "ts": now.timestamp() - 10},
        {"metric": "battery", "value": "high", "ts": now.isoformat()},
        {"metric": "temperature", "value": 21.0, "ts": (now + timedelta(days=3)).isoformat()},
        {"metric": "temperature", "value": 21.0, "ts": "yesterday"},
        {"metric": "bad metric!", "value": 1, "ts": now.isoformat()},
        {"metric": "temperature", "value": 21.0, "ts": "2026-01-01T00:00:00"},
    ]
    r = await dev.call("POST", "/telemetry", json={"points": points})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["accepted"] == 2
    reasons = {x["index"]: x["reason"] for x in body["rejected"]}
    assert set(reasons) == {2, 3, 4, 5, 6}
    assert "future" in reasons[3] and "zone" in reasons[6]
    again = await dev.call("POST", "/telemetry", json={"points": points[:2]})
    assert again.json()["accepted"] == 2  # a resent batch is harmless
    async with app.state.fleetkeeper.db.read() as session:
        assert await session.scalar(select(func.count()).select_from(TelemetryPoint)) == 2


async def test_a_telemetry_body_that_is_not_a_batch_is_refused_naming_the_problem(
    client: httpx.AsyncClient,
) -> None:
    dev = await online_device(client)

    async def send(raw: bytes) -> httpx.Response:
        headers = {"content-type": "application/json"}
        return await dev.call("POST", "/telemetry", content=raw, headers=headers)

    r = await send(b"{not json")
    assert r.status_code == 400 and r.json()["code"] == "malformed", r.text
    for raw, field in ((b'{"points": 3}', "points"), (b"{}", "points"), (b"[]", "body")):
        r = await send(raw)
        assert r.status_code == 422, (raw, r.text)
        assert r.json()["errors"][0]["field"] == field, (raw, r.text)
    too_many = {"points": [{"metric": "m", "value": 1, "ts": 0}] * 1001}
    r = await dev.call("POST", "/telemetry", json=too_many)
    assert r.status_code == 422 and "points" in r.text, r.text


async def test_oversized_telemetry_is_413(client: httpx.AsyncClient) -> None:
    dev = await online_device(client)
    r = await dev.call(
        "POST",
        "/telemetry",
        content=b'{"points": [' + b"1," * 200_000 + b"1]}",
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 413 and r.json()["code"] == "too_large"


async def test_inventory_report_updates_the_device_and_is_audited(
    client: httpx.AsyncClient,
) -> None:
    dev = await online_device(client)
    r = await dev.call(
        "POST",
        "/inventory",
        json={
            "firmware_version": "2.1.0",
            "attributes": {"site": "hq"},
            "location": {"lat": 1, "lon": 2},
        },
    )
    assert r.status_code == 200, r.text
    shown = (await client.get(f"/api/v1/devices/{dev.device_id}")).json()
    assert shown["firmware_version"] == "2.1.0" and shown["attributes"] == {"site": "hq"}
    audit = (await client.get("/api/v1/audit", params={"action": "device.report"})).json()["items"]
    assert audit[0]["actor"] == "device:DEV-1"
    assert audit[0]["after"]["firmware_version"] == "2.1.0"
    await dev.call("POST", "/inventory", json={"firmware_version": "2.1.0"})
    again = (await client.get("/api/v1/audit", params={"action": "device.report"})).json()["items"]
    assert len(again) == 1  # nothing changed, nothing recorded


async def test_a_move_goes_to_the_position_history_not_the_audit_trail(
    client: httpx.AsyncClient, clock: FakeClock
) -> None:
    dev = await online_device(client)
    for minute, lat in enumerate((52.50, 52.51, 52.52)):
        clock.advance(minutes=minute)
        r = await dev.call("POST", "/inventory", json={"location": {"lat": lat, "lon": 13.4}})
        assert r.status_code == 200, r.text
    audit = (await client.get("/api/v1/audit", params={"action": "device.report"})).json()
    assert audit["items"] == []
    shown = (await client.get(f"/api/v1/devices/{dev.device_id}")).json()
    assert shown["location"]["lat"] == 52.52
    track = (await client.get(f"/api/v1/devices/{dev.device_id}/positions")).json()
    assert [f["geometry"]["coordinates"][1] for f in track["features"]] == [52.50, 52.51, 52.52]


async def test_log_upload(client: httpx.AsyncClient) -> None:
    dev = await online_device(client)
    r = await dev.call(
        "POST", "/logs", content="boot ok\nsensor ready\n", headers={"content-type": "text/plain"}
    )
    assert r.status_code == 201 and r.json()["bytes"] == 21


async def test_rate_limit_answers_429_with_retry_after(client: httpx.AsyncClient) -> None:
    dev = await online_device(client)
    codes = [(await dev.call("POST", "/checkin", json={})).status_code for _ in range(60)]
    assert 429 in codes
    limited = await dev.call("POST", "/checkin", json={})
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    assert limited.json()["code"] == "rate_limited"


async def test_checkin_marks_the_device_online(client: httpx.AsyncClient, app: FastAPI) -> None:
    dev = await online_device(client)
    await dev.call("POST", "/checkin", json={})
    await app.state.fleetkeeper.presence.flush(app.state.fleetkeeper.db)
    shown = (await client.get(f"/api/v1/devices/{dev.device_id}")).json()
    assert shown["online"] is True and shown["last_seen"] is not None


async def test_missing_token_is_401_with_code(client: httpx.AsyncClient) -> None:
    r = await client.post("/device/v1/checkin", json={}, headers={"Authorization": ""})
    assert r.status_code == 401 and r.json()["code"] == "token_missing"


async def test_unknown_command_name_shape_is_422(client: httpx.AsyncClient) -> None:
    dev = await online_device(client)
    r = await client.post(f"/api/v1/devices/{dev.device_id}/commands", json={"name": "rm -rf /"})
    assert r.status_code == 422


async def test_telemetry_is_refused_like_any_device_call_without_credentials(
    client: httpx.AsyncClient,
) -> None:
    # POST /device/v1/telemetry is served by a plain Starlette endpoint (api/app.py): the
    # same authentication and problem answers as the FastAPI routes.
    r = await client.post(
        "/device/v1/telemetry", json={"points": []}, headers={"Authorization": ""}
    )
    assert r.status_code == 401 and r.json()["code"] == "token_missing", r.text
    r = await client.post(
        "/device/v1/telemetry", json={"points": []}, headers={"Authorization": "Bearer nonsense"}
    )
    assert r.status_code == 401 and r.headers["content-type"].startswith("application/problem")
    metrics = (await client.get("/metrics")).text
    assert 'route="/device/v1/telemetry"' in metrics
