"""Remediation in simulated time, on both databases: ladders, cooldown, the budget, audit.

Rules, alerts and devices are written straight into the database; the `Remediator` is driven
as the engine drives it (`on_firing`, `on_resolved`, `advance`, `held`) with a FakeClock.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update

from fleetkeeper.clock import FakeClock
from fleetkeeper.ids import uuid7
from fleetkeeper.services import audit
from fleetkeeper.services.alerting.remediation import Escalation, Outcome, Remediator
from fleetkeeper.services.alerting.rules import AlertRule
from fleetkeeper.store.db import Database
from fleetkeeper.store.models import (
    AlertRecord,
    AlertRuleRecord,
    AuditRecord,
    Command,
    Device,
    DeviceModel,
    RemediationAction,
    Tenant,
)

TENANT = "acme"
LADDER = {
    "steps": [
        {"action": "restart_service", "args": {"service": "agent"}, "wait": 300},
        {"action": "reboot", "wait": 600},
        {"action": "safe_mode", "wait": 900},
    ],
    "cooldown": 3600,
    "max_fraction": 0.05,
    "min_devices": 3,
    "period": 3600,
}


@dataclass
class Bench:
    """A tenant with a fleet, one rule with a remediation policy, and the Remediator."""

    db: Database
    clock: FakeClock
    devices: list[str]
    rule_id: str = ""
    rule: AlertRule | None = None
    remediator: Remediator = field(init=False)
    alerts: dict[str, str] = field(default_factory=dict)  # device id → its open alert

    def __post_init__(self) -> None:
        self.remediator = Remediator(self.clock)

    @property
    def policy_rule(self) -> AlertRule:
        assert self.rule is not None
        return self.rule

    async def add_rule(self, name: str = "agent-crashing", **remediation: Any) -> None:
        spec = {"name": name, "condition": "agent_restarts > 3", "remediation": remediation}
        self.rule = AlertRule.model_validate(spec)
        self.rule_id = uuid7(self.clock.now())
        now = self.clock.now()
        async with self.db.write() as session:
            session.add(
                AlertRuleRecord(
                    id=self.rule_id,
                    tenant_id=TENANT,
                    name=name,
                    definition=self.rule.model_dump(mode="json"),
                    enabled=True,
                    version=1,
                    created_by="admin",
                    created_at=now,
                    updated_at=now,
                )
            )

    async def fire(self, device: int = 0, scope: int | None = None) -> Outcome:
        """A new alert on the device fires; the Remediator hears of it."""
        device_id = self.devices[device]
        now = self.clock.now()
        alert_id = uuid7(now)
        fp = alert_id[-16:]
        async with self.db.write() as session:
            alert = AlertRecord(
                id=alert_id,
                tenant_id=TENANT,
                rule_id=self.rule_id,
                rule=self.policy_rule.name,
                fingerprint=fp,
                open_fingerprint=fp,
                device_id=device_id,
                state="firing",
                severity="warning",
                labels={"device": device_id},
                annotations={},
                active_since=now,
                fired_at=now,
                flapping=False,
                flips=[],
                muted_by={},
                updated_at=now,
            )
            session.add(alert)
            await session.flush()
            outcome = await self.remediator.on_firing(
                session,
                rule_id=self.rule_id,
                rule_name=self.policy_rule.name,
                tenant_id=TENANT,
                rule=self.policy_rule,
                alert=alert,
                scope_size=len(self.devices) if scope is None else scope,
            )
        self.alerts[device_id] = alert_id
        return outcome

    async def resolve(
        self, device: int = 0, *, tell: bool = True, scope: int | None = None
    ) -> Outcome:
        alert_id = self.alerts[self.devices[device]]
        async with self.db.write() as session:
            alert = await session.get(AlertRecord, alert_id)
            assert alert is not None
            alert.state, alert.open_fingerprint = "resolved", None
            alert.resolved_at = self.clock.now()
            await session.flush()
            if not tell:
                return Outcome.NONE
            return await self.remediator.on_resolved(
                session,
                rule_id=self.rule_id,
                rule_name=self.policy_rule.name,
                tenant_id=TENANT,
                rule=self.policy_rule,
                alert=alert,
                scope_size=scope,
            )

    async def advance(
        self, seconds: float = 0.0, rules: dict[str, AlertRule] | None = None
    ) -> list[Escalation]:
        now = self.clock.advance(seconds)
        async with self.db.write() as session:
            return await self.remediator.advance(
                session, {self.rule_id: self.policy_rule} if rules is None else rules, now
            )

    async def actions(self, device: int = 0) -> list[RemediationAction]:
        async with self.db.read() as session:
            rows = await session.scalars(
                select(RemediationAction)
                .where(RemediationAction.device_id == self.devices[device])
                .order_by(RemediationAction.at, RemediationAction.step)
            )
            return list(rows.all())

    async def ladder(self, device: int = 0) -> list[tuple[int, str, str]]:
        return [(a.step, a.action, a.state) for a in await self.actions(device)]

    async def commands(self, device: int = 0) -> list[Command]:
        async with self.db.read() as session:
            rows = await session.scalars(
                select(Command)
                .where(Command.device_id == self.devices[device])
                .order_by(Command.created_at, Command.id)
            )
            return list(rows.all())

    async def held(self) -> set[str]:
        async with self.db.read() as session:
            return await self.remediator.held(session)


async def make_bench(db: Database, clock: FakeClock, devices: int = 3, **policy: Any) -> Bench:
    now = clock.now()
    ids = []
    async with db.write() as session:
        session.add(Tenant(id=TENANT, name="Acme", created_at=now))
        model = DeviceModel(name="m", capabilities=[], created_at=now, updated_at=now)
        session.add(model)
        await session.flush()
        for i in range(devices):
            device_id = uuid7(now)
            ids.append(device_id)
            session.add(
                Device(
                    id=device_id,
                    serial=f"S-{i:03d}",
                    name=f"S-{i:03d}",
                    model_id=model.id,
                    tenant_id=TENANT,
                    state="active",
                    attributes={},
                    created_at=now,
                    updated_at=now,
                    credential_generation=0,
                    wipe_pending=False,
                )
            )
    bench = Bench(db, clock, ids)
    await bench.add_rule(**{**LADDER, **policy})
    return bench


# --- the ladder ----------------------------------------------------------------------------------


async def test_a_firing_alert_starts_the_ladder_with_its_first_step(
    db: Database, clock: FakeClock
) -> None:
    bench = await make_bench(db, clock)
    assert await bench.fire() == Outcome.STARTED
    assert await bench.ladder() == [(1, "restart_service", "sent")]
    (cmd,) = await bench.commands()
    assert (cmd.name, cmd.args, cmd.state) == ("restart_service", {"service": "agent"}, "pending")
    assert cmd.timeout == 300  # the step's wait
    assert await bench.held() == {bench.alerts[bench.devices[0]]}


async def test_the_ladder_climbs_one_step_per_wait_while_the_alert_fires(
    db: Database, clock: FakeClock
) -> None:
    bench = await make_bench(db, clock)
    await bench.fire()
    assert await bench.advance(299) == []
    assert await bench.ladder() == [(1, "restart_service", "sent")]
    assert await bench.advance(1) == []
    assert await bench.ladder() == [(1, "restart_service", "failed"), (2, "reboot", "sent")]
    assert await bench.advance(599) == []
    assert [c.name for c in await bench.commands()] == ["restart_service", "reboot"]
    assert await bench.advance(1) == []
    assert await bench.ladder() == [
        (1, "restart_service", "failed"),
        (2, "reboot", "failed"),
        (3, "safe_mode", "sent"),
    ]
    assert [c.name for c in await bench.commands()] == ["restart_service", "reboot", "safe_mode"]
    assert len(await bench.held()) == 1


async def test_the_ladder_escalates_after_its_last_step(db: Database, clock: FakeClock) -> None:
    bench = await make_bench(db, clock)
    await bench.fire()
    await bench.advance(300)
    await bench.advance(600)
    assert await bench.advance(899) == []
    (escalation,) = await bench.advance(1)
    assert escalation == Escalation(
        alert_id=bench.alerts[bench.devices[0]],
        rule_id=bench.rule_id,
        device_id=bench.devices[0],
        reason="the alert still fires after the last step (safe_mode)",
        steps_taken=3,
    )
    assert [s for _, _, s in await bench.ladder()] == ["failed", "failed", "failed"]
    assert await bench.held() == set()
    assert await bench.advance(3600) == []  # escalated once


async def test_a_resolved_alert_ends_the_ladder_as_succeeded(
    db: Database, clock: FakeClock
) -> None:
    bench = await make_bench(db, clock)
    await bench.fire()
    await bench.advance(300)
    clock.advance(120)
    assert await bench.resolve() == Outcome.NONE
    actions = await bench.actions()
    assert [(a.action, a.state) for a in actions] == [
        ("restart_service", "failed"),
        ("reboot", "succeeded"),
    ]
    assert actions[1].finished_at == clock.now()
    assert await bench.held() == set()
    assert await bench.advance(3600) == []
    assert len(await bench.commands()) == 2


async def test_an_alert_resolved_unseen_ends_its_ladder_at_the_next_advance(
    db: Database, clock: FakeClock
) -> None:
    bench = await make_bench(db, clock)
    await bench.fire()
    clock.advance(60)
    await bench.resolve(tell=False)
    assert await bench.advance(1) == []
    assert await bench.ladder() == [(1, "restart_service", "succeeded")]


async def test_a_ladder_whose_rule_lost_its_policy_fails_and_escalates(
    db: Database, clock: FakeClock
) -> None:
    bench = await make_bench(db, clock)
    await bench.fire()
    plain = AlertRule.model_validate({"name": "agent-crashing", "condition": "agent_restarts > 3"})
    assert await bench.advance(299, {bench.rule_id: plain}) == []  # not due yet
    (escalation,) = await bench.advance(1, {bench.rule_id: plain})
    assert escalation.reason == "the rule no longer has a remediation policy"
    assert escalation.steps_taken == 1
    assert await bench.ladder() == [(1, "restart_service", "failed")]


async def test_a_ladder_whose_rule_is_gone_fails_and_escalates(
    db: Database, clock: FakeClock
) -> None:
    bench = await make_bench(db, clock)
    await bench.fire()
    (escalation,) = await bench.advance(300, {})
    assert escalation.reason == "the rule was deleted or disabled"
    (action,) = await bench.actions()
    assert action.detail["outcome"] == "the rule was deleted or disabled"


async def test_a_device_retired_during_the_ladder_escalates(db: Database, clock: FakeClock) -> None:
    bench = await make_bench(db, clock)
    await bench.fire()
    async with db.write() as session:
        await session.execute(
            update(Device).where(Device.id == bench.devices[0]).values(state="retired")
        )
    (escalation,) = await bench.advance(300)
    assert escalation.reason == "the device takes no commands any more"
    assert await bench.ladder() == [(1, "restart_service", "failed")]


async def test_a_device_that_takes_no_commands_is_not_remediated(
    db: Database, clock: FakeClock
) -> None:
    bench = await make_bench(db, clock)
    async with db.write() as session:
        await session.execute(
            update(Device).where(Device.id == bench.devices[0]).values(state="retired")
        )
    assert await bench.fire() == Outcome.NONE
    assert await bench.actions() == []
    assert await bench.commands() == []


async def test_a_restarted_engine_finds_the_ladders_in_progress(
    db: Database, clock: FakeClock
) -> None:
    bench = await make_bench(db, clock)
    await bench.fire(0)
    await bench.fire(1)
    await bench.resolve(1)
    bench.remediator = Remediator(clock)  # a new process
    assert await bench.held() == {bench.alerts[bench.devices[0]]}
    await bench.advance(300)
    assert await bench.ladder(0) == [(1, "restart_service", "failed"), (2, "reboot", "sent")]


async def test_being_told_twice_of_a_firing_alert_starts_one_ladder(
    db: Database, clock: FakeClock
) -> None:
    bench = await make_bench(db, clock)
    await bench.fire()
    alert_id = bench.alerts[bench.devices[0]]
    async with db.write() as session:
        alert = await session.get(AlertRecord, alert_id)
        assert alert is not None
        again = await bench.remediator.on_firing(
            session,
            rule_id=bench.rule_id,
            rule_name="agent-crashing",
            tenant_id=TENANT,
            rule=bench.policy_rule,
            alert=alert,
            scope_size=3,
        )
    assert again == Outcome.STARTED
    assert len(await bench.commands()) == 1


# --- the brakes ----------------------------------------------------------------------------------


async def test_the_cooldown_refuses_a_second_ladder_for_the_same_device(
    db: Database, clock: FakeClock
) -> None:
    bench = await make_bench(db, clock)
    await bench.fire()
    clock.advance(100)
    await bench.resolve()
    clock.advance(1000)
    assert await bench.fire() == Outcome.COOLDOWN
    skipped = (await bench.actions())[-1]
    assert skipped.state == "skipped"
    assert skipped.detail["reason"] == "cooldown"
    assert skipped.command_id is None
    assert len(await bench.commands()) == 1
    assert await bench.held() == set()
    # Another device is not held back by it.
    assert await bench.fire(1) == Outcome.STARTED


async def test_the_cooldown_runs_from_the_last_action_taken(db: Database, clock: FakeClock) -> None:
    bench = await make_bench(db, clock)
    await bench.fire()
    await bench.advance(300)  # step 2 at 300 s
    clock.advance(100)
    await bench.resolve()
    clock.advance(3600 - 100 - 1)  # a second before the cooldown after step 2 is over
    assert await bench.fire() == Outcome.COOLDOWN  # skipped: not an action, no new cooldown
    clock.advance(1)
    assert await bench.fire() == Outcome.STARTED


async def test_the_budget_opens_the_circuit_and_closes_after_the_period(
    db: Database, clock: FakeClock
) -> None:
    bench = await make_bench(db, clock, devices=100)  # 5 % of 100: 5 devices an hour
    for device in range(5):
        assert await bench.fire(device) == Outcome.STARTED
        clock.advance(60)
    assert await bench.fire(5) == Outcome.CIRCUIT_OPEN
    assert await bench.fire(6) == Outcome.CIRCUIT_OPEN
    (skipped,) = await bench.actions(5)
    assert skipped.state == "skipped"
    assert skipped.detail == {
        "on": "firing",
        "reason": "budget",
        "used": 5,
        "budget": 5,
        "scope": 100,
    }
    assert await bench.commands(5) == []
    # An hour after the first device, one unit of the budget is free again.
    clock.advance(3600 - 5 * 60 - 1)
    assert await bench.fire(7) == Outcome.CIRCUIT_OPEN  # a second before it is
    clock.advance(1)
    assert await bench.fire(8) == Outcome.STARTED
    assert await bench.fire(9) == Outcome.CIRCUIT_OPEN


async def test_the_budget_counts_devices_not_steps(db: Database, clock: FakeClock) -> None:
    bench = await make_bench(db, clock, devices=40, min_devices=2)  # 5 % of 40 is 2
    await bench.fire(0)
    await bench.advance(300)
    await bench.advance(600)  # three actions on one device
    assert await bench.fire(1) == Outcome.STARTED
    assert await bench.fire(2) == Outcome.CIRCUIT_OPEN


async def test_the_budget_has_a_floor_of_min_devices(db: Database, clock: FakeClock) -> None:
    bench = await make_bench(db, clock, devices=10, min_devices=3)  # 5 % of 10 rounds to 0
    assert [await bench.fire(i) for i in range(4)] == [
        Outcome.STARTED,
        Outcome.STARTED,
        Outcome.STARTED,
        Outcome.CIRCUIT_OPEN,
    ]


# --- on: resolved --------------------------------------------------------------------------------


async def test_on_resolved_sends_one_health_check_when_the_alert_resolves(
    db: Database, clock: FakeClock
) -> None:
    bench = await make_bench(
        db, clock, on="resolved", steps=[{"action": "health_check", "wait": 120}]
    )
    assert await bench.fire() == Outcome.NONE  # nothing while it fires
    assert await bench.commands() == []
    clock.advance(1800)
    assert await bench.resolve(scope=3) == Outcome.SENT
    (cmd,) = await bench.commands()
    assert (cmd.name, cmd.timeout) == ("health_check", 120)
    assert await bench.ladder() == [(1, "health_check", "sent")]
    assert await bench.held() == set()  # nothing to hold back: the alert is over
    assert await bench.resolve() == Outcome.SENT  # told twice: still one
    assert len(await bench.commands()) == 1


async def test_an_on_resolved_action_ends_as_its_command_did(
    db: Database, clock: FakeClock
) -> None:
    bench = await make_bench(
        db, clock, on="resolved", steps=[{"action": "health_check", "wait": 120}]
    )
    await bench.fire()
    await bench.resolve()
    (cmd,) = await bench.commands()
    async with db.write() as session:
        await session.execute(
            update(Command)
            .where(Command.id == cmd.id)
            .values(state="succeeded", result={"healthy": True})
        )
    assert await bench.advance(10) == []  # never escalates
    (action,) = await bench.actions()
    assert action.state == "succeeded"
    assert action.detail["command_state"] == "succeeded"


async def test_an_on_resolved_action_whose_command_expires_failed(
    db: Database, clock: FakeClock
) -> None:
    bench = await make_bench(
        db, clock, on="resolved", steps=[{"action": "health_check", "wait": 120}]
    )
    await bench.fire()
    await bench.resolve()
    assert await bench.advance(119) == []
    assert await bench.ladder() == [(1, "health_check", "sent")]  # the device may answer yet
    assert await bench.advance(1) == []
    (action,) = await bench.actions()
    assert (action.state, action.detail["command_state"]) == ("failed", "expired")


async def test_on_resolved_keeps_to_the_cooldown_and_the_budget(
    db: Database, clock: FakeClock
) -> None:
    bench = await make_bench(
        db, clock, devices=40, min_devices=1, on="resolved", steps=[{"action": "health_check"}]
    )
    for device in range(3):
        await bench.fire(device)
    assert await bench.resolve(0, scope=40) == Outcome.SENT
    assert await bench.resolve(1, scope=40) == Outcome.SENT
    assert await bench.resolve(2, scope=40) == Outcome.CIRCUIT_OPEN  # 5 % of 40: 2
    clock.advance(60)
    await bench.fire(0)
    assert await bench.resolve(0, scope=40) == Outcome.COOLDOWN


async def test_on_resolved_without_a_scope_uses_the_last_one_seen(
    db: Database, clock: FakeClock
) -> None:
    bench = await make_bench(
        db, clock, devices=100, min_devices=1, on="resolved", steps=[{"action": "health_check"}]
    )
    for device in range(2):
        await bench.fire(device)  # with a scope of 100: a budget of 5
    assert await bench.resolve(0) == Outcome.SENT
    assert await bench.resolve(1) == Outcome.SENT


async def test_on_resolved_without_any_scope_uses_min_devices(
    db: Database, clock: FakeClock
) -> None:
    bench = await make_bench(
        db, clock, devices=100, min_devices=1, on="resolved", steps=[{"action": "health_check"}]
    )
    for device in range(2):
        await bench.fire(device)
    bench.remediator = Remediator(clock)  # restarted: it has not seen the rule fire
    assert await bench.resolve(0) == Outcome.SENT
    assert await bench.resolve(1) == Outcome.CIRCUIT_OPEN


async def test_a_firing_ladder_policy_ignores_resolved_alerts_without_a_ladder(
    db: Database, clock: FakeClock
) -> None:
    bench = await make_bench(db, clock)
    await bench.fire()
    await bench.advance(300)
    await bench.advance(600)
    await bench.advance(900)  # escalated
    assert await bench.resolve() == Outcome.NONE
    assert [s for _, _, s in await bench.ladder()] == ["failed", "failed", "failed"]


# --- audit ---------------------------------------------------------------------------------------


async def test_commands_and_audit_records_carry_the_rule(db: Database, clock: FakeClock) -> None:
    bench = await make_bench(db, clock)
    await bench.fire()
    await bench.advance(300)
    alert_id = bench.alerts[bench.devices[0]]
    assert {c.created_by for c in await bench.commands()} == {"rule:agent-crashing"}
    async with db.read() as session:
        records = list((await session.scalars(select(AuditRecord).order_by(AuditRecord.id))).all())
    assert [(r.action, r.actor) for r in records] == [
        ("command.create", "rule:agent-crashing"),
        ("alert.remediation", "rule:agent-crashing"),
    ] * 2
    assert records[2].reason == (
        f"remediation step 2 of rule 'agent-crashing' for alert {alert_id}"
    )
    assert all(r.tenant_id == TENANT for r in records)
    step = json.loads(records[3].after or "{}")
    assert records[3].target == f"alert:{alert_id}"
    assert step["rule"] == "agent-crashing"
    assert step["rule_id"] == bench.rule_id
    assert (step["step"], step["of"], step["action"]) == (2, 3, "reboot")
    assert step["device"] == bench.devices[0]
    assert step["command"] == (await bench.commands())[1].id
    async with db.read() as session:
        assert (await audit.verify(session)).ok


async def test_refusals_are_recorded_but_not_audited(db: Database, clock: FakeClock) -> None:
    bench = await make_bench(db, clock)
    await bench.fire()
    await bench.resolve()
    clock.advance(timedelta(minutes=5).total_seconds())
    assert await bench.fire() == Outcome.COOLDOWN
    async with db.read() as session:
        actions = [r.action for r in (await session.scalars(select(AuditRecord))).all()]
    assert actions == ["command.create", "alert.remediation"]


async def test_the_engine_learns_which_devices_to_wake(db: Database, clock: FakeClock) -> None:
    bench = await make_bench(db, clock)
    await bench.fire(0)
    await bench.fire(1)
    assert bench.remediator.take_sent() == {bench.devices[0], bench.devices[1]}
    assert bench.remediator.take_sent() == set()
