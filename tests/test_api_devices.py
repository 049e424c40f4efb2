from __future__ import annotations

import httpx

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
