"""Alerts, incidents and silences: what fires, who handles it and what is muted, and the live
feed (server-sent events) that keeps the alert pages and the overview's counter current.

Everything goes through `services.alerting.config` and `.operations` as the logged-in user,
so an acknowledgement made here is the API's: audited, and left in `operator_action` for the
engine to take in. The
lists are keyset-paginated and the counters are one GROUP BY over the open alerts, so the pages
stay fast with a hundred thousand of them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.datastructures import FormData

from fleetkeeper.api.deps import StateDep
from fleetkeeper.errors import Conflict, FleetkeeperError, Invalid, NotFound
from fleetkeeper.services.alerting import config, operations
from fleetkeeper.services.alerting.engine import route_of
from fleetkeeper.services.alerting.notification import GroupKey
from fleetkeeper.services.audit import AuditFilter, list_records
from fleetkeeper.services.context import Principal
from fleetkeeper.services.rollout.policy import parse_duration
from fleetkeeper.services.selection import QueryScope
from fleetkeeper.store.models import AlertIncident, AlertRecord, AlertRuleRecord, AlertSilence
from fleetkeeper.web.common import ActionDep, UserDep, back, change, render, safe_next, text_field
from fleetkeeper.web.pages.overview import scope_of
from fleetkeeper.web.sessions import WebUser

router = APIRouter(include_in_schema=False)

PAGE = 50
BULK_MAX = 200  # alerts one bulk action may name (a page is 50)
NEWEST = 10  # firing alerts the live feed names
NOTE_MAX = 2000
TABS = ("firing", "pending", "acknowledged", "resolved")
SEVERITIES = ("critical", "warning", "info")
SILENCE_TABS = ("active", "pending", "expired")
INCIDENT_TABS = ("open", "closed")
DURATIONS = ("30m", "1h", "2h", "4h", "8h", "1d", "3d", "7d")
# Shown in their own columns, so not again among an alert's labels.
OWN_COLUMNS = frozenset({"rule", "severity", "device", "serial"})
Text = Annotated[str | None, Query(max_length=200)]
Fleet = Annotated[str | None, Query(max_length=4000)]


# --- reading -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Counts:
    """The open alerts at a glance: one GROUP BY over the (tenant, state) index."""

    pending: int
    firing: int
    acknowledged: int
    severity: dict[str, int]  # firing alerts by severity
    incidents: int

    def as_json(self) -> dict[str, Any]:
        return {
            "pending": self.pending,
            "firing": self.firing,
            "acknowledged": self.acknowledged,
            "incidents": self.incidents,
            "severity": self.severity,
        }


async def alert_counts(session: AsyncSession, principal: Principal) -> Counts:
    principal.require(config.READ)
    rows = await session.execute(
        select(
            AlertRecord.state,
            AlertRecord.severity,
            func.count(),
            func.count(AlertRecord.acknowledged_at),
        )
        .where(
            AlertRecord.state.in_(("pending", "firing")),
            principal.tenant_filter(AlertRecord.tenant_id),
        )
        .group_by(AlertRecord.state, AlertRecord.severity)
    )
    by_state = {"pending": 0, "firing": 0}
    severity = dict.fromkeys(SEVERITIES, 0)
    acknowledged = 0
    for state, sev, count, acked in rows:
        by_state[state] += count
        if state == "firing":
            severity[sev] = severity.get(sev, 0) + count
            acknowledged += acked
    incidents = await session.scalar(
        select(func.count())
        .select_from(AlertIncident)
        .where(AlertIncident.closed_at.is_(None), principal.tenant_filter(AlertIncident.tenant_id))
    )
    return Counts(by_state["pending"], by_state["firing"], acknowledged, severity, incidents or 0)


async def snapshot(session: AsyncSession, scope: QueryScope) -> tuple[Counts, dict[str, Any]]:
    """What the live feed tells: the counters and the newest firing alerts, with a version
    that changes when any of it does."""
    counts = await alert_counts(session, scope.principal)
    newest, _ = await operations.list_alerts(
        session, scope, operations.AlertFilter(state="firing"), limit=NEWEST, cursor=None
    )
    data: dict[str, Any] = {
        "counts": counts.as_json(),
        "newest": [
            {
                "id": a.id,
                "rule": a.rule,
                "severity": a.severity,
                "device": a.device_id,
                "serial": a.labels.get("serial"),
                "fired_at": a.fired_at.isoformat() if a.fired_at else None,
                "acknowledged": a.acknowledged_at is not None,
            }
            for a in newest
        ],
    }
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    data["version"] = hashlib.sha256(canonical.encode()).hexdigest()[:16]
    return counts, data


def _here(request: Request, drop: Sequence[str] = ("ok", "error", "fragment")) -> str:
    """This page's address without its flash message: where an action sends the browser back."""
    params = [(k, v) for k, v in request.query_params.multi_items() if k not in drop and v]
    query = "&".join(f"{k}={_quote(v)}" for k, v in params)
    return request.url.path + (f"?{query}" if query else "")


