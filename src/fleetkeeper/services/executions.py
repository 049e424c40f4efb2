"""Executions as a device sees them: jobs handed out at check-in, progress reported back.

A job repeats at check-ins (at most every `REDELIVER` seconds) until the device reports on it,
so a lost answer loses nothing. Reports move the execution through the transition table of
services/rollout/execution.py; an impossible one is refused, audited and recorded as a
security event. A final report's `version` updates what the device runs, whatever the outcome.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from fleetkeeper.errors import Conflict, Invalid, NotFound
from fleetkeeper.services import audit, deployments
from fleetkeeper.services.context import Change
from fleetkeeper.services.rollout import planner
from fleetkeeper.services.rollout.execution import (
    ACTIVE,
    FINAL,
    STEP_OF,
    UNSUCCESSFUL,
    Reason,
    State,
    TransitionError,
    check_device_move,
    failure_kind,
)
from fleetkeeper.services.rollout.policy import RolloutPolicy
from fleetkeeper.store.models import Artifact, Deployment, Device, Execution
from fleetkeeper.versions import firmware_key

REDELIVER = timedelta(seconds=60)
REASONS = frozenset(str(r) for r in Reason)
NEEDS_REASON = frozenset({State.FAILED, State.ROLLED_BACK})


def deliverable(now: datetime) -> Any:
    """The WHERE clause of executions a device should hear about now."""
    return (
        Execution.deliver.is_(True),
        Execution.notified_at <= now,
        or_(Execution.delivered_at.is_(None), Execution.delivered_at <= now - REDELIVER),
    )


async def devices_with_jobs(session: AsyncSession, now: datetime) -> set[str]:
    rows = await session.scalars(select(Execution.device_id).where(*deliverable(now)).distinct())
    return set(rows)


async def jobs_for(session: AsyncSession, device_id: str, now: datetime) -> list[dict[str, Any]]:
    """The device's jobs to hand out now, marked as delivered."""
    rows = await session.execute(
        select(Execution, Deployment, Artifact)
        .join(Deployment, Deployment.id == Execution.deployment_id)
        .outerjoin(Artifact, Artifact.id == Deployment.artifact_id)
        .where(Execution.device_id == device_id, *deliverable(now))
        .order_by(Execution.id)
        .with_for_update(of=Execution, skip_locked=True)
    )
    jobs = []
    for execution, deployment, artifact in rows:
        execution.delivered_at = now
        jobs.append(job(execution, deployment, artifact, now))
    return jobs


def job(
    execution: Execution, deployment: Deployment, artifact: Artifact | None, now: datetime
) -> dict[str, Any]:
    """The job document of docs/ota.md, "Jobs at check-in"."""
    policy = deployments.policy_of(deployment)
    rollback = execution.state == State.ROLLING_BACK
    kind = "rollback" if rollback else deployment.kind
    timeouts = policy.timeouts
    return {
        "id": execution.id,
        "deployment_id": deployment.id,
        "kind": kind,
        "state": execution.state,
        "attempt": execution.attempt,
        "cancel": execution.cancel_requested,
        "artifact": _artifact(artifact) if artifact and not rollback else None,
        "rollback_to": execution.from_version if rollback else None,
        "command": deployment.command if kind == "command" else None,
        "preconditions": policy.preconditions.model_dump(mode="json"),
        "timeouts": {
            "download": timeouts.download,
            "install": timeouts.install,
            "reboot": timeouts.reboot,
            "verify": timeouts.verify,
        },
        "not_after": None,
    }


def _artifact(artifact: Artifact) -> dict[str, Any]:
    return {
        "id": artifact.id,
        "name": artifact.name,
        "version": artifact.version,
        "kind": artifact.kind,
        "base_version": artifact.base_version,
        "size": artifact.size,
        "sha256": artifact.sha256,
        "signature": artifact.signature,
        "key_id": artifact.key_id,
        "url": f"/device/v1/artifacts/{artifact.id}",
    }


class ImpossibleReport(Conflict):
    """A device said something its execution's state does not allow."""


class JobClosed(Conflict):
    """The server has ended the execution; the device should stop working on it."""


