from __future__ import annotations

import httpx

from fleet import fleet, serials


async def test_static_group_members_and_count(client: httpx.AsyncClient) -> None:
    a, b, _ = await fleet(client, {"serial": "A"}, {"serial": "B"}, {"serial": "C"})
    r = await client.post("/api/v1/groups", json={"name": "lab"})
    assert r.status_code == 201 and r.json()["kind"] == "static"
    r = await client.post("/api/v1/groups/lab/members", json={"devices": [a["id"], b["id"]]})
    assert r.status_code == 200, r.text
    assert (await client.get("/api/v1/groups/lab")).json()["member_count"] == 2
    assert (await client.get(f"/api/v1/devices/{a['id']}")).json()["groups"] == ["lab"]
    assert serials((await client.get("/api/v1/devices", params={"q": "group:lab"})).json()) == [
        "A",
        "B",
    ]
    await client.post("/api/v1/groups/lab/members/remove", json={"devices": [a["id"]]})
    assert serials((await client.get("/api/v1/groups/lab/devices")).json()) == ["B"]


async def test_dynamic_group_membership_is_always_current(client: httpx.AsyncClient) -> None:
    a, _ = await fleet(
        client,
        {"serial": "A", "firmware_version": "1.0.0"},
        {"serial": "B", "firmware_version": "2.0.0"},
    )
    r = await client.post(
        "/api/v1/groups", json={"name": "old", "query": "firmware_version < 2.0.0"}
    )
    assert r.status_code == 201 and r.json()["member_count"] == 1
    assert (await client.get(f"/api/v1/devices/{a['id']}")).json()["groups"] == ["old"]
    await client.patch(f"/api/v1/devices/{a['id']}", json={"firmware_version": "2.1.0"})
    assert (await client.get("/api/v1/groups/old")).json()["member_count"] == 0


async def test_adding_members_to_a_dynamic_group_is_refused(client: httpx.AsyncClient) -> None:
    (a,) = await fleet(client, {"serial": "A"})
    await client.post("/api/v1/groups", json={"name": "all", "query": ""})
    r = await client.post("/api/v1/groups/all/members", json={"devices": [a["id"]]})
    assert r.status_code == 409


async def test_unknown_member_ids_are_listed_and_nothing_is_added(
    client: httpx.AsyncClient,
) -> None:
    (a,) = await fleet(client, {"serial": "A"})
    await client.post("/api/v1/groups", json={"name": "lab"})
    r = await client.post("/api/v1/groups/lab/members", json={"devices": [a["id"], "nope"]})
    assert r.status_code == 422
    assert r.json()["missing"] == ["nope"]
    assert (await client.get("/api/v1/groups/lab")).json()["member_count"] == 0


async def test_dynamic_group_with_bad_query_is_400(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/v1/groups", json={"name": "x", "query": "firmware_version <"})
    assert r.status_code == 400


async def test_group_cycle_is_refused(client: httpx.AsyncClient) -> None:
    await fleet(client, {"serial": "A"})
    assert (
        await client.post("/api/v1/groups", json={"name": "g1", "query": "serial = A"})
    ).status_code == 201
    assert (
        await client.post("/api/v1/groups", json={"name": "g2", "query": "group:g1"})
    ).status_code == 201
    r = await client.patch("/api/v1/groups/g1", json={"query": "group:g2"})
    assert r.status_code in (400, 422), r.text
    assert (await client.get("/api/v1/groups/g1")).json()["query"] == "serial = A"


async def test_deleting_a_group_used_by_another_is_refused(client: httpx.AsyncClient) -> None:
    await fleet(client, {"serial": "A"})
    await client.post("/api/v1/groups", json={"name": "g1", "query": "serial = A"})
    await client.post("/api/v1/groups", json={"name": "g2", "query": "group:g1 OR serial = B"})
    assert (await client.delete("/api/v1/groups/g1")).status_code == 409
    assert (await client.delete("/api/v1/groups/g2")).status_code == 204
    assert (await client.delete("/api/v1/groups/g1")).status_code == 204


async def test_duplicate_group_name_is_a_conflict(client: httpx.AsyncClient) -> None:
    await client.post("/api/v1/groups", json={"name": "lab"})
    assert (await client.post("/api/v1/groups", json={"name": "lab"})).status_code == 409