def _quote(value: str) -> str:
    return quote(value, safe="")


def _next_url(request: Request, cursor: str | None) -> str | None:
    if cursor is None:
        return None
    params = [(k, v) for k, v in request.query_params.multi_items() if k not in ("ok", "error")]
    params = [(k, v) for k, v in params if k != "cursor" and v] + [("cursor", cursor)]
    return request.url.path + "?" + "&".join(f"{k}={_quote(v)}" for k, v in params)


# --- the alert list ------------------------------------------------------------------------------


@router.get("/alerts", response_class=HTMLResponse)
async def alerts_page(
    request: Request,
    state: StateDep,
    user: UserDep,
    tab: Annotated[str, Query(alias="state", max_length=20)] = "firing",
    severity: Annotated[str | None, Query(max_length=16)] = None,
    rule: Text = None,
    q: Fleet = None,
    cursor: Annotated[str | None, Query(max_length=300)] = None,
    fragment: Annotated[str | None, Query(max_length=10)] = None,
) -> HTMLResponse:
    """Alerts in one state (firing by default), newest first; `fragment=list` answers only the
    list, for the live refresh."""
    user.principal.require(config.READ)
    tab = tab if tab in TABS else "firing"
    severity = severity if severity in SEVERITIES else None
    flt = operations.AlertFilter(state=tab, severity=severity, rule=rule or None, query=q or None)
    query_error = None
    rows: list[AlertRecord] = []
    next_cursor = None
    scope = scope_of(request, user)
    async with state.db.read() as session:
        try:
            rows, next_cursor = await operations.list_alerts(
                session, scope, flt, limit=PAGE, cursor=cursor
            )
        except FleetkeeperError as exc:
            if exc.status not in (400, 422):
                raise
            query_error = exc.detail
        counts, live = (None, {}) if fragment == "list" else await snapshot(session, scope)
    context: dict[str, Any] = {
        "alerts": rows,
        "next_url": _next_url(request, next_cursor),
        "here": _here(request),
        "can_write": user.can(config.WRITE),
        "hidden_labels": OWN_COLUMNS,
    }
    if fragment == "list":
        return render(request, "_alert_table.html", user, **context)
    return render(
        request,
        "alerts.html",
        user,
        tab=tab,
        tabs=TABS,
        severity=severity,
        severities=SEVERITIES,
        rule=rule or "",
        q=q or "",
        counts=counts,
        query_error=query_error,
        first_page=cursor is None,
        version=live["version"],
        fragment_url=_here(request, drop=("ok", "error", "fragment", "cursor")),
        **context,
    )


def _checked_note(form: FormData) -> str | None:
    note = text_field(form, "note")
    if len(note) > NOTE_MAX:
        raise Invalid(f"a note has at most {NOTE_MAX} characters", field="note")
    return note or None


def _return_to(form: FormData, default: str) -> str:
    given = text_field(form, "next")
    return safe_next(given) if given else default


@router.post("/alerts/bulk")
async def bulk_action(request: Request, state: StateDep, user: ActionDep) -> Response:
    """Acknowledge or resolve the selected alerts, each audited; those whose state forbids it
    are skipped and named."""
    form = await request.form()
    user.principal.require(config.WRITE)
    to = _return_to(form, "/alerts")
    action = text_field(form, "action")
    ids = list(dict.fromkeys(v for v in form.getlist("ids") if isinstance(v, str) and v))
    if action not in ("ack", "resolve"):
        return back(to, error="choose acknowledge or resolve")
    if not ids:
        return back(to, error="select the alerts first")
    if len(ids) > BULK_MAX:
        return back(to, error=f"at most {BULK_MAX} alerts at once")
    try:
        note = _checked_note(form)
    except Invalid as exc:
        return back(to, error=exc.detail)
    done, skipped = 0, []
    async with state.db.write() as session:
        found = {
            a.id: a
            for a in (
                await session.scalars(
                    select(AlertRecord)
                    .where(
                        AlertRecord.id.in_(ids),
                        user.principal.tenant_filter(AlertRecord.tenant_id),
                    )
                    .with_for_update()
                )
            ).all()
        }
        chg = change(request, user)
        for alert_id in ids:
            alert = found.get(alert_id)
            try:
                if alert is None:
                    raise NotFound(f"no alert {alert_id!r}")
                if action == "ack":
                    await operations.acknowledge(session, chg, alert, note)
                else:
                    await operations.resolve(session, chg, alert, note)
                done += 1
            except (Conflict, NotFound) as exc:
                skipped.append(exc.detail)
    verb = "Acknowledged" if action == "ack" else "Resolved"
    message = f"{verb} {done} alert{'s' if done != 1 else ''}"
    if skipped:
        message += f"; skipped {len(skipped)}: {skipped[0]}" + (" …" if len(skipped) > 1 else "")
    return back(to, ok=message) if done else back(to, error=message)


