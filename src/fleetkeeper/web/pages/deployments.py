"""Dashboard pages for updates: artifacts (list, upload, details) and deployments (list, the
create form with its rollout policy, live progress, operator actions).

Everything goes through services/artifacts.py and services/deployments.py as the logged-in
user, like the API: a tenant's users see their tenant's deployments only, and an action the
role may not take is refused there whatever a page offers. A deployment's page follows its
progress through `GET /ui/events/deployments/{id}` (server-sent events, `progress_events`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from fleetkeeper.api.deps import StateDep
from fleetkeeper.api.downloads import artifact_response
from fleetkeeper.api.multipart import FormReader
from fleetkeeper.api.state import AppState
from fleetkeeper.errors import (
    BadRequest,
    Conflict,
    FleetkeeperError,
    Forbidden,
    Invalid,
    PayloadTooLarge,
)
from fleetkeeper.schemas.deployments import CommandSpec, DeploymentOut
from fleetkeeper.services import artifacts, deployments, devices, scheduler
from fleetkeeper.services.artifacts import ArtifactMeta, Received
from fleetkeeper.services.context import Change
from fleetkeeper.services.rollout.execution import ACTIVE, UNSUCCESSFUL, State
from fleetkeeper.services.rollout.planner import DEPLOYMENT_FINAL, DEPLOYMENT_STATES
from fleetkeeper.services.rollout.policy import RolloutPolicy
from fleetkeeper.services.selection import QueryScope
from fleetkeeper.store.models import Artifact, Deployment, DeploymentEvent, Execution
from fleetkeeper.web import sessions
from fleetkeeper.web.common import ActionDep, UserDep, back, change, render, text_field
from fleetkeeper.web.sessions import WebUser

router = APIRouter(include_in_schema=False)

PAGE = 25  # deployments or artifacts per page
EXECUTIONS_PAGE = 50
TIMELINE = 30  # the newest events shown on a deployment's page
ARTIFACT_CHOICES = 200  # the newest artifacts offered by the create form
STREAM_INTERVAL = 1.0  # seconds between two looks at a deployment's progress
STREAM_MAX_SECONDS = 300.0  # then the stream ends and the browser reconnects
MAX_FIELD_BYTES = 128 * 1024
Cursor = Annotated[str | None, Query(max_length=400)]
StateFilter = Annotated[str | None, Query(alias="state", max_length=16)]


def _scope(state: AppState, user: WebUser) -> QueryScope:
    return QueryScope(
        principal=user.principal, now=state.clock.now(), online_window=state.online_window
    )


def _change(request: Request, state: AppState, user: WebUser, reason: str) -> Change:
    """The audit context of an action; like the API, a reason may be required."""
    if state.settings.require_reason and not reason:
        raise Invalid("this change needs a reason", field="reason")
    return change(request, user, reason[:2000])


def filesize(size: int) -> str:
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= factor:
            return f"{size / factor:.1f} {unit}"
    return f"{size} B"


# --- artifacts ------------------------------------------------------------------------------


UPLOAD_FIELDS = (
    "version",
    "models",
    "name",
    "kind",
    "base_version",
    "hardware_revisions",
    "release_notes",
    "sha256",
    "signature",
    "key_id",
    "reason",
)


def may_upload(user: WebUser) -> bool:
    return user.can("artifacts:write") and user.principal.tenant_id is None


async def _artifacts_page(
    request: Request,
    state: AppState,
    user: WebUser,
    cursor: str | None = None,
    *,
    form: Mapping[str, str] | None = None,
    error: FleetkeeperError | None = None,
) -> HTMLResponse:
    async with state.db.read() as session:
        rows, next_cursor = await artifacts.list_artifacts(
            session, user.principal, limit=PAGE, cursor=cursor
        )
        items = await artifacts.render(session, rows)
    field = str(error.extra.get("field") or "form") if error else None
    return render(
        request,
        "artifacts.html",
        user,
        status_code=error.status if error else 200,
        items=items,
        next_url=f"/artifacts?cursor={next_cursor}" if next_cursor else None,
        may_upload=may_upload(user),
        form=form or {"kind": "full"},
        errors={field: error.detail} if error and field else {},
        filesize=filesize,
        max_bytes=state.settings.max_artifact_bytes,
    )


@router.get("/artifacts", response_class=HTMLResponse)
async def artifacts_page(
    request: Request, state: StateDep, user: UserDep, cursor: Cursor = None
) -> HTMLResponse:
    return await _artifacts_page(request, state, user, cursor)


def _split(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


def upload_meta(fields: Mapping[str, str]) -> ArtifactMeta:
    """The upload form's fields as artifact metadata (blank fields are no fields)."""
    given = {k: v.strip() for k, v in fields.items() if v.strip()}
    for required in ("version", "models"):
        if required not in given:
            raise Invalid(f"{required}: required", field=required)
    return ArtifactMeta(
        version=given["version"],
        models=_split(given["models"]),
        name=given.get("name"),
        kind=given.get("kind", "full"),
        base_version=given.get("base_version"),
        hardware_revisions=_split(given.get("hardware_revisions", "")),
        release_notes=fields.get("release_notes") or None,
        sha256=given.get("sha256"),
        signature=given.get("signature"),
        key_id=given.get("key_id"),
    )


