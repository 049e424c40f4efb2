"""Deployments: an artifact or a bulk operation sent to a fleet query under a rollout policy.

Creating one resolves the target once (a snapshot; a continuous deployment also takes devices
that match later, see services/scheduler.py), checks each device's compatibility, and writes
one execution per device: `queued` in its phase, or `skipped` with the reason. The scheduler
moves it on from there; operators pause, resume, stop, abort, cancel and retry here. Every
change is audited and lands in the deployment's timeline (`deployment_events`).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from fleetkeeper.errors import Conflict, Invalid, NotFound
from fleetkeeper.ids import uuid7
from fleetkeeper.services import audit
from fleetkeeper.services.context import Change, Principal
from fleetkeeper.services.rollout import planner, windows
from fleetkeeper.services.rollout.execution import (
    CANCELABLE,
    UNSUCCESSFUL,
    Reason,
    State,
    failure_kind,
)
from fleetkeeper.services.rollout.policy import RolloutPolicy
from fleetkeeper.services.selection import QueryScope, compile_for
from fleetkeeper.store.db import rowcount
from fleetkeeper.store.models import (
    Artifact,
    Deployment,
    DeploymentEvent,
    Device,
    DeviceModel,
    Execution,
)

# Devices that can take a job; others in the target are skipped with `device_inactive`.
RECEPTIVE = frozenset({"active", "maintenance", "quarantined"})


@dataclass(frozen=True)
class Target:
    device_id: str
    model: str
    hardware_revision: str | None
    firmware_version: str | None
    state: str


def incompatibility(artifact: Artifact | None, device: Target) -> Reason | None:
    """Why `device` cannot take `artifact` (None: it can)."""
    if device.state == "retired":
        return Reason.DEVICE_RETIRED
    if device.state not in RECEPTIVE:
        return Reason.DEVICE_INACTIVE
    if artifact is None:
        return None
    if device.model not in artifact.models:
        return Reason.INCOMPATIBLE_MODEL
    if artifact.hardware_revisions and device.hardware_revision not in artifact.hardware_revisions:
        return Reason.INCOMPATIBLE_HARDWARE
    if artifact.kind == "delta" and device.firmware_version != artifact.base_version:
        return Reason.BASE_VERSION_MISMATCH
    if device.firmware_version == artifact.version:
        return Reason.ALREADY_INSTALLED
    return None


def parse_policy(data: dict[str, Any] | None) -> RolloutPolicy:
    """The policy from JSON, with each window's cron and time zone checked too."""
    try:
        policy = RolloutPolicy.model_validate(data or {})
    except ValidationError as exc:
        errors = [
            {"field": "rollout." + ".".join(str(p) for p in e["loc"]), "message": e["msg"]}
            for e in exc.errors()
        ]
        raise Invalid(f"invalid rollout policy: {errors[0]['message']}", errors=errors) from None
    for i, window in enumerate(policy.schedule.windows):
        try:
            windows.validate(window)
        except windows.WindowError as exc:
            raise Invalid(str(exc), field=f"rollout.schedule.windows.{i}") from None
    return policy


def policy_of(deployment: Deployment) -> RolloutPolicy:
    return RolloutPolicy.model_validate(deployment.policy)


async def targets(
    session: AsyncSession, scope: QueryScope, query: str, exclude: str | None = None
) -> list[Target]:
    """The devices `query` selects for the scope's principal (minus those of `exclude`)."""
    where = await compile_for(session, scope, query)
    stmt = (
        select(
            Device.id,
            DeviceModel.name,
            Device.hardware_revision,
            Device.firmware_version,
            Device.state,
        )
        .join(DeviceModel, DeviceModel.id == Device.model_id)
        .where(where)
        .order_by(Device.id)
    )
    if exclude is not None:
        taken = select(Execution.device_id).where(Execution.deployment_id == exclude)
        stmt = stmt.where(Device.id.not_in(taken))
    return [Target(*row) for row in await session.execute(stmt)]