# --- one alert -----------------------------------------------------------------------------------


def group_key(alert: AlertRecord, rule: AlertRuleRecord) -> str:
    """The notification group the engine puts the alert in (`dispatch.Dispatcher._upsert`)."""
    group_by = route_of(config.parse_rule(rule.definition)).group_by
    labels = {"rule": alert.rule, "severity": alert.severity, **alert.labels}
    return str(GroupKey(alert.rule, tuple((n, str(labels.get(n, ""))) for n in group_by)))


def history(alert: AlertRecord, remediations: Sequence[Any]) -> list[dict[str, Any]]:
    """What happened to the alert, oldest first."""
    events: list[dict[str, Any]] = [
        {"at": alert.active_since, "what": "Condition began to hold", "who": None, "note": None}
    ]
    if alert.fired_at:
        events.append({"at": alert.fired_at, "what": "Fired", "who": None, "note": None})
    for r in remediations:
        events.append(
            {
                "at": r.at,
                "what": f"Remediation step {r.step + 1}: {r.action} ({r.state})",
                "who": "remediation",
                "note": r.detail.get("reason") if isinstance(r.detail, dict) else None,
            }
        )
    if alert.acknowledged_at:
        events.append(
            {
                "at": alert.acknowledged_at,
                "what": "Acknowledged",
                "who": alert.acknowledged_by,
                "note": alert.acknowledged_note,
            }
        )
    if alert.resolved_at:
        events.append(
            {
                "at": alert.resolved_at,
                "what": "Resolved by hand" if alert.resolved_by else "Resolved: its clear held",
                "who": alert.resolved_by,
                "note": alert.annotations.get("resolution"),
            }
        )
    return sorted(events, key=lambda e: e["at"])


@router.get("/alerts/{alert_id}", response_class=HTMLResponse)
async def alert_page(request: Request, state: StateDep, user: UserDep, alert_id: str) -> Response:
    principal = user.principal
    async with state.db.read() as session:
        alert = await operations.get_alert(session, principal, alert_id)
        if alert.id != alert_id:  # a fingerprint: show the alert under its own address
            return RedirectResponse(f"/alerts/{alert.id}", status_code=303)
        rule = await config.get_rule(session, principal, alert.rule_id)
        remediations, _ = await operations.list_remediations(
            session, principal, alert=alert.id, limit=PAGE, cursor=None
        )
        notifications, _ = await operations.list_notifications(
            session,
            principal,
            operations.NotificationFilter(group=group_key(alert, rule)),
            limit=20,
            cursor=None,
        )
        silence_ids = [s for s in (alert.muted_by or {}).get("silences", []) if ":" not in s]
        silences = (
            (
                await session.scalars(
                    select(AlertSilence).where(
                        AlertSilence.id.in_(silence_ids),
                        principal.tenant_filter(AlertSilence.tenant_id),
                    )
                )
            ).all()
            if silence_ids
            else []
        )
        audit = (
            await list_records(
                session, principal, AuditFilter(target=f"alert:{alert.id}"), limit=20
            )
            if user.can("audit:read")
            else []
        )
    labels = {"rule": alert.rule, "severity": alert.severity, **alert.labels}
    return render(
        request,
        "alert.html",
        user,
        alert=alert,
        rule=rule,
        labels=labels,
        serial=alert.labels.get("serial") or (alert.device_id or "")[:8],
        history=history(alert, list(reversed(remediations))),
        remediations=remediations,
        notifications=notifications,
        silences=silences,
        audit=audit,
        can_write=user.can(config.WRITE),
        here=f"/alerts/{alert.id}",
        durations=DURATIONS,
        suggested={"rule", "site"},
    )


