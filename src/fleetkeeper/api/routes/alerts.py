"""Alerts as operators read and act on them: alerts (acknowledge, resolve), incidents, the
notification log with its dead letters (replay), and what automatic remediation did
(docs/alerting.md). Channels, rules, silences and inhibit rules are in `alerting.py`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from fleetkeeper.api.deps import (
    PrincipalDep,
    ReasonHeader,
    ScopeDep,
    StateDep,
    make_change,
)
from fleetkeeper.api.pagination import Limit
from fleetkeeper.api.routes.devices import Cursor, FleetQuery
from fleetkeeper.schemas.common import Input, Page, Reason
from fleetkeeper.services import telemetry
from fleetkeeper.services.alerting import operations
from fleetkeeper.store.models import (
    AlertIncident,
    AlertNotification,
    AlertRecord,
    RemediationAction,
)

router = APIRouter(tags=["alerting"])

Id = Annotated[str | None, Query(max_length=100)]
Since = Annotated[
    str | None, Query(max_length=40, description="ISO 8601, Unix seconds, or relative (-1h, -7d).")
]


# --- alerts --------------------------------------------------------------------------------------


class AlertOut(BaseModel):
    id: str
    fingerprint: str
    rule: str
    rule_id: str
    tenant: str
    state: str = Field(description="pending, firing or resolved")
    acknowledged: bool
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    acknowledged_note: str | None
    severity: str
    labels: dict[str, Any]
    annotations: dict[str, Any]
    device: str | None = Field(description="The device's id; null for a fleet-wide subject.")
    value: float | None = Field(description="The last value observed.")
    active_since: datetime
    fired_at: datetime | None
    resolved_at: datetime | None
    resolved_by: str | None = Field(description="The operator who resolved it; null: it cleared.")
    flapping: bool
    incident: str | None
    muted_by: dict[str, Any] = Field(description="`silences` and `inhibited_by`, as last seen.")
    operator_action: dict[str, Any] | None = Field(
        description="An acknowledgement or resolution the engine has not taken in yet."
    )
    updated_at: datetime


def _alert_out(a: AlertRecord) -> AlertOut:
    return AlertOut(
        id=a.id,
        fingerprint=a.fingerprint,
        rule=a.rule,
        rule_id=a.rule_id,
        tenant=a.tenant_id,
        state=a.state,
        acknowledged=a.acknowledged_at is not None,
        acknowledged_at=a.acknowledged_at,
        acknowledged_by=a.acknowledged_by,
        acknowledged_note=a.acknowledged_note,
        severity=a.severity,
        labels=a.labels,
        annotations=a.annotations,
        device=a.device_id,
        value=a.value,
        active_since=a.active_since,
        fired_at=a.fired_at,
        resolved_at=a.resolved_at,
        resolved_by=a.resolved_by,
        flapping=a.flapping,
        incident=a.incident_id,
        muted_by=a.muted_by,
        operator_action=a.operator_action,
        updated_at=a.updated_at,
    )


class NoteIn(Input):
    note: str | None = Field(default=None, max_length=2000)
    reason: Reason = None


@router.get("/api/v1/alerts", response_model=Page[AlertOut], summary="Alerts, newest first")
async def list_alerts(
    state: StateDep,
    scope: ScopeDep,
    alert_state: Annotated[
        str | None,
        Query(
            alias="state",
            max_length=20,
            description="pending, firing, resolved, or acknowledged (firing and acknowledged).",
        ),
    ] = None,
    rule: Annotated[str | None, Query(max_length=100, description="A rule's id or name.")] = None,
    severity: Annotated[str | None, Query(max_length=16)] = None,
    device: Annotated[str | None, Query(max_length=36, description="A device id.")] = None,
    incident: Annotated[str | None, Query(max_length=36, description="An incident id.")] = None,
    q: FleetQuery = None,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> Page[AlertOut]:
    flt = operations.AlertFilter(
        state=alert_state,
        rule=rule,
        device=device,
        severity=severity,
        incident=incident,
        query=q,
    )
    async with state.db.read() as session:
        rows, next_cursor = await operations.list_alerts(
            session, scope, flt, limit=limit, cursor=cursor
        )
    return Page(items=[_alert_out(a) for a in rows], next_cursor=next_cursor)


@router.get(
    "/api/v1/alerts/{alert_id}", response_model=AlertOut, summary="An alert, by id or fingerprint"
)
async def get_alert(state: StateDep, principal: PrincipalDep, alert_id: str) -> AlertOut:
    async with state.db.read() as session:
        return _alert_out(await operations.get_alert(session, principal, alert_id))


@router.post(
    "/api/v1/alerts/{alert_id}/ack",
    response_model=AlertOut,
    summary="Acknowledge a firing alert: it keeps firing but no longer repeats (409 otherwise)",
)
async def acknowledge(
    state: StateDep,
    principal: PrincipalDep,
    alert_id: str,
    body: NoteIn | None = None,
    x_change_reason: ReasonHeader = None,
) -> AlertOut:
    body = body or NoteIn()
    change = make_change(state, principal, body.reason, x_change_reason)
    async with state.db.write() as session:
        alert = await operations.get_alert(session, principal, alert_id, for_update=True)
        return _alert_out(await operations.acknowledge(session, change, alert, body.note))


@router.post(
    "/api/v1/alerts/{alert_id}/resolve",
    response_model=AlertOut,
    summary="Resolve a pending or firing alert by hand (409 otherwise)",
)
async def resolve(
    state: StateDep,
    principal: PrincipalDep,
    alert_id: str,
    body: NoteIn | None = None,
    x_change_reason: ReasonHeader = None,
) -> AlertOut:
    body = body or NoteIn()
    change = make_change(state, principal, body.reason, x_change_reason)
    async with state.db.write() as session:
        alert = await operations.get_alert(session, principal, alert_id, for_update=True)
        return _alert_out(await operations.resolve(session, change, alert, body.note))


# --- incidents -----------------------------------------------------------------------------------


class IncidentOut(BaseModel):
    id: str
    tenant: str
    rule: str
    group_key: str
    labels: dict[str, Any]
    state: str = Field(description="open or closed")
    opened_at: datetime
    closed_at: datetime | None
    firing: int = Field(description="Attached alerts firing now.")
    peak: int
    alerts: int = Field(description="Alerts ever attached.")
    scope: int | None = Field(description="Devices in the rule's scope.")
    updated_at: datetime


class IncidentDetailOut(IncidentOut):
    members: list[AlertOut] = Field(description="Its alerts, newest first (up to 500).")
    members_truncated: bool = Field(description="More alerts: page them with ?incident=.")


def _incident_fields(i: AlertIncident) -> dict[str, Any]:
    return {
        "id": i.id,
        "tenant": i.tenant_id,
        "rule": i.rule,
        "group_key": i.group_key,
        "labels": i.labels,
        "state": "open" if i.closed_at is None else "closed",
        "opened_at": i.opened_at,
        "closed_at": i.closed_at,
        "firing": i.firing,
        "peak": i.peak,
        "alerts": i.alerts,
        "scope": i.scope,
        "updated_at": i.updated_at,
    }


@router.get(
    "/api/v1/incidents", response_model=Page[IncidentOut], summary="Incidents, newest first"
)
async def list_incidents(
    state: StateDep,
    principal: PrincipalDep,
    incident_state: Annotated[
        str | None, Query(alias="state", max_length=10, description="open or closed")
    ] = None,
    rule: Annotated[str | None, Query(max_length=100, description="A rule's name.")] = None,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> Page[IncidentOut]:
    async with state.db.read() as session:
        rows, next_cursor = await operations.list_incidents(
            session, principal, state=incident_state, rule=rule, limit=limit, cursor=cursor
        )
    return Page(items=[IncidentOut(**_incident_fields(i)) for i in rows], next_cursor=next_cursor)


@router.get(
    "/api/v1/incidents/{incident_id}",
    response_model=IncidentDetailOut,
    summary="An incident with its alerts",
)
async def get_incident(
    state: StateDep, principal: PrincipalDep, incident_id: str
) -> IncidentDetailOut:
    async with state.db.read() as session:
        incident, members, more = await operations.get_incident(session, principal, incident_id)
    return IncidentDetailOut(
        **_incident_fields(incident),
        members=[_alert_out(a) for a in members],
        members_truncated=more,
    )


# --- notifications and remediation actions -------------------------------------------------------


class NotificationOut(BaseModel):
    id: str
    tenant: str
    channel: str | None = Field(description="The channel's id (null once it was deleted).")
    group_key: str
    kind: str = Field(description="group, incident, digest, test, escalation")
    title: str
    state: str = Field(description="pending, delivered, failed (retrying) or dead")
    attempts: int
    next_attempt_at: datetime | None
    last_error: str | None
    last_status: int | None
    incident: str | None
    notified: list[Any] = Field(description="The firing fingerprints it told of.")
    payload: dict[str, Any]
    created_at: datetime
    delivered_at: datetime | None


def _notification_out(n: AlertNotification) -> NotificationOut:
    return NotificationOut(
        id=n.id,
        tenant=n.tenant_id,
        channel=n.channel_id,
        group_key=n.group_key,
        kind=n.kind,
        title=n.title,
        state=n.state,
        attempts=n.attempts,
        next_attempt_at=n.next_attempt_at,
        last_error=n.last_error,
        last_status=n.last_status,
        incident=n.incident_id,
        notified=n.notified,
        payload=n.payload,
        created_at=n.created_at,
        delivered_at=n.delivered_at,
    )


@router.get(
    "/api/v1/notifications",
    response_model=Page[NotificationOut],
    summary="The notification log, newest first; `state=dead` lists the dead letters",
)
async def list_notifications(
    state: StateDep,
    principal: PrincipalDep,
    channel: Annotated[str | None, Query(max_length=36, description="A channel id.")] = None,
    notification_state: Annotated[
        str | None,
        Query(alias="state", max_length=16, description="pending, delivered, failed or dead"),
    ] = None,
    group: Annotated[str | None, Query(max_length=500, description="A group key.")] = None,
    kind: Annotated[str | None, Query(max_length=16)] = None,
    since: Since = None,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> Page[NotificationOut]:
    flt = operations.NotificationFilter(
        channel=channel,
        state=notification_state,
        group=group,
        kind=kind,
        since=telemetry.parse_time(since, state.clock.now(), "since") if since else None,
    )
    async with state.db.read() as session:
        rows, next_cursor = await operations.list_notifications(
            session, principal, flt, limit=limit, cursor=cursor
        )
    return Page(items=[_notification_out(n) for n in rows], next_cursor=next_cursor)


class ReplayIn(Input):
    ids: list[Annotated[str, Field(max_length=36)]] | None = Field(
        default=None, min_length=1, max_length=1000, description="Dead notifications to resend."
    )
    channel: str | None = Field(
        default=None, max_length=36, description="Or: every dead notification of this channel."
    )
    reason: Reason = None


class ReplayOut(BaseModel):
    replayed: int = Field(description="Notifications queued for delivery again.")


@router.post(
    "/api/v1/notifications/replay",
    response_model=ReplayOut,
    summary="Send dead notifications again (`ids`, or all of a `channel`); audited",
)
async def replay(
    state: StateDep, principal: PrincipalDep, body: ReplayIn, x_change_reason: ReasonHeader = None
) -> ReplayOut:
    change = make_change(state, principal, body.reason, x_change_reason)
    async with state.db.write() as session:
        count = await operations.replay_notifications(
            session, change, ids=body.ids, channel_id=body.channel
        )
    return ReplayOut(replayed=count)


class RemediationOut(BaseModel):
    id: str
    tenant: str
    rule_id: str
    alert_id: str
    device: str
    step: int = Field(description="The rung of the escalation ladder, from 0.")
    action: str
    args: dict[str, Any]
    command_id: str | None
    state: str = Field(description="sent, succeeded, failed or skipped")
    detail: dict[str, Any]
    at: datetime
    finished_at: datetime | None


def _remediation_out(r: RemediationAction) -> RemediationOut:
    return RemediationOut(
        id=r.id,
        tenant=r.tenant_id,
        rule_id=r.rule_id,
        alert_id=r.alert_id,
        device=r.device_id,
        step=r.step,
        action=r.action,
        args=r.args,
        command_id=r.command_id,
        state=r.state,
        detail=r.detail,
        at=r.at,
        finished_at=r.finished_at,
    )


@router.get(
    "/api/v1/remediations",
    response_model=Page[RemediationOut],
    summary="What automatic remediation did (and skipped), newest first",
)
async def list_remediations(
    state: StateDep,
    principal: PrincipalDep,
    rule: Id = None,
    device: Id = None,
    alert: Id = None,
    remediation_state: Annotated[str | None, Query(alias="state", max_length=16)] = None,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> Page[RemediationOut]:
    async with state.db.read() as session:
        rows, next_cursor = await operations.list_remediations(
            session,
            principal,
            rule=rule,
            device=device,
            alert=alert,
            state=remediation_state,
            limit=limit,
            cursor=cursor,
        )
    return Page(items=[_remediation_out(r) for r in rows], next_cursor=next_cursor)
