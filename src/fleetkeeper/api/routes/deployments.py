"""/api/v1/deployments: updates and bulk operations rolled out under a policy (docs/ota.md)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query
from sqlalchemy.ext.asyncio import AsyncSession

from fleetkeeper.api.deps import ReasonHeader, ScopeDep, StateDep, make_change
from fleetkeeper.api.pagination import Limit
from fleetkeeper.api.state import AppState
from fleetkeeper.schemas.common import Page
from fleetkeeper.schemas.deployments import (
    ActionIn,
    DeploymentCreate,
    DeploymentOut,
    EventOut,
    ExecutionOut,
    RetryOut,
)
from fleetkeeper.services import deployments, scheduler
from fleetkeeper.store.models import Deployment

router = APIRouter(prefix="/api/v1/deployments", tags=["deployments"])
Cursor = Annotated[
    str | None, Query(max_length=40, description="`next_cursor` of the page before.")
]


async def _out(state: AppState, session: AsyncSession, deployment: Deployment) -> DeploymentOut:
    now = state.clock.now()
    by_phase = await deployments.phase_counts(session, deployment.id)
    policy = deployments.policy_of(deployment)
    snap = await scheduler.snapshot(session, deployment, policy, now, by_phase)
    shown = await deployments.view(session, deployment, now, snap, by_phase)
    return DeploymentOut.model_validate(shown)


@router.post(
    "",
    status_code=201,
    response_model=DeploymentOut,
    summary="Deploy an artifact or a bulk operation to a fleet query",
)
async def create_deployment(
    state: StateDep, scope: ScopeDep, body: DeploymentCreate, x_change_reason: ReasonHeader = None
) -> DeploymentOut:
    change = make_change(state, scope.principal, body.reason, x_change_reason, reason_required=True)
    async with state.db.write() as session:
        deployment = await deployments.create(
            session,
            change,
            scope,
            name=body.name,
            target=body.target,
            artifact_id=body.artifact_id,
            command=body.command.model_dump() if body.command else None,
            continuous=body.continuous,
            rollout=body.rollout,
            supersede=body.supersede,
            seed=body.seed,
        )
        out = await _out(state, session, deployment)
    if body.supersede:  # the older executions' cancel requests reach devices at once
        await state.pending.refresh(state.db, state.clock.now())
    state.kick_scheduler()
    return out


@router.get("", response_model=Page[DeploymentOut], summary="List deployments, newest first")
async def list_deployments(
    state: StateDep,
    scope: ScopeDep,
    state_filter: Annotated[
        str | None, Query(alias="state", max_length=16, description="only in this state")
    ] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> Page[DeploymentOut]:
    async with state.db.read() as session:
        rows = await deployments.list_deployments(
            session, scope.principal, state=state_filter, limit=limit + 1, before_id=cursor
        )
        items = [await _out(state, session, d) for d in rows[:limit]]
    next_cursor = rows[limit - 1].id if len(rows) > limit else None
    return Page(items=items, next_cursor=next_cursor)


@router.get("/{deployment_id}", response_model=DeploymentOut, summary="A deployment's progress")
async def get_deployment(state: StateDep, scope: ScopeDep, deployment_id: str) -> DeploymentOut:
    async with state.db.read() as session:
        deployment = await deployments.get(session, scope.principal, deployment_id)
        return await _out(state, session, deployment)


@router.post(
    "/{deployment_id}/retry-failed",
    response_model=RetryOut,
    summary="Put failed and timed-out executions back in the queue",
)
async def retry_failed(
    state: StateDep,
    scope: ScopeDep,
    deployment_id: str,
    body: ActionIn | None = None,
    x_change_reason: ReasonHeader = None,
) -> RetryOut:
    reason = body.reason if body else None
    change = make_change(state, scope.principal, reason, x_change_reason, reason_required=True)
    async with state.db.write() as session:
        count = await deployments.retry_failed(session, change, deployment_id)
    state.kick_scheduler()
    return RetryOut(requeued=count)


Action = Literal["pause", "resume", "stop", "abort", "cancel"]


@router.post(
    "/{deployment_id}/{action}",
    response_model=DeploymentOut,
    summary="pause, resume, stop, abort or cancel a deployment",
    description="pause: no new devices until resumed; stop: no new devices ever, running ones "
    "finish; abort: cancel the rest (and with `rollback` roll updated devices back); cancel: "
    "an operator's abort.",
)
async def act(
    state: StateDep,
    scope: ScopeDep,
    deployment_id: str,
    action: Action,
    body: ActionIn | None = None,
    x_change_reason: ReasonHeader = None,
) -> DeploymentOut:
    body = body or ActionIn()
    change = make_change(state, scope.principal, body.reason, x_change_reason, reason_required=True)
    async with state.db.write() as session:
        deployment = await deployments.act(
            session, change, deployment_id, action, rollback=body.rollback
        )
        out = await _out(state, session, deployment)
    if action in ("abort", "cancel"):  # cancel and rollback requests reach devices at once
        await state.pending.refresh(state.db, state.clock.now())
    state.kick_scheduler()
    return out


@router.get(
    "/{deployment_id}/events", response_model=Page[EventOut], summary="The deployment's timeline"
)
async def list_events(
    state: StateDep, scope: ScopeDep, deployment_id: str, limit: Limit = 100, cursor: Cursor = None
) -> Page[EventOut]:
    after = int(cursor) if cursor and cursor.isdigit() else None
    async with state.db.read() as session:
        await deployments.get(session, scope.principal, deployment_id)
        rows = await deployments.events(session, deployment_id, after_id=after, limit=limit + 1)
    items = [
        EventOut(id=e.id, at=e.at, kind=e.kind, actor=e.actor, detail=e.detail)
        for e in rows[:limit]
    ]
    return Page(items=items, next_cursor=str(rows[limit - 1].id) if len(rows) > limit else None)


@router.get(
    "/{deployment_id}/executions",
    response_model=Page[ExecutionOut],
    summary="Each device's execution; `state=skipped` lists the incompatible ones with reasons",
)
async def list_executions(
    state: StateDep,
    scope: ScopeDep,
    deployment_id: str,
    state_filter: Annotated[str | None, Query(alias="state", max_length=16)] = None,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> Page[ExecutionOut]:
    async with state.db.read() as session:
        await deployments.get(session, scope.principal, deployment_id)
        rows = await deployments.executions(
            session, deployment_id, state=state_filter, after_id=cursor, limit=limit + 1
        )
    items = [
        ExecutionOut(
            id=e.id,
            device_id=e.device_id,
            serial=serial,
            phase=e.phase,
            state=e.state,
            reason=e.reason,
            detail=e.detail,
            progress=e.progress,
            attempt=e.attempt,
            from_version=e.from_version,
            to_version=e.to_version,
            notified_at=e.notified_at,
            finished_at=e.finished_at,
            updated_at=e.updated_at,
        )
        for e, serial in rows[:limit]
    ]
    return Page(items=items, next_cursor=rows[limit - 1][0].id if len(rows) > limit else None)
