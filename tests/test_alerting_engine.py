"""The alerting engine over a stored fleet, in FakeClock time, on both databases: what is
notified, what is not, and when (issue 7's "done when" cases at the engine's level)."""

from __future__ import annotations

import itertools
import random
from datetime import timedelta

import pytest

from alertfleet import Fleet
from fleetkeeper.clock import FakeClock
from fleetkeeper.store.db import Database

pytestmark = pytest.mark.asyncio


@pytest.fixture
async def fleet(db: Database, clock: FakeClock) -> Fleet:
    return await Fleet(db, clock).setup()


async def test_a_metric_flapping_under_a_pending_duration_never_notifies(fleet: Fleet) -> None:
    await fleet.add(["SN-1"])
    await fleet.rule(name="hot", condition="temperature > 80 for 5m", group_wait="30s")
    fleet.start()
    for minute in range(30):  # one minute bad, one minute good, for half an hour
        await fleet.reading("SN-1", "temperature", 90.0 if minute % 2 == 0 else 70.0)
        await fleet.run(60)
    assert await fleet.notifications() == []
    assert await fleet.alerts("firing") == []
    assert await fleet.alerts() == []  # pending alerts that never fired leave nothing behind


async def test_an_alert_resolved_before_the_group_wait_sends_nothing(fleet: Fleet) -> None:
    await fleet.add(["SN-1"])
    await fleet.rule(name="battery_low", condition="battery < 15", group_wait="60s")
    fleet.start()
    await fleet.reading("SN-1", "battery", 10.0)
    await fleet.run(30)
    assert len(await fleet.alerts("firing")) == 1
    await fleet.reading("SN-1", "battery", 50.0)
    await fleet.run(300)
    assert await fleet.notifications() == []
    [resolved] = await fleet.alerts("resolved")
    assert resolved.resolved_by is None and resolved.open_fingerprint is None


async def test_a_new_alert_joins_a_notified_group_at_the_next_group_interval(
    fleet: Fleet, clock: FakeClock
) -> None:
    await fleet.add(["SN-1", "SN-2"], attributes={"site": "oslo-3"})
    await fleet.rule(
        name="battery_low",
        condition="battery < 15",
        group_by=["rule", "site"],
        group_wait="30s",
        group_interval="5m",
    )
    fleet.start()
    t0 = clock.now()
    await fleet.reading("SN-1", "battery", 10.0)
    await fleet.run(60)
    await fleet.reading("SN-2", "battery", 11.0)
    await fleet.run(600)
    first, second = await fleet.notifications()
    assert (first.created_at - t0) == timedelta(seconds=35)  # first tick after the wait
    assert first.payload["counts"] == {"firing": 1, "new": 1, "resolved": 0, "muted": 0}
    assert first.group_key == 'battery_low{site="oslo-3"}'
    assert second.created_at - first.created_at == timedelta(minutes=5)  # not at once
    assert second.payload["counts"]["firing"] == 2 and second.payload["counts"]["new"] == 1
    assert next(a["serial"] for a in second.payload["alerts"]) == "SN-2"  # the new one first


async def test_an_unchanged_group_repeats_exactly_at_the_repeat_interval(
    fleet: Fleet, clock: FakeClock
) -> None:
    await fleet.add(["SN-1"])
    await fleet.rule(
        name="battery_low", condition="battery < 15", group_wait="30s", repeat_interval="1h"
    )
    fleet.start()
    await fleet.reading("SN-1", "battery", 10.0)
    await fleet.run(3 * 3600 + 60, step=15)
    sent = await fleet.notifications()
    assert len(sent) == 4
    gaps = {b.created_at - a.created_at for a, b in itertools.pairwise(sent)}
    assert gaps == {timedelta(hours=1)}
    assert [n.payload["repeat"] for n in sent] == [False, True, True, True]


async def test_hysteresis_holds_an_alert_between_its_condition_and_its_clear(
    fleet: Fleet,
) -> None:
    await fleet.add(["SN-1"])
    await fleet.rule(
        name="battery_low", condition="battery < 15", clear="battery > 20", group_wait="0s"
    )
    fleet.start()
    for value in (14, 16, 14.5, 18, 19, 14, 17):  # wandering around the threshold
        await fleet.reading("SN-1", "battery", value)
        await fleet.run(60)
    assert len(await fleet.alerts("firing")) == 1
    assert len(await fleet.notifications()) == 1  # fired once, never resolved in between
    await fleet.reading("SN-1", "battery", 25)
    await fleet.run(600)
    assert len(await fleet.alerts("resolved")) == 1
    sent = await fleet.notifications()
    assert len(sent) == 2 and sent[1].payload["counts"]["resolved"] == 1