async def report(
    session: AsyncSession,
    change: Change,
    device: Device,
    execution_id: str,
    body: dict[str, Any],
    rng: random.Random,
) -> tuple[Execution, Deployment, Conflict | None]:
    """Apply a device's progress report (docs/ota.md, "Reporting progress").

    A report that does not fit comes back as the error to raise once the transaction has
    committed (the firmware version it carries is kept either way).
    """
    now = change.now()
    execution = await session.get(Execution, execution_id, with_for_update=True)
    if execution is None or execution.device_id != device.id:
        raise NotFound(f"no job {execution_id!r} for this device", code="unknown_job")
    deployment = await session.get(Deployment, execution.deployment_id)
    assert deployment is not None
    wanted = str(body["state"])
    reason = body.get("reason")
    version = body.get("version")
    if isinstance(version, str) and version:
        row = await session.get(Device, device.id)
        if row is not None:
            _runs(row, version, now)
    if State(execution.state) in FINAL or (
        execution.state == State.QUEUED and execution.attempt > 1
    ):
        # Raised by the caller after the commit, so the version above is kept.
        return (
            execution,
            deployment,
            JobClosed(
                f"the job is {execution.state}: stop working on it",
                code="job_closed",
                state=execution.state,
            ),
        )
    if reason is not None and reason not in REASONS:
        raise Invalid(f"unknown reason {reason!r}", field="reason", code="invalid")
    if execution.state == State.ROLLING_BACK and wanted in (State.SUCCEEDED, State.ROLLED_BACK):
        # A rollback job done: "succeeded" from a device means the same.
        wanted = State.ROLLED_BACK
        reason = reason or Reason.ROLLBACK_REQUESTED
    try:
        new = check_device_move(execution.state, wanted)
    except TransitionError as exc:
        return (
            execution,
            deployment,
            ImpossibleReport(
                str(exc), code="invalid_transition", state=execution.state, reported=wanted
            ),
        )
    if new in NEEDS_REASON and reason is None:
        raise Invalid(f"a {new} report needs a reason", field="reason", code="invalid")
    if body.get("cancel_refused") and execution.cancel_requested:
        execution.cancel_requested = False
        await deployments.event(
            session,
            deployment,
            "cancel_refused",
            f"device:{device.id}",
            now,
            {"state": execution.state},
        )
    policy = deployments.policy_of(deployment)
    _move(execution, new, now, policy)
    execution.deliver = False
    execution.progress = body.get("progress")
    execution.reason = reason if new not in (State.SUCCEEDED,) else None
    execution.detail = body.get("detail")
    if new in FINAL:
        deployment.next_tick_at = now
        await audit.append(
            session,
            change,
            action=f"execution.{new}",
            target=f"device:{device.id}",
            tenant_id=device.tenant_id,
            after={
                "execution": execution.id,
                "deployment": deployment.id,
                "reason": reason,
                "version": version,
            },
        )
        if new in UNSUCCESSFUL:
            schedule_retry(execution, policy, now, rng)
    return execution, deployment, None


async def record_impossible(
    session: AsyncSession, change: Change, device: Device, execution_id: str, error: Conflict
) -> None:
    await audit.append(
        session,
        change,
        action="execution.invalid_report",
        target=f"device:{device.id}",
        tenant_id=device.tenant_id,
        after={"execution": execution_id, **error.extra},
    )


def _move(execution: Execution, new: State, now: datetime, policy: RolloutPolicy) -> None:
    old = State(execution.state)
    if old in ACTIVE:
        execution.last_active = old
    execution.state = new
    execution.updated_at = now
    if new in FINAL:
        execution.finished_at = now
        execution.step_deadline = None
    elif new != old:
        step = STEP_OF.get(new)
        seconds = getattr(policy.timeouts, step) if step else None
        execution.step_deadline = now + timedelta(seconds=seconds) if seconds else None


def schedule_retry(
    execution: Execution, policy: RolloutPolicy, now: datetime, rng: random.Random
) -> bool:
    """Put an unsuccessful execution back in the queue when the policy allows another try."""
    if execution.state == State.ROLLED_BACK and execution.reason != Reason.HEALTH_CHECK_FAILED:
        return False  # an operator's rollback is not retried
    kind = failure_kind(
        State(execution.state),
        execution.reason,
        State(execution.last_active) if execution.last_active else None,
    )
    delay = planner.retry_delay(policy, kind, execution.attempt, rng)
    if delay is None:
        return False
    execution.state = State.QUEUED
    execution.attempt += 1
    execution.not_before = now + timedelta(seconds=delay)
    execution.finished_at = None
    execution.cancel_requested = False
    return True


async def time_out(
    session: AsyncSession, now: datetime, rng: random.Random, limit: int = 500
) -> set[str]:
    """Executions past their step's deadline time out (and maybe retry); their deployments."""
    rows = (
        await session.scalars(
            select(Execution)
            .where(
                Execution.step_deadline <= now,
                Execution.state.in_([str(s) for s in ACTIVE]),
            )
            .order_by(Execution.step_deadline)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    ).all()
    touched: set[str] = set()
    policies: dict[str, RolloutPolicy] = {}
    for execution in rows:
        if execution.deployment_id not in policies:
            deployment = await session.get(Deployment, execution.deployment_id)
            assert deployment is not None
            policies[deployment.id] = deployments.policy_of(deployment)
        execution.last_active = execution.state
        execution.state = State.TIMED_OUT
        execution.reason = Reason.TIMED_OUT
        execution.detail = f"no report within the {STEP_OF[State(execution.last_active)]} timeout"
        execution.deliver = False
        execution.finished_at = now
        execution.step_deadline = None
        execution.updated_at = now
        schedule_retry(execution, policies[execution.deployment_id], now, rng)
        touched.add(execution.deployment_id)
    return touched


def _runs(device: Device, version: str, now: datetime) -> None:
    if device.firmware_version != version:
        device.firmware_version = version
        device.firmware_key = firmware_key(version)
        device.updated_at = now
