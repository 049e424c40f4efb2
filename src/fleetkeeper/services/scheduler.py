"""The rollout scheduler: the loop that moves deployments on.

Each `tick` times out executions past their step deadline, then takes the deployments that
are due, one transaction each: it locks the row (`FOR UPDATE SKIP LOCKED` on PostgreSQL, so
replicas never tick the same deployment at once; SQLite has one writer anyway), builds a
`Snapshot` from the executions, asks the pure planner what to do, and writes the decision —
the deployment's new state, the timeline events and the executions it notifies — before any
device hears of it. Only after the commit are the devices woken. A server killed at any moment
therefore resumes from what was written: an execution notified once stays notified, and no
device is started twice.
"""

from __future__ import annotations

import logging
import random
import statistics
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, exists, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from fleetkeeper.clock import Clock
from fleetkeeper.services import deployments, executions
from fleetkeeper.services.context import SYSTEM, Principal
from fleetkeeper.services.rollout import health, planner, windows
from fleetkeeper.services.rollout.execution import ACTIVE, State
from fleetkeeper.services.rollout.policy import RolloutPolicy, Window
from fleetkeeper.services.selection import QueryScope, compile_for
from fleetkeeper.store.db import Database, dialect_of, epoch_seconds
from fleetkeeper.store.models import (
    Artifact,
    Deployment,
    Device,
    Execution,
    Group,
    TelemetryPoint,
)

log = logging.getLogger("fleetkeeper.scheduler")

MAX_IDLE = timedelta(seconds=5)  # a running deployment is looked at at least this often
HEALTH_EVERY = timedelta(seconds=60)
HEALTH_LOOKBACK = timedelta(hours=1)
UPTIME_METRIC = "uptime"  # seconds since boot, as the agent and the simulator report it
REBOOT_TOLERANCE_S = 60.0  # clock jitter between a device's uptime and its timestamps
CONTINUOUS_EVERY = timedelta(seconds=30)
DUE_BATCH = 50
ACTIVE_STATES = [str(s) for s in ACTIVE]


@dataclass
class TickReport:
    deployments: int = 0
    notified: int = 0
    timed_out: int = 0
    changes: list[tuple[str, str]] = field(default_factory=list)  # (deployment, new state)