async def create(
    session: AsyncSession,
    change: Change,
    scope: QueryScope,
    *,
    name: str | None,
    target: str,
    artifact_id: str | None,
    command: dict[str, Any] | None,
    continuous: bool,
    rollout: dict[str, Any] | None,
    supersede: bool = False,
    seed: int | None = None,
) -> Deployment:
    principal = change.principal
    if (artifact_id is None) == (command is None):
        raise Invalid("give either artifact_id (an update) or command (a bulk operation)")
    principal.require("updates:deploy" if artifact_id else "deployments:write")
    policy = parse_policy(rollout)
    artifact = None
    if artifact_id is not None:
        artifact = await session.get(Artifact, artifact_id)
        if artifact is None:
            raise Invalid(f"no artifact {artifact_id!r}", field="artifact_id")
    now = change.now()
    devices = await targets(session, scope, target)
    compatible = [d for d in devices if incompatibility(artifact, d) is None]
    if not compatible and not continuous:
        reasons = Counter(str(incompatibility(artifact, d)) for d in devices)
        detail = ", ".join(f"{n} {r}" for r, n in reasons.most_common()) or "no device matches"
        raise Invalid(
            f"the target has no device this deployment can reach ({detail})",
            field="target",
            skipped=dict(reasons),
        )
    rng = random.Random(seed if seed is not None else int.from_bytes(uuid7(now)[-8:].encode()))
    start_at = policy.schedule.start_at
    deployment = Deployment(
        id=uuid7(now),
        name=name or (f"{artifact.name} {artifact.version}" if artifact else str(command)),
        tenant_id=principal.tenant_id,
        kind="update" if artifact else "command",
        artifact_id=artifact.id if artifact else None,
        command=command,
        target=target,
        continuous=continuous,
        policy=policy.model_dump(mode="json"),
        state=planner.SCHEDULED if start_at and start_at > now else planner.RUNNING,
        phase=0,
        phase_started_at=now,
        rate=0.0,
        credit=0.0,
        notified_at_rate=0,
        succeeded_at_rate=0,
        next_tick_at=start_at if start_at and start_at > now else now,
        seed=rng.getrandbits(48),
        acknowledged={},
        created_by=principal.actor,
        created_at=now,
        started_at=None if start_at and start_at > now else now,
        updated_at=now,
    )
    session.add(deployment)
    await session.flush()
    superseded = await _supersede(session, deployment, compatible, now) if supersede else 0
    counts = await add_executions(session, deployment, policy, artifact, devices, rng, now)
    await event(session, deployment, "created", principal.actor, now, counts)
    await audit.append(
        session,
        change,
        action="deployment.create",
        target=f"deployment:{deployment.id}",
        tenant_id=deployment.tenant_id,
        after={
            "name": deployment.name,
            "target": target,
            "artifact": artifact_id,
            "command": command,
            "continuous": continuous,
            "devices": counts,
            "superseded": superseded,
        },
    )
    return deployment


async def add_executions(
    session: AsyncSession,
    deployment: Deployment,
    policy: RolloutPolicy,
    artifact: Artifact | None,
    devices: Sequence[Target],
    rng: random.Random,
    now: datetime,
    *,
    phase: int | None = None,
) -> dict[str, int]:
    """One execution per device: queued (shuffled into phases) or skipped with the reason."""
    reachable = [d for d in devices if incompatibility(artifact, d) is None]
    rng.shuffle(reachable)  # each phase a random sample: fair for the health watch
    start = await _next_position(session, deployment.id)
    if phase is None:
        bounds = planner.phase_sizes(policy, len(reachable))
        phases = [next(i for i, b in enumerate(bounds) if n < b) for n in range(len(reachable))]
    else:
        phases = [phase] * len(reachable)
    rows: list[dict[str, Any]] = []
    for n, (device, in_phase) in enumerate(zip(reachable, phases, strict=True)):
        rows.append(_execution(deployment, device, in_phase, start + n, State.QUEUED, None, now))
    skipped = Counter[str]()
    for device in devices:
        reason = incompatibility(artifact, device)
        if reason is not None:
            skipped[str(reason)] += 1
            rows.append(_execution(deployment, device, -1, -1, State.SKIPPED, reason, now))
    for chunk in range(0, len(rows), 2000):
        await session.execute(insert(Execution), rows[chunk : chunk + 2000])
    return {"queued": len(reachable), "skipped": sum(skipped.values()), **skipped}


def _execution(
    deployment: Deployment,
    device: Target,
    phase: int,
    position: int,
    state: State,
    reason: Reason | None,
    now: datetime,
) -> dict[str, Any]:
    return {
        "id": uuid7(now),
        "deployment_id": deployment.id,
        "device_id": device.device_id,
        "phase": phase,
        "position": position,
        "state": str(state),
        "reason": str(reason) if reason else None,
        "attempt": 1,
        "deliver": False,
        "cancel_requested": False,
        "from_version": device.firmware_version,
        "finished_at": now if state is State.SKIPPED else None,
        "updated_at": now,
    }