async def test_a_gateway_down_with_500_devices_is_one_notification_and_500_inhibited(
    fleet: Fleet, clock: FakeClock
) -> None:
    t0 = clock.now()
    await fleet.add(["GW-1"], model="gw-1", attributes={"site": "oslo-3", "role": "gateway"})
    children = [f"SN-{i:03d}" for i in range(500)]
    await fleet.add(children, attributes={"site": "oslo-3", "gateway": "GW-1"})
    rng = random.Random(7)
    for serial in children:  # they drop within 20 s of the gateway
        await fleet.seen([serial], t0 + timedelta(seconds=rng.uniform(0, 20)))
    await fleet.rule(
        name="gateway_offline",
        scope="model = gw-1",
        condition="offline for 1m",
        group_by=["rule", "site"],
        severity="critical",
    )
    await fleet.rule(
        name="device_offline",
        scope="model = thermo-v2",
        condition="offline for 1m",
        group_by=["rule", "site"],
    )
    await fleet.inhibit(
        "gateway mutes its devices", ["rule=gateway_offline"], ["rule=device_offline"], ["gateway"]
    )
    fleet.start()
    await fleet.run(900)
    sent = await fleet.notifications()
    assert len(sent) == 1, [n.title for n in sent]
    assert sent[0].payload["group"]["rule"] == "gateway_offline"
    firing = await fleet.alerts("firing")
    children_alerts = [a for a in firing if a.rule == "device_offline"]
    assert len(children_alerts) == 500
    assert all(a.muted_by.get("inhibited_by") for a in children_alerts)
    print(
        f"\ngateway outage: 1 gateway + 500 devices offline → {len(sent)} notification, "
        f"{sum(bool(a.muted_by.get('inhibited_by')) for a in children_alerts)} inhibited"
    )


async def test_a_silence_mutes_and_its_end_lets_the_alert_through(fleet: Fleet) -> None:
    await fleet.add(["SN-1"], attributes={"site": "oslo-3"})
    await fleet.rule(name="battery_low", condition="battery < 15", group_wait="30s")
    await fleet.silence(["site=oslo-3"], hours=1)
    fleet.start()
    await fleet.reading("SN-1", "battery", 10.0)
    await fleet.run(1800, step=10)
    assert await fleet.notifications() == []
    [alert] = await fleet.alerts("firing")
    assert alert.muted_by["silences"]
    await fleet.run(2400, step=10)  # the silence ended an hour after it began
    [sent] = await fleet.notifications()
    assert sent.payload["counts"]["firing"] == 1


async def test_many_devices_firing_together_open_one_incident_that_closes_with_them(
    fleet: Fleet, clock: FakeClock
) -> None:
    from sqlalchemy import select

    from fleetkeeper.store.models import AlertIncident

    serials = [f"SN-{i:03d}" for i in range(60)]
    await fleet.add(serials, attributes={"site": "oslo-3"})
    await fleet.rule(
        name="device_offline",
        condition="offline for 1m",
        group_by=["rule", "site"],
        incident={"min_devices": 50, "window": "5m"},
    )
    fleet.start()
    await fleet.run(600, step=10)
    firing = await fleet.alerts("firing")
    async with fleet.db.read() as session:
        [incident] = (await session.scalars(select(AlertIncident))).all()
    assert incident.closed_at is None and incident.firing == 60 and incident.alerts == 60
    assert {a.incident_id for a in firing} == {incident.id}
    [sent] = await fleet.notifications()
    assert sent.kind == "incident" and sent.incident_id == incident.id
    assert sent.payload["incident"]["id"] == incident.id
    for _ in range(60):  # power is back: they check in again
        await fleet.seen(serials)
        await fleet.run(10, step=10)
    async with fleet.db.read() as session:
        [incident] = (await session.scalars(select(AlertIncident))).all()
    assert incident.closed_at is not None and incident.firing == 0 and incident.peak == 60
    assert len(await fleet.alerts("resolved")) == 60
    _, last = await fleet.notifications()
    assert last.payload["counts"]["resolved"] == 60 and last.incident_id == incident.id
    assert fleet.engine is not None and fleet.engine.outbox.tracked_incidents == 0  # forgotten


