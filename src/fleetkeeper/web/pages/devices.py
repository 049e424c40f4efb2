"""The device list and the device page.

The list is the API's device list (`services.devices.list_devices`, keyset-paginated, and
`count_devices`) behind the fleet query box, with the user's saved queries and a bulk
selection that goes into a static group or becomes a deployment's target. The device page
gathers what the services know about one device; its data for charts and the map comes from
the JSON endpoints under `/ui/data/devices/`. Every read and action runs as the logged-in
user, so the services refuse what the role may not do whatever a form sends.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from fleetkeeper.api.deps import StateDep
from fleetkeeper.api.state import AppState
from fleetkeeper.errors import BadRequest, Conflict, Forbidden, Invalid, NotFound
from fleetkeeper.query import parse
from fleetkeeper.schemas.devices import DevicePatch
from fleetkeeper.services import (
    audit,
    commands,
    devices,
    groups,
    lifecycle,
    provisioning,
    retirement,
    telemetry,
)
from fleetkeeper.services.alerting import operations as alerting
from fleetkeeper.services.context import Change
from fleetkeeper.services.geo import positions
from fleetkeeper.services.monitoring import health
from fleetkeeper.services.selection import QueryScope, compile_for
from fleetkeeper.store.db import rowcount
from fleetkeeper.store.models import AuditRecord, Device, Group, SavedQuery
from fleetkeeper.web.common import ActionDep, UserDep, back, change, render, text_field
from fleetkeeper.web.pages.overview import scope_of
from fleetkeeper.web.sessions import WebUser

router = APIRouter(include_in_schema=False)

PAGE_SIZES = (25, 50, 100, 200)
MAX_QUERY = 4000  # as the API's `q`
MAX_BULK = 10_000  # devices one bulk action takes at most (as the API's members list)
MAX_SAVED = 100  # saved queries per user
GROUP_CHOICES = 500  # static group names offered to pick from
RECENT = 20  # commands and alerts on the device page
AUDIT_SHOWN = 50
HISTORY_SHOWN = 100
CHARTS = 12  # metrics charted on the device page at most
POSITIONS = 1000

FleetQuery = Annotated[str, Query(max_length=MAX_QUERY)]
Cursor = Annotated[str | None, Query(max_length=400)]
Time = Annotated[str | None, Query(max_length=40)]

# Mistakes a user can fix by changing the form: shown as a flash message on the page.
# Forbidden and a device's NotFound stay errors (a 403 or 404 page).
_FIXABLE = (BadRequest, Conflict, Invalid)


# --- the device list -------------------------------------------------------------------------


@dataclass(frozen=True)
class QueryError:
    """A query the services refused, with the line of the query the mistake is on."""

    message: str
    line: str | None = None
    column: int = 0


def _query_error(q: str, exc: BadRequest | Invalid) -> QueryError:
    position = exc.extra.get("position")
    if not isinstance(position, int) or not 0 <= position <= len(q):
        return QueryError(exc.detail)
    start = q.rfind("\n", 0, position) + 1
    end = q.find("\n", position)
    return QueryError(exc.detail, q[start : end if end >= 0 else len(q)], position - start)


def list_url(q: str = "", **params: Any) -> str:
    given = {"q": q, **params}
    query = urlencode({k: v for k, v in given.items() if v not in (None, "")})
    return "/devices" + (f"?{query}" if query else "")


def _owner(user: WebUser) -> str:
    if user.principal.user_id is None:
        raise Forbidden("saved queries belong to a user: log in as one")
    return user.principal.user_id


async def _saved_queries(session: AsyncSession, user: WebUser) -> list[SavedQuery]:
    stmt = (
        select(SavedQuery)
        .where(SavedQuery.user_id == _owner(user))
        .order_by(SavedQuery.name)
        .limit(MAX_SAVED)
    )
    return list((await session.scalars(stmt)).all())


async def _static_groups(session: AsyncSession, user: WebUser) -> list[str]:
    stmt = (
        select(Group.name)
        .where(Group.query.is_(None), user.principal.tenant_filter(Group.tenant_id))
        .distinct()
        .order_by(Group.name)
        .limit(GROUP_CHOICES)
    )
    return list((await session.scalars(stmt)).all())


@router.get("/devices", response_class=HTMLResponse)
async def devices_page(
    request: Request,
    state: StateDep,
    user: UserDep,
    q: FleetQuery = "",
    cursor: Cursor = None,
    limit: int = 50,
) -> HTMLResponse:
    limit = limit if limit in PAGE_SIZES else 50
    scope = scope_of(request, user)
    rows: list[Any] = []
    next_cursor: str | None = None
    total = 0
    error: QueryError | None = None
    async with state.db.read() as session:
        try:
            total = await devices.count_devices(session, scope, q)
            found, next_cursor = await devices.list_devices(
                session, scope, q, limit=limit, cursor=cursor
            )
            rows = await devices.render(session, scope, found)
        except (BadRequest, Invalid) as exc:
            error = _query_error(q, exc)
        saved = await _saved_queries(session, user)
        static = await _static_groups(session, user) if user.can("groups:write") else []
    return render(
        request,
        "devices.html",
        user,
        status_code=400 if error else 200,
        q=q,
        limit=limit,
        page_sizes=PAGE_SIZES,
        rows=rows,
        total=total,
        error=error,
        saved=saved,
        static_groups=static,
        cursor=cursor,
        next_url=list_url(q, limit=limit, cursor=next_cursor) if next_cursor else None,
        first_url=list_url(q, limit=limit) if cursor else None,
        can_group=user.can("groups:write"),
        can_deploy=user.can("deployments:write"),
        max_bulk=MAX_BULK,
    )


async def _selected_ids(
    session: AsyncSession, scope: QueryScope, q: str | None, chosen: Sequence[str]
) -> list[str]:
    """The ids of the selection: all devices `q` matches (q not None), else the ticked ones
    the user may see."""
    stmt = select(Device.id).where(await compile_for(session, scope, q)).order_by(Device.id)
    if q is None:
        stmt = stmt.where(Device.id.in_(list(chosen)))
    ids = list((await session.scalars(stmt.limit(MAX_BULK + 1))).all())
    if len(ids) > MAX_BULK:
        raise Invalid(
            f"the query matches more than {MAX_BULK} devices: narrow it, or create a dynamic "
            "group with this query instead"
        )
    if not ids:
        raise Invalid("no device is selected (or the selected devices are gone)")
    return ids


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


async def _target_of(session: AsyncSession, scope: QueryScope, chosen: Sequence[str]) -> str:
    """A fleet query naming exactly the ticked devices, by serial."""
    ids = await _selected_ids(session, scope, None, chosen)
    found = await session.scalars(select(Device.serial).where(Device.id.in_(ids)))
    target = f"serial IN ({', '.join(_quoted(s) for s in sorted(found))})"
    if len(target) > MAX_QUERY:
        raise Invalid("too many devices ticked to name them in a query: deploy to the query")
    return target


@router.post("/devices/bulk")
async def bulk_action(request: Request, state: StateDep, user: ActionDep) -> Response:
    """Ticked devices (or all the query matches) into a static group, or to a deployment."""
    form = await request.form()
    q, action = text_field(form, "q"), text_field(form, "action")
    here = list_url(q)
    if action not in ("group", "deploy"):
        raise BadRequest(f"unknown bulk action {action!r}")
    user.principal.require("groups:write" if action == "group" else "deployments:write")
    everything = text_field(form, "scope") == "all"
    chosen = [v for v in form.getlist("device") if isinstance(v, str)][:MAX_BULK]
    if not everything and not chosen:
        return back(here, error="Tick some devices first, or choose all devices of the query.")
    scope = scope_of(request, user)
    try:
        if action == "deploy":
            if everything:
                target = q
                parse(q)  # a query that does not parse makes no deployment
            else:
                async with state.db.read() as session:
                    target = await _target_of(session, scope, chosen)
            return RedirectResponse(
                "/deployments/new?" + urlencode({"target": target}), status_code=303
            )
        name = text_field(form, "group")
        if not name:
            return back(here, error="Name the static group to add the devices to.")
        async with state.db.write() as session:
            ids = await _selected_ids(session, scope, q if everything else None, chosen)
            group = await groups.get_group(session, user.principal, name)
            ctx = change(request, user, text_field(form, "reason"))
            added = await groups.change_members(session, ctx, group, ids, add=True)
    except (*_FIXABLE, NotFound) as exc:
        return back(here, error=exc.detail)
    already = len(ids) - added
    note = f" ({already} were members already)" if already else ""
    return back(here, ok=f"Added {added} device(s) to group {group.name!r}{note}.")


@router.post("/devices/queries")
async def save_query(request: Request, state: StateDep, user: ActionDep) -> Response:
    form = await request.form()
    name, q = text_field(form, "name"), text_field(form, "q")
    here = list_url(q)
    if not name or len(name) > 100:
        return back(here, error="Name the query (at most 100 characters) to save it.")
    if not q or len(q) > MAX_QUERY:
        return back(here, error=f"Only a query of 1 to {MAX_QUERY} characters can be saved.")
    try:
        parse(q)
    except BadRequest as exc:
        return back(here, error=f"Not saved: {exc.detail}")
    owner = _owner(user)
    async with state.db.write() as session:
        row = await session.scalar(
            select(SavedQuery).where(SavedQuery.user_id == owner, SavedQuery.name == name)
        )
        if row is not None:
            row.query = q
        else:
            count = len(await _saved_queries(session, user))
            if count >= MAX_SAVED:
                return back(here, error=f"You have {MAX_SAVED} saved queries: delete one first.")
            session.add(SavedQuery(user_id=owner, name=name, query=q, created_at=state.clock.now()))
    return back(here, ok=f"Saved the query as {name!r}.")


@router.post("/devices/queries/{query_id}/delete")
async def delete_query(state: StateDep, user: ActionDep, query_id: int) -> Response:
    async with state.db.write() as session:
        result = await session.execute(
            delete(SavedQuery).where(SavedQuery.id == query_id, SavedQuery.user_id == _owner(user))
        )
    if not rowcount(result):
        return back("/devices", error="There is no such saved query.")
    return back("/devices", ok="Deleted the saved query.")


# --- the device page -------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One row of a device's lifecycle history (from the audit trail)."""

    at: datetime
    action: str
    actor: str
    reason: str | None
    before: str | None
    after: str