async def _next_position(session: AsyncSession, deployment_id: str) -> int:
    found = await session.scalar(
        select(func.max(Execution.position)).where(Execution.deployment_id == deployment_id)
    )
    return 0 if found is None or found < 0 else found + 1


async def _supersede(
    session: AsyncSession, deployment: Deployment, devices: Sequence[Target], now: datetime
) -> int:
    """Cancel the devices' older executions that have not started installing."""
    ids = [d.device_id for d in devices]
    count = 0
    for chunk in range(0, len(ids), 500):
        part = ids[chunk : chunk + 500]
        older = Execution.device_id.in_(part), Execution.deployment_id != deployment.id
        queued = await session.execute(
            update(Execution)
            .where(*older, Execution.state == State.QUEUED)
            .values(state=State.CANCELED, reason=Reason.SUPERSEDED, finished_at=now, updated_at=now)
        )
        asked = await session.execute(
            update(Execution)
            .where(*older, Execution.state.in_([str(s) for s in CANCELABLE - {State.QUEUED}]))
            .values(cancel_requested=True, deliver=True, delivered_at=None, updated_at=now)
        )
        count += rowcount(queued) + rowcount(asked)
    return count


async def event(
    session: AsyncSession,
    deployment: Deployment,
    kind: str,
    actor: str,
    at: datetime,
    detail: dict[str, Any] | None = None,
) -> None:
    session.add(
        DeploymentEvent(
            deployment_id=deployment.id, at=at, kind=kind, actor=actor, detail=detail or {}
        )
    )


async def get(
    session: AsyncSession, principal: Principal, deployment_id: str, *, lock: bool = False
) -> Deployment:
    principal.require("deployments:read")
    found = await session.get(Deployment, deployment_id, with_for_update=lock)
    if found is None or (
        principal.tenant_id is not None and found.tenant_id != principal.tenant_id
    ):
        raise NotFound(f"no deployment {deployment_id!r}")
    return found


async def list_deployments(
    session: AsyncSession,
    principal: Principal,
    *,
    state: str | None,
    limit: int,
    before_id: str | None,
) -> list[Deployment]:
    principal.require("deployments:read")
    stmt = select(Deployment).where(principal.tenant_filter(Deployment.tenant_id))
    if state:
        stmt = stmt.where(Deployment.state == state)
    if before_id:
        stmt = stmt.where(Deployment.id < before_id)
    stmt = stmt.order_by(Deployment.id.desc()).limit(limit)
    return list((await session.scalars(stmt)).all())


# --- progress -----------------------------------------------------------------------------


async def phase_counts(session: AsyncSession, deployment_id: str) -> dict[int, Counter[str]]:
    rows = await session.execute(
        select(Execution.phase, Execution.state, func.count())
        .where(Execution.deployment_id == deployment_id)
        .group_by(Execution.phase, Execution.state)
    )
    out: dict[int, Counter[str]] = {}
    for phase, state, n in rows:
        out.setdefault(phase, Counter())[state] = n
    return out


async def failure_counts(session: AsyncSession, deployment_id: str) -> dict[int, Counter[str]]:
    """Unsuccessful executions per phase, keyed by failure kind and by reason."""
    out: dict[int, Counter[str]] = {}
    rows = await session.execute(
        select(
            Execution.phase, Execution.state, Execution.reason, Execution.last_active, func.count()
        )
        .where(
            Execution.deployment_id == deployment_id,
            Execution.state.in_([str(s) for s in UNSUCCESSFUL]),
        )
        .group_by(Execution.phase, Execution.state, Execution.reason, Execution.last_active)
    )
    for phase, state, reason, last_active, n in rows:
        kind = failure_kind(State(state), reason, State(last_active) if last_active else None)
        bucket = out.setdefault(phase, Counter())
        bucket[kind] += n
        if reason and reason != kind:
            bucket[reason] += n
    return out


async def _reasons(
    session: AsyncSession, deployment_id: str, states: Sequence[State]
) -> dict[str, int]:
    rows = await session.execute(
        select(Execution.reason, func.count())
        .where(
            Execution.deployment_id == deployment_id,
            Execution.state.in_([str(s) for s in states]),
        )
        .group_by(Execution.reason)
    )
    return {reason or "unknown": n for reason, n in rows}