class Scheduler:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        *,
        wake: Callable[[Iterable[str]], None] = lambda ids: None,
        online_window: timedelta = timedelta(minutes=5),
        rng: random.Random | None = None,
        owner: str = "local",
    ) -> None:
        self.db = db
        self.clock = clock
        self.wake = wake
        self.online_window = online_window
        self.rng = rng or random.Random()
        self.owner = owner
        self._health: dict[str, tuple[datetime, health.Verdict | None]] = {}
        self._continuous: dict[str, datetime] = {}

    async def tick(self) -> TickReport:
        now = self.clock.now()
        out = TickReport()
        async with self.db.write() as session:
            touched = await executions.time_out(session, now, self.rng)
            if touched:
                await session.execute(
                    update(Deployment).where(Deployment.id.in_(touched)).values(next_tick_at=now)
                )
        out.timed_out = len(touched)
        async with self.db.read() as session:
            due = list(
                await session.scalars(
                    select(Deployment.id)
                    .where(
                        Deployment.state.in_([planner.RUNNING, planner.SCHEDULED]),
                        Deployment.next_tick_at <= now,
                    )
                    .order_by(Deployment.next_tick_at)
                    .limit(DUE_BATCH)
                )
            )
        for deployment_id in due:
            woken = await self._tick_one(deployment_id, now, out)
            out.deployments += 1
            out.notified += len(woken)
            due_now = [device for device, at in woken if at <= now]
            if due_now:
                self.wake(due_now)
        return out

    async def _tick_one(
        self, deployment_id: str, now: datetime, out: TickReport
    ) -> list[tuple[str, datetime]]:
        async with self.db.write() as session:
            deployment = (
                await session.scalars(
                    select(Deployment)
                    .where(Deployment.id == deployment_id)
                    .with_for_update(skip_locked=True)
                )
            ).first()
            if deployment is None or deployment.state not in (planner.RUNNING, planner.SCHEDULED):
                return []
            policy = deployments.policy_of(deployment)
            if deployment.continuous and deployment.state == planner.RUNNING:
                await self._take_new_matches(session, deployment, policy, now)
            snap = await snapshot(session, deployment, policy, now)
            snap = await self._with_health(session, deployment, policy, snap, now)
            plan = planner.plan(snap, now)
            woken = await apply(
                session,
                deployment,
                policy,
                plan,
                self.rng,
                system_scope(None, now, self.online_window),
            )
            deployment.lease_owner = self.owner
            if plan.rollout.state != snap.rollout.state:
                out.changes.append((deployment.id, plan.rollout.state))
            return woken

    async def _take_new_matches(
        self, session: AsyncSession, deployment: Deployment, policy: RolloutPolicy, now: datetime
    ) -> None:
        last = self._continuous.get(deployment.id)
        if last is not None and now - last < CONTINUOUS_EVERY:
            return
        self._continuous[deployment.id] = now
        scope = system_scope(deployment.tenant_id, now, self.online_window)
        found = await deployments.targets(session, scope, deployment.target, deployment.id)
        if not found:
            return
        artifact = (
            await session.get(Artifact, deployment.artifact_id) if deployment.artifact_id else None
        )
        rng = random.Random(deployment.seed + len(found))
        counts = await deployments.add_executions(
            session, deployment, policy, artifact, found, rng, now, phase=deployment.phase
        )
        await deployments.event(session, deployment, "devices_joined", SYSTEM.actor, now, counts)

    async def _with_health(
        self,
        session: AsyncSession,
        deployment: Deployment,
        policy: RolloutPolicy,
        snap: planner.Snapshot,
        now: datetime,
    ) -> planner.Snapshot:
        watch = policy.health_watch
        if not watch.enabled or deployment.acknowledged.get("health") == deployment.phase:
            return snap
        last = self._health.get(deployment.id)
        if last is None or now - last[0] >= HEALTH_EVERY:
            verdict = await health_verdict(session, deployment, policy, now, self.online_window)
            self._health[deployment.id] = (now, verdict)
        else:
            verdict = last[1]
        return replace(snap, health=verdict)


def system_scope(tenant_id: str | None, now: datetime, online_window: timedelta) -> QueryScope:
    """The scheduler's view of the fleet: every device of the tenant (all, for None)."""
    principal = Principal(actor=SYSTEM.actor, role="admin", tenant_id=tenant_id)
    return QueryScope(principal=principal, now=now, online_window=online_window)


# --- reading the state -----------------------------------------------------------------------


def rollout_state(deployment: Deployment) -> planner.RolloutState:
    return planner.RolloutState(
        state=deployment.state,
        phase=deployment.phase,
        phase_started_at=deployment.phase_started_at,
        threshold_met_at=deployment.threshold_met_at,
        rate=deployment.rate,
        credit=deployment.credit,
        last_tick_at=deployment.last_tick_at,
        notified_at_rate=deployment.notified_at_rate,
        succeeded_at_rate=deployment.succeeded_at_rate,
        reason=deployment.reason,
    )


