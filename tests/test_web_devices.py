"""The dashboard's device list and device page: queries, saved queries, pagination, bulk
selection, lifecycle actions and commands, chart and map data, roles and tenants.
On SQLite and PostgreSQL."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import timedelta
from html import unescape
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import event

from devicekit import online_device
from fleet import fleet, model
from fleetkeeper.clock import FakeClock
from fleetkeeper.ids import uuid7
from fleetkeeper.services.geo import record_position
from fleetkeeper.store.models import AlertRecord, Device, DeviceHealth
from webkit import PASSWORD, csrf_of, login, web_user

pytestmark = pytest.mark.asyncio


def row_serials(page: str) -> list[str]:
    """The serials in the device table, in page order."""
    return re.findall(r'<th scope="row"><a href="/devices/[^"]+">([^<]+)</a></th>', page)


def flash(response: httpx.Response) -> dict[str, str]:
    """The flash message a redirect carries: {"ok": ...} or {"error": ...}."""
    assert response.status_code == 303, response.text
    query = parse_qs(urlsplit(response.headers["location"]).query)
    return {k: v[0] for k, v in query.items() if k in ("ok", "error")}


async def browser_for(client: httpx.AsyncClient, username: str, role: str = "admin") -> Any:
    await web_user(client, username, role)
    return await login(client, username)


async def many(client: httpx.AsyncClient, count: int, **fields: Any) -> None:
    await model(client)
    rows = [{"serial": f"SN-{i:03d}", "model": "thermo-v2", **fields} for i in range(count)]
    r = await client.post("/api/v1/devices/import", json=rows)
    assert r.status_code == 201, r.text


# The device list


async def test_the_list_shows_each_device_with_its_columns_and_the_total(
    client: httpx.AsyncClient,
) -> None:
    await fleet(
        client,
        {"serial": "SN-1", "firmware_version": "1.4.2", "attributes": {"site": "berlin-1"}},
        {"serial": "SN-2", "name": "boiler room", "state": "active"},
    )
    browser = await browser_for(client, "alice")
    r = await browser.get("/devices")
    assert r.status_code == 200
    assert sorted(row_serials(r.text)) == ["SN-1", "SN-2"]
    assert ">2</span> devices" in r.text
    for shown in ("1.4.2", "berlin-1", "boiler room", "thermo-v2", "registered", "offline"):
        assert shown in r.text
    assert '<label for="q">Fleet query</label>' in r.text


async def test_a_query_filters_the_list_and_the_total_counts_its_matches(
    client: httpx.AsyncClient,
) -> None:
    await fleet(
        client,
        {"serial": "B-1", "attributes": {"site": "berlin"}},
        {"serial": "B-2", "attributes": {"site": "berlin"}, "tags": ["pilot"]},
        {"serial": "P-1", "attributes": {"site": "paris"}},
    )
    browser = await browser_for(client, "alice")
    r = await browser.get("/devices", params={"q": "attributes.site = berlin"})
    assert sorted(row_serials(r.text)) == ["B-1", "B-2"]
    assert ">2</span> devices match the query" in r.text
    r = await browser.get("/devices", params={"q": "tag:pilot OR serial = P-1"})
    assert sorted(row_serials(r.text)) == ["B-2", "P-1"]


async def test_a_bad_query_is_shown_inline_with_its_position_not_as_a_server_error(
    client: httpx.AsyncClient,
) -> None:
    await fleet(client, {"serial": "SN-1"})
    browser = await browser_for(client, "alice")
    r = await browser.get("/devices", params={"q": "serial = )"})
    assert r.status_code == 400
    text = unescape(r.text)
    assert "The query is not valid" in text and "line 1 column 10" in text
    assert "serial = )\n         ^" in text  # a caret under the mistake
    assert 'aria-invalid="true"' in r.text and row_serials(r.text) == []
    r = await browser.get("/devices", params={"q": "colour = red"})
    assert r.status_code == 400 and "unknown field 'colour'" in unescape(r.text)


async def test_pages_follow_the_keyset_cursor_without_gaps_or_repeats(
    client: httpx.AsyncClient,
) -> None:
    await many(client, 30)
    browser = await browser_for(client, "alice")
    r = await browser.get("/devices", params={"limit": 25})
    first = row_serials(r.text)
    assert len(first) == 25 and ">30</span> devices" in r.text
    found = re.search(r'<a href="([^"]+)" rel="next">', r.text)
    assert found, "no next page link"
    r = await browser.get(unescape(found.group(1)))
    second = row_serials(r.text)
    assert len(second) == 5 and 'rel="next"' not in r.text and "First page" in r.text
    assert sorted(first + second) == [f"SN-{i:03d}" for i in range(30)]
    r = await browser.get("/devices", params={"cursor": "%%%not-a-cursor"})
    assert r.status_code == 400 and "invalid cursor" in r.text


async def test_the_list_costs_the_same_statements_whatever_the_page_holds(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    """No statement per device: a page of 3 and a page of 30 take as many, each LIMITed."""
    await many(client, 3)
    browser = await browser_for(client, "alice")
    await browser.get("/devices")  # warm up (first-use look-ups)
    with statements(app) as small:
        assert len(row_serials((await browser.get("/devices")).text)) == 3
    r = await client.post(
        "/api/v1/devices/import",
        json=[{"serial": f"MORE-{i}", "model": "thermo-v2"} for i in range(27)],
    )
    assert r.status_code == 201
    with statements(app) as large:
        assert len(row_serials((await browser.get("/devices")).text)) == 30
    assert len(large) == len(small)
    listing = [s for s in large if "FROM devices" in s and "ORDER BY devices.id" in s]
    assert listing and all("LIMIT" in s for s in listing)


_MEASURED: ContextVar[list[str] | None] = ContextVar("measured", default=None)


@contextmanager
def statements(app: FastAPI) -> Iterator[list[str]]:
    """The SQL statements this test's requests run inside the block (the server's background
    jobs run in tasks of their own, outside this context, and are not counted)."""
    engine = app.state.fleetkeeper.db.engine.sync_engine
    seen: list[str] = []

    def note(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        measured = _MEASURED.get()
        if measured is not None:
            measured.append(statement)

    token = _MEASURED.set(seen)
    event.listen(engine, "before_cursor_execute", note)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", note)
        _MEASURED.reset(token)


# Saved queries


async def test_saved_queries_are_kept_per_user(client: httpx.AsyncClient) -> None:
    await fleet(client, {"serial": "SN-1"})
    alice = await browser_for(client, "alice")
    page = (await alice.get("/devices", params={"q": "state = active"})).text
    r = await alice.post(
        "/devices/queries",
        data={"csrf": csrf_of(page), "name": "active ones", "q": "state = active"},
    )
    assert flash(r) == {"ok": "Saved the query as 'active ones'."}
    page = (await alice.get("/devices")).text
    assert ">active ones</a>" in page and "q=state%20%3D%20active" in page
    saved_id = re.search(r'action="/devices/queries/(\d+)/delete"', page)
    assert saved_id

    bob = await browser_for(client, "bob")
    bob_page = (await bob.get("/devices")).text
    assert "active ones" not in bob_page
    r = await bob.post(
        f"/devices/queries/{saved_id.group(1)}/delete", data={"csrf": csrf_of(bob_page)}
    )
    assert "error" in flash(r)
    assert "active ones" in (await alice.get("/devices")).text

    r = await alice.post(
        f"/devices/queries/{saved_id.group(1)}/delete", data={"csrf": csrf_of(page)}
    )
    assert flash(r) == {"ok": "Deleted the saved query."}
    assert "active ones" not in (await alice.get("/devices")).text


async def test_a_query_that_does_not_parse_is_not_saved(client: httpx.AsyncClient) -> None:
    alice = await browser_for(client, "alice")
    page = (await alice.get("/devices")).text
    r = await alice.post(
        "/devices/queries", data={"csrf": csrf_of(page), "name": "broken", "q": "serial = )"}
    )
    assert flash(r)["error"].startswith("Not saved: unexpected ')'")
    assert "broken" not in (await alice.get("/devices")).text


# Bulk selection


async def test_ticked_devices_go_into_a_static_group_and_the_change_is_audited(
    client: httpx.AsyncClient,
) -> None:
    a, b, _ = await fleet(client, {"serial": "A"}, {"serial": "B"}, {"serial": "C"})
    assert (await client.post("/api/v1/groups", json={"name": "lab"})).status_code == 201
    alice = await browser_for(client, "alice")
    page = (await alice.get("/devices")).text
    assert 'data-select-all="device"' in page and "Add to group" in page
    form = {
        "csrf": csrf_of(page),
        "action": "group",
        "scope": "selected",
        "group": "lab",
        "reason": "bench test",
        "device": [a["id"], b["id"]],
    }
    r = await alice.post("/devices/bulk", data=form)
    assert flash(r) == {"ok": "Added 2 device(s) to group 'lab'."}
    assert (await client.get("/api/v1/groups/lab")).json()["member_count"] == 2
    items = (await client.get("/api/v1/audit", params={"action": "group.add_members"})).json()
    (record,) = items["items"]
    assert record["actor"] == "alice/web" and record["reason"] == "bench test"
    assert sorted(record["after"]["devices"]) == sorted([a["id"], b["id"]])
    r = await alice.post("/devices/bulk", data={**form, "group": "nope"})
    assert flash(r) == {"error": "no group 'nope'"}


async def test_all_devices_matching_the_query_go_into_a_group(
    client: httpx.AsyncClient,
) -> None:
    await fleet(
        client,
        {"serial": "B-1", "attributes": {"site": "berlin"}},
        {"serial": "B-2", "attributes": {"site": "berlin"}},
        {"serial": "P-1", "attributes": {"site": "paris"}},
    )
    await client.post("/api/v1/groups", json={"name": "berlin"})
    alice = await browser_for(client, "alice")
    page = (await alice.get("/devices", params={"q": "attributes.site = berlin"})).text
    form = {
        "csrf": csrf_of(page),
        "action": "group",
        "scope": "all",
        "group": "berlin",
        "q": "attributes.site = berlin",
    }
    r = await alice.post("/devices/bulk", data=form)
    assert "Added 2 device(s)" in flash(r)["ok"]
    r = await client.get("/api/v1/devices", params={"q": "group:berlin"})
    assert sorted(d["serial"] for d in r.json()["items"]) == ["B-1", "B-2"]
    r = await alice.post("/devices/bulk", data={**form, "q": "serial = )"})
    assert "unexpected ')'" in flash(r)["error"]


async def test_a_deployment_for_the_selection_is_started_with_its_target(
    client: httpx.AsyncClient,
) -> None:
    a, b, _ = await fleet(client, {"serial": "A-1"}, {"serial": "A-2"}, {"serial": "Z"})
    alice = await browser_for(client, "alice")
    page = (await alice.get("/devices", params={"q": "serial = A-*"})).text
    form = {"csrf": csrf_of(page), "action": "deploy", "q": "serial = A-*"}
    r = await alice.post("/devices/bulk", data={**form, "device": [b["id"], a["id"]]})
    assert r.status_code == 303
    location = urlsplit(r.headers["location"])
    target = parse_qs(location.query)["target"][0]
    assert location.path == "/deployments/new" and target == 'serial IN ("A-1", "A-2")'
    picked = await client.get("/api/v1/devices", params={"q": target})
    assert sorted(d["serial"] for d in picked.json()["items"]) == ["A-1", "A-2"]
    r = await alice.post("/devices/bulk", data={**form, "scope": "all"})
    assert parse_qs(urlsplit(r.headers["location"]).query)["target"] == ["serial = A-*"]
    r = await alice.post("/devices/bulk", data={**form, "scope": "all", "q": "serial = )"})
    assert "unexpected ')'" in flash(r)["error"]
    r = await alice.post("/devices/bulk", data=form)  # nothing ticked
    assert "Tick some devices" in flash(r)["error"]


# The device page


async def put_alert(app: FastAPI, client: httpx.AsyncClient, device_id: str) -> None:
    body = {"name": "low-battery", "condition": "battery < 15 for 10m"}
    r = await client.post("/api/v1/alert-rules", json=body)
    assert r.status_code == 201, r.text
    rule = r.json()
    now = app.state.fleetkeeper.clock.now()
    async with app.state.fleetkeeper.db.write() as session:
        session.add(
            AlertRecord(
                id=uuid7(now),
                tenant_id=rule["tenant"],
                rule_id=rule["id"],
                rule=rule["name"],
                fingerprint="f" * 16,
                open_fingerprint="f" * 16,
                device_id=device_id,
                state="firing",
                severity="critical",
                labels={"device": device_id},
                annotations={},
                value=12.0,
                active_since=now - timedelta(minutes=10),
                fired_at=now,
                flapping=False,
                flips=[],
                muted_by={},
                updated_at=now,
            )
        )


async def test_the_device_page_shows_identity_health_commands_alerts_and_audit(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    (d,) = await fleet(
        client,
        {
            "serial": "SN-7",
            "name": "roof sensor",
            "state": "active",
            "firmware_version": "2.1.0",
            "hardware_revision": "rev-b",
            "attributes": {"site": "berlin-1", "floor": 3},
            "tags": ["pilot"],
        },
    )
    await client.post("/api/v1/groups", json={"name": "roof"})
    await client.post("/api/v1/groups/roof/members", json={"devices": [d["id"]]})
    now = app.state.fleetkeeper.clock.now()
    async with app.state.fleetkeeper.db.write() as session:
        session.add(
            DeviceHealth(
                device_id=d["id"],
                flag="faulty_sensor",
                metric="temperature",
                detector="stuck_sensor",
                severity="warning",
                evidence={"value": 21.5, "unchanged_for_s": 7200},
                since=now,
                checked_at=now,
            )
        )
    r = await client.post(f"/api/v1/devices/{d['id']}/commands", json={"name": "reboot"})
    assert r.status_code == 201
    await put_alert(app, client, d["id"])
    alice = await browser_for(client, "alice")
    r = await alice.get(f"/devices/{d['id']}")
    assert r.status_code == 200
    page = unescape(r.text)
    for shown in ("roof sensor", "2.1.0", "rev-b", "berlin-1", "pilot", "roof", "thermo-v2"):
        assert shown in page, shown
    assert "faulty_sensor" in page and "unchanged_for_s" in page and "stuck_sensor" in page
    assert "<code>reboot</code>" in page and "Send command" in page
    assert 'href="/alerts/' in page and "low-battery" in page
    assert '<h2 id="audit-h">Audit trail</h2>' in page and "device.create" in page
    assert "group.add_members" not in page  # that record is the group's
    assert 'data-source="/ui/data/devices/' in page and 'data-track="line"' in page
    assert "/static/vendor/plotly.min.js" not in page  # no metrics, no charts


async def test_lifecycle_actions_change_the_state_and_show_in_the_history(
    client: httpx.AsyncClient,
) -> None:
    (d,) = await fleet(client, {"serial": "SN-1", "state": "active"})
    alice = await browser_for(client, "alice")
    page = (await alice.get(f"/devices/{d['id']}")).text
    assert '<option value="maintenance">' in page and "Retire" in page
    r = await alice.post(
        f"/devices/{d['id']}/state",
        data={"csrf": csrf_of(page), "state": "maintenance", "reason": "new battery"},
    )
    assert flash(r) == {"ok": "The device is maintenance now."}
    assert (await client.get(f"/api/v1/devices/{d['id']}")).json()["state"] == "maintenance"
    page = unescape((await alice.get(f"/devices/{d['id']}")).text)
    assert "active → maintenance" in page and "new battery" in page

    r = await alice.post(
        f"/devices/{d['id']}/lifecycle/retire", data={"csrf": csrf_of(page), "reason": "broken"}
    )
    assert "Retired" in flash(r)["ok"]
    page = unescape((await alice.get(f"/devices/{d['id']}")).text)
    assert "maintenance → retired" in page and "Change state" not in page


async def test_a_pending_device_is_accepted_from_its_page(client: httpx.AsyncClient) -> None:
    (d,) = await fleet(client, {"serial": "SN-1", "state": "pending"})
    alice = await browser_for(client, "alice")
    page = (await alice.get(f"/devices/{d['id']}")).text
    assert "Accept" in page and "Reject" in page
    r = await alice.post(f"/devices/{d['id']}/lifecycle/accept", data={"csrf": csrf_of(page)})
    assert "Accepted" in flash(r)["ok"]
    assert (await client.get(f"/api/v1/devices/{d['id']}")).json()["state"] == "active"


async def test_a_transition_the_lifecycle_forbids_comes_back_as_a_message(
    client: httpx.AsyncClient,
) -> None:
    (d,) = await fleet(client, {"serial": "SN-1"})  # registered
    alice = await browser_for(client, "alice")
    page = (await alice.get(f"/devices/{d['id']}")).text
    r = await alice.post(
        f"/devices/{d['id']}/state", data={"csrf": csrf_of(page), "state": "maintenance"}
    )
    assert "cannot go from 'registered' to 'maintenance'" in flash(r)["error"]


async def test_a_command_is_sent_from_the_device_page(client: httpx.AsyncClient) -> None:
    (d,) = await fleet(client, {"serial": "SN-1", "state": "active"})
    alice = await browser_for(client, "alice")
    page = (await alice.get(f"/devices/{d['id']}")).text
    form = {"csrf": csrf_of(page), "name": "set_level", "args": '{"level": "debug"}'}
    r = await alice.post(f"/devices/{d['id']}/commands", data={**form, "timeout": "120"})
    assert "queued" in flash(r)["ok"]
    (cmd,) = (await client.get(f"/api/v1/devices/{d['id']}/commands")).json()["items"]
    assert (cmd["name"], cmd["args"], cmd["timeout"]) == ("set_level", {"level": "debug"}, 120)
    assert cmd["created_by"] == "alice/web"
    r = await alice.post(f"/devices/{d['id']}/commands", data={**form, "args": "[1"})
    assert "not JSON" in flash(r)["error"]
    r = await alice.post(f"/devices/{d['id']}/commands", data={**form, "timeout": "soon"})
    assert "whole number" in flash(r)["error"]


# Data for charts and the map


async def test_the_chart_data_gives_raw_points_for_short_ranges_and_buckets_for_long(
    client: httpx.AsyncClient, clock: FakeClock
) -> None:
    unit = await online_device(client)
    now = clock.now().timestamp()
    points = [{"metric": "battery", "value": 80.0 - i, "ts": now - 600 * i} for i in range(1, 50)]
    r = await unit.call("POST", "/telemetry", json={"points": points})
    assert r.status_code == 200, r.text
    alice = await browser_for(client, "alice")
    path = f"/ui/data/devices/{unit.device_id}/telemetry"
    r = await alice.get(path, params={"metric": "battery", "from": "-1h"})
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["step"] is None  # raw, oldest first, from the range's start on
    assert [p["v"] for p in data["points"]] == [74.0, 75.0, 76.0, 77.0, 78.0, 79.0]
    assert data["points"][-1]["t"] == int((now - 600) * 1000)  # Unix ms, for plotly
    r = await alice.get(path, params={"metric": "battery", "from": "-7d"})
    data = r.json()
    assert data["step"] and sum(1 for _ in data["points"]) > 1
    assert all({"t", "v", "min", "max"} <= set(p) for p in data["points"])
    # a zoom asks for an explicit stretch, in Unix seconds
    r = await alice.get(
        path, params={"metric": "battery", "from": str(now - 3000), "to": str(now - 1100)}
    )
    assert [p["v"] for p in r.json()["points"]] == [75.0, 76.0, 77.0, 78.0]
    page = (await alice.get(f"/devices/{unit.device_id}")).text
    assert 'data-metric="battery"' in page and "/static/vendor/plotly.min.js" in page


async def test_the_position_history_is_geojson_oldest_first(
    app: FastAPI, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    (d,) = await fleet(client, {"serial": "SN-1"})
    state = app.state.fleetkeeper
    for lat, lon in ((52.52, 13.40), (52.53, 13.41), (52.54, 13.42)):
        clock.advance(minutes=30)
        async with state.db.write() as session:
            row = await session.get_one(Device, d["id"])
            row.location = {"lat": lat, "lon": lon}
            await record_position(session, row, row.location, clock.now())
    alice = await browser_for(client, "alice")
    r = await alice.get(f"/ui/data/devices/{d['id']}/positions")
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["type"] == "FeatureCollection"
    coordinates = [f["geometry"]["coordinates"] for f in data["features"]]
    assert coordinates == [[13.40, 52.52], [13.41, 52.53], [13.42, 52.54]]
    assert all(f["properties"]["ts"] for f in data["features"])


# Roles, CSRF and tenants


async def test_a_viewer_is_offered_no_changes_and_refused_when_posting_anyway(
    client: httpx.AsyncClient,
) -> None:
    (d,) = await fleet(client, {"serial": "SN-1", "state": "active"})
    await client.post("/api/v1/groups", json={"name": "lab"})
    vera = await browser_for(client, "vera", role="viewer")
    page = (await vera.get("/devices")).text
    assert row_serials(page) == ["SN-1"]
    assert 'name="device"' not in page and "Add to group" not in page
    assert "Deploy to them" not in page
    device_page = (await vera.get(f"/devices/{d['id']}")).text
    for action in ("Change state", "Retire", "Send command", "Audit trail"):
        assert action not in device_page, action
    csrf = csrf_of(page)
    posts = [
        ("/devices/bulk", {"action": "group", "group": "lab", "device": d["id"]}),
        ("/devices/bulk", {"action": "deploy", "device": d["id"]}),
        (f"/devices/{d['id']}/state", {"state": "maintenance"}),
        (f"/devices/{d['id']}/lifecycle/retire", {"reason": "x"}),
        (f"/devices/{d['id']}/commands", {"name": "reboot"}),
    ]
    for path, data in posts:
        r = await vera.post(path, data={"csrf": csrf, **data})
        assert r.status_code == 403, path
    assert (await client.get(f"/api/v1/devices/{d['id']}")).json()["state"] == "active"
    assert (await client.get("/api/v1/groups/lab")).json()["member_count"] == 0


async def test_every_device_action_needs_the_csrf_token(client: httpx.AsyncClient) -> None:
    (d,) = await fleet(client, {"serial": "SN-1", "state": "active"})
    alice = await browser_for(client, "alice")
    for path, data in [
        ("/devices/bulk", {"action": "deploy", "device": d["id"]}),
        ("/devices/queries", {"name": "x", "q": "state = active"}),
        (f"/devices/{d['id']}/state", {"state": "maintenance"}),
        (f"/devices/{d['id']}/commands", {"name": "reboot"}),
    ]:
        assert (await alice.post(path, data=data)).status_code == 403, path
        assert (await alice.post(path, data={**data, "csrf": "forged"})).status_code == 403
    assert (await client.get(f"/api/v1/devices/{d['id']}")).json()["state"] == "active"


async def test_a_tenant_user_sees_only_the_tenants_devices(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/v1/tenants", json={"id": "acme", "name": "Acme"})
    assert r.status_code == 201, r.text
    mine, theirs = await fleet(
        client, {"serial": "MINE", "tenant": "acme"}, {"serial": "THEIRS", "state": "active"}
    )
    r = await client.post(
        "/api/v1/users",
        json={"username": "ann", "role": "operator", "tenant": "acme", "password": PASSWORD},
    )
    assert r.status_code == 201, r.text
    ann = await login(client, "ann")
    page = (await ann.get("/devices")).text
    assert row_serials(page) == ["MINE"] and ">1</span> device" in page
    assert row_serials((await ann.get("/devices", params={"q": "serial = THEIRS"})).text) == []
    for path in (
        f"/devices/{theirs['id']}",
        f"/ui/data/devices/{theirs['id']}/telemetry?metric=battery",
        f"/ui/data/devices/{theirs['id']}/positions",
    ):
        assert (await ann.get(path)).status_code == 404, path
    r = await ann.post(
        f"/devices/{theirs['id']}/state", data={"csrf": csrf_of(page), "state": "maintenance"}
    )
    assert r.status_code == 404
    r = await ann.post(
        "/devices/bulk", data={"csrf": csrf_of(page), "action": "deploy", "device": theirs["id"]}
    )
    assert "no device is selected" in flash(r)["error"]
    assert (await ann.get(f"/devices/{mine['id']}")).status_code == 200