async def _act(request: Request, user: WebUser, alert_id: str, action: str) -> Response:
    form = await request.form()
    to = _return_to(form, f"/alerts/{alert_id}")
    try:
        note = _checked_note(form)
    except Invalid as exc:
        return back(to, error=exc.detail)
    state = request.app.state.fleetkeeper
    async with state.db.write() as session:
        alert = await operations.get_alert(session, user.principal, alert_id, for_update=True)
        try:
            if action == "ack":
                await operations.acknowledge(session, change(request, user), alert, note)
            else:
                await operations.resolve(session, change(request, user), alert, note)
        except Conflict as exc:
            return back(to, error=exc.detail)
    done = "acknowledged" if action == "ack" else "resolved"
    return back(to, ok=f"Alert {alert.rule} on {alert.labels.get('serial', alert.id)} {done}")


@router.post("/alerts/{alert_id}/ack")
async def acknowledge(request: Request, user: ActionDep, alert_id: str) -> Response:
    return await _act(request, user, alert_id, "ack")


@router.post("/alerts/{alert_id}/resolve")
async def resolve(request: Request, user: ActionDep, alert_id: str) -> Response:
    return await _act(request, user, alert_id, "resolve")


def _seconds(text: str) -> float:
    try:
        seconds = parse_duration(text or "")
    except ValueError as exc:
        raise Invalid(str(exc), field="duration") from None
    if not isinstance(seconds, float) or seconds <= 0:
        raise Invalid("give a duration such as 2h", field="duration")
    return seconds


@router.post("/alerts/{alert_id}/silence")
async def silence_like(
    request: Request, state: StateDep, user: ActionDep, alert_id: str
) -> Response:
    """A silence matching the chosen labels of this alert (its rule and site, typically)."""
    form = await request.form()
    to = _return_to(form, f"/alerts/{alert_id}")
    async with state.db.write() as session:
        alert = await operations.get_alert(session, user.principal, alert_id)
        labels = {"rule": alert.rule, "severity": alert.severity, **alert.labels}
        names = [n for n in form.getlist("match") if isinstance(n, str) and n in labels]
        # Quoted: a value starting with ~ or ! would read as another operator.
        matchers = [f'{n}="{labels[n]}"' for n in names]
        try:
            silence = await config.create_silence(
                session,
                change(request, user),
                matchers=matchers,
                comment=text_field(form, "comment"),
                duration=_seconds(text_field(form, "duration")),
                tenant=alert.tenant_id,
            )
        except Invalid as exc:
            return back(to, error=exc.detail)
    return back(to, ok=f"Silenced {', '.join(silence.matchers)} until {silence.ends_at:%H:%M}")


# --- incidents -----------------------------------------------------------------------------------


@router.get("/incidents", response_class=HTMLResponse)
async def incidents_page(
    request: Request,
    state: StateDep,
    user: UserDep,
    tab: Annotated[str, Query(alias="state", max_length=10)] = "open",
    cursor: Annotated[str | None, Query(max_length=300)] = None,
) -> HTMLResponse:
    chosen = tab if tab in INCIDENT_TABS else None
    async with state.db.read() as session:
        rows, next_cursor = await operations.list_incidents(
            session, user.principal, state=chosen, limit=PAGE, cursor=cursor
        )
    return render(
        request,
        "incidents.html",
        user,
        incidents=rows,
        tab=chosen or "all",
        tabs=(*INCIDENT_TABS, "all"),
        next_url=_next_url(request, next_cursor),
    )


@router.get("/incidents/{incident_id}", response_class=HTMLResponse)
async def incident_page(
    request: Request,
    state: StateDep,
    user: UserDep,
    incident_id: str,
    cursor: Annotated[str | None, Query(max_length=300)] = None,
) -> HTMLResponse:
    principal = user.principal
    principal.require(config.READ)
    async with state.db.read() as session:
        incident = await session.scalar(
            select(AlertIncident).where(
                AlertIncident.id == incident_id, principal.tenant_filter(AlertIncident.tenant_id)
            )
        )
        if incident is None:
            raise NotFound(f"no incident {incident_id!r}")
        rows, next_cursor = await operations.list_alerts(
            session,
            scope_of(request, user),
            operations.AlertFilter(incident=incident.id),
            limit=PAGE,
            cursor=cursor,
        )
    return render(
        request,
        "incident.html",
        user,
        incident=incident,
        alerts=rows,
        next_url=_next_url(request, next_cursor),
        here=_here(request),
        can_write=user.can(config.WRITE),
        hidden_labels=OWN_COLUMNS,
    )


# --- silences ------------------------------------------------------------------------------------


