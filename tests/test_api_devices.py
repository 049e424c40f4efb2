from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import pytest

from fleet import device, fleet, model, serials


async def test_create_device_returns_the_contract_fields(client: httpx.AsyncClient) -> None:
    await model(client)
    d = await device(
        client,
        "SN-1",
        firmware_version="1.2.3",
        attributes={"site": "berlin"},
        tags=["pilot", "north"],
        location={"lat": 52.5, "lon": 13.4},
    )
    for key in (
        "id",
        "serial",
        "name",
        "model",
        "tenant",
        "state",
        "firmware_version",
        "attributes",
        "tags",
        "groups",
        "location",
        "online",
        "last_seen",
        "created_at",
    ):
        assert key in d
    assert d["name"] == "SN-1"
    assert d["model"] == "thermo-v2"
    assert d["tenant"] == "default"
    assert d["state"] == "registered"
    assert d["tags"] == ["north", "pilot"]
    assert d["groups"] == []
    assert d["location"] == {"lat": 52.5, "lon": 13.4, "alt": None, "accuracy": None}
    assert d["online"] is False and d["last_seen"] is None


async def test_get_patch_delete_round_trip(client: httpx.AsyncClient) -> None:
    await model(client)
    d = await device(client, "SN-1", attributes={"site": "a", "floor": 2})
    r = await client.patch(
        f"/api/v1/devices/{d['id']}",
        json={"attributes": {"floor": None, "room": "12"}, "name": "lobby", "reason": "relabel"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["attributes"] == {"site": "a", "room": "12"}
    assert r.json()["name"] == "lobby"
    assert (await client.get(f"/api/v1/devices/{d['id']}")).json()["name"] == "lobby"
    r = await client.delete(f"/api/v1/devices/{d['id']}", headers={"X-Change-Reason": "scrapped"})
    assert r.status_code == 204
    assert (await client.get(f"/api/v1/devices/{d['id']}")).status_code == 404


async def test_duplicate_serial_is_a_conflict_naming_the_field(client: httpx.AsyncClient) -> None:
    await fleet(client, {"serial": "SN-1"})
    r = await client.post("/api/v1/devices", json={"serial": "SN-1", "model": "thermo-v2"})
    assert r.status_code == 409
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["field"] == "serial"


async def test_unknown_model_is_rejected_naming_the_field(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/v1/devices", json={"serial": "SN-1", "model": "nope"})
    assert r.status_code == 422
    body = r.json()
    assert body["field"] == "model" and "nope" in body["detail"]


async def test_unknown_field_and_wrong_type_name_the_field(client: httpx.AsyncClient) -> None:
    await model(client)
    r = await client.post(
        "/api/v1/devices", json={"serial": "SN-1", "model": "thermo-v2", "colour": "red"}
    )
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "colour"
    r = await client.post(
        "/api/v1/devices", json={"serial": "SN-1", "model": "thermo-v2", "tags": "pilot"}
    )
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "tags"


async def test_malformed_json_is_400(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/api/v1/devices", content=b'{"serial": ', headers={"content-type": "application/json"}
    )
    assert r.status_code == 400
    assert r.json()["title"] == "Malformed JSON"


async def test_oversized_body_is_413(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/api/v1/devices", content=b"x" * 2_000_000, headers={"content-type": "application/json"}
    )
    assert r.status_code == 413
    assert r.json()["status"] == 413


async def test_invalid_state_transition_is_a_conflict(client: httpx.AsyncClient) -> None:
    await model(client)
    d = await device(client, "SN-1", state="active")
    r = await client.patch(f"/api/v1/devices/{d['id']}", json={"state": "retired"})
    assert r.status_code == 200
    r = await client.patch(f"/api/v1/devices/{d['id']}", json={"state": "active"})
    assert r.status_code == 409
    assert "retired" in r.json()["detail"]


async def test_list_is_paginated_with_a_cursor(client: httpx.AsyncClient) -> None:
    await fleet(client, *({"serial": f"SN-{i:02d}"} for i in range(7)))
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        page = (await client.get("/api/v1/devices", params=params)).json()
        seen += [d["serial"] for d in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == [f"SN-{i:02d}" for i in range(7)]
    assert len(seen) == 7


async def test_bad_cursor_is_400(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/v1/devices", params={"cursor": "%%%"})
    assert r.status_code == 400


async def test_list_filters_by_fleet_query(client: httpx.AsyncClient) -> None:
    await fleet(
        client,
        {"serial": "A", "firmware_version": "2.9.3", "attributes": {"site": "x"}},
        {"serial": "B", "firmware_version": "2.10.0", "attributes": {"site": "x"}},
        {"serial": "C", "firmware_version": "1.0.0", "attributes": {"site": "y"}},
    )
    page = (
        await client.get(
            "/api/v1/devices", params={"q": "firmware_version < 2.10.0 AND attributes.site = x"}
        )
    ).json()
    assert serials(page) == ["A"]


async def test_query_syntax_error_is_400_with_position(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/v1/devices", params={"q": "model = (thermo"})
    assert r.status_code == 400
    body = r.json()
    assert body["status"] == 400
    assert "column" in body and "position" in body


async def test_aggregate_counts_by_firmware(client: httpx.AsyncClient) -> None:
    await fleet(
        client,
        {"serial": "A", "firmware_version": "1.0.0"},
        {"serial": "B", "firmware_version": "1.0.0"},
        {"serial": "C", "firmware_version": "2.0.0"},
    )
    r = await client.get("/api/v1/devices/aggregate", params={"by": "firmware_version"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["total"] == 3
    assert {b["value"]: b["count"] for b in body["buckets"]} == {"1.0.0": 2, "2.0.0": 1}


async def test_aggregate_by_attribute_with_query(client: httpx.AsyncClient) -> None:
    await fleet(
        client,
        {"serial": "A", "attributes": {"site": "x"}},
        {"serial": "B", "attributes": {"site": "x"}},
        {"serial": "C", "attributes": {"site": "y"}, "firmware_version": "9.0.0"},
    )
    r = await client.get(
        "/api/v1/devices/aggregate",
        params={"by": "attributes.site", "q": "NOT firmware_version = 9.0.0"},
    )
    assert r.status_code == 200, r.text
    assert {b["value"]: b["count"] for b in r.json()["buckets"]} == {"x": 2}


async def test_aggregate_by_unknown_field_is_an_error(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/v1/devices/aggregate", params={"by": "colour"})
    assert r.status_code in (400, 422)
    assert "colour" in r.json()["detail"]


async def test_online_follows_last_seen(client: httpx.AsyncClient, app, clock) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import update

    from fleetkeeper.store.models import Device

    await model(client)
    d = await device(client, "SN-1")
    async with app.state.fleetkeeper.db.write() as session:
        await session.execute(update(Device).values(last_seen=clock.now()))
    assert (await client.get(f"/api/v1/devices/{d['id']}")).json()["online"] is True
    clock.advance(minutes=10)
    assert (await client.get(f"/api/v1/devices/{d['id']}")).json()["online"] is False


# -- Monitoring in the device JSON ------------------------------------------------------------


async def _monitor(app, device_id: str, readings: dict[str, float], flags: list[str]) -> None:  # type: ignore[no-untyped-def]
    """Latest readings and health flags, written as the monitoring path writes them."""
    from fleetkeeper.store.models import DeviceHealth, TelemetryLatest

    now = app.state.fleetkeeper.clock.now()
    async with app.state.fleetkeeper.db.write() as session:
        session.add_all(
            TelemetryLatest(device_id=device_id, metric=m, ts=now, value=v)
            for m, v in readings.items()
        )
        session.add_all(
            DeviceHealth(
                device_id=device_id,
                flag=flag,
                metric=metric,
                detector="test",
                severity="warning",
                evidence={},
                since=now,
                checked_at=now,
            )
            for flag, metric in (f.partition("/")[::2] for f in flags)
        )


async def _see(app, device_id: str, ago: timedelta) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import update

    from fleetkeeper.store.models import Device

    now = app.state.fleetkeeper.clock.now()
    async with app.state.fleetkeeper.db.write() as session:
        await session.execute(
            update(Device).where(Device.id == device_id).values(last_seen=now - ago)
        )


async def test_device_json_carries_health_and_latest_metrics(
    client: httpx.AsyncClient, app
) -> None:  # type: ignore[no-untyped-def]
    await model(client)
    d = await device(client, "SN-1")
    assert (d["health"], d["metrics"]) == ([], {})
    # Two findings of the same flag on different metrics list the flag once.
    flags = ["stuck_sensor/temperature", "flood/", "stuck_sensor/humidity"]
    await _monitor(app, d["id"], {"battery": 87.5, "rssi": -71}, flags)
    shown = (await client.get(f"/api/v1/devices/{d['id']}")).json()
    assert shown["health"] == ["flood", "stuck_sensor"]
    assert shown["metrics"] == {
        "battery": {"value": 87.5, "ts": "2026-01-01T00:00:00Z"},
        "rssi": {"value": -71.0, "ts": "2026-01-01T00:00:00Z"},
    }


async def test_device_list_loads_monitoring_per_page_not_per_device(
    client: httpx.AsyncClient,
    app,  # type: ignore[no-untyped-def]
) -> None:
    from sqlalchemy import event

    devices = await fleet(client, *({"serial": f"SN-{i}"} for i in range(6)))
    for d in devices:
        await _monitor(app, d["id"], {"battery": 50}, ["flood/"])
    ran: list[str] = []
    engine = app.state.fleetkeeper.db.engine.sync_engine

    def note(*args: object) -> None:
        ran.append(str(args[2]))

    event.listen(engine, "before_cursor_execute", note)
    try:
        await client.get("/api/v1/devices", params={"limit": 1})
        one = len(ran)
        ran.clear()
        page = (await client.get("/api/v1/devices", params={"limit": 6})).json()
    finally:
        event.remove(engine, "before_cursor_execute", note)
    assert len(ran) == one
    assert all(
        d["health"] == ["flood"] and d["metrics"]["battery"]["value"] == 50 for d in page["items"]
    )


async def test_online_honours_the_models_grace(client: httpx.AsyncClient, app) -> None:  # type: ignore[no-untyped-def]
    await model(client)
    await model(client, "meter-e5", offline_after_seconds=3600)
    sensor = await device(client, "SENSOR")
    meter = await device(client, "METER", model="meter-e5")
    for d in (sensor, meter):
        await _see(app, d["id"], timedelta(minutes=30))
    # Half an hour of silence: past the server's 5-minute window, within the meter's hour.
    assert (await client.get(f"/api/v1/devices/{sensor['id']}")).json()["online"] is False
    assert (await client.get(f"/api/v1/devices/{meter['id']}")).json()["online"] is True
    online = (await client.get("/api/v1/devices", params={"q": "online = true"})).json()
    assert serials(online) == ["METER"]
    assert [d["online"] for d in online["items"]] == [True]
    agg = (await client.get("/api/v1/devices/aggregate", params={"by": "online"})).json()
    assert {b["value"]: b["count"] for b in agg["buckets"]} == {True: 1, False: 1}


async def test_changing_the_models_grace_changes_who_is_online(
    client: httpx.AsyncClient, app
) -> None:  # type: ignore[no-untyped-def]
    await model(client)
    d = await device(client, "SN-1")
    await _see(app, d["id"], timedelta(minutes=30))
    assert (
        serials((await client.get("/api/v1/devices", params={"q": "online = true"})).json()) == []
    )
    r = await client.patch(
        "/api/v1/models/thermo-v2", json={"offline_after_seconds": 7200, "reason": "hourly units"}
    )
    assert r.status_code == 200, r.text
    page = (await client.get("/api/v1/devices", params={"q": "online = true"})).json()
    assert serials(page) == ["SN-1"] and page["items"][0]["online"] is True


async def test_list_filters_by_metric_and_health(client: httpx.AsyncClient, app) -> None:  # type: ignore[no-untyped-def]
    low, full, _ = await fleet(client, {"serial": "LOW"}, {"serial": "FULL"}, {"serial": "SILENT"})
    await _monitor(app, low["id"], {"battery": 12}, ["out_of_range/battery"])
    await _monitor(app, full["id"], {"battery": 98}, [])

    async def matching(q: str) -> list[str]:
        r = await client.get("/api/v1/devices", params={"q": q})
        assert r.status_code == 200, r.text
        return serials(r.json())

    assert await matching("battery < 20") == ["LOW"]
    assert await matching("NOT battery < 20") == ["FULL", "SILENT"]
    assert await matching("health = out_of_range") == ["LOW"]
    assert await matching('health != "*"') == ["FULL", "SILENT"]


async def test_monitoring_queries_keep_to_the_tenant(client: httpx.AsyncClient, app) -> None:  # type: ignore[no-untyped-def]
    from fleet import as_token_client, user_token

    assert (await client.post("/api/v1/tenants", json={"id": "acme", "name": "Acme"})).is_success
    await model(client)
    mine = await device(client, "MINE", tenant="acme")
    theirs = await device(client, "THEIRS")
    for d in (mine, theirs):
        await _monitor(app, d["id"], {"battery": 5}, ["flood/"])
    token = await user_token(client, "ann", "viewer", "acme")
    async with as_token_client(client, token) as ann:
        for q in ("battery < 20", "health = flood", "NOT battery > 50", "online = false"):
            assert serials((await ann.get("/api/v1/devices", params={"q": q})).json()) == ["MINE"]


async def test_metric_query_with_text_is_a_400_naming_the_problem(
    client: httpx.AsyncClient,
) -> None:
    r = await client.get("/api/v1/devices", params={"q": "battery < low"})
    assert r.status_code == 400
    assert "'low' is not a number" in r.json()["detail"]


async def test_openapi_describes_health_and_metrics(client: httpx.AsyncClient) -> None:
    schemas = (await client.get("/openapi.json")).json()["components"]["schemas"]
    assert {"health", "metrics"} <= schemas["DeviceOut"]["properties"].keys()
    assert {"offline_after_seconds", "metric_ranges"} <= schemas["ModelOut"]["properties"].keys()
    assert "/api/v1/fleet/overview" in (await client.get("/openapi.json")).json()["paths"]


# -- Device models' monitoring settings -------------------------------------------------------


async def test_model_keeps_offline_after_and_metric_ranges(client: httpx.AsyncClient) -> None:
    created = await model(
        client,
        "meter-e5",
        offline_after_seconds=21600,
        metric_ranges={"temperature": [-40, 85], "battery": [0, 100.5]},
    )
    assert created["offline_after_seconds"] == 21600
    assert created["metric_ranges"] == {"temperature": [-40, 85], "battery": [0, 100.5]}
    assert (await client.get("/api/v1/models/meter-e5")).json()["metric_ranges"] == created[
        "metric_ranges"
    ]
    plain = await model(client, "plain")
    assert (plain["offline_after_seconds"], plain["metric_ranges"]) == (None, None)


async def test_model_monitoring_changes_are_audited_and_null_clears(
    client: httpx.AsyncClient,
) -> None:
    await model(client, "meter-e5", offline_after_seconds=600)
    r = await client.patch(
        "/api/v1/models/meter-e5",
        json={"offline_after_seconds": None, "metric_ranges": {"rssi": [-140, 0]}},
        headers={"X-Change-Reason": "field report"},
    )
    assert r.status_code == 200, r.text
    assert (r.json()["offline_after_seconds"], r.json()["metric_ranges"]) == (
        None,
        {"rssi": [-140, 0]},
    )
    records = (await client.get("/api/v1/audit", params={"action": "model.update"})).json()["items"]
    assert records[0]["reason"] == "field report"
    assert records[0]["before"] == {"offline_after_seconds": 600, "metric_ranges": None}
    assert records[0]["after"] == {
        "offline_after_seconds": None,
        "metric_ranges": {"rssi": [-140, 0]},
    }
    created = (await client.get("/api/v1/audit", params={"action": "model.create"})).json()["items"]
    assert created[0]["after"]["offline_after_seconds"] == 600


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"offline_after_seconds": 0}, "offline_after_seconds"),
        ({"offline_after_seconds": -60}, "offline_after_seconds"),
        ({"offline_after_seconds": 1.5}, "offline_after_seconds"),
        ({"offline_after_seconds": "600"}, "offline_after_seconds"),
        ({"offline_after_seconds": 10**10}, "offline_after_seconds"),
        ({"metric_ranges": {"battery": [100, 0]}}, "metric_ranges"),
        ({"metric_ranges": {"battery": [5, 5]}}, "metric_ranges"),
        ({"metric_ranges": {"battery": [0]}}, "metric_ranges.battery"),
        ({"metric_ranges": {"battery": [0, 1, 2]}}, "metric_ranges.battery"),
        ({"metric_ranges": {"battery": ["0", 100]}}, "metric_ranges.battery.0"),
        ({"metric_ranges": {"bat tery": [0, 100]}}, "metric_ranges"),
        ({"metric_ranges": {"x" * 65: [0, 100]}}, "metric_ranges"),
        ({"metric_ranges": [[0, 100]]}, "metric_ranges"),
    ],
)
async def test_bad_model_monitoring_settings_are_422_naming_the_field(
    client: httpx.AsyncClient, fields: dict[str, Any], field: str
) -> None:
    r = await client.post("/api/v1/models", json={"name": "m", **fields})
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["field"] == field
    await model(client, "ok")
    r = await client.patch("/api/v1/models/ok", json={**fields, "reason": "try"})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == field


async def test_non_finite_metric_range_is_refused(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/api/v1/models",
        content=b'{"name": "m", "metric_ranges": {"battery": [0, Infinity]}}',
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "metric_ranges"
    assert "finite" in r.json()["detail"]
