"""The alerting engine: rules judged over the fleet, alerts kept, notifications queued.

    engine = AlertEngine(db, clock, online_window=timedelta(minutes=5))
    report = await engine.tick()  # call it every second or so; cheap until work is due

One engine per deployment (the server runs it under `db.exclusive("alerting")`): it keeps
each rule's open alerts in memory (`lifecycle.RuleEvaluator`) and each tenant's notification
groups (`dispatch.Dispatcher`), and writes what changes. A tick:

1. takes in rule changes (`alert_rules.version`): new rules start, changed ones keep their
   open alerts, disabled ones resolve theirs, deleted ones are dropped without a word;
2. takes in operators' acknowledgements and resolves (`alerts.operator_action`, written by
   the API on any replica);
3. refreshes mutes every `mutes_every` seconds: silences, inhibit rules, channels' rate
   limits, and the automatic silences: offline alerts of devices in the middle of an update
   (a deployment's execution downloading to verifying, or rolling back) and every alert of
   devices in the `maintenance` state;
4. judges each rule whose round is due (every `every` seconds, rate rules every
   `rate_every`): the devices on which its condition holds and those with an open alert
   (`observe.Reader`), one query each;
5. stores the transitions (pending alerts are stored and cancelled ones deleted; nobody is
   told of either) and hands firing ones with a remediation policy to the `Remediator`, which
   may hold their notification back while it heals the device;
6. lets each tenant's dispatcher group, time, mute and rate-limit, and queues its
   notifications in `alert_notifications` for the `Deliverer`; keeps `alert_incidents` and
   each alert's `muted_by` and `incident_id` current.

A restarted engine (or one on a replica that took the lock over) reloads open alerts, recent
flips, ladders in progress and, per group, its last notification, so a restart neither
repeats a notification nor forgets one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from fleetkeeper.clock import Clock
from fleetkeeper.ids import uuid7
from fleetkeeper.services.alerting.dispatch import Dispatcher, Route
from fleetkeeper.services.alerting.incidents import Incident, IncidentPolicy
from fleetkeeper.services.alerting.lifecycle import Change, NoSuchAlert, RuleEvaluator, Transition
from fleetkeeper.services.alerting.model import Alert, AlertState, Severity
from fleetkeeper.services.alerting.mutes import load_mutes
from fleetkeeper.services.alerting.observe import Observed, Reader
from fleetkeeper.services.alerting.outbox import Outbox
from fleetkeeper.services.alerting.remediation import Outcome, Remediator
from fleetkeeper.services.alerting.rules import AlertRule, RateOfChange
from fleetkeeper.services.alerting.silences import Silence
from fleetkeeper.services.context import SYSTEM
from fleetkeeper.services.selection import QueryScope, compile_for, offline_after
from fleetkeeper.store.db import Database
from fleetkeeper.store.models import (
    AlertNotification,
    AlertRecord,
    AlertRuleRecord,
    Device,
    Tenant,
)

__all__ = ["AlertEngine", "EngineReport"]

log = logging.getLogger("fleetkeeper.alerting")
SYSTEM_ACTOR = "fleetkeeper"
_OPERATOR_LOOKBACK = timedelta(minutes=2)  # operator actions are looked for this far back
_CHUNK = 500


@dataclass(frozen=True)
class EngineReport:
    evaluated: int  # rules judged this tick
    transitions: int
    notifications: int
    lag: float  # seconds the oldest due rule waited past its time
    took: float  # seconds of work


@dataclass
class _Rule:
    id: str
    tenant_id: str
    name: str
    version: int
    rule: AlertRule
    evaluator: RuleEvaluator
    evaluated_at: datetime | None = None
    scope_size: int = 0
    counted_at: datetime | None = None

    @property
    def is_rate(self) -> bool:
        """Rate rules read a window of roll-ups: judged at most every `rate_every`."""
        return isinstance(self.rule.condition, RateOfChange)


@dataclass
class _Tenant:
    id: str
    name: str
    dispatcher: Dispatcher
    silences: tuple[Silence, ...] = ()


@dataclass
class _Round:
    """What one tick changed, to store and to dispatch."""

    touched: dict[str, tuple[_Rule, Alert, list[Transition]]] = field(default_factory=dict)
    left: list[tuple[_Rule, str]] = field(default_factory=list)  # open alerts out of scope


def route_of(rule: AlertRule) -> Route:
    incident = None
    if rule.incident is not None:
        incident = IncidentPolicy(
            min_devices=rule.incident.min_devices,
            min_fraction=rule.incident.min_fraction,
            window=timedelta(seconds=rule.incident.window),
        )
    return Route(
        group_by=tuple(label for label in rule.group_by if label != "rule"),
        group_wait=timedelta(seconds=rule.group_wait),
        group_interval=timedelta(seconds=rule.group_interval),
        repeat_interval=timedelta(seconds=rule.repeat_interval),
        channels=tuple(rule.channels) or ("",),
        incident=incident,
    )


def alert_from_row(row: AlertRecord) -> Alert:
    return Alert(
        rule=row.rule,
        labels=dict(row.labels),
        severity=Severity(row.severity),
        state=AlertState(row.state),
        active_since=row.active_since,
        fired_at=row.fired_at,
        resolved_at=row.resolved_at,
        acknowledged_at=row.acknowledged_at,
        acknowledged_by=row.acknowledged_by,
        acknowledged_note=row.acknowledged_note,
        value=row.value,
        annotations=dict(row.annotations or {}),
        flapping=row.flapping,
        flips=[datetime.fromisoformat(t) for t in row.flips or ()],
        resolved_by=row.resolved_by,
        clear_since=row.clear_since,
    )


def _columns(alert: Alert, now: datetime) -> dict[str, Any]:
    """The columns the engine owns (never the operator's acknowledgement)."""
    open_ = alert.state is not AlertState.RESOLVED
    return {
        "state": str(alert.state),
        "open_fingerprint": alert.fingerprint if open_ else None,
        "value": alert.value,
        "annotations": dict(alert.annotations),
        "fired_at": alert.fired_at,
        "resolved_at": alert.resolved_at,
        "resolved_by": alert.resolved_by,
        "flapping": alert.flapping,
        "flips": [t.isoformat() for t in alert.flips],
        "clear_since": alert.clear_since,
        "updated_at": now,
    }


class AlertEngine:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        *,
        online_window: timedelta,
        every: float = 5.0,
        rate_every: float = 60.0,
        mutes_every: float = 10.0,
        count_every: float = 60.0,
        remediator: Remediator | None = None,
        wake: Callable[[Iterable[str]], None] | None = None,
    ) -> None:
        self.db = db
        self.clock = clock
        self.online_window = online_window
        self.every = every
        self.rate_every = rate_every
        self.mutes_every = mutes_every
        self.count_every = count_every
        self.remediator = remediator or Remediator(clock)
        self.wake = wake  # tells devices with a new command to come and get it
        self.reset()

    def reset(self) -> None:
        """Forget everything held in memory: the next tick reloads it from the database."""
        self._loaded = False
        self._rules: dict[str, _Rule] = {}
        self._tenants: dict[str, _Tenant] = {}
        self._rows: dict[str, str] = {}  # fingerprint → open alert's row id
        self._held: set[str] = set()  # alert row ids under remediation: not dispatched
        self.outbox = Outbox()
        self._mutes_at: datetime | None = None
        self._closed: dict[str, Alert] = {}  # alerts closed this round, until stored

    # --- the tick ----------------------------------------------------------------------------

    async def tick(self) -> EngineReport:
        started = time.perf_counter()
        now = self.clock.now()
        if not self._loaded:
            await self._load(now)
        work = _Round()
        await self._sync_rules(now, work)
        await self._operator_actions(now, work)
        mutes_changed = False
        if self._mutes_at is None or (now - self._mutes_at).total_seconds() >= self.mutes_every:
            await self._refresh_mutes(now)
            mutes_changed = True
        due = [r for r in self._rules.values() if self._due(r, now)]
        lag = max((self._late(r, now) for r in due), default=0.0)
        transitions = 0
        for rule in due:
            transitions += await self._evaluate(rule, now, work)
            await asyncio.sleep(0)  # the API shares this event loop: let it in between rules
        escalated = await self._store(now, work)
        sent = await self._dispatch(now, work, escalated, refresh=mutes_changed)
        return EngineReport(len(due), transitions, sent, lag, time.perf_counter() - started)

    def _interval(self, rule: _Rule) -> float:
        return max(self.every, self.rate_every) if rule.is_rate else self.every

    def _due(self, rule: _Rule, now: datetime) -> bool:
        last = rule.evaluated_at
        return last is None or (now - last).total_seconds() >= self._interval(rule)

    def _late(self, rule: _Rule, now: datetime) -> float:
        if rule.evaluated_at is None:
            return 0.0
        return max(0.0, (now - rule.evaluated_at).total_seconds() - self._interval(rule))

    # --- loading -----------------------------------------------------------------------------

    async def _load(self, now: datetime) -> None:
        self.reset()
        async with self.db.read() as session:
            names = dict((await session.execute(select(Tenant.id, Tenant.name))).all())
            for tenant_id, name in names.items():
                self._tenants[tenant_id] = _Tenant(tenant_id, name, Dispatcher())
            records = (
                await session.scalars(select(AlertRuleRecord).where(AlertRuleRecord.enabled))
            ).all()
            for record in records:
                await self._start_rule(session, record, now)
            self._held = await self.remediator.held(session)
            sent = await self._last_sent(session)
        for tenant in self._tenants.values():
            tenant.dispatcher.set_routes(self._routes(tenant.id))
            firing = [
                alert
                for rule in self._rules.values()
                if rule.tenant_id == tenant.id
                for alert in rule.evaluator.alerts.values()
                if self._rows.get(alert.fingerprint) not in self._held
            ]
            tenant.dispatcher.restore(firing, now, sent=sent.get(tenant.id, {}))
        self._loaded = True

    async def _start_rule(
        self, session: AsyncSession, record: AlertRuleRecord, now: datetime
    ) -> _Rule:
        rule = AlertRule.model_validate(record.definition)
        rows = (
            await session.scalars(
                select(AlertRecord).where(
                    AlertRecord.rule_id == record.id, AlertRecord.open_fingerprint.is_not(None)
                )
            )
        ).all()
        alerts = {row.fingerprint: alert_from_row(row) for row in rows}
        for row in rows:
            self._rows[row.fingerprint] = row.id
        since = now - timedelta(seconds=rule.flap_window)
        flips: dict[str, list[datetime]] = {}
        recent = await session.execute(
            select(AlertRecord.fingerprint, AlertRecord.flips)
            .where(AlertRecord.rule_id == record.id, AlertRecord.resolved_at > since)
            .order_by(AlertRecord.resolved_at)
        )
        for fp, stored in recent:
            flips[fp] = [datetime.fromisoformat(t) for t in stored or ()]
        for fp, alert in alerts.items():
            flips[fp] = list(alert.flips)
        state = _Rule(
            record.id,
            record.tenant_id,
            record.name,
            record.version,
            rule,
            RuleEvaluator(rule, alerts=alerts, flips=flips),
        )
        self._rules[record.id] = state
        if record.tenant_id not in self._tenants:
            name = await session.scalar(select(Tenant.name).where(Tenant.id == record.tenant_id))
            self._tenants[record.tenant_id] = _Tenant(record.tenant_id, name or "", Dispatcher())
        return state

    async def _last_sent(
        self, session: AsyncSession
    ) -> dict[str, dict[str, tuple[datetime, frozenset[str]]]]:
        """Per tenant and group, its last notification: when, and the alerts it told of."""
        latest = (
            select(
                AlertNotification.tenant_id,
                AlertNotification.group_key,
                func.max(AlertNotification.created_at).label("at"),
            )
            .where(AlertNotification.kind.in_(("group", "incident")))
            .group_by(AlertNotification.tenant_id, AlertNotification.group_key)
            .subquery()
        )
        rows = await session.execute(
            select(
                AlertNotification.tenant_id,
                AlertNotification.group_key,
                AlertNotification.created_at,
                AlertNotification.notified,
            ).join(
                latest,
                (latest.c.tenant_id == AlertNotification.tenant_id)
                & (latest.c.group_key == AlertNotification.group_key)
                & (latest.c.at == AlertNotification.created_at),
            )
        )
        sent: dict[str, dict[str, tuple[datetime, frozenset[str]]]] = defaultdict(dict)
        for tenant_id, key, at, notified in rows:
            sent[tenant_id][key] = (at, frozenset(notified or ()))
        return sent

    def _routes(self, tenant_id: str) -> dict[str, Route]:
        return {r.name: route_of(r.rule) for r in self._rules.values() if r.tenant_id == tenant_id}

    # --- rule changes ------------------------------------------------------------------------

    async def _sync_rules(self, now: datetime, work: _Round) -> None:
        async with self.db.read() as session:
            stored = {
                rule_id: (version, enabled)
                for rule_id, version, enabled in await session.execute(
                    select(AlertRuleRecord.id, AlertRuleRecord.version, AlertRuleRecord.enabled)
                )
            }
            changed = [
                rule_id
                for rule_id, (version, enabled) in stored.items()
                if enabled
                and (rule_id not in self._rules or self._rules[rule_id].version != version)
            ]
            gone = [r for r in self._rules.values() if r.id not in stored]
            disabled = [r for r in self._rules.values() if r.id in stored and not stored[r.id][1]]
            for rule_id in changed:
                record = await session.get(AlertRuleRecord, rule_id, populate_existing=True)
                if record is None:
                    continue
                old = self._rules.get(rule_id)
                if old is None:
                    await self._start_rule(session, record, now)
                    continue
                old.rule = AlertRule.model_validate(record.definition)
                old.version, old.name = record.version, record.name
                old.evaluator = RuleEvaluator(
                    old.rule, alerts=old.evaluator.alerts, flips=old.evaluator.flips
                )
                old.evaluated_at = None
        for rule in gone:  # deleted: its alerts went with it (ON DELETE CASCADE)
            del self._rules[rule.id]
            fps = list(rule.evaluator.alerts)
            self._tenants[rule.tenant_id].dispatcher.drop(fps)
            for fp in fps:
                self._held.discard(self._rows.pop(fp, ""))
        for rule in disabled:
            for fp in list(rule.evaluator.alerts):
                found = rule.evaluator.resolve(fp, by=SYSTEM_ACTOR, at=now, note="rule disabled")
                self._touch(work, rule, fp, found)
            del self._rules[rule.id]
        if changed or gone or disabled:
            for tenant in self._tenants.values():
                tenant.dispatcher.set_routes(self._routes(tenant.id))

    def _touch(self, work: _Round, rule: _Rule, fp: str, transitions: Iterable[Transition]) -> int:
        found = list(transitions)
        if not found:
            return 0
        alert = rule.evaluator.alerts.get(fp)
        if alert is None:  # resolved or cancelled: the last Alert object went with it
            alert = self._closed.pop(fp, None)
        entry = work.touched.get(fp)
        if entry is not None:
            entry[2].extend(found)
            return len(found)
        assert alert is not None, fp
        work.touched[fp] = (rule, alert, found)
        return len(found)

    # --- operators ---------------------------------------------------------------------------

    async def _operator_actions(self, now: datetime, work: _Round) -> None:
        async with self.db.read() as session:
            rows = (
                await session.execute(
                    select(
                        AlertRecord.id,
                        AlertRecord.rule_id,
                        AlertRecord.fingerprint,
                        AlertRecord.operator_action,
                    ).where(
                        AlertRecord.updated_at >= now - _OPERATOR_LOOKBACK,
                        AlertRecord.operator_action.is_not(None),
                    )
                )
            ).all()
        if not rows:
            return
        taken = []
        for row_id, rule_id, fp, action in rows:
            taken.append(row_id)
            rule = self._rules.get(rule_id)
            if rule is None or not isinstance(action, dict):
                continue
            at = datetime.fromisoformat(action["at"]) if action.get("at") else now
            by, note = str(action.get("by") or "operator"), action.get("note")
            try:
                if action.get("action") == "ack":
                    alert = rule.evaluator.alerts.get(fp)
                    if alert is None or alert.acknowledged:
                        continue
                    found = rule.evaluator.acknowledge(fp, by=by, at=at, note=note)
                elif action.get("action") == "resolve":
                    found = self._resolve(rule, fp, by=by, at=at, note=note)
                else:
                    continue
            except (NoSuchAlert, ValueError):
                continue  # it resolved or moved on meanwhile: nothing left to do
            self._touch(work, rule, fp, found)
        async with self.db.write() as session:
            for start in range(0, len(taken), _CHUNK):
                await session.execute(
                    update(AlertRecord)
                    .where(AlertRecord.id.in_(taken[start : start + _CHUNK]))
                    .values(operator_action=None)
                    .execution_options(synchronize_session=False)
                )

    def _resolve(
        self, rule: _Rule, fp: str, *, by: str, at: datetime, note: str | None
    ) -> list[Transition]:
        alert = rule.evaluator.alerts.get(fp)
        found = rule.evaluator.resolve(fp, by=by, at=at, note=note)
        if alert is not None:
            self._closing(fp, alert)
        return found

    def _closing(self, fp: str, alert: Alert) -> None:
        """Keep the Alert object of an alert that is closing, for this round's bookkeeping."""
        self._closed[fp] = alert

    # --- mutes -------------------------------------------------------------------------------

    async def _refresh_mutes(self, now: datetime) -> None:
        self._mutes_at = now
        hold = timedelta(seconds=max(3 * self.mutes_every, 60))
        async with self.db.read() as session:
            alerting = {
                alert.labels["device"]
                for rule in self._rules.values()
                for alert in rule.evaluator.alerts.values()
                if "device" in alert.labels
            }
            found = await load_mutes(session, now, hold, alerting)
        for tenant in self._tenants.values():
            tenant.dispatcher.set_rate_limits(found.limits.get(tenant.id, {}))
            tenant.dispatcher.set_inhibit_rules(found.inhibit.get(tenant.id, ()), now)
            tenant.dispatcher.set_silences(found.silences.get(tenant.id, ()), now)

    # --- evaluation --------------------------------------------------------------------------

    async def _evaluate(self, rule: _Rule, now: datetime, work: _Round) -> int:
        rule.evaluated_at = now
        async with self.db.read() as session:
            scope_principal = SYSTEM
            scope = QueryScope(principal=scope_principal, now=now, online_window=self.online_window)
            try:
                where = await compile_for(session, scope, rule.rule.scope, tenant_id=rule.tenant_id)
            except Exception as exc:  # a group the scope names is gone: judge nothing
                log.warning(
                    "rule %s: scope %r does not compile: %s", rule.name, rule.rule.scope, exc
                )
                return 0
            reader = Reader(now, self.online_window, await offline_after(session))
            observed: Observed = await reader.holding(session, rule.rule, where)
            open_devices = {
                alert.labels.get("device", ""): fp for fp, alert in rule.evaluator.alerts.items()
            }
            missing = [d for d in open_devices if d and d not in observed]
            if missing:
                observed.update(await reader.of_devices(session, rule.rule, where, missing))
            if (
                rule.counted_at is None
                or (now - rule.counted_at).total_seconds() >= self.count_every
            ):
                rule.scope_size = int(
                    await session.scalar(select(func.count()).select_from(Device).where(where)) or 0
                )
                rule.counted_at = now
        count = 0
        for device_id, (subject, observation) in observed.items():
            fp_before = open_devices.get(device_id)
            alert_before = rule.evaluator.alerts.get(fp_before) if fp_before else None
            found = rule.evaluator.observe(subject, observation)
            if found and fp_before and alert_before and fp_before not in rule.evaluator.alerts:
                self._closing(fp_before, alert_before)
            fp = found[0].fingerprint if found else None
            if fp is not None:
                count += self._touch(work, rule, fp, found)
        for device_id, fp in open_devices.items():
            if device_id not in observed and fp in rule.evaluator.alerts:
                # Retired, deleted or no longer in the rule's scope: nothing left to watch.
                found = self._resolve(rule, fp, by=SYSTEM_ACTOR, at=now, note="left the scope")
                count += self._touch(work, rule, fp, found)
        return count

    # --- storing -----------------------------------------------------------------------------

    async def _store(self, now: datetime, work: _Round) -> list[tuple[_Rule, Alert]]:
        """Write the round's alerts; remediation starts and advances. Returns the alerts that
        escalated (their ladder gave up): they are dispatched now."""
        inserts, updates, deletes = [], [], []
        firing, resolved = [], []
        for fp, (rule, alert, found) in work.touched.items():
            changes = {t.change for t in found}
            row_id = self._rows.get(fp)
            if (
                Change.CANCELLED in changes
                and alert.state is AlertState.PENDING
                and (fp not in rule.evaluator.alerts)
            ):
                if row_id is not None:
                    deletes.append(row_id)
                    self._rows.pop(fp, None)
                continue
            if row_id is None:
                row_id = uuid7(now)
                inserts.append(
                    {
                        "id": row_id,
                        "tenant_id": rule.tenant_id,
                        "rule_id": rule.id,
                        "rule": rule.name,
                        "fingerprint": fp,
                        "device_id": alert.labels.get("device"),
                        "severity": str(alert.severity),
                        "labels": dict(alert.labels),
                        "active_since": alert.active_since or now,
                        "muted_by": {},
                        **_columns(alert, now),
                    }
                )
            elif changes - {Change.ACKNOWLEDGED}:
                updates.append({"id": row_id, **_columns(alert, now)})
            if alert.state is AlertState.RESOLVED:
                self._rows.pop(fp, None)
            else:
                self._rows[fp] = row_id
            if Change.FIRING in changes:
                firing.append((rule, alert, row_id))
            if Change.RESOLVED in changes:
                resolved.append((rule, alert, row_id))
        self._closed.clear()
        escalated: list[tuple[_Rule, Alert]] = []
        async with self.db.write() as session:
            for start in range(0, len(inserts), _CHUNK):
                await session.execute(insert(AlertRecord), inserts[start : start + _CHUNK])
            if updates:
                await session.execute(update(AlertRecord), updates)
            for start in range(0, len(deletes), _CHUNK):
                await session.execute(
                    delete(AlertRecord).where(AlertRecord.id.in_(deletes[start : start + _CHUNK]))
                )
            await session.flush()
            for rule, alert, row_id in firing:
                await self._remediate_firing(session, rule, alert, row_id)
            for rule, _, row_id in resolved:
                self._held.discard(row_id)
                if rule.rule.remediation is not None:
                    row = await session.get(AlertRecord, row_id)
                    if row is not None:
                        await self.remediator.on_resolved(
                            session,
                            rule_id=rule.id,
                            rule_name=rule.name,
                            tenant_id=rule.tenant_id,
                            rule=rule.rule,
                            alert=row,
                            scope_size=rule.scope_size,
                        )
            escalated = await self._advance(session, now)
        sent = self.remediator.take_sent()
        if sent and self.wake is not None:
            self.wake(sent)  # committed: the devices hear of their commands at once
        return escalated

    async def _remediate_firing(
        self, session: AsyncSession, rule: _Rule, alert: Alert, row_id: str
    ) -> None:
        policy = rule.rule.remediation
        if policy is None or policy.on != "firing" or "device" not in alert.labels:
            return
        row = await session.get(AlertRecord, row_id)
        if row is None:
            return
        outcome = await self.remediator.on_firing(
            session,
            rule_id=rule.id,
            rule_name=rule.name,
            tenant_id=rule.tenant_id,
            rule=rule.rule,
            alert=row,
            scope_size=rule.scope_size,
        )
        if outcome is Outcome.STARTED:
            self._held.add(row_id)
            alert.annotations["remediation"] = "in progress"
        elif outcome is Outcome.COOLDOWN:
            alert.annotations["remediation"] = "skipped: remediated lately (cooldown)"
        elif outcome is Outcome.CIRCUIT_OPEN:
            alert.annotations["remediation"] = (
                "skipped: the rule's remediation budget is spent (circuit breaker open)"
            )
        else:
            return
        row.annotations = dict(alert.annotations)

    async def _advance(self, session: AsyncSession, now: datetime) -> list[tuple[_Rule, Alert]]:
        if not self._held:
            return []
        rules = {rule.id: rule.rule for rule in self._rules.values()}
        escalations = await self.remediator.advance(session, rules, now)
        by_row = {row_id: fp for fp, row_id in self._rows.items()}
        escalated = []
        for escalation in escalations:
            self._held.discard(escalation.alert_id)
            fp = by_row.get(escalation.alert_id)
            rule = self._rules.get(escalation.rule_id)
            if fp is None or rule is None or fp not in rule.evaluator.alerts:
                continue
            alert = rule.evaluator.alerts[fp]
            alert.annotations["remediation"] = (
                f"failed after {escalation.steps_taken} step(s): {escalation.reason}"
            )
            alert.annotations["escalated"] = now.isoformat()
            await session.execute(
                update(AlertRecord)
                .where(AlertRecord.id == escalation.alert_id)
                .values(annotations=dict(alert.annotations), updated_at=now)
            )
            escalated.append((rule, alert))
        return escalated

    # --- dispatching -------------------------------------------------------------------------

    async def _dispatch(
        self,
        now: datetime,
        work: _Round,
        escalated: list[tuple[_Rule, Alert]],
        *,
        refresh: bool,
    ) -> int:
        by_tenant: dict[str, list[Alert]] = defaultdict(list)
        for fp, (rule, alert, found) in work.touched.items():
            if self._rows.get(fp) in self._held:
                continue
            if any(t.notifies or t.change is Change.ACKNOWLEDGED for t in found):
                by_tenant[rule.tenant_id].append(alert)
        for rule, alert in escalated:
            by_tenant[rule.tenant_id].append(alert)
        sizes: dict[str, dict[str, int]] = defaultdict(dict)
        for rule in self._rules.values():
            sizes[rule.tenant_id][rule.name] = rule.scope_size
        rows: list[dict[str, Any]] = []
        incident_rows: list[tuple[_Tenant, Incident]] = []
        statuses_changed = refresh
        for tenant in self._tenants.values():
            dispatcher = tenant.dispatcher
            changed = by_tenant.get(tenant.id, [])
            if changed:
                dispatcher.update(changed, now, scope_sizes=sizes.get(tenant.id))
                statuses_changed = True
            for incident in dispatcher.incidents:
                incident_rows.append((tenant, incident))
            for notification in dispatcher.due(now):
                rows.append(self.outbox.notification(tenant, notification, now))
        dispatchers = [tenant.dispatcher for tenant in self._tenants.values()]
        mutes = (
            self.outbox.mute_changes(dispatchers, self._rows, now)
            if (statuses_changed or rows)
            else []
        )
        await self.outbox.write(self.db, now, rows, incident_rows, mutes, self._rows)
        for dispatcher in dispatchers:  # stored closed: nothing more to track
            self.outbox.forget(dispatcher.forget_closed())
        return len(rows)
