"""Alerting as operators read and act on it: the alerts (to acknowledge and resolve), and the
incidents, notifications and remediation actions the engine writes (dead letters to replay).

As in `config.py`, whose paging and tenant helpers this uses, every read filters by the
caller's tenants and every change is audited in the same transaction. Reading needs
`alerts:read`; acknowledging, resolving and replaying `alerts:write`.

Operator actions meet a running engine. The engine (`engine.py`) evaluates in a background
loop, perhaps on another replica, and keeps the open alerts in memory, so an acknowledgement or
a resolution is written to the alert's row *and* left in `operator_action`; the engine takes it
in on its next round and clears the column. `OPERATOR_ACTIONS` says which states allow which.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from fleetkeeper.errors import Conflict, Invalid, NotFound
from fleetkeeper.services import audit
from fleetkeeper.services.alerting import delivery
from fleetkeeper.services.alerting.config import (
    READ,
    WRITE,
    fetch_one,
    fetch_page,
    get_channel,
    iso,
)
from fleetkeeper.services.context import Change, Principal
from fleetkeeper.services.selection import QueryScope, compile_for
from fleetkeeper.store.models import (
    AlertIncident,
    AlertNotification,
    AlertRecord,
    Device,
    RemediationAction,
)

# What an operator may do to an alert in each state (the engine makes every other change).
OPERATOR_ACTIONS: Mapping[str, frozenset[str]] = {
    "ack": frozenset({"firing"}),
    "resolve": frozenset({"pending", "firing"}),
}
ALERT_STATES = ("pending", "firing", "resolved", "acknowledged")
NOTIFICATION_STATES = ("pending", "delivered", "failed", "dead")
MEMBERS_SHOWN = 500  # alerts an incident's detail lists inline; `?incident=` pages the rest


# --- alerts --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AlertFilter:
    state: str | None = None  # pending, firing, resolved, acknowledged (firing and acknowledged)
    rule: str | None = None  # a rule's id or name
    device: str | None = None
    severity: str | None = None
    incident: str | None = None
    query: str | None = None  # a fleet query over the alert's device


async def _alert_conditions(
    session: AsyncSession, scope: QueryScope, flt: AlertFilter
) -> list[ColumnElement[bool]]:
    conds = [scope.principal.tenant_filter(AlertRecord.tenant_id)]
    if flt.state == "acknowledged":
        conds += [AlertRecord.state == "firing", AlertRecord.acknowledged_at.is_not(None)]
    elif flt.state is not None:
        if flt.state not in ALERT_STATES:
            raise Invalid(f"state: one of {', '.join(ALERT_STATES)}", field="state")
        conds.append(AlertRecord.state == flt.state)
    if flt.rule is not None:
        conds.append(or_(AlertRecord.rule_id == flt.rule, AlertRecord.rule == flt.rule))
    if flt.device is not None:
        conds.append(AlertRecord.device_id == flt.device)
    if flt.severity is not None:
        conds.append(AlertRecord.severity == flt.severity)
    if flt.incident is not None:
        conds.append(AlertRecord.incident_id == flt.incident)
    if flt.query is not None and flt.query.strip():
        devices = select(Device.id).where(await compile_for(session, scope, flt.query))
        conds.append(AlertRecord.device_id.in_(devices))
    return conds


async def list_alerts(
    session: AsyncSession,
    scope: QueryScope,
    flt: AlertFilter,
    *,
    limit: int,
    cursor: str | None,
) -> tuple[list[AlertRecord], str | None]:
    """Alerts the scope's principal may see, newest first."""
    scope.principal.require(READ)
    stmt = select(AlertRecord).where(*await _alert_conditions(session, scope, flt))
    return await fetch_page(
        session, stmt, AlertRecord.id, limit=limit, cursor=cursor, newest_first=True
    )