def _json(text: str | None) -> Any:
    return json.loads(text) if text else None


async def _lifecycle_history(session: AsyncSession, user: WebUser, device_id: str) -> list[Step]:
    """The audit records of the device that set its state, newest first."""
    user.principal.require("audit:read")
    rows = await session.scalars(
        select(AuditRecord)
        .where(
            AuditRecord.target == f"device:{device_id}",
            AuditRecord.after.contains('"state":'),
            user.principal.tenant_filter(AuditRecord.tenant_id),
        )
        .order_by(AuditRecord.id.desc())
        .limit(HISTORY_SHOWN)
    )
    steps = []
    for r in rows:
        before, after = _json(r.before) or {}, _json(r.after) or {}
        if isinstance(after, dict) and isinstance(after.get("state"), str):
            was = before.get("state") if isinstance(before, dict) else None
            steps.append(Step(r.at, r.action, r.actor, r.reason, was, after["state"]))
    return steps


async def _serials_of(
    session: AsyncSession, user: WebUser, ids: list[str | None]
) -> dict[str, str]:
    wanted = [i for i in ids if i]
    if not wanted:
        return {}
    rows = await session.execute(
        select(Device.id, Device.serial).where(
            Device.id.in_(wanted), user.principal.tenant_filter(Device.tenant_id)
        )
    )
    return {device_id: serial for device_id, serial in rows}