async def _receive_upload(
    request: Request, state: AppState, user: WebUser, fields: dict[str, str]
) -> tuple[Received, str | None]:
    """Stream the form in; its CSRF field must come first, before a byte of the file is read
    (the form puts it first, and browsers send fields in order)."""
    checked = False
    if (header := request.headers.get("x-csrf-token")) is not None:
        sessions.check_csrf(user, header)
        checked = True
    received: Received | None = None
    filename: str | None = None
    try:
        async for part in FormReader(request.headers.get("content-type", ""), request.stream()):
            if not checked:
                if part.name != "csrf":
                    break
                sessions.check_csrf(user, await part.text(limit=200))
                checked = True
            elif part.name == "file":
                if received is not None:
                    raise Invalid("send one file per upload", field="file")
                filename = part.filename
                received = await artifacts.receive(
                    state.artifacts, part, limit=state.settings.max_artifact_bytes
                )
            elif part.name in UPLOAD_FIELDS and part.name not in fields:
                fields[part.name] = await part.text(limit=MAX_FIELD_BYTES)
            else:
                raise Invalid(f"unexpected form field {part.name!r}")
        if not checked:
            sessions.check_csrf(user, None)
        if received is None or (received.size == 0 and not filename):
            raise Invalid("choose the artifact's file", field="file")
    except BaseException:
        if received is not None:
            await received.pending.discard()
        raise
    return received, filename


@router.post("/artifacts/upload")
async def upload_artifact(request: Request, state: StateDep, user: UserDep) -> Response:
    artifacts.require_upload(user.principal)
    fields: dict[str, str] = {}
    try:
        received, filename = await _receive_upload(request, state, user, fields)
        try:
            meta = upload_meta(fields)
            audit_change = _change(request, state, user, fields.get("reason", "").strip())
        except BaseException:
            await received.pending.discard()
            raise
        created = await artifacts.create(
            state.db, state.artifacts, state.release_key, audit_change, received, meta, filename
        )
    except (Forbidden, BadRequest):
        raise
    except FleetkeeperError as exc:
        return await _artifacts_page(request, state, user, form=fields, error=exc)
    except HTTPException as exc:  # the server's body limit, met while the file streamed in
        if exc.status_code != 413:
            raise
        too_large = PayloadTooLarge(str(exc.detail), field="file")
        return await _artifacts_page(request, state, user, form=fields, error=too_large)
    return back(f"/artifacts/{created.id}", ok=f"Uploaded {created.name} {created.version}.")