async def get_alert(
    session: AsyncSession, principal: Principal, key: str, *, for_update: bool = False
) -> AlertRecord:
    """An alert by id, or the open alert of a fingerprint (`for_update`: locked, on PostgreSQL,
    so two operators acting at once take turns)."""
    principal.require(READ)
    stmt = select(AlertRecord).where(
        or_(AlertRecord.id == key, AlertRecord.open_fingerprint == key),
        principal.tenant_filter(AlertRecord.tenant_id),
    )
    found = await session.scalar(stmt.with_for_update() if for_update else stmt)
    if found is None:
        raise NotFound(f"no alert {key!r}")
    return found


def _allow(alert: AlertRecord, action: str) -> None:
    if alert.state not in OPERATOR_ACTIONS[action]:
        allowed = " or ".join(sorted(OPERATOR_ACTIONS[action]))
        raise Conflict(
            f"alert {alert.id} is {alert.state}: only a {allowed} alert can be "
            f"{'acknowledged' if action == 'ack' else 'resolved'}",
            code="alert_state",
            state=alert.state,
        )


async def acknowledge(
    session: AsyncSession, change: Change, alert: AlertRecord, note: str | None = None
) -> AlertRecord:
    """An operator has seen a firing alert: it keeps firing, but no longer repeats."""
    change.principal.require(WRITE)
    _allow(alert, "ack")
    if alert.acknowledged_at is not None:
        raise Conflict(
            f"alert {alert.id} was acknowledged already by {alert.acknowledged_by}",
            code="acknowledged",
        )
    now, actor = change.now(), change.principal.actor
    alert.acknowledged_at, alert.acknowledged_by, alert.acknowledged_note = now, actor, note
    alert.operator_action = {"action": "ack", "by": actor, "at": iso(now), "note": note}
    alert.updated_at = now
    await session.flush()
    await audit.append(
        session,
        change,
        action="alert.acknowledge",
        target=f"alert:{alert.id}",
        tenant_id=alert.tenant_id,
        after={"rule": alert.rule, "fingerprint": alert.fingerprint, "note": note},
    )
    return alert


async def resolve(
    session: AsyncSession, change: Change, alert: AlertRecord, note: str | None = None
) -> AlertRecord:
    """An operator resolves an open alert by hand; the same condition may open a new one."""
    change.principal.require(WRITE)
    _allow(alert, "resolve")
    now, actor = change.now(), change.principal.actor
    before = {"state": alert.state}
    alert.state = "resolved"
    alert.resolved_at, alert.resolved_by = now, actor
    if note is not None:
        alert.annotations = {**alert.annotations, "resolution": note}
    alert.open_fingerprint = None
    alert.operator_action = {"action": "resolve", "by": actor, "at": iso(now), "note": note}
    alert.updated_at = now
    await session.flush()
    await audit.append(
        session,
        change,
        action="alert.resolve",
        target=f"alert:{alert.id}",
        tenant_id=alert.tenant_id,
        before=before,
        after={"state": "resolved", "rule": alert.rule, "note": note},
    )
    return alert


# --- what the engine wrote: incidents, notifications, remediation actions ----------------------


async def list_incidents(
    session: AsyncSession,
    principal: Principal,
    *,
    state: str | None = None,
    rule: str | None = None,
    limit: int,
    cursor: str | None,
) -> tuple[list[AlertIncident], str | None]:
    """Incidents, newest first; `state` open or closed."""
    principal.require(READ)
    stmt = select(AlertIncident).where(principal.tenant_filter(AlertIncident.tenant_id))
    if state == "open":
        stmt = stmt.where(AlertIncident.closed_at.is_(None))
    elif state == "closed":
        stmt = stmt.where(AlertIncident.closed_at.is_not(None))
    elif state is not None:
        raise Invalid("state: open or closed", field="state")
    if rule is not None:
        stmt = stmt.where(AlertIncident.rule == rule)
    return await fetch_page(
        session, stmt, AlertIncident.id, limit=limit, cursor=cursor, newest_first=True
    )