def _steps_for(state: str) -> dict[str, Any]:
    """What the lifecycle lets an operator do with a device in `state`."""
    allowed = lifecycle.TRANSITIONS.get(state, frozenset())
    return {
        "decide": state == "pending",
        "states": [] if state == "pending" else sorted(allowed - {"retired"}),
        "retire": "retired" in allowed and state != "pending",
    }


@router.get("/devices/{device_id}", response_class=HTMLResponse)
async def device_page(
    request: Request, state: StateDep, user: UserDep, device_id: str
) -> HTMLResponse:
    scope = scope_of(request, user)
    principal = user.principal
    alerts: list[Any] = []
    trail: list[AuditRecord] = []
    history: list[Step] = []
    async with state.db.read() as session:
        device, flags = await health.device_flags(session, principal, device_id)
        view = (await devices.render(session, scope, [device]))[0]
        recent = await commands.list_for(session, principal, device.id, limit=RECENT)
        if user.can("alerts:read"):
            flt = alerting.AlertFilter(device=device.id)
            alerts, _ = await alerting.list_alerts(session, scope, flt, limit=RECENT, cursor=None)
        if user.can("audit:read"):
            flt_audit = audit.AuditFilter(target=f"device:{device.id}")
            trail = await audit.list_records(session, principal, flt_audit, limit=AUDIT_SHOWN)
            history = await _lifecycle_history(session, user, device.id)
        related = await _serials_of(session, user, [device.replaces, device.replaced_by])
    return render(
        request,
        "device.html",
        user,
        device=device,
        view=view,
        flags=flags,
        commands=[commands.view(c, scope.now) for c in recent],
        alerts=alerts,
        trail=trail,
        history=history,
        related=related,
        metrics=sorted(view.metrics)[:CHARTS],
        steps=_steps_for(device.state),
        require_reason=state.settings.require_reason,
        json=lambda value: json.dumps(value, sort_keys=True, ensure_ascii=False),
        pretty=lambda text: json.dumps(_json(text), indent=1, ensure_ascii=False),
    )