@router.get("/artifacts/{artifact_id}", response_class=HTMLResponse)
async def artifact_page(
    request: Request, state: StateDep, user: UserDep, artifact_id: str
) -> HTMLResponse:
    principal = user.principal
    async with state.db.read() as session:
        found = await artifacts.get_artifact(session, principal, artifact_id)
        artifact = (await artifacts.render(session, [found]))[0]
        used_by = (
            await session.scalars(
                select(Deployment)
                .where(
                    Deployment.artifact_id == artifact_id,
                    principal.tenant_filter(Deployment.tenant_id),
                )
                .order_by(Deployment.id.desc())
                .limit(PAGE)
            )
        ).all()
    return render(
        request,
        "artifact.html",
        user,
        artifact=artifact,
        used_by=used_by,
        may_upload=may_upload(user),
        filesize=filesize,
    )


@router.get("/artifacts/{artifact_id}/download")
async def download_artifact(
    request: Request, state: StateDep, user: UserDep, artifact_id: str
) -> Response:
    async with state.db.read() as session:
        artifact = await artifacts.get_artifact(session, user.principal, artifact_id)
    return await artifact_response(
        request, state.artifacts, artifact, filename=f"{artifact.name}-{artifact.version}"
    )


@router.post("/artifacts/{artifact_id}/delete")
async def delete_artifact(
    request: Request, state: StateDep, user: ActionDep, artifact_id: str
) -> Response:
    reason = text_field(await request.form(), "reason")
    here = f"/artifacts/{artifact_id}"
    try:
        await artifacts.delete(
            state.db, state.artifacts, _change(request, state, user, reason), artifact_id
        )
    except (Conflict, Invalid) as exc:
        return back(here, error=exc.detail)
    return back("/artifacts", ok="Artifact deleted.")


# --- the deployments list ---------------------------------------------------------------------


async def _execution_totals(session: AsyncSession, ids: list[str]) -> dict[str, dict[str, int]]:
    """Executions per state of each deployment on the page: one grouped query."""
    out: dict[str, dict[str, int]] = {i: {} for i in ids}
    if ids:
        rows = await session.execute(
            select(Execution.deployment_id, Execution.state, func.count())
            .where(Execution.deployment_id.in_(ids))
            .group_by(Execution.deployment_id, Execution.state)
        )
        for deployment_id, execution_state, n in rows:
            out[deployment_id][execution_state] = n
    return out


def may_create(user: WebUser) -> bool:
    return user.can("updates:deploy") or user.can("deployments:write")


@router.get("/deployments", response_class=HTMLResponse)
async def deployments_page(
    request: Request,
    state: StateDep,
    user: UserDep,
    state_filter: StateFilter = None,
    cursor: Cursor = None,
) -> HTMLResponse:
    shown = state_filter if state_filter in DEPLOYMENT_STATES else None
    async with state.db.read() as session:
        rows = await deployments.list_deployments(
            session, user.principal, state=shown, limit=PAGE + 1, before_id=cursor
        )
        totals = await _execution_totals(session, [d.id for d in rows[:PAGE]])
    next_url = None
    if len(rows) > PAGE:
        next_url = f"/deployments?cursor={rows[PAGE - 1].id}" + (f"&state={shown}" if shown else "")
    return render(
        request,
        "deployments.html",
        user,
        items=rows[:PAGE],
        totals=totals,
        states=DEPLOYMENT_STATES,
        shown=shown,
        next_url=next_url,
        may_create=may_create(user),
        unsuccessful=[str(s) for s in UNSUCCESSFUL],
    )


# --- the create form ------------------------------------------------------------------------