async def view(
    session: AsyncSession,
    deployment: Deployment,
    now: datetime,
    snapshot: planner.Snapshot | None,
    by_phase: dict[int, Counter[str]],
) -> dict[str, Any]:
    """The progress document of `GET /api/v1/deployments/{id}` (`by_phase`: `phase_counts`)."""
    counts: Counter[str] = Counter()
    for states in by_phase.values():
        counts.update(states)
    policy = policy_of(deployment)
    skipped = by_phase.get(-1, Counter())
    phases = []
    for i, spec in enumerate(policy.phases):
        states = by_phase.get(i, Counter())
        phases.append(
            {
                "index": i,
                "percent": spec.percent,
                "count": spec.count,
                "size": sum(states.values()),
                "counts": dict(states),
                "state": (
                    "done"
                    if i < deployment.phase
                    else "running"
                    if i == deployment.phase
                    else "waiting"
                ),
            }
        )
    eta = planner.eta(snapshot, now) if snapshot is not None else None
    plan_windows, needed = policy.schedule.windows, policy.expected_duration
    if eta is not None and plan_windows and not windows.can_start(plan_windows, now, needed):
        # Nothing starts before the next window opens: the pace applies from then on.
        opens = windows.next_start(plan_windows, now, needed)
        eta = opens + (eta - now) if opens is not None else None
    artifact = (
        await session.get(Artifact, deployment.artifact_id) if deployment.artifact_id else None
    )
    return {
        "id": deployment.id,
        "name": deployment.name,
        "kind": deployment.kind,
        "state": deployment.state,
        "reason": deployment.reason,
        "target": deployment.target,
        "continuous": deployment.continuous,
        "tenant": deployment.tenant_id,
        "artifact_id": deployment.artifact_id,
        "version": artifact.version if artifact else None,
        "command": deployment.command,
        "rollout": deployment.policy,
        "phase": deployment.phase,
        "phases": phases,
        "total": sum(counts.values()) - sum(skipped.values()),
        "counts": {str(s): counts.get(str(s), 0) for s in State},
        "skipped": await _reasons(session, deployment.id, [State.SKIPPED]),
        "failure_reasons": await _reasons(session, deployment.id, list(UNSUCCESSFUL)),
        "rate_per_minute": deployment.rate or policy.rate.base_per_minute,
        "eta": eta,
        "created_by": deployment.created_by,
        "created_at": deployment.created_at,
        "started_at": deployment.started_at,
        "finished_at": deployment.finished_at,
        "updated_at": deployment.updated_at,
    }


async def events(
    session: AsyncSession, deployment_id: str, *, after_id: int | None, limit: int
) -> list[DeploymentEvent]:
    stmt = select(DeploymentEvent).where(DeploymentEvent.deployment_id == deployment_id)
    if after_id is not None:
        stmt = stmt.where(DeploymentEvent.id > after_id)
    return list((await session.scalars(stmt.order_by(DeploymentEvent.id).limit(limit))).all())


async def executions(
    session: AsyncSession,
    deployment_id: str,
    *,
    state: str | None,
    after_id: str | None,
    limit: int,
) -> list[tuple[Execution, str]]:
    stmt = (
        select(Execution, Device.serial)
        .join(Device, Device.id == Execution.device_id)
        .where(Execution.deployment_id == deployment_id)
    )
    if state:
        stmt = stmt.where(Execution.state == state)
    if after_id:
        stmt = stmt.where(Execution.id > after_id)
    result = await session.execute(stmt.order_by(Execution.id).limit(limit))
    return [(execution, serial) for execution, serial in result]


# --- operator actions ------------------------------------------------------------------------

# action -> (states it applies to, the state it leads to)
ACTIONS: dict[str, tuple[frozenset[str], str]] = {
    "pause": (frozenset({planner.RUNNING, planner.SCHEDULED}), planner.PAUSED),
    "resume": (frozenset({planner.PAUSED}), planner.RUNNING),
    "stop": (frozenset({planner.RUNNING, planner.PAUSED, planner.SCHEDULED}), planner.STOPPED),
    "abort": (frozenset({planner.RUNNING, planner.PAUSED, planner.SCHEDULED}), planner.ABORTED),
    "cancel": (frozenset({planner.RUNNING, planner.PAUSED, planner.SCHEDULED}), planner.CANCELED),
}