# --- acting on one device --------------------------------------------------------------------


async def _act(
    request: Request,
    state: AppState,
    user: WebUser,
    device_id: str,
    act: Callable[[AsyncSession, Change], Awaitable[Any]],
    *,
    ok: str,
    needs_reason: bool,
) -> Response:
    """Run one change of the device as the user; back to its page with what happened.

    A change the API wants a reason for (`require_reason`) wants one here too."""
    here = f"/devices/{device_id}"
    reason = text_field(await request.form(), "reason")
    if needs_reason and state.settings.require_reason and not reason:
        return back(here, error="This change needs a reason: say why in the Reason field.")
    try:
        async with state.db.write() as session:
            await act(session, change(request, user, reason))
    except _FIXABLE as exc:
        return back(here, error=exc.detail)
    state.device_cache.forget(device_id)
    return back(here, ok=ok)


@router.post("/devices/{device_id}/state")
async def set_state(request: Request, state: StateDep, user: ActionDep, device_id: str) -> Response:
    user.principal.require("devices:write")
    new = text_field(await request.form(), "state")
    if not new or len(new) > 32:
        return back(f"/devices/{device_id}", error="Pick the state to move the device to.")

    async def act(session: AsyncSession, ctx: Change) -> None:
        await devices.update_device(session, ctx, device_id, DevicePatch(state=new))

    ok = f"The device is {new} now."
    return await _act(request, state, user, device_id, act, ok=ok, needs_reason=True)


# step: (service, what the flash says, whether it needs a reason when reasons are required)
_STEPS: dict[str, tuple[Callable[..., Awaitable[Any]], str, bool]] = {
    "accept": (partial(provisioning.decide, accept=True), "Accepted: the device is active.", False),
    "reject": (partial(provisioning.decide, accept=False), "Rejected: it is retired.", False),
    "retire": (retirement.retire, "Retired: credentials revoked, a wipe is queued.", True),
}


@router.post("/devices/{device_id}/lifecycle/{step}")
async def lifecycle_step(
    request: Request, state: StateDep, user: ActionDep, device_id: str, step: str
) -> Response:
    if step not in _STEPS:
        raise NotFound(f"no lifecycle step {step!r}")
    user.principal.require("devices:write")
    act, ok, needs_reason = _STEPS[step]

    async def run(session: AsyncSession, ctx: Change) -> None:
        await act(session, ctx, device_id)

    return await _act(request, state, user, device_id, run, ok=ok, needs_reason=needs_reason)