async def snapshot(
    session: AsyncSession,
    deployment: Deployment,
    policy: RolloutPolicy,
    now: datetime,
    by_phase: dict[int, Counter[str]] | None = None,
) -> planner.Snapshot:
    """What the planner needs to know about the deployment, from its executions
    (`by_phase`: `deployments.phase_counts`, when the caller has them already)."""
    mine = Execution.deployment_id == deployment.id
    if by_phase is None:
        by_phase = await deployments.phase_counts(session, deployment.id)
    failures = await deployments.failure_counts(session, deployment.id)
    ready = await _ready_by_phase(session, deployment, policy, now)
    acknowledged = deployment.acknowledged or {}
    phases = []
    for i in range(len(policy.phases)):
        states = Counter(by_phase.get(i, Counter()))
        fails = Counter(failures.get(i, Counter()))
        _forget_acknowledged(i, states, fails, acknowledged)
        phases.append(
            planner.PhaseCounts(
                size=sum(states.values()),
                states=dict(states),
                failures=dict(fails),
                ready=ready.get(i, 0),
            )
        )
    totals = (
        await session.execute(
            select(
                func.coalesce(
                    func.sum(Execution.attempt).filter(Execution.notified_at.is_not(None)), 0
                ),
                func.count().filter(Execution.state == State.SUCCEEDED),
                func.count().filter(Execution.state.in_(ACTIVE_STATES)),
            ).where(mine)
        )
    ).one()
    return planner.Snapshot(
        policy=policy,
        rollout=rollout_state(deployment),
        phases=phases,
        notified_total=int(totals[0]),
        succeeded_total=int(totals[1]),
        in_progress=int(totals[2]),
        continuous=deployment.continuous,
    )


def _forget_acknowledged(
    phase: int, states: Counter[str], failures: Counter[str], acknowledged: dict[str, int]
) -> None:
    """A resume accepted the phase's failures so far: take them out of the reckoning."""
    count = acknowledged.get(str(phase), 0)
    for state in (State.FAILED, State.TIMED_OUT, State.ROLLED_BACK):
        take = min(count, states.get(str(state), 0))
        states[str(state)] -= take
        count -= take
    for key in list(failures):
        failures[key] = max(0, failures[key] - acknowledged.get(f"{phase}:{key}", 0))


def _ready_clause(deployment: Deployment, now: datetime) -> Any:
    other = aliased(Execution)
    busy = exists().where(
        other.device_id == Execution.device_id,
        other.deployment_id != deployment.id,
        other.state.in_(ACTIVE_STATES),
    )
    return and_(
        Execution.deployment_id == deployment.id,
        Execution.state == State.QUEUED,
        Execution.phase <= deployment.phase,
        Execution.phase >= 0,
        or_(Execution.not_before.is_(None), Execution.not_before <= now),
        ~busy,
    )


async def _ready_by_phase(
    session: AsyncSession, deployment: Deployment, policy: RolloutPolicy, now: datetime
) -> dict[int, int]:
    if not windows.can_start(policy.schedule.windows, now, policy.expected_duration):
        return {}
    rows = await session.execute(
        select(Execution.phase, func.count())
        .where(_ready_clause(deployment, now))
        .group_by(Execution.phase)
    )
    return {phase: n for phase, n in rows}


# --- acting on a plan ------------------------------------------------------------------------


async def apply(
    session: AsyncSession,
    deployment: Deployment,
    policy: RolloutPolicy,
    plan: planner.Plan,
    rng: random.Random,
    scope: QueryScope,
) -> list[tuple[str, datetime]]:
    """Persist the planner's decision; the devices notified and when they may hear of it.

    `scope` is the scheduler's (`system_scope`): its time is the tick's, and group windows
    resolve their members through it.
    """
    now = scope.now
    before = deployment.state
    new = plan.rollout
    deployment.state = new.state
    deployment.reason = new.reason
    deployment.phase = new.phase
    deployment.phase_started_at = new.phase_started_at
    deployment.threshold_met_at = new.threshold_met_at
    deployment.rate = new.rate
    deployment.credit = new.credit
    deployment.last_tick_at = new.last_tick_at
    deployment.notified_at_rate = new.notified_at_rate
    deployment.succeeded_at_rate = new.succeeded_at_rate
    deployment.updated_at = now
    if before == planner.SCHEDULED and new.state == planner.RUNNING:
        deployment.started_at = now
    for ev in plan.events:
        await deployments.event(session, deployment, ev.kind, SYSTEM.actor, now, ev.detail)
    if new.state in planner.DEPLOYMENT_FINAL:
        deployment.finished_at = now
        deployment.next_tick_at = None
    if plan.cancel_queued:
        await deployments.wind_down(session, deployment, now, rollback=plan.rollback)
    elif new.state == planner.STOPPED and before != planner.STOPPED:
        await deployments.wind_down(session, deployment, now, rollback=False, started_too=False)
    woken: list[tuple[str, datetime]] = []
    if plan.notify > 0 and new.state == planner.RUNNING:
        woken = await notify(session, deployment, policy, plan.notify, rng, scope)
    if new.state in (planner.RUNNING, planner.SCHEDULED):
        nxt = plan.next_tick_at or now + MAX_IDLE
        deployment.next_tick_at = min(nxt, now + MAX_IDLE) if nxt > now else now + MAX_IDLE
    elif new.state == planner.PAUSED:
        deployment.next_tick_at = None
    return woken