@router.get("/silences", response_class=HTMLResponse)
async def silences_page(
    request: Request,
    state: StateDep,
    user: UserDep,
    tab: Annotated[str, Query(alias="state", max_length=10)] = "active",
    silence_id: Annotated[str | None, Query(alias="id", max_length=100)] = None,
    alert: Annotated[str | None, Query(max_length=100)] = None,
    cursor: Annotated[str | None, Query(max_length=300)] = None,
) -> HTMLResponse:
    """Silences newest first (`id=` shows one); `alert=` fills the form in from an alert."""
    principal, now = user.principal, state.clock.now()
    chosen = tab if tab in SILENCE_TABS else None
    suggested: list[str] = []
    next_cursor = None
    async with state.db.read() as session:
        if silence_id:
            rows = [await config.get_silence(session, principal, silence_id)]
        else:
            rows, next_cursor = await config.list_silences(
                session, principal, state=chosen, now=now, limit=PAGE, cursor=cursor
            )
        if alert:
            found = await operations.get_alert(session, principal, alert)
            labels = {"rule": found.rule, **found.labels}
            suggested = [f'{n}="{labels[n]}"' for n in ("rule", "site") if labels.get(n)]
    return render(
        request,
        "silences.html",
        user,
        silences=[(s, config.silence_state(s, now)) for s in rows],
        tab="one" if silence_id else (chosen or "all"),
        tabs=(*SILENCE_TABS, "all"),
        next_url=_next_url(request, next_cursor),
        can_write=user.can(config.WRITE),
        suggested="\n".join(suggested),
        durations=DURATIONS,
        here=_here(request),
    )


@router.post("/silences")
async def create_silence(request: Request, state: StateDep, user: ActionDep) -> Response:
    form = await request.form()
    to = _return_to(form, "/silences")
    matchers = [line.strip() for line in text_field(form, "matchers").splitlines() if line.strip()]
    try:
        async with state.db.write() as session:
            silence = await config.create_silence(
                session,
                change(request, user),
                matchers=matchers,
                comment=text_field(form, "comment"),
                duration=_seconds(text_field(form, "duration")),
            )
    except Invalid as exc:
        return back(to, error=exc.detail)
    return back("/silences", ok=f"Silence {silence.id[-8:]} created: {', '.join(silence.matchers)}")


@router.post("/silences/{silence_id}/expire")
async def expire_silence(
    request: Request, state: StateDep, user: ActionDep, silence_id: str
) -> Response:
    form = await request.form()
    to = _return_to(form, "/silences")
    async with state.db.write() as session:
        silence = await config.get_silence(session, user.principal, silence_id)
        try:
            await config.expire_silence(session, change(request, user), silence)
        except Conflict as exc:
            return back(to, error=exc.detail)
    return back(to, ok=f"Silence {', '.join(silence.matchers)} expired")


# --- live updates --------------------------------------------------------------------------------


@dataclass
class Live:
    """How the feed paces itself (tests shorten it; nothing here reads a clock)."""

    interval: float = 3.0  # seconds between looks at the database
    heartbeat: int = 5  # quiet looks before a heartbeat comment keeps proxies from closing
    looks: int = 100  # then the stream ends and the browser reconnects, its session checked anew


LIVE = Live()


def sse(data: dict[str, Any]) -> str:
    return f"retry: 5000\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


async def alert_stream(
    look: Callable[[], Awaitable[dict[str, Any]]],
    *,
    disconnected: Callable[[], Awaitable[bool]],
    once: bool = False,
    live: Live = LIVE,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
) -> AsyncIterator[str]:
    """An event whenever `look()` sees something new (the first look always), a heartbeat
    comment after `live.heartbeat` quiet looks; ends when the browser goes away."""
    last: dict[str, Any] | None = None
    quiet = 0
    for _ in range(max(1, live.looks)):
        if await disconnected():
            return
        data = await look()
        if data != last:
            yield sse(data)
            last, quiet = data, 0
            if once:
                return
        else:
            quiet += 1
            if quiet >= live.heartbeat:
                yield ": heartbeat\n\n"
                quiet = 0
        await sleep(live.interval)


@router.get("/ui/events/alerts")
async def alert_events(
    request: Request, user: UserDep, once: Annotated[bool, Query()] = False
) -> StreamingResponse:
    """Server-sent events: the alert counters and the newest firing alerts when they change."""
    user.principal.require(config.READ)

    state = request.app.state.fleetkeeper
    scope = scope_of(request, user)

    async def look() -> dict[str, Any]:
        async with state.db.read() as session:
            _, data = await snapshot(session, scope)
        return data

    return StreamingResponse(
        alert_stream(look, disconnected=request.is_disconnected, once=once),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