def _command_args(text: str) -> dict[str, Any]:
    try:
        args = json.loads(text) if text else {}
    except json.JSONDecodeError as exc:
        raise Invalid(f"the arguments are not JSON: {exc.msg} at character {exc.pos}") from None
    if not isinstance(args, dict):
        raise Invalid('the arguments must be a JSON object, e.g. {"level": "debug"}')
    return args


@router.post("/devices/{device_id}/commands")
async def send_command(
    request: Request, state: StateDep, user: ActionDep, device_id: str
) -> Response:
    user.principal.require("commands:write")
    form = await request.form()
    here = f"/devices/{device_id}"
    try:
        args = _command_args(text_field(form, "args"))
        timeout = int(text_field(form, "timeout") or 60)
        if not 1 <= timeout <= 7 * 86400:
            raise Invalid("the timeout is 1 second to 7 days")
        async with state.db.write() as session:
            cmd = await commands.create(
                session,
                change(request, user, text_field(form, "reason")),
                device_id,
                name=text_field(form, "name"),
                args=args,
                timeout_s=timeout,
            )
    except ValueError:
        return back(here, error="The timeout is a whole number of seconds.")
    except _FIXABLE as exc:
        return back(here, error=exc.detail)
    state.pending.add(cmd.device_id)  # after commit: the device may be long-polling now
    return back(here, ok=f"Command {cmd.name!r} queued; it expires in {timeout} s.")


# --- data for the device page's scripts ------------------------------------------------------


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


@router.get("/ui/data/devices/{device_id}/telemetry")
async def telemetry_data(
    state: StateDep,
    user: UserDep,
    device_id: str,
    metric: Annotated[str, Query(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")],
    from_: Annotated[str, Query(alias="from", max_length=40)] = "-24h",
    to: Time = None,
    step: Annotated[float | None, Query(ge=0, le=30 * 86400)] = None,
) -> JSONResponse:
    """A metric over a range for plotly: `t` in Unix milliseconds; raw points for short
    ranges, else buckets (`v` the average, with `min` and `max`) of `step` seconds."""
    now = state.clock.now()
    start = telemetry.parse_time(from_, now, "from")
    end = telemetry.parse_time(to, now, "to") if to else now
    if end <= start:
        raise Invalid("`to` is not after `from`", field="to")
    width = telemetry.pick_step(start, end, step)
    async with state.db.read() as session:
        device = await devices.get_device(session, user.principal, device_id)
        rows = await telemetry.series(session, device.id, metric, start, end, width)
    points = [
        {"t": _ms(r["t"]), "v": r["v"], **({"min": r["min"], "max": r["max"]} if width else {})}
        for r in rows
    ]
    return JSONResponse(
        {"metric": metric, "from": _ms(start), "to": _ms(end), "step": width, "points": points}
    )


@router.get("/ui/data/devices/{device_id}/positions")
async def positions_data(
    state: StateDep,
    user: UserDep,
    device_id: str,
    from_: Annotated[str, Query(alias="from", max_length=40)] = "-30d",
    to: Time = None,
) -> JSONResponse:
    """The device's position history as GeoJSON points, oldest first (the map draws the
    track through them); the hand-set location when no history is kept."""
    now = state.clock.now()
    start = telemetry.parse_time(from_, now, "from")
    end = telemetry.parse_time(to, now, "to") if to else now
    async with state.db.read() as session:
        rows, truncated = await positions.history(
            session, user.principal, device_id, start, end, POSITIONS
        )
        device = await devices.get_device(session, user.principal, device_id)
    points: list[tuple[float, float, str | None, float | None]] = [
        (r.lon, r.lat, r.ts.isoformat(), r.accuracy) for r in rows
    ]
    location = device.location or {}
    if not points and isinstance(location.get("lat"), float | int):
        points = [(location["lon"], location["lat"], None, location.get("accuracy"))]
    features = [
        {
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [lon, lat]},
            "properties": {"id": device.id, "ts": ts, "accuracy": accuracy, "online": True},
        }
        for lon, lat, ts, accuracy in points
    ]
    return JSONResponse({"type": "FeatureCollection", "features": features, "truncated": truncated})