# Form fields that go into the policy as they are (pydantic parses numbers and durations and
# names the field when one is wrong), and where each goes.
POLICY_FIELDS: dict[str, tuple[str, ...]] = {
    "success_threshold": ("success_threshold",),
    "soak": ("soak",),
    "error_threshold": ("error_threshold",),
    "min_executed": ("min_executed",),
    "on_error": ("on_error",),
    "base_per_minute": ("rate", "base_per_minute"),
    "increment_factor": ("rate", "increment_factor"),
    "max_per_minute": ("rate", "max_per_minute"),
    "max_in_progress": ("rate", "max_in_progress"),
    "expected_duration": ("expected_duration",),
    "start_at": ("schedule", "start_at"),
    "end_at": ("schedule", "end_at"),
    "end_behaviour": ("schedule", "end_behaviour"),
}
# A policy error's path (services/deployments.parse_policy) -> the form field to show it at.
_ERROR_FIELDS = {
    "rollout.phases": "phases",
    "rollout.rate": "max_per_minute",  # max below base
    "rollout.schedule.windows.0.duration": "window_duration",
    "rollout.schedule.windows.0.timezone": "window_timezone",
    "rollout.schedule.windows": "window_cron",
    "rollout.schedule": "end_at",  # end before start
    "rollout.rollback_on_abort": "rollback_on_abort",
    **{"rollout." + ".".join(path): name for name, path in POLICY_FIELDS.items()},
}
FORM_FIELDS = (
    *POLICY_FIELDS,
    "name",
    "kind",
    "artifact_id",
    "command_name",
    "command_args",
    "target",
    "mode",
    "phases",
    "window_cron",
    "window_duration",
    "window_timezone",
    "policy_json",
    "reason",
)
CHECKBOXES = ("supersede", "rollback_on_abort")


def _g(value: float) -> str:
    return f"{value:g}"


def form_defaults(user: WebUser) -> dict[str, str]:
    """The create form as first shown: the policy's own defaults, so they never drift."""
    p = RolloutPolicy()
    return {
        "kind": "update" if user.can("updates:deploy") else "command",
        "mode": "snapshot",
        "command_args": "{}",
        "phases": ",".join(_g(ph.percent or 0) for ph in p.phases),
        "success_threshold": _g(p.success_threshold),
        "soak": _g(p.soak),
        "error_threshold": _g(p.error_threshold),
        "min_executed": str(p.min_executed),
        "on_error": p.on_error,
        "base_per_minute": _g(p.rate.base_per_minute),
        "increment_factor": _g(p.rate.increment_factor),
        "max_per_minute": _g(p.rate.max_per_minute),
        "max_in_progress": str(p.rate.max_in_progress),
        "expected_duration": _g(p.expected_duration),
        "window_timezone": "UTC",
        "end_behaviour": p.schedule.end_behaviour,
    }


