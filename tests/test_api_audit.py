from __future__ import annotations

import httpx
from fastapi import FastAPI
from sqlalchemy import select, update

from fleet import device, fleet, model
from fleetkeeper.store.models import AuditRecord


async def test_every_mutation_leaves_an_audit_record(client: httpx.AsyncClient) -> None:
    await model(client)
    d = await device(client, "SN-1", reason="first install")
    await client.patch(
        f"/api/v1/devices/{d['id']}",
        json={"name": "x"},
        headers={"X-Change-Reason": "rename", "X-Request-ID": "req-42"},
    )
    await client.delete(f"/api/v1/devices/{d['id']}", params={"reason": "scrapped"})
    items = (await client.get("/api/v1/audit", params={"target": f"device:{d['id']}"})).json()[
        "items"
    ]
    assert [i["action"] for i in items] == ["device.delete", "device.update", "device.create"]
    assert [i["reason"] for i in items] == ["scrapped", "rename", "first install"]
    assert items[1]["request_id"] == "req-42"
    assert items[1]["before"] == {"name": "SN-1"} and items[1]["after"] == {"name": "x"}
    for key in ("actor", "action", "target", "reason", "at"):
        assert key in items[0]
    assert items[0]["actor"].startswith("admin")


async def test_audit_filters_by_action_and_time(client: httpx.AsyncClient, clock) -> None:  # type: ignore[no-untyped-def]
    await model(client)
    clock.advance(hours=1)
    mid = clock.now().isoformat()
    await device(client, "SN-1")
    r = await client.get("/api/v1/audit", params={"action": "device.create", "since": mid})
    assert [i["action"] for i in r.json()["items"]] == ["device.create"]
    r = await client.get("/api/v1/audit", params={"until": mid})
    assert "device.create" not in [i["action"] for i in r.json()["items"]]


async def test_failed_request_writes_no_audit(client: httpx.AsyncClient) -> None:
    before = len((await client.get("/api/v1/audit", params={"limit": 1000})).json()["items"])
    r = await client.post("/api/v1/devices", json={"serial": "SN-1", "model": "missing"})
    assert r.status_code == 422
    after = len((await client.get("/api/v1/audit", params={"limit": 1000})).json()["items"])
    assert before == after


async def test_chain_verifies_until_a_record_is_altered(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    await fleet(client, {"serial": "A"}, {"serial": "B"}, {"serial": "C"})
    ok = (await client.post("/api/v1/audit/verify")).json()
    assert ok["ok"] is True and ok["checked"] >= 5
    async with app.state.fleetkeeper.db.write() as session:
        victim = await session.scalar(
            select(AuditRecord.id)
            .where(AuditRecord.action == "device.create")
            .order_by(AuditRecord.id)
        )
        await session.execute(
            update(AuditRecord).where(AuditRecord.id == victim).values(reason="nothing to see")
        )
    bad = (await client.post("/api/v1/audit/verify")).json()
    assert bad["ok"] is False
    assert bad["first_broken_id"] == victim
    assert "altered" in bad["problem"]


async def test_chain_detects_a_deleted_record(client: httpx.AsyncClient, app: FastAPI) -> None:
    from sqlalchemy import delete

    await fleet(client, {"serial": "A"}, {"serial": "B"})
    async with app.state.fleetkeeper.db.write() as session:
        ids = (await session.scalars(select(AuditRecord.id).order_by(AuditRecord.id))).all()
        await session.execute(delete(AuditRecord).where(AuditRecord.id == ids[2]))
    bad = (await client.post("/api/v1/audit/verify")).json()
    assert bad["ok"] is False and bad["first_broken_id"] == ids[3]