async def act(
    session: AsyncSession,
    change: Change,
    deployment_id: str,
    action: str,
    *,
    rollback: bool = False,
) -> Deployment:
    """pause, resume, stop, abort (optionally rolling back) or cancel (docs/ota.md)."""
    change.principal.require("deployments:write")
    deployment = await get(session, change.principal, deployment_id, lock=True)
    allowed, target_state = ACTIONS[action]
    if deployment.state not in allowed:
        raise Conflict(
            f"a {deployment.state} deployment cannot {action}", field="state", code="state"
        )
    now = change.now()
    before = deployment.state
    deployment.state = target_state
    deployment.reason = change.reason or f"{action} by {change.principal.actor}"
    deployment.updated_at = now
    deployment.next_tick_at = now
    detail: dict[str, Any] = {"from": before}
    if action == "resume":
        deployment.acknowledged = await _acknowledge(session, deployment)
        deployment.reason = None
        deployment.last_tick_at = now  # no credit for the time spent paused
        deployment.credit = 0.0
    if target_state in planner.DEPLOYMENT_FINAL:
        deployment.finished_at = now
        started_too = action in ("abort", "cancel")
        detail.update(
            await wind_down(
                session, deployment, now, rollback=rollback and started_too, started_too=started_too
            )
        )
    await event(session, deployment, action, change.principal.actor, now, detail)
    await audit.append(
        session,
        change,
        action=f"deployment.{action}",
        target=f"deployment:{deployment.id}",
        tenant_id=deployment.tenant_id,
        before={"state": before},
        after={"state": deployment.state, **detail},
    )
    return deployment


async def _acknowledge(session: AsyncSession, deployment: Deployment) -> dict[str, int]:
    """On resume, the failures so far stop counting against the thresholds."""
    acknowledged: dict[str, int] = {}
    for phase, states in (await phase_counts(session, deployment.id)).items():
        failed = sum(states.get(str(s), 0) for s in UNSUCCESSFUL)
        if phase >= 0 and failed:
            acknowledged[str(phase)] = failed
    for phase, keys in (await failure_counts(session, deployment.id)).items():
        for key, n in keys.items():
            acknowledged[f"{phase}:{key}"] = n
    acknowledged["health"] = deployment.phase
    return acknowledged


async def wind_down(
    session: AsyncSession,
    deployment: Deployment,
    now: datetime,
    *,
    rollback: bool,
    started_too: bool = True,
) -> dict[str, int]:
    """Cancel queued executions; unless only stopping, ask started ones to cancel and
    optionally roll back the updated ones."""
    mine = Execution.deployment_id == deployment.id
    canceled = await session.execute(
        update(Execution)
        .where(mine, Execution.state == State.QUEUED)
        .values(state=State.CANCELED, reason=Reason.CANCELED, finished_at=now, updated_at=now)
    )
    if not started_too:  # a stop: devices at work finish what they started
        return {"canceled": rowcount(canceled)}
    asked = await session.execute(
        update(Execution)
        .where(mine, Execution.state.in_([str(s) for s in CANCELABLE - {State.QUEUED}]))
        .values(cancel_requested=True, deliver=True, delivered_at=None, updated_at=now)
    )
    out = {
        "canceled": rowcount(canceled),
        "cancel_requested": rowcount(asked),
    }
    if rollback and deployment.kind == "update":
        rolled = await session.execute(
            update(Execution)
            .where(mine, Execution.state == State.SUCCEEDED)
            .values(
                state=State.ROLLING_BACK,
                # A new job for the same execution: devices tell jobs apart by (id, attempt).
                attempt=Execution.attempt + 1,
                deliver=True,
                delivered_at=None,
                finished_at=None,
                notified_at=now,
                step_deadline=None,
                updated_at=now,
            )
        )
        out["rollback_requested"] = rowcount(rolled)
    return out


async def retry_failed(session: AsyncSession, change: Change, deployment_id: str) -> int:
    """Failed and timed-out executions go back to the queue (a new attempt each)."""
    change.principal.require("deployments:write")
    deployment = await get(session, change.principal, deployment_id, lock=True)
    if deployment.state in planner.DEPLOYMENT_FINAL:
        raise Conflict(f"a {deployment.state} deployment takes no retries", code="state")
    now = change.now()
    result = await session.execute(
        update(Execution)
        .where(
            Execution.deployment_id == deployment.id,
            Execution.state.in_([State.FAILED, State.TIMED_OUT]),
        )
        .values(
            state=State.QUEUED,
            attempt=Execution.attempt + 1,
            not_before=None,
            finished_at=None,
            updated_at=now,
        )
    )
    count: int = rowcount(result)
    deployment.acknowledged = {}
    deployment.next_tick_at = now
    deployment.updated_at = now
    await event(session, deployment, "retry_failed", change.principal.actor, now, {"count": count})
    await audit.append(
        session,
        change,
        action="deployment.retry_failed",
        target=f"deployment:{deployment.id}",
        tenant_id=deployment.tenant_id,
        after={"requeued": count},
    )
    return count