async def get_incident(
    session: AsyncSession, principal: Principal, incident_id: str
) -> tuple[AlertIncident, list[AlertRecord], bool]:
    """An incident with its alerts (newest first, up to `MEMBERS_SHOWN`; True when more)."""
    incident: AlertIncident = await fetch_one(
        session, principal, AlertIncident, incident_id, "incident"
    )
    rows = (
        await session.scalars(
            select(AlertRecord)
            .where(
                AlertRecord.incident_id == incident.id,
                AlertRecord.tenant_id == incident.tenant_id,
            )
            .order_by(AlertRecord.id.desc())
            .limit(MEMBERS_SHOWN + 1)
        )
    ).all()
    return incident, list(rows[:MEMBERS_SHOWN]), len(rows) > MEMBERS_SHOWN


@dataclass(frozen=True)
class NotificationFilter:
    channel: str | None = None
    state: str | None = None  # pending, delivered, failed (retrying), dead
    group: str | None = None
    kind: str | None = None
    since: datetime | None = None


async def list_notifications(
    session: AsyncSession,
    principal: Principal,
    flt: NotificationFilter,
    *,
    limit: int,
    cursor: str | None,
) -> tuple[list[AlertNotification], str | None]:
    """The notification log, newest first; `state=dead` is the dead-letter list."""
    principal.require(READ)
    stmt = select(AlertNotification).where(principal.tenant_filter(AlertNotification.tenant_id))
    if flt.state is not None:
        if flt.state not in NOTIFICATION_STATES:
            raise Invalid(f"state: one of {', '.join(NOTIFICATION_STATES)}", field="state")
        stmt = stmt.where(AlertNotification.state == flt.state)
    if flt.channel is not None:
        stmt = stmt.where(AlertNotification.channel_id == flt.channel)
    if flt.group is not None:
        stmt = stmt.where(AlertNotification.group_key == flt.group)
    if flt.kind is not None:
        stmt = stmt.where(AlertNotification.kind == flt.kind)
    if flt.since is not None:
        stmt = stmt.where(AlertNotification.created_at >= flt.since)
    return await fetch_page(
        session, stmt, AlertNotification.id, limit=limit, cursor=cursor, newest_first=True
    )


async def replay_notifications(
    session: AsyncSession,
    change: Change,
    *,
    ids: Sequence[str] | None = None,
    channel_id: str | None = None,
) -> int:
    """Queue dead notifications again: those of `ids`, or every one of a channel (both: those
    of the ids sent to the channel). Unknown ids and channels are 404; `delivery.replay` does
    the rest and audits it. How many were queued again."""
    principal = change.principal
    principal.require(WRITE)
    if ids is None and channel_id is None:
        raise Invalid("give ids or channel", field="ids")
    if channel_id is not None:
        await get_channel(session, principal, channel_id)
    if ids is not None:
        found = set(
            (
                await session.scalars(
                    select(AlertNotification.id).where(
                        AlertNotification.id.in_(list(ids)),
                        principal.tenant_filter(AlertNotification.tenant_id),
                    )
                )
            ).all()
        )
        missing = [i for i in ids if i not in found]
        if missing:
            raise NotFound(f"no notification {', '.join(map(repr, missing))}", field="ids")
    return await delivery.replay(
        session, change, ids=list(ids) if ids is not None else None, channel_id=channel_id
    )


async def list_remediations(
    session: AsyncSession,
    principal: Principal,
    *,
    rule: str | None = None,
    device: str | None = None,
    alert: str | None = None,
    state: str | None = None,
    limit: int,
    cursor: str | None,
) -> tuple[list[RemediationAction], str | None]:
    """What remediation did (and skipped), newest first."""
    principal.require(READ)
    stmt = select(RemediationAction).where(principal.tenant_filter(RemediationAction.tenant_id))
    if rule is not None:
        stmt = stmt.where(RemediationAction.rule_id == rule)
    if device is not None:
        stmt = stmt.where(RemediationAction.device_id == device)
    if alert is not None:
        stmt = stmt.where(RemediationAction.alert_id == alert)
    if state is not None:
        stmt = stmt.where(RemediationAction.state == state)
    return await fetch_page(
        session, stmt, RemediationAction.id, limit=limit, cursor=cursor, newest_first=True
    )
