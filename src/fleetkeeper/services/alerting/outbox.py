"""What the engine writes after dispatching: notifications queued for delivery, incidents,
and each alert's incident and mutes, all in one transaction per tick.

`Outbox` remembers what it wrote (each incident's row and last state, each alert's mutes), so
a tick writes only what changed: a thousand alerts inhibited by the same gateway are one
UPDATE when their mutes change and none while they stay. Incidents get their row id when
first seen (a notification may name one before it is stored) and are forgotten once they
are closed and no group refers to them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import insert, update

from fleetkeeper.ids import uuid7
from fleetkeeper.services.alerting import payload
from fleetkeeper.services.alerting.dispatch import Dispatcher
from fleetkeeper.services.alerting.incidents import Incident
from fleetkeeper.services.alerting.notification import GroupKey, Notification
from fleetkeeper.store.db import Database
from fleetkeeper.store.models import AlertIncident, AlertNotification, AlertRecord

__all__ = ["Outbox", "TenantLike"]

_CHUNK = 500
Muted = dict[str, list[str]]  # {"silences": [...], "inhibited_by": [...]}


class TenantLike(Protocol):
    id: str
    name: str
    dispatcher: Dispatcher


@dataclass
class _Known:
    row_id: str
    signature: tuple[Any, ...] = ()  # what was last stored (empty: nothing yet)
    incident: Incident | None = None
    attached: set[str] = field(default_factory=set)  # fingerprints stored as attached


class Outbox:
    def __init__(self) -> None:
        self._incidents: dict[str, _Known] = {}  # by the dispatcher's incident id
        self._muted: dict[str, Muted] = {}  # by fingerprint, as last written

    @property
    def tracked_incidents(self) -> int:
        return len(self._incidents)

    def _known(self, incident_id: str, now: datetime) -> _Known:
        if incident_id not in self._incidents:
            self._incidents[incident_id] = _Known(uuid7(now))
        return self._incidents[incident_id]

    def _summary(self, incident_id: str) -> dict[str, Any] | None:
        known = self._incidents.get(incident_id)
        if known is None or known.incident is None:
            return None
        incident = known.incident
        return {
            "id": known.row_id,
            "firing": incident.firing,
            "peak": incident.peak,
            "opened_at": incident.opened_at.isoformat(),
        }

    def notification(
        self, tenant: TenantLike, notification: Notification, now: datetime
    ) -> dict[str, Any]:
        """The `alert_notifications` row of a notification the dispatcher just emitted."""
        row_id = uuid7(now)
        incident_row = None
        if notification.incident:
            known = self._known(notification.incident, now)
            for incident in tenant.dispatcher.incidents:
                if incident.id == notification.incident:
                    known.incident = incident
            incident_row = known.row_id
        body = payload.render(notification, id=row_id, tenant=tenant.name, incident=self._summary)
        key = notification.group
        channel = notification.channel or None
        return {
            "id": row_id,
            "tenant_id": tenant.id,
            "channel_id": channel,
            "group_key": str(key) if key is not None else "digest",
            "kind": str(notification.kind),
            "title": notification.title[:500],
            "payload": body,
            "notified": sorted(tenant.dispatcher.notified(key)) if key is not None else [],
            "incident_id": incident_row,
            "state": "pending" if channel else "logged",  # no channel: the log only
            "attempts": 0,
            "next_attempt_at": now,
            "created_at": now,
        }

    def mute_changes(
        self, dispatchers: Iterable[Dispatcher], rows: Mapping[str, str], now: datetime
    ) -> list[tuple[Muted, list[str]]]:
        """Alerts whose silences or inhibitors changed since last written, by new value:
        (value, alert row ids). `rows` maps open alerts' fingerprints to their row ids."""
        current: dict[str, Muted] = {}
        for dispatcher in dispatchers:
            for fp, status in dispatcher.status(now).items():
                if status.muted:
                    current[fp] = {
                        "silences": list(status.silenced_by),
                        "inhibited_by": list(status.inhibited_by),
                    }
        changes: dict[str, tuple[Muted, list[str]]] = {}
        for fp in set(current) | set(self._muted):
            value = current.get(fp, {})
            if self._muted.get(fp, {}) == value or fp not in rows:
                continue
            key = repr(sorted(value.items()))
            changes.setdefault(key, (value, []))[1].append(rows[fp])
        self._muted = {fp: v for fp, v in current.items() if fp in rows}
        return list(changes.values())

    async def write(
        self,
        db: Database,
        now: datetime,
        notifications: Sequence[dict[str, Any]],
        incidents: Iterable[tuple[TenantLike, Incident]],
        mutes: Sequence[tuple[Muted, list[str]]],
        rows: Mapping[str, str],
    ) -> None:
        """Store the tick's notifications, the incidents that changed, which alerts they
        hold, and the alerts' new mutes, in one transaction."""
        inserts, updates, attach = [], [], []
        for tenant, incident in incidents:
            signature = (incident.firing, incident.peak, incident.closed_at, len(incident.alerts))
            known = self._known(incident.id, now)
            known.incident = incident
            if known.signature == signature:
                continue
            values = {
                "firing": incident.firing,
                "peak": incident.peak,
                "closed_at": incident.closed_at,
                "alerts": len(incident.alerts),
                "updated_at": now,
            }
            if not known.signature:
                key = GroupKey(incident.rule, tuple(incident.labels.items()))
                inserts.append(
                    {
                        "id": known.row_id,
                        "tenant_id": tenant.id,
                        "rule": incident.rule,
                        "group_key": str(key),
                        "labels": dict(incident.labels),
                        "opened_at": incident.opened_at,
                        "scope": None,
                        **values,
                    }
                )
            else:
                updates.append({"id": known.row_id, **values})
            known.signature = signature
            new = incident.alerts - known.attached
            if new:
                attach.append((known.row_id, sorted(new)))
                known.attached = set(incident.alerts)
        if not (notifications or inserts or updates or attach or mutes):
            return
        async with db.write() as session:
            if inserts:
                await session.execute(insert(AlertIncident), inserts)
            if updates:
                await session.execute(update(AlertIncident), updates)
            for incident_id, fps in attach:
                ids = [rows[fp] for fp in fps if fp in rows]
                await _update_rows(session, ids, incident_id=incident_id)
            for muted_by, ids in mutes:
                await _update_rows(session, ids, muted_by=muted_by)
            if notifications:
                await session.execute(insert(AlertNotification), list(notifications))

    def forget(self, closed: Iterable[Incident]) -> None:
        """Closed incidents, stored and no longer referred to: nothing more to track."""
        for incident in closed:
            self._incidents.pop(incident.id, None)


async def _update_rows(session: Any, ids: Sequence[str], **values: Any) -> None:
    for start in range(0, len(ids), _CHUNK):
        await session.execute(
            update(AlertRecord)
            .where(AlertRecord.id.in_(ids[start : start + _CHUNK]))
            .values(**values)
            .execution_options(synchronize_session=False)
        )