async def notify(
    session: AsyncSession,
    deployment: Deployment,
    policy: RolloutPolicy,
    count: int,
    rng: random.Random,
    scope: QueryScope,
) -> list[tuple[str, datetime]]:
    """Notify up to `count` ready executions, in phase and position order, with start jitter."""
    now = scope.now
    artifact = (
        await session.get(Artifact, deployment.artifact_id) if deployment.artifact_id else None
    )
    group_windows = await _windowed_groups(session, deployment)
    # Devices with windows of their own may be skipped: look further down the queue for them.
    own_windows = bool(policy.schedule.window_attribute or group_windows)
    batch = max(count * 4, 200) if own_windows else count
    picked: list[tuple[Execution, str | None]] = []
    seen = 0  # rows looked at: nothing changes in the database until all are picked
    for _ in range(20 if own_windows else 1):
        stmt = (
            select(Execution, Device.firmware_version, Device.attributes)
            .join(Device, Device.id == Execution.device_id)
            .where(_ready_clause(deployment, now))
            .order_by(Execution.phase, Execution.position)
            .offset(seen)
            .limit(batch)
        )
        if dialect_of(session) == "postgresql":
            stmt = stmt.with_for_update(of=Execution, skip_locked=True)
        rows = list(await session.execute(stmt))
        seen += len(rows)
        closed = await _closed_by_groups(
            session, group_windows, [r[0].device_id for r in rows], scope, policy
        )
        for execution, firmware, attributes in rows:
            if len(picked) == count:
                break
            if execution.device_id in closed or not _device_window_allows(policy, attributes, now):
                continue
            picked.append((execution, firmware))
        if len(picked) == count or len(rows) < batch:
            break
    offsets = planner.jitter_offsets(len(picked), policy.jitter, rng)
    timeout = timedelta(seconds=policy.timeouts.notified)
    out = []
    for (execution, firmware), offset in zip(picked, offsets, strict=True):
        at = now + timedelta(seconds=offset)
        execution.state = State.NOTIFIED
        execution.notified_at = at
        execution.deliver = True
        execution.delivered_at = None
        execution.step_deadline = at + timeout
        execution.from_version = firmware
        execution.to_version = artifact.version if artifact else None
        execution.updated_at = now
        out.append((execution.device_id, at))
    return out


async def _windowed_groups(
    session: AsyncSession, deployment: Deployment
) -> list[tuple[Group, list[Window]]]:
    """The groups (in the deployment's tenant, if it has one) whose members have windows."""
    stmt = select(Group).where(Group.maintenance_windows.is_not(None))
    if deployment.tenant_id is not None:
        stmt = stmt.where(Group.tenant_id == deployment.tenant_id)
    out = []
    for group in await session.scalars(stmt):
        try:
            found = [windows.parse_window(w) for w in group.maintenance_windows or []]
        except (windows.WindowError, ValueError):
            continue  # refused on the way in; an old row must not stop the rollout
        if found:
            out.append((group, found))
    return out


