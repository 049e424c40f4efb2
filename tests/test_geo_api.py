"""Geo over the API: the fleet map, position history, geofences with their enter and leave
events, and a site's environment. On SQLite and PostgreSQL.

Positions arrive as the inventory route hands them over: the device's location set, then
`geo.record_position` in the same transaction (`report` below does both).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from devicekit import online_device
from fleet import as_token_client, fleet, user_token
from fleetkeeper.clock import FakeClock
from fleetkeeper.services import geo
from fleetkeeper.services.geo.geometry import Point, destination
from fleetkeeper.store.models import Device, MonitorEvent, TelemetryLatest

HALL = Point(52.5200, 13.4050)  # lat, lon
FAR = Point(48.8566, 2.3522)
CIRCLE = {"type": "circle", "center": [HALL.lon, HALL.lat], "radius_m": 100}


async def report(app: FastAPI, device_id: str, where: Point, **extra: float) -> list[MonitorEvent]:
    """What the inventory route does with `location`: store it, then record the position."""
    state = app.state.fleetkeeper
    location = {"lat": where.lat, "lon": where.lon, **extra}
    async with state.db.write() as session:
        row = await session.get_one(Device, device_id)
        row.location = location
        return await geo.record_position(session, row, location, state.clock.now())


async def put_latest(app: FastAPI, device_id: str, at: datetime, **values: float) -> None:
    async with app.state.fleetkeeper.db.write() as session:
        for metric, value in values.items():
            session.add(TelemetryLatest(device_id=device_id, metric=metric, ts=at, value=value))


async def create_fence(client: httpx.AsyncClient, name: str = "yard", **fields: Any) -> Any:
    r = await client.post("/api/v1/geofences", json={"name": name, "shape": CIRCLE, **fields})
    assert r.status_code == 201, r.text
    return r.json()


async def events(client: httpx.AsyncClient, **params: Any) -> list[Any]:
    r = await client.get("/api/v1/monitor/events", params=params)
    assert r.status_code == 200, r.text
    return [(e["kind"], e["serial"]) for e in r.json()["items"]]


async def inside(client: httpx.AsyncClient, fence_id: str) -> list[str]:
    r = await client.get(f"/api/v1/geofences/{fence_id}/devices")
    assert r.status_code == 200, r.text
    return sorted(d["serial"] for d in r.json()["items"])


# The fleet map


async def test_the_map_is_geojson_points_in_lon_lat_order(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    a, _, c = await fleet(
        client,
        {"serial": "A", "attributes": {"site": "hall-1"}},
        {"serial": "B"},  # no position: not on the map
        {"serial": "C"},
    )
    await report(app, a["id"], HALL, accuracy=8.0, alt=34.0)
    await report(app, c["id"], FAR)
    r = await client.get("/api/v1/fleet/map")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/geo+json")
    body = r.json()
    assert (body["type"], body["truncated"], body["total"]) == ("FeatureCollection", False, 2)
    (first,) = [f for f in body["features"] if f["id"] == a["id"]]
    assert first["type"] == "Feature"
    assert first["geometry"] == {"type": "Point", "coordinates": [HALL.lon, HALL.lat]}
    props = first["properties"]
    assert (props["serial"], props["model"], props["site"]) == ("A", "thermo-v2", "hall-1")
    assert (props["accuracy"], props["alt"], props["state"]) == (8.0, 34.0, "registered")
    assert props["position_at"].startswith("2026-01-01T00:00:00")
    assert props["online"] is False


async def test_the_map_takes_a_fleet_query_and_a_window(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    a, b, c = await fleet(
        client,
        {"serial": "A", "attributes": {"site": "hall-1"}},
        {"serial": "B", "attributes": {"site": "hall-1"}},
        {"serial": "FIJI"},
    )
    await report(app, a["id"], HALL)
    await report(app, b["id"], FAR)
    await report(app, c["id"], Point(-17.7, 179.9))

    async def serials(**params: str) -> list[str]:
        r = await client.get("/api/v1/fleet/map", params=params)
        assert r.status_code == 200, r.text
        return sorted(f["properties"]["serial"] for f in r.json()["features"])

    assert await serials(q="attributes.site = hall-1") == ["A", "B"]
    assert await serials(q="attributes.site = hall-1", bbox="13,52,14,53") == ["A"]
    assert await serials(bbox="170,-20,-170,0") == ["FIJI"]  # across the antimeridian
    r = await client.get("/api/v1/fleet/map", params={"bbox": "13,53,14,52"})
    assert r.status_code == 422 and r.json()["field"] == "bbox"
    r = await client.get("/api/v1/fleet/map", params={"q": "site ="})
    assert r.status_code == 400


async def test_the_map_caps_its_features_and_says_so(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    devices = await fleet(client, {"serial": "A"}, {"serial": "B"}, {"serial": "C"})
    for d in devices:
        await report(app, d["id"], HALL)
    body = (await client.get("/api/v1/fleet/map", params={"limit": 2})).json()
    assert len(body["features"]) == 2
    assert (body["truncated"], body["total"]) == (True, 3)


async def test_a_location_set_by_hand_has_no_position_time(client: httpx.AsyncClient) -> None:
    await fleet(client, {"serial": "A", "location": {"lat": HALL.lat, "lon": HALL.lon}})
    (feature,) = (await client.get("/api/v1/fleet/map")).json()["features"]
    assert feature["geometry"]["coordinates"] == [HALL.lon, HALL.lat]
    assert feature["properties"]["position_at"] is None


# Position history


async def test_a_parked_device_writes_history_sparingly(
    client: httpx.AsyncClient, app: FastAPI, clock: FakeClock
) -> None:
    (a,) = await fleet(client, {"serial": "A"})
    for _ in range(4):  # parked: one row, however often it reports
        await report(app, a["id"], HALL, accuracy=5.0)
        clock.advance(minutes=10)
    await report(app, a["id"], destination(HALL, 0, 3))  # GPS jitter
    clock.advance(minutes=30)
    await report(app, a["id"], HALL)  # an hour on: still here, noted
    clock.advance(minutes=1)
    moved = destination(HALL, 90, 200)
    await report(app, a["id"], moved)  # on the move: noted at once
    r = await client.get(f"/api/v1/devices/{a['id']}/positions")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/geo+json")
    body = r.json()
    assert (body["type"], body["device"], body["truncated"]) == (
        "FeatureCollection",
        a["id"],
        False,
    )
    times = [f["properties"]["ts"][:19] for f in body["features"]]
    assert times == ["2026-01-01T00:00:00", "2026-01-01T01:10:00", "2026-01-01T01:11:00"]
    assert body["features"][0]["properties"]["accuracy"] == 5.0
    assert body["features"][-1]["geometry"]["coordinates"] == pytest.approx([moved.lon, moved.lat])


async def test_history_gives_the_newest_positions_of_a_range_oldest_first(
    client: httpx.AsyncClient, app: FastAPI, clock: FakeClock
) -> None:
    (a,) = await fleet(client, {"serial": "A"})
    for i in range(4):
        await report(app, a["id"], destination(HALL, 0, 100 * i))
        clock.advance(minutes=1)
    path = f"/api/v1/devices/{a['id']}/positions"
    body = (await client.get(path, params={"limit": 2})).json()
    assert body["truncated"] is True
    assert [f["properties"]["ts"][14:16] for f in body["features"]] == ["02", "03"]
    body = (await client.get(path, params={"from": "-3m", "to": "-2m"})).json()
    assert [f["properties"]["ts"][14:16] for f in body["features"]] == ["01", "02"]
    r = await client.get(path, params={"from": "yesterday"})
    assert r.status_code == 422 and r.json()["field"] == "from"
    r = await client.get(path, params={"from": "-1m", "to": "-2m"})
    assert r.status_code == 422 and r.json()["field"] == "to"
    assert (await client.get("/api/v1/devices/nope/positions")).status_code == 404


async def test_two_reports_in_one_clock_tick_keep_the_newer(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    (a,) = await fleet(client, {"serial": "A"})
    await report(app, a["id"], HALL)
    await report(app, a["id"], FAR)
    features = (await client.get(f"/api/v1/devices/{a['id']}/positions")).json()["features"]
    assert [f["geometry"]["coordinates"] for f in features] == [[FAR.lon, FAR.lat]]


async def test_a_reported_position_out_of_range_names_the_field(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    from fleetkeeper.errors import Invalid

    (a,) = await fleet(client, {"serial": "A"})
    with pytest.raises(Invalid) as caught:
        await report(app, a["id"], Point(91, 0))
    assert caught.value.extra["field"] == "location.lat"


async def test_the_inventory_report_records_the_position(client: httpx.AsyncClient) -> None:
    unit = await online_device(client)
    await create_fence(client)
    r = await unit.call("POST", "/inventory", json={"location": {"lat": HALL.lat, "lon": HALL.lon}})
    assert r.status_code == 200, r.text
    features = (await client.get(f"/api/v1/devices/{unit.device_id}/positions")).json()
    assert len(features["features"]) == 1
    assert await events(client, device=unit.device_id) == [("geofence_enter", unit.serial)]


# Geofences


async def test_geofence_changes_are_audited_with_who_and_why(client: httpx.AsyncClient) -> None:
    fence = await create_fence(client, site="hall-1", reason="the yard is ours")
    assert (fence["name"], fence["site"], fence["tenant"]) == ("yard", "hall-1", "default")
    assert fence["shape"] == {**CIRCLE, "radius_m": 100.0}
    assert fence["geometry"]["type"] == "Polygon"
    assert fence["created_by"] == "admin/token:env"
    path = f"/api/v1/geofences/{fence['id']}"
    polygon = {
        "type": "polygon",
        "coordinates": [[13.40, 52.52], [13.41, 52.52], [13.41, 52.53], [13.40, 52.53]],
    }
    r = await client.patch(
        path, json={"shape": polygon, "site": None}, headers={"X-Change-Reason": "fence moved"}
    )
    assert r.status_code == 200, r.text
    assert r.json()["site"] is None and r.json()["shape"] == polygon
    assert r.json()["geometry"]["coordinates"][0][-1] == [13.40, 52.52]  # closed ring
    assert (await client.get(path)).json() == r.json()
    assert (await client.delete(path, params={"reason": "not ours after all"})).status_code == 204
    assert (await client.get(path)).status_code == 404
    records = (
        await client.get("/api/v1/audit", params={"target": f"geofence:{fence['id']}"})
    ).json()
    seen = [(a["action"], a["actor"], a["reason"]) for a in records["items"]]
    assert seen == [
        ("geofence.delete", "admin/token:env", "not ours after all"),
        ("geofence.update", "admin/token:env", "fence moved"),
        ("geofence.create", "admin/token:env", "the yard is ours"),
    ]


@pytest.mark.parametrize(
    ("shape", "field"),
    [
        ({"type": "circle", "center": [13.4, 95.0], "radius_m": 10}, "shape.center.lat"),
        ({"type": "circle", "center": [13.4, 52.5], "radius_m": 0}, "shape.radius_m"),
        ({"type": "circle", "center": [13.4, 52.5], "radius_m": 5e7}, "shape.radius_m"),
        ({"type": "polygon", "coordinates": [[13.4, 52.5], [13.5, 52.5]]}, "shape.coordinates"),
        ({"type": "square", "center": [13.4, 52.5]}, "shape.type"),
    ],
)
async def test_bad_shapes_are_refused_naming_the_field(
    client: httpx.AsyncClient, shape: dict[str, Any], field: str
) -> None:
    r = await client.post("/api/v1/geofences", json={"name": "bad", "shape": shape})
    assert r.status_code == 422, r.text
    assert r.json()["field"] == field
    assert r.headers["content-type"].startswith("application/problem+json")


async def test_names_are_unique_in_a_tenant_and_kept(client: httpx.AsyncClient) -> None:
    fence = await create_fence(client)
    r = await client.post("/api/v1/geofences", json={"name": "yard", "shape": CIRCLE})
    assert r.status_code == 409 and r.json()["field"] == "name"
    other = await create_fence(client, "gate")
    r = await client.patch(f"/api/v1/geofences/{other['id']}", json={"name": "yard"})
    assert r.status_code == 409
    r = await client.patch(f"/api/v1/geofences/{fence['id']}", json={"name": None})
    assert r.status_code == 422 and r.json()["field"] == "name"
    listed = (await client.get("/api/v1/geofences", params={"limit": 1})).json()
    assert len(listed["items"]) == 1 and listed["next_cursor"]
    rest = (await client.get("/api/v1/geofences", params={"cursor": listed["next_cursor"]})).json()
    assert sorted(f["name"] for f in listed["items"] + rest["items"]) == ["gate", "yard"]


async def test_entering_and_leaving_writes_events_without_flapping(
    client: httpx.AsyncClient, app: FastAPI, clock: FakeClock
) -> None:
    (a,) = await fleet(client, {"serial": "A"})
    fence = await create_fence(client, site="hall-1")
    assert await report(app, a["id"], destination(HALL, 0, 300)) == []
    clock.advance(minutes=1)
    (entered,) = await report(app, a["id"], destination(HALL, 0, 50))
    assert entered.kind == "geofence_enter"
    assert entered.detail["geofence_id"] == fence["id"]
    assert (entered.detail["geofence"], entered.detail["site"]) == ("yard", "hall-1")
    assert await inside(client, fence["id"]) == ["A"]
    clock.advance(minutes=1)
    assert await report(app, a["id"], destination(HALL, 0, 105)) == []  # jitter at the edge
    clock.advance(minutes=1)
    (left,) = await report(app, a["id"], destination(HALL, 0, 400))
    assert left.kind == "geofence_leave"
    assert await inside(client, fence["id"]) == []
    assert await events(client, geofence=fence["id"]) == [
        ("geofence_leave", "A"),
        ("geofence_enter", "A"),
    ]
    assert await events(client, kind="geofence_enter", device=a["id"]) == [("geofence_enter", "A")]
    assert await events(client, since="-90s") == [("geofence_leave", "A")]
    page = (await client.get("/api/v1/monitor/events", params={"limit": 1})).json()
    more = await events(client, cursor=page["next_cursor"])
    assert more == [("geofence_enter", "A")]


async def test_imprecise_fixes_do_not_move_anyone_in_or_out(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    (a,) = await fleet(client, {"serial": "A"})
    fence = await create_fence(client)
    assert await report(app, a["id"], HALL, accuracy=2000.0) == []
    assert await inside(client, fence["id"]) == []


async def test_drawing_or_redrawing_a_fence_takes_who_is_inside_now_quietly(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    a, b = await fleet(client, {"serial": "A"}, {"serial": "B"})
    await report(app, a["id"], HALL)
    await report(app, b["id"], destination(HALL, 90, 500))
    fence = await create_fence(client)
    assert await inside(client, fence["id"]) == ["A"]
    bigger = {**CIRCLE, "radius_m": 1000}
    r = await client.patch(f"/api/v1/geofences/{fence['id']}", json={"shape": bigger})
    assert r.status_code == 200, r.text
    assert await inside(client, fence["id"]) == ["A", "B"]
    assert await events(client) == []
    assert await report(app, b["id"], destination(HALL, 90, 510)) == []  # was already inside


async def test_a_viewer_reads_geofences_and_an_operator_changes_them(
    client: httpx.AsyncClient,
) -> None:
    fence = await create_fence(client)
    async with as_token_client(client, await user_token(client, "vic", "viewer")) as vic:
        assert (await vic.get(f"/api/v1/geofences/{fence['id']}")).status_code == 200
        r = await vic.post("/api/v1/geofences", json={"name": "gate", "shape": CIRCLE})
        assert r.status_code == 403
        assert (await vic.delete(f"/api/v1/geofences/{fence['id']}")).status_code == 403
    async with as_token_client(client, await user_token(client, "olga", "operator")) as olga:
        r = await olga.post("/api/v1/geofences", json={"name": "gate", "shape": CIRCLE})
        assert r.status_code == 201 and r.json()["created_by"] == "olga/token:olga-token"


# Tenants


async def test_a_tenant_sees_only_its_own_fences_positions_events_and_map(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    r = await client.post("/api/v1/tenants", json={"id": "acme", "name": "Acme"})
    assert r.status_code == 201, r.text
    mine, theirs = await fleet(
        client,
        {"serial": "MINE", "tenant": "acme", "attributes": {"site": "hall-1"}},
        {"serial": "THEIRS", "attributes": {"site": "hall-1"}},
    )
    their_fence = await create_fence(client, "their-yard")
    async with as_token_client(client, await user_token(client, "ann", "operator", "acme")) as ann:
        r = await ann.post("/api/v1/geofences", json={"name": "yard", "shape": CIRCLE})
        assert r.status_code == 201 and r.json()["tenant"] == "acme"
        my_fence = r.json()
        await report(app, mine["id"], HALL)
        await report(app, theirs["id"], HALL)
        assert await inside(client, their_fence["id"]) == ["THEIRS"]
        assert await inside(ann, my_fence["id"]) == ["MINE"]

        features = (await ann.get("/api/v1/fleet/map")).json()["features"]
        assert [f["properties"]["serial"] for f in features] == ["MINE"]
        assert [f["name"] for f in (await ann.get("/api/v1/geofences")).json()["items"]] == ["yard"]
        for path in (
            f"/api/v1/geofences/{their_fence['id']}",
            f"/api/v1/geofences/{their_fence['id']}/devices",
            f"/api/v1/devices/{theirs['id']}/positions",
        ):
            assert (await ann.get(path)).status_code == 404, path
        r = await ann.patch(f"/api/v1/geofences/{their_fence['id']}", json={"site": "x"})
        assert r.status_code == 404
        assert await events(ann) == [("geofence_enter", "MINE")]
        assert await events(ann, geofence=their_fence["id"]) == []
        env = (await ann.get("/api/v1/sites/hall-1/environment")).json()
        assert [d["serial"] for d in env["devices"]] == ["MINE"]
        r = await ann.post(
            "/api/v1/geofences", json={"name": "x", "shape": CIRCLE, "tenant": "default"}
        )
        assert r.status_code == 403
    assert len(await events(client)) == 2


# A site's environment


async def test_the_environment_sets_each_device_against_the_site_median(
    client: httpx.AsyncClient, app: FastAPI, clock: FakeClock
) -> None:
    a, b, c, old, elsewhere = await fleet(
        client,
        {"serial": "A", "attributes": {"site": "hall-1"}},
        {"serial": "B", "attributes": {"site": "hall-1"}},
        {"serial": "C", "attributes": {"site": "hall-1"}},
        {"serial": "OLD", "attributes": {"site": "hall-1"}},
        {"serial": "ELSEWHERE", "attributes": {"site": "hall-2"}},
    )
    now = clock.now()
    await put_latest(app, a["id"], now, temperature=20.0, humidity=40.0)
    await put_latest(app, b["id"], now, temperature=21.0, humidity=44.0)
    await put_latest(app, c["id"], now, temperature=29.0)
    await put_latest(app, old["id"], now - timedelta(days=3), temperature=-10.0)
    await put_latest(app, elsewhere["id"], now, temperature=5.0)
    r = await client.get("/api/v1/sites/hall-1/environment")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["site"] == "hall-1" and body["truncated"] is False
    assert body["metrics"]["temperature"] == {"count": 3, "median": 21.0, "min": 20.0, "max": 29.0}
    assert body["metrics"]["humidity"] == {"count": 2, "median": 42.0, "min": 40.0, "max": 44.0}
    by_serial = {d["serial"]: d["readings"] for d in body["devices"]}
    assert set(by_serial) == {"A", "B", "C", "OLD"}
    assert by_serial["C"]["temperature"]["deviation"] == 8.0
    assert by_serial["A"]["humidity"]["deviation"] == -2.0
    assert by_serial["OLD"]["temperature"]["stale"] is True
    assert by_serial["OLD"]["temperature"]["deviation"] is None
    wide = (await client.get("/api/v1/sites/hall-1/environment", params={"max_age": "7d"})).json()
    assert wide["metrics"]["temperature"]["count"] == 4
    only = await client.get("/api/v1/sites/hall-1/environment", params={"metric": "humidity"})
    assert list(only.json()["metrics"]) == ["humidity"]
    r = await client.get("/api/v1/sites/hall-1/environment", params={"max_age": "soon"})
    assert r.status_code == 422 and r.json()["field"] == "max_age"


async def test_a_site_name_is_matched_literally(client: httpx.AsyncClient) -> None:
    await fleet(
        client,
        {"serial": "ODD", "attributes": {"site": 'Hall "B"/*'}},
        {"serial": "HALL", "attributes": {"site": "Hall"}},
    )
    r = await client.get("/api/v1/sites/Hall%20%22B%22%2F%2A/environment")
    assert r.status_code == 200, r.text
    assert [d["serial"] for d in r.json()["devices"]] == ["ODD"]
    body = (await client.get("/api/v1/sites/nowhere/environment")).json()
    assert body == {
        "site": "nowhere",
        "metrics": {"temperature": None, "humidity": None},
        "devices": [],
        "truncated": False,
    }


async def test_the_geo_routes_are_documented(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    for path in (
        "/api/v1/fleet/map",
        "/api/v1/devices/{device_id}/positions",
        "/api/v1/geofences",
        "/api/v1/geofences/{geofence_id}",
        "/api/v1/geofences/{geofence_id}/devices",
        "/api/v1/monitor/events",
        "/api/v1/sites/{site}/environment",
    ):
        assert path in paths, path
