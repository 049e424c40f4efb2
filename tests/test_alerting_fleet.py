"""Alerting over simulated fleets, end to end on both databases: the engine judges a stored
fleet in FakeClock time, the deliverer posts to a real local webhook receiver, and what the
receiver got is counted. Each test prints its figures.

The fleets are simulated at the database: check-ins are `last_seen`, readings are the latest
values, and a device "answers" a remediation command by healing when the command is one its
fault yields to (`Responder`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from alertfleet import Fleet
from alertkit import WebhookReceiver
from fleetkeeper.clock import FakeClock
from fleetkeeper.services.alerting.channels import verify_signature
from fleetkeeper.services.alerting.delivery import Deliverer
from fleetkeeper.store.db import Database
from fleetkeeper.store.models import AuditRecord, Command, RemediationAction

pytestmark = pytest.mark.asyncio
LADDER = ("restart_service", "reboot", "safe_mode")


@pytest.fixture
async def fleet(db: Database, clock: FakeClock) -> Fleet:
    return await Fleet(db, clock).setup()


async def run(
    fleet: Fleet, deliverer: Deliverer, seconds: float, step: float, alive: list[str]
) -> None:
    """Tick engine and deliverer; the `alive` devices keep checking in."""
    assert fleet.engine is not None
    end = fleet.clock.now() + timedelta(seconds=seconds)
    while fleet.clock.now() < end:
        fleet.clock.advance(step)
        if alive:
            await fleet.seen(alive)
        await fleet.engine.tick()
        await deliverer.tick()


async def test_a_site_outage_of_1000_devices_is_one_notification_per_repeat_interval(
    fleet: Fleet, clock: FakeClock
) -> None:
    t0 = clock.now()
    down = [f"OSL-{i:04d}" for i in range(1000)]
    up = [f"BER-{i:03d}" for i in range(200)]
    await fleet.add(down, attributes={"site": "oslo-3"}, seen=t0)
    await fleet.add(up, attributes={"site": "berlin-1"}, seen=t0)
    async with WebhookReceiver() as hook, Deliverer(fleet.db, clock) as deliverer:
        channel = await fleet.channel(hook.url)
        await fleet.rule(
            name="device_offline",
            condition="offline for 2m",
            group_by=["rule", "site"],
            group_wait="30s",
            group_interval="5m",
            repeat_interval="1h",
            channels=[channel],
        )
        fleet.start()
        hours = 3
        await run(fleet, deliverer, hours * 3600 + 600, 30, up)
        bodies = hook.bodies()
        by_group = Counter(body["group"]["key"] for body in bodies)
        firing = len(await fleet.alerts("firing"))
        print(
            f"\nsite outage: {firing} devices firing over {hours} h → {len(bodies)} webhook "
            f"deliveries ({dict(by_group)}), first as {bodies[0]['kind']} of "
            f"{bodies[0]['counts']['firing']}"
        )
        assert firing == 1000
        assert set(by_group) == {'device_offline{site="oslo-3"}'}
        times = sorted(body["sent_at"] for body in bodies)
        assert len(times) == hours + 1  # the first, then one per repeat interval
        assert bodies[0]["kind"] == "incident" and bodies[0]["incident"]["firing"] == 1000
        assert all(body["repeat"] for body in bodies[1:])
        request = hook.requests[0]
        assert verify_signature(
            "s3cret",
            request.headers["x-fleetkeeper-timestamp"],
            request.body,
            request.headers["x-fleetkeeper-signature"],
            now=int(request.headers["x-fleetkeeper-timestamp"]),
        )


async def test_a_silenced_site_outage_delivers_nothing_until_the_silence_ends(
    fleet: Fleet, clock: FakeClock
) -> None:
    await fleet.add([f"OSL-{i:03d}" for i in range(300)], attributes={"site": "oslo-3"})
    async with WebhookReceiver() as hook, Deliverer(fleet.db, clock) as deliverer:
        channel = await fleet.channel(hook.url)
        await fleet.rule(
            name="device_offline",
            condition="offline for 2m",
            group_by=["rule", "site"],
            channels=[channel],
        )
        await fleet.silence(["site=oslo-3", "rule=device_offline"], hours=2)
        fleet.start()
        await run(fleet, deliverer, 3600, 30, [])
        muted = sum(bool(a.muted_by.get("silences")) for a in await fleet.alerts("firing"))
        print(f"\nsilence: 300 devices offline, {muted} muted, {len(hook.requests)} deliveries")
        assert hook.requests == [] and muted == 300
        await run(fleet, deliverer, 2 * 3600, 30, [])
        assert len(hook.requests) == 1  # once it ended: one notification of the group


@dataclass
class Responder:
    """Devices with a crash-looping agent: each heals at the rung of the ladder it yields to
    (None: nothing heals it)."""

    fleet: Fleet
    cures: dict[str, str | None]
    healed_by: Counter[str] = field(default_factory=Counter)

    async def answer(self) -> None:
        async with self.fleet.db.write() as session:
            pending = (
                await session.scalars(select(Command).where(Command.state == "pending"))
            ).all()
            for command in pending:
                command.state, command.completed_at = "succeeded", self.fleet.clock.now()
        by_id = {v: k for k, v in self.fleet.devices.items()}
        for command in pending:
            serial = by_id[command.device_id]
            cure = self.cures.get(serial)
            if cure is not None and LADDER.index(command.name) >= LADDER.index(cure):
                self.cures[serial] = None
                self.healed_by[command.name] += 1
                await self.fleet.reading(serial, "crashes", 0)


async def crash(fleet: Fleet, serials: list[str]) -> None:
    for serial in serials:
        await fleet.reading(serial, "crashes", 6)


async def run_healing(
    fleet: Fleet, deliverer: Deliverer, responder: Responder, seconds: float
) -> None:
    assert fleet.engine is not None
    end = fleet.clock.now() + timedelta(seconds=seconds)
    while fleet.clock.now() < end:
        fleet.clock.advance(30)
        await fleet.engine.tick()
        await responder.answer()
        await deliverer.tick()


def crash_rule(channel: str, **remediation: object) -> dict[str, object]:
    return {
        "name": "agent_crash_loop",
        "condition": "crashes > 3",
        "group_by": ["rule", "site"],
        "group_wait": "30s",
        "channels": [channel],
        "remediation": {
            "steps": [{"action": name, "wait": "5m"} for name in LADDER],
            "cooldown": "6h",
            "max_fraction": 0.05,
            **remediation,
        },
    }


async def test_remediation_heals_what_it_can_before_anyone_is_paged(
    fleet: Fleet, clock: FakeClock
) -> None:
    serials = [f"SN-{i:04d}" for i in range(1000)]
    await fleet.add(serials, attributes={"site": "oslo-3"})
    for serial in serials:
        await fleet.reading(serial, "crashes", 0)
    sick = serials[:40]
    cures: dict[str, str | None] = {
        **{s: "restart_service" for s in sick[:24]},
        **{s: "reboot" for s in sick[24:34]},
        **{s: "safe_mode" for s in sick[34:38]},
        **{s: None for s in sick[38:]},
    }
    async with WebhookReceiver() as hook, Deliverer(fleet.db, clock) as deliverer:
        channel = await fleet.channel(hook.url)
        await fleet.rule(**crash_rule(channel))
        fleet.start()
        responder = Responder(fleet, cures)
        await crash(fleet, sick)
        await run_healing(fleet, deliverer, responder, 3600)
        resolved = len(await fleet.alerts("resolved"))
        firing = await fleet.alerts("firing")
        bodies = hook.bodies()
        paged = sorted(a["serial"] for body in bodies for a in body["alerts"])
        healed = sum(responder.healed_by.values())
        print(
            f"\nremediation: {len(sick)} devices crash-looping → healed {healed} "
            f"({dict(responder.healed_by)}), {resolved} alerts resolved unnotified, "
            f"{len(firing)} escalated, {len(bodies)} notification(s) naming {paged}"
        )
        assert responder.healed_by == Counter(restart_service=24, reboot=10, safe_mode=4)
        assert resolved == 38
        assert sorted(a.labels["serial"] for a in firing) == sick[38:]
        assert all("escalated" in a.annotations for a in firing)
        assert len(bodies) == 1 and paged == sick[38:]
    async with fleet.db.read() as session:
        audited = (
            await session.scalars(
                select(AuditRecord).where(AuditRecord.actor == "rule:agent_crash_loop")
            )
        ).all()
    assert audited and all("agent_crash_loop" in (r.reason or "") for r in audited)


async def test_the_circuit_breaker_stops_a_remediation_storm_and_pages_instead(
    fleet: Fleet, clock: FakeClock
) -> None:
    serials = [f"SN-{i:04d}" for i in range(1000)]
    await fleet.add(serials, attributes={"site": "oslo-3"})
    for serial in serials:
        await fleet.reading(serial, "crashes", 0)
    storm = serials[:300]
    async with WebhookReceiver() as hook, Deliverer(fleet.db, clock) as deliverer:
        channel = await fleet.channel(hook.url)
        await fleet.rule(**crash_rule(channel))
        fleet.start()
        responder = Responder(fleet, {s: "restart_service" for s in storm})
        await crash(fleet, storm)
        await run_healing(fleet, deliverer, responder, 1800)
    async with fleet.db.read() as session:
        actions = (await session.scalars(select(RemediationAction))).all()
    remediated = {a.device_id for a in actions if a.state != "skipped"}
    held_back = {a.device_id for a in actions if a.state == "skipped"}
    bodies = hook.bodies()
    print(
        f"\ncircuit breaker: {len(storm)} devices crash at once, budget 5% of 1000 → "
        f"{len(remediated)} remediated, {len(held_back)} held back and paged "
        f"in {len(bodies)} notification(s)"
    )
    assert len(remediated) == 50
    assert len(held_back) == 250
    assert 1 <= len(bodies) <= 2
    assert sum(body["counts"]["firing"] for body in bodies[:1]) == 250
    assert responder.healed_by["restart_service"] == 50


async def test_through_the_api_a_device_reading_reaches_the_webhook(
    app: FastAPI, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    """The whole path: channel and rule made through the API, a reading sent through the
    device API, the server's own engine and deliverer, a signed webhook, an acknowledgement."""
    from devicekit import Device as DeviceClient
    from devicekit import provisioning_token

    state = app.state.fleetkeeper
    await client.post("/api/v1/models", json={"name": "thermo-v2"})
    token = await provisioning_token(client, auto_accept=True)
    unit = DeviceClient(client, "SN-API-1", "thermo-v2")
    assert (await unit.enroll(token, attributes={"site": "oslo-3"})).status_code == 201
    assert (await unit.login()).status_code == 200
    async with WebhookReceiver() as hook:
        r = await client.post(
            "/api/v1/channels",
            json={"name": "ops", "kind": "webhook", "url": hook.url, "secret": "k3y"},
        )
        assert r.status_code == 201, r.text
        r = await client.post(
            "/api/v1/alert-rules",
            json={
                "name": "battery_low",
                "scope": "model = thermo-v2",
                "condition": "battery < 15",
                "clear": "battery > 20",
                "group_by": ["rule", "site"],
                "group_wait": "30s",
                "channels": [r.json()["id"]],
            },
        )
        assert r.status_code == 201, r.text
        now = clock.now().timestamp()
        r = await unit.call(
            "POST", "/telemetry", json={"points": [{"metric": "battery", "value": 9, "ts": now}]}
        )
        assert r.status_code == 200, r.text
        for _ in range(10):
            clock.advance(5)
            await state.alert_engine.tick()
            await state.deliverer.tick()
        [request] = hook.requests
        body = request.json
        assert body["group"]["labels"] == {"site": "oslo-3"}
        assert body["alerts"][0]["serial"] == "SN-API-1" and body["alerts"][0]["value"] == 9
        r = await client.get("/api/v1/alerts", params={"state": "firing"})
        [alert] = r.json()["items"]
        r = await client.post(f"/api/v1/alerts/{alert['id']}/ack", json={"note": "on it"})
        assert r.status_code == 200, r.text
        clock.advance(5)
        await state.alert_engine.tick()
        r = await client.get(f"/api/v1/alerts/{alert['id']}")
        assert r.json()["acknowledged"] is True and r.json()["state"] == "firing"