async def _closed_by_groups(
    session: AsyncSession,
    groups: list[tuple[Group, list[Window]]],
    device_ids: list[str],
    scope: QueryScope,
    policy: RolloutPolicy,
) -> set[str]:
    """The devices a group's windows hold back now (every such group must allow a start)."""
    closed: set[str] = set()
    if not device_ids:
        return closed
    for group, group_windows in groups:
        if windows.can_start(group_windows, scope.now, policy.expected_duration):
            continue
        where = await compile_for(
            session, scope, f'group:"{group.name}"', tenant_id=group.tenant_id
        )
        members = await session.scalars(select(Device.id).where(Device.id.in_(device_ids), where))
        closed.update(members)
    return closed


def _device_window_allows(policy: RolloutPolicy, attributes: dict[str, Any], now: datetime) -> bool:
    name = policy.schedule.window_attribute
    if not name or not isinstance(attributes, dict) or attributes.get(name) in (None, ""):
        return True
    try:
        window: Window = windows.validate(windows.parse_window(attributes[name]))
    except (windows.WindowError, ValueError):
        return True  # a malformed device window does not hold the fleet up; see docs/ota.md
    return windows.can_start([window], now, policy.expected_duration)


# --- the health watch ------------------------------------------------------------------------


async def health_verdict(
    session: AsyncSession,
    deployment: Deployment,
    policy: RolloutPolicy,
    now: datetime,
    online_window: timedelta,
) -> health.Verdict | None:
    """Updated devices against the target's not-yet-updated ones."""
    watch = policy.health_watch
    updated = await _cohort(
        session, deployment, [State.SUCCEEDED], watch.metrics, now, online_window
    )
    if updated.devices < watch.min_devices:
        return None
    baseline = await _cohort(
        session, deployment, [State.QUEUED, State.NOTIFIED], watch.metrics, now, online_window
    )
    return health.compare(updated, baseline, watch)


async def _cohort(
    session: AsyncSession,
    deployment: Deployment,
    states: list[State],
    metrics: list[str],
    now: datetime,
    online_window: timedelta,
) -> health.Cohort:
    members = select(Execution.device_id).where(
        Execution.deployment_id == deployment.id, Execution.state.in_([str(s) for s in states])
    )
    cutoff = now - online_window
    devices, offline = (
        await session.execute(
            select(
                func.count(),
                func.count().filter(or_(Device.last_seen.is_(None), Device.last_seen < cutoff)),
            ).where(Device.id.in_(members))
        )
    ).one()
    samples: dict[str, health.MetricSample] = {}
    for metric in metrics:
        rows = await session.execute(
            select(func.avg(TelemetryPoint.value))
            .where(
                TelemetryPoint.metric == metric,
                TelemetryPoint.ts >= now - HEALTH_LOOKBACK,
                TelemetryPoint.device_id.in_(members),
            )
            .group_by(TelemetryPoint.device_id)
        )
        values = [float(v) for (v,) in rows if v is not None]
        if len(values) >= 2:
            samples[metric] = health.MetricSample(
                n=len(values), mean=statistics.fmean(values), variance=statistics.variance(values)
            )
    rebooted = await _rebooted(session, members, now)
    return health.Cohort(
        devices=int(devices), offline=int(offline), rebooted=rebooted, metrics=samples
    )


async def _rebooted(session: AsyncSession, members: Any, now: datetime) -> int:
    """Devices that booted within the lookback, from the `uptime` metric they report.

    Without a reboot, a point's time minus the uptime it reports is the same boot time every
    time; a reboot moves it later. Devices that do not report `uptime` count as not rebooted.
    """
    ts = TelemetryPoint.ts
    epoch = epoch_seconds(session, ts)
    boot = epoch - TelemetryPoint.value
    booted = (
        select(TelemetryPoint.device_id)
        .where(
            TelemetryPoint.metric == UPTIME_METRIC,
            ts >= now - HEALTH_LOOKBACK,
            TelemetryPoint.device_id.in_(members),
        )
        .group_by(TelemetryPoint.device_id)
        .having(func.max(boot) - func.min(boot) > REBOOT_TOLERANCE_S)
        .subquery()
    )
    return int(await session.scalar(select(func.count()).select_from(booted)) or 0)