async def test_devices_rebooting_for_an_update_or_in_a_maintenance_window_are_not_offline(
    fleet: Fleet, clock: FakeClock
) -> None:
    """The automatic silences: a device whose execution is installing, and the devices of a
    group whose maintenance window is open, have their offline alerts muted; others do not."""
    from fleetkeeper.ids import uuid7
    from fleetkeeper.store.models import Deployment, Execution, Group, GroupMember

    updating, resting, plain = await fleet.add(["SN-UPD", "SN-WIN", "SN-OUT"])
    now = clock.now()
    async with fleet.db.write() as session:
        deployment = Deployment(
            id=uuid7(now),
            name="fw 2.0",
            tenant_id="default",
            kind="update",
            target="",
            policy={},
            state="running",
            created_by="test",
            created_at=now,
            updated_at=now,
        )
        session.add(deployment)
        group = Group(
            tenant_id="default",
            name="night",
            created_at=now,
            updated_at=now,
            maintenance_windows=[{"cron": "0 0 * * *", "duration": 7200, "timezone": "UTC"}],
        )
        session.add(group)
        await session.flush()
        session.add(GroupMember(group_id=group.id, device_id=resting))
        session.add(
            Execution(
                id=uuid7(now),
                deployment_id=deployment.id,
                device_id=updating,
                phase=0,
                position=0,
                state="rebooting",
                updated_at=now,
            )
        )
    await fleet.rule(name="device_offline", condition="offline for 1m", group_wait="30s")
    fleet.start()
    await fleet.run(900, step=10)
    muted = {a.device_id: a.muted_by.get("silences", []) for a in await fleet.alerts("firing")}
    assert set(muted) == {updating, resting, plain}
    assert muted[updating] == [f"deployment:{deployment.id}"]
    assert muted[resting] == ["window:night"]
    assert muted[plain] == []
    [sent] = await fleet.notifications()
    assert sent.payload["counts"] == {"firing": 1, "new": 1, "resolved": 0, "muted": 2}


async def test_a_rate_rule_reads_the_window_from_the_minute_roll_ups(
    fleet: Fleet, clock: FakeClock
) -> None:
    """`rate(storage_used) > 5 per 1h over 30m`: a disk filling at 12 %/h fires, a steady one
    does not; the clear over a shorter window resolves it once the filling stops."""
    from sqlalchemy import delete

    from fleetkeeper.store.models import TelemetryMinute

    filling, steady, silent = await fleet.add(["SN-FILL", "SN-STEADY", "SN-NODATA"])
    clock.advance(hours=1)

    async def minutes(device: str, start: float, per_minute: float, count: int) -> None:
        now = clock.now().replace(second=0, microsecond=0)
        async with fleet.db.write() as session:
            await session.execute(
                delete(TelemetryMinute).where(TelemetryMinute.device_id == device)
            )
            for i in range(count):
                value = start + per_minute * i
                session.add(
                    TelemetryMinute(
                        device_id=device,
                        metric="storage_used",
                        bucket=now - timedelta(minutes=count - i),
                        min_value=value,
                        max_value=value,
                        sum_value=2 * value,
                        count=2,
                    )
                )

    await minutes(filling, 40.0, 0.2, 45)  # +12 %/h
    await minutes(steady, 40.0, 0.0, 45)
    await fleet.rule(
        name="disk_filling",
        condition="rate(storage_used) > 5 per 1h over 30m",
        clear="rate(storage_used) < 1 per 1h over 10m",
        group_wait="0s",
    )
    fleet.start()
    await fleet.run(70, step=10)
    [alert] = await fleet.alerts("firing")
    assert alert.device_id == filling and alert.value == pytest.approx(12.0, rel=0.05)
    await minutes(filling, 49.0, 0.0, 45)  # it stopped filling
    await fleet.run(70, step=10)
    assert await fleet.alerts("firing") == []
    assert [a.device_id for a in await fleet.alerts("resolved")] == [filling]
    assert silent not in {a.device_id for a in await fleet.alerts()}