def _put(policy: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        policy = policy.setdefault(key, {})
    policy[path[-1]] = value


def policy_from_form(form: Mapping[str, str], errors: dict[str, str]) -> dict[str, Any]:
    """The rollout policy JSON the form describes; blank fields keep the defaults. Problems
    the form alone shows land in `errors` by field; the rest is parse_policy's to find."""
    policy: dict[str, Any] = {}
    if extra := form.get("policy_json", "").strip():
        try:
            policy = json.loads(extra)
        except ValueError as exc:
            errors["policy_json"] = f"not JSON: {exc}"
        if not isinstance(policy, dict):
            errors.setdefault("policy_json", 'give a JSON object, e.g. {"jitter": 0}')
            policy = {}
    phases: list[float] = []
    for entry in filter(None, (e.strip() for e in form.get("phases", "").split(","))):
        try:
            phases.append(float(entry.removesuffix("%")))
        except ValueError:
            errors["phases"] = f"{entry!r} is not a percentage: e.g. 1,10,50,100"
    if phases:
        policy["phases"] = [int(p) if p.is_integer() else p for p in phases]
    for name, path in POLICY_FIELDS.items():
        if value := form.get(name, "").strip():
            _put(policy, path, value)
    if form.get("rollback_on_abort"):
        policy["rollback_on_abort"] = True
    cron, duration = form.get("window_cron", "").strip(), form.get("window_duration", "").strip()
    if cron or duration:
        if not cron:
            errors["window_cron"] = "a maintenance window needs a cron expression"
        elif not duration:
            errors["window_duration"] = "a maintenance window needs a duration, e.g. 2h"
        window = {"cron": cron, "duration": duration}
        if timezone := form.get("window_timezone", "").strip():
            window["timezone"] = timezone
        _put(policy, ("schedule", "windows"), [window])
    return policy


def error_field(path: str | None, message: str) -> str:
    """The form field a service's error belongs to (`form`: the form as a whole)."""
    if path:
        known = [p for p in _ERROR_FIELDS if path == p or path.startswith(p + ".")]
        if known:
            return _ERROR_FIELDS[max(known, key=len)]
        if path in ("target", "artifact_id", "reason", "name"):
            return path
        if path.startswith("rollout.") and path != "rollout.":
            return "policy_json"
    lowered = message.lower()
    for word, name in (("phase", "phases"), ("window", "window_duration"), ("target", "target")):
        if word in lowered:
            return name
    return "form"


def create_errors(exc: FleetkeeperError) -> dict[str, str]:
    """A refused creation's problems by form field (a query that does not parse: target)."""
    field = exc.extra.get("field") or ("target" if isinstance(exc, BadRequest) else None)
    out: dict[str, str] = {}
    for entry in exc.extra.get("errors") or [{"field": field, "message": exc.detail}]:
        message = str(entry["message"]).removeprefix("Value error, ")
        out.setdefault(error_field(entry.get("field"), message), message)
    return out


def _command(form: Mapping[str, str], errors: dict[str, str]) -> dict[str, Any] | None:
    try:
        args = json.loads(form.get("command_args") or "{}")
    except ValueError as exc:
        errors["command_args"] = f"not JSON: {exc}"
        return None
    if not isinstance(args, dict):
        errors["command_args"] = 'give a JSON object, e.g. {"delay": 5}'
        return None
    try:
        spec = CommandSpec.model_validate({"name": form.get("command_name", ""), "args": args})
    except ValueError:
        errors["command_name"] = "a command name: letters, digits, _ . - (e.g. reboot)"
        return None
    return spec.model_dump()


async def _form_page(
    request: Request,
    state: AppState,
    user: WebUser,
    form: Mapping[str, str],
    errors: Mapping[str, str] | None = None,
) -> HTMLResponse:
    if not may_create(user):
        user.principal.require("deployments:write")
    choices: list[Artifact] = []
    if user.can("updates:deploy"):
        async with state.db.read() as session:
            choices, _ = await artifacts.list_artifacts(
                session, user.principal, limit=ARTIFACT_CHOICES
            )
    return render(
        request,
        "deployment_new.html",
        user,
        status_code=422 if errors else 200,
        form=form,
        errors=errors or {},
        choices=choices,
        may_update=user.can("updates:deploy"),
        may_command=user.can("deployments:write"),
    )


@router.get("/deployments/new", response_class=HTMLResponse)
async def new_deployment_page(
    request: Request,
    state: StateDep,
    user: UserDep,
    target: Annotated[str, Query(max_length=4000)] = "",
    artifact: Annotated[str, Query(max_length=36)] = "",
) -> HTMLResponse:
    form = {**form_defaults(user), "target": target, "artifact_id": artifact}
    return await _form_page(request, state, user, form)


@router.post("/deployments")
async def create_deployment(request: Request, state: StateDep, user: ActionDep) -> Response:
    posted = await request.form()
    form = {name: text_field(posted, name) for name in FORM_FIELDS}
    form.update({name: "1" for name in CHECKBOXES if text_field(posted, name)})
    errors: dict[str, str] = {}
    policy = policy_from_form(form, errors)
    update = form["kind"] != "command"
    command = None if update else _command(form, errors)
    if update and not form["artifact_id"]:
        errors["artifact_id"] = "choose the artifact to deploy"
    if not form["target"]:
        errors["target"] = "a fleet query, e.g. model = thermo-v2 (group:NAME for a group)"
    try:  # every problem at once: the policy's too, even when another field is wrong
        deployments.parse_policy(policy)
    except Invalid as exc:
        errors = {**create_errors(exc), **errors}
    if errors:
        return await _form_page(request, state, user, form, errors)
    try:
        audit_change = _change(request, state, user, form["reason"])
        async with state.db.write() as session:
            deployment = await deployments.create(
                session,
                audit_change,
                _scope(state, user),
                name=form["name"][:200] or None,
                target=form["target"],
                artifact_id=form["artifact_id"] if update else None,
                command=command,
                continuous=form["mode"] == "continuous",
                rollout=policy,
                supersede=bool(form.get("supersede")),
            )
    except (Invalid, BadRequest) as exc:
        return await _form_page(request, state, user, form, create_errors(exc))
    if form.get("supersede"):  # the older executions' cancel requests reach devices at once
        await state.pending.refresh(state.db, state.clock.now())
    state.kick_scheduler()
    return back(f"/deployments/{deployment.id}", ok="Deployment created.")


@router.get("/ui/data/deployments/target-count")
async def target_count(
    state: StateDep, user: UserDep, target: Annotated[str, Query(max_length=4000)] = ""
) -> JSONResponse:
    """How many devices the create form's target query matches, as the user types."""
    try:
        async with state.db.read() as session:
            count = await devices.count_devices(session, _scope(state, user), target or None)
    except (Invalid, BadRequest) as exc:
        return JSONResponse({"error": exc.detail}, status_code=400)
    return JSONResponse({"count": count})


# --- a deployment's progress ----------------------------------------------------------------


async def progress(state: AppState, session: AsyncSession, deployment: Deployment) -> DeploymentOut:
    """The progress document, as `GET /api/v1/deployments/{id}` answers it."""
    now = state.clock.now()
    by_phase = await deployments.phase_counts(session, deployment.id)
    snap = await scheduler.snapshot(
        session, deployment, deployments.policy_of(deployment), now, by_phase
    )
    return DeploymentOut.model_validate(
        await deployments.view(session, deployment, now, snap, by_phase)
    )


async def timeline(session: AsyncSession, deployment_id: str) -> list[DeploymentEvent]:
    """The newest events, newest first."""
    rows = await session.scalars(
        select(DeploymentEvent)
        .where(DeploymentEvent.deployment_id == deployment_id)
        .order_by(DeploymentEvent.id.desc())
        .limit(TIMELINE)
    )
    return list(rows.all())


def _event_json(e: DeploymentEvent) -> dict[str, Any]:
    return {
        "id": e.id,
        "at": e.at.isoformat(),
        "kind": e.kind,
        "actor": e.actor,
        "detail": e.detail,
    }


# Which actions the page offers in which deployment state (services/deployments.ACTIONS).
ACTION_STATES: dict[str, frozenset[str]] = {
    **{action: states for action, (states, _) in deployments.ACTIONS.items()},
    "retry-failed": frozenset(DEPLOYMENT_STATES) - DEPLOYMENT_FINAL,
}
Action = Literal["pause", "resume", "stop", "abort", "retry-failed"]


@router.get("/deployments/{deployment_id}", response_class=HTMLResponse)
async def deployment_page(
    request: Request,
    state: StateDep,
    user: UserDep,
    deployment_id: str,
    state_filter: StateFilter = None,
    cursor: Annotated[str | None, Query(max_length=40)] = None,
) -> HTMLResponse:
    shown = state_filter if state_filter in {str(s) for s in State} else None
    async with state.db.read() as session:
        deployment = await deployments.get(session, user.principal, deployment_id)
        doc = await progress(state, session, deployment)
        events = await timeline(session, deployment.id)
        rows = await deployments.executions(
            session, deployment.id, state=shown, after_id=cursor, limit=EXECUTIONS_PAGE + 1
        )
        artifact = await session.get(Artifact, doc.artifact_id) if doc.artifact_id else None
    next_url = None
    if len(rows) > EXECUTIONS_PAGE:
        last = rows[EXECUTIONS_PAGE - 1][0].id
        next_url = f"/deployments/{deployment.id}?cursor={last}" + (
            f"&state={shown}" if shown else ""
        )
    return render(
        request,
        "deployment.html",
        user,
        d=doc,
        artifact=artifact,
        events=events,
        executions=rows[:EXECUTIONS_PAGE],
        shown=shown,
        next_url=next_url,
        may_act=user.can("deployments:write"),
        action_states={a: " ".join(sorted(s)) for a, s in ACTION_STATES.items()},
        final=DEPLOYMENT_FINAL,
        retryable=doc.counts.get("failed", 0) + doc.counts.get("timed_out", 0),
        unsuccessful=sorted(str(s) for s in UNSUCCESSFUL),
        active=sorted(str(s) for s in ACTIVE),
    )


@router.post("/deployments/{deployment_id}/{action}")
async def act(
    request: Request, state: StateDep, user: ActionDep, deployment_id: str, action: Action
) -> Response:
    form = await request.form()
    here = f"/deployments/{deployment_id}"
    try:
        audit_change = _change(request, state, user, text_field(form, "reason"))
        async with state.db.write() as session:
            if action == "retry-failed":
                count = await deployments.retry_failed(session, audit_change, deployment_id)
                done = f"{count} execution(s) back in the queue."
            else:
                rollback = action == "abort" and bool(text_field(form, "rollback"))
                found = await deployments.act(
                    session, audit_change, deployment_id, action, rollback=rollback
                )
                done = f"Deployment {found.state}."
    except (Conflict, Invalid) as exc:
        return back(here, error=exc.detail)
    if action == "abort":  # cancel and rollback requests reach devices at once
        await state.pending.refresh(state.db, state.clock.now())
    state.kick_scheduler()
    return back(here, ok=done)


# --- live progress: server-sent events ------------------------------------------------------


async def progress_events(
    load: Callable[[], Awaitable[dict[str, Any] | None]],
    disconnected: Callable[[], Awaitable[bool]],
    *,
    interval: float,
    max_seconds: float,
    once: bool = False,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> AsyncIterator[str]:
    """The progress document each `interval` while it changes, a heartbeat comment otherwise.

    Over when the client goes, when the deployment is (finished, or gone: `load` answers
    None), after one event (`once`, or no interval), or after `max_seconds` of waiting (the
    browser then reconnects: no connection lives for ever). `sleep` is the tests' seam."""
    last: str | None = None
    waited = 0.0
    while not await disconnected():
        doc = await load()
        if doc is None:
            return
        text = json.dumps(doc, separators=(",", ":"), sort_keys=True)
        yield f"data: {text}\n\n" if text != last else ": heartbeat\n\n"
        last = text
        if once or doc.get("state") in DEPLOYMENT_FINAL or waited >= max_seconds or interval <= 0:
            return
        await sleep(interval)
        waited += interval


@router.get("/ui/events/deployments/{deployment_id}")
async def deployment_events(
    request: Request, state: StateDep, user: UserDep, deployment_id: str, once: bool = False
) -> StreamingResponse:
    async with state.db.read() as session:  # an unknown or foreign id: 404 before streaming
        await deployments.get(session, user.principal, deployment_id)

    async def load() -> dict[str, Any] | None:
        async with state.db.read() as session:
            try:
                deployment = await deployments.get(session, user.principal, deployment_id)
            except FleetkeeperError:
                return None
            doc = (await progress(state, session, deployment)).model_dump(mode="json")
            doc["timeline"] = [_event_json(e) for e in await timeline(session, deployment_id)]
        return doc

    stream = progress_events(
        load,
        request.is_disconnected,
        interval=STREAM_INTERVAL,
        max_seconds=STREAM_MAX_SECONDS,
        once=once,
    )
    return StreamingResponse(
        stream,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
