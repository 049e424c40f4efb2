"""The notification dispatcher: groups, timers, mutes, incidents and rate limits.

A state machine in simulated time, after Prometheus Alertmanager's dispatcher:

    dispatcher.update(alerts, now)      # alerts that fired or resolved (upserted by fingerprint)
    for notification in dispatcher.due(now): deliver(notification)
    sleep_until(dispatcher.next_wakeup())

Alerts go into groups keyed by their rule and the values of the rule's `group_by` labels.
A new group waits `group_wait` before its first notification, so that the rest of an outage
and the alerts that inhibit it arrive first. After that the group ticks every
`group_interval` from its last flush: a change (an alert newly firing, a notified one
resolved, an incident opened) goes out at the next tick, never at once, batched with
whatever else changed meanwhile. An unchanged group with firing alerts repeats exactly
`repeat_interval` after its last notification (Alertmanager rounds repeats up to a tick; we
do not), unless every firing alert is acknowledged. A group whose alerts all resolved before
anything was notified sends nothing and disappears.

Silenced and inhibited alerts stay in their group, visible through `status`, but are left out
of notifications; one becoming unmuted is a change like a new alert. Muting alone sends
nothing (the next notification simply no longer counts the alert as firing).

Only firing and resolved alerts matter here: pending ones are ignored. Labels seen by
matchers and `group_by` are the alert's labels plus `rule` and `severity`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from fleetkeeper.services.alerting.incidents import Incident, IncidentPolicy, track
from fleetkeeper.services.alerting.inhibit import InhibitRule, inhibitions
from fleetkeeper.services.alerting.model import Alert, AlertState, check_label
from fleetkeeper.services.alerting.notification import (
    AlertStatus,
    AlertSummary,
    GroupKey,
    Notification,
    NotificationKind,
)
from fleetkeeper.services.alerting.ratelimit import Limiter, RateLimit
from fleetkeeper.services.alerting.silences import Silence, next_change, silenced_by

__all__ = [
    "AlertStatus",
    "AlertSummary",
    "Dispatcher",
    "GroupKey",
    "Notification",
    "NotificationKind",
    "Route",
    "alert_labels",
]


@dataclass(frozen=True)
class Route:
    """How a rule's alerts are grouped, timed and sent."""

    group_by: tuple[str, ...] = ()  # within the rule: ("site",) groups a rule's alerts by site
    group_wait: timedelta = timedelta(seconds=30)
    group_interval: timedelta = timedelta(minutes=5)
    repeat_interval: timedelta = timedelta(hours=4)
    channels: tuple[str, ...] = ("default",)
    incident: IncidentPolicy | None = None

    def __post_init__(self) -> None:
        for label in self.group_by:
            check_label(label)
        if self.group_wait < timedelta(0):
            raise ValueError("route: group_wait must not be negative")
        if self.group_interval <= timedelta(0) or self.repeat_interval <= timedelta(0):
            raise ValueError("route: group_interval and repeat_interval must be positive")


def alert_labels(alert: Alert) -> dict[str, str]:
    return {"rule": alert.rule, "severity": alert.severity.value, **alert.labels}


@dataclass
class _Group:
    key: GroupKey
    route: Route
    created_at: datetime
    alerts: dict[str, Alert] = field(default_factory=dict)
    labels: dict[str, dict[str, str]] = field(default_factory=dict)  # alert_labels, kept
    first_seen: dict[str, datetime] = field(default_factory=dict)
    flushed: bool = False
    anchor: datetime | None = None  # the last flush: ticks are anchor + k * group_interval
    last_sent: datetime | None = None
    notified: frozenset[str] = frozenset()  # the firing alerts of the last notification
    notified_incident: str | None = None
    dirty_since: datetime | None = None  # the first unsent change
    incident: Incident | None = None


@dataclass(frozen=True)
class _View:
    firing: frozenset[str]  # notifiable: firing and not muted
    resolved: frozenset[str]  # notified, no longer firing
    muted: int

    def changed(self, group: _Group) -> bool:
        incident = group.incident.id if group.incident and group.incident.open else None
        return bool(self.firing - group.notified or self.resolved) or (
            incident is not None and incident != group.notified_incident
        )


class Dispatcher:
    def __init__(
        self,
        routes: Mapping[str, Route] | None = None,
        *,
        default: Route | None = None,
        inhibit_rules: Iterable[InhibitRule] = (),
        silences: Iterable[Silence] = (),
        rate_limits: Mapping[str, RateLimit] | None = None,
        default_rate_limit: RateLimit | None = None,
        examples: int = 5,
    ) -> None:
        self._routes = dict(routes or {})
        self._default = default or Route()
        self._inhibit_rules = tuple(inhibit_rules)
        self._silences = tuple(silences)
        self._limiter: Limiter[Notification] = Limiter(rate_limits or {}, default_rate_limit)
        self._examples = examples
        self._groups: dict[GroupKey, _Group] = {}
        self._where: dict[str, GroupKey] = {}  # fingerprint → its group
        self._inhibited: dict[str, tuple[str, ...]] = {}
        self._scopes: dict[str, int] = {}
        self._incidents: list[Incident] = []
        self._now: datetime | None = None

    # --- inputs ------------------------------------------------------------------------------

    def update(
        self,
        alerts: Iterable[Alert],
        now: datetime,
        *,
        scope_sizes: Mapping[str, int] | None = None,
    ) -> None:
        """Take in alerts that fired or resolved; `scope_sizes` gives device counts for the
        incident fraction, keyed by group (`str(GroupKey)`) or by rule."""
        self._scopes.update(scope_sizes or {})
        taken = False
        for alert in alerts:
            if alert.state is not AlertState.PENDING:
                self._upsert(alert, now)
                taken = True
        if not taken and not scope_sizes:
            return
        self._inhibited = inhibitions(self._inhibit_rules, self._firing_labels())
        self._refresh(now)

    def set_silences(self, silences: Iterable[Silence], now: datetime) -> None:
        self._silences = tuple(silences)
        self._refresh(now)

    def set_inhibit_rules(self, rules: Iterable[InhibitRule], now: datetime) -> None:
        self._inhibit_rules = tuple(rules)
        self._inhibited = inhibitions(self._inhibit_rules, self._firing_labels())
        self._refresh(now)

    def set_routes(self, routes: Mapping[str, Route]) -> None:
        """New routes for the rules' future groups (and their groups' timers from now on)."""
        self._routes = dict(routes)
        for group in self._groups.values():
            group.route = self._route(group.key.rule)

    def set_rate_limits(self, limits: Mapping[str, RateLimit]) -> None:
        self._limiter.set_limits(limits)

    def restore(
        self,
        alerts: Iterable[Alert],
        now: datetime,
        *,
        sent: Mapping[str, tuple[datetime, frozenset[str]]],
    ) -> None:
        """Take in the firing alerts of a restarted engine. `sent` gives, per group
        (`str(GroupKey)`), when its last notification went out and the fingerprints it told of
        as firing: such a group resumes its timers from then, so a restart neither repeats
        nor forgets; alerts it did not tell of are new changes."""
        firing = [alert for alert in alerts if alert.state is AlertState.FIRING]
        for alert in firing:
            self._upsert(alert, now)
        for group in self._groups.values():
            last = sent.get(str(group.key))
            if last is None:
                continue
            at, notified = last
            group.flushed, group.anchor, group.last_sent = True, at, at
            group.created_at = min(group.created_at, at)
            group.notified = frozenset(notified) & frozenset(group.alerts)
        self._inhibited = inhibitions(self._inhibit_rules, self._firing_labels())
        self._refresh(now)

    def drop(self, fingerprints: Iterable[str]) -> None:
        """Forget alerts without notifying (their rule was deleted)."""
        for fp in fingerprints:
            key = self._where.get(fp)
            if key is not None and key in self._groups:
                self._forget(self._groups[key], fp)

    # --- outputs -----------------------------------------------------------------------------

    def due(self, now: datetime) -> list[Notification]:
        """The notifications to deliver at `now`, held digests first."""
        # Between updates, only a silence starting or ending changes what a group would send.
        boundary = None if self._now is None else next_change(self._silences, self._now)
        if self._now is None or (boundary is not None and boundary <= now):
            self._refresh(now)
        out = [self._digest(channel, parts, now) for channel, parts in self._limiter.release(now)]
        ready = sorted(
            (at, key)
            for key, group in self._groups.items()
            if (at := self._due_at(group)) and at <= now
        )
        for _, key in ready:
            group = self._groups[key]
            notification = self._flush(group, now)
            if notification is None:
                continue
            for channel in group.route.channels:
                sent = replace(notification, channel=channel)
                if self._limiter.offer(channel, sent, now):
                    out.append(sent)
        return out

    def next_wakeup(self) -> datetime | None:
        """When `due` may next have something to send (None: nothing scheduled)."""
        moments = [at for group in self._groups.values() if (at := self._due_at(group))]
        if (held := self._limiter.next_wakeup()) is not None:
            moments.append(held)
        if self._now is not None and (change := next_change(self._silences, self._now)):
            moments.append(change)
        return min(moments, default=None)

    def status(self, now: datetime) -> dict[str, AlertStatus]:
        """Every alert the dispatcher holds: its group, and what mutes it or holds it."""
        statuses = {}
        for key, group in self._groups.items():
            incident = group.incident.id if group.incident else None
            for fp, alert in group.alerts.items():
                statuses[fp] = AlertStatus(
                    fingerprint=fp,
                    group=key,
                    state=alert.state,
                    silenced_by=silenced_by(self._silences, group.labels[fp], now),
                    inhibited_by=self._inhibited.get(fp, ()),
                    incident=incident if group.incident and fp in group.incident.alerts else None,
                )
        return statuses

    def notified(self, key: GroupKey) -> frozenset[str]:
        """The firing fingerprints the group's last notification told of."""
        group = self._groups.get(key)
        return group.notified if group is not None else frozenset()

    @property
    def incidents(self) -> list[Incident]:
        """Every incident opened, the closed ones too (until `forget_closed`), oldest first."""
        return list(self._incidents)

    def forget_closed(self) -> list[Incident]:
        """Drop the closed incidents no group refers to any more (their closing was notified,
        or never will be); returns them."""
        held = {id(group.incident) for group in self._groups.values() if group.incident}
        closed = [i for i in self._incidents if not i.open and id(i) not in held]
        self._incidents = [i for i in self._incidents if i.open or id(i) in held]
        return closed

    # --- the state machine -------------------------------------------------------------------

    def _route(self, rule: str) -> Route:
        return self._routes.get(rule, self._default)

    def _upsert(self, alert: Alert, now: datetime) -> None:
        fp = alert.fingerprint
        key = self._where.get(fp)
        if key is None:
            if alert.state is not AlertState.FIRING:
                return  # resolved before we ever saw it fire
            route = self._route(alert.rule)
            labels = alert_labels(alert)
            key = GroupKey(alert.rule, tuple((n, labels.get(n, "")) for n in route.group_by))
            if key not in self._groups:
                self._groups[key] = _Group(key, route, created_at=now)
            self._where[fp] = key
            self._groups[key].first_seen[fp] = now
        group = self._groups[key]
        group.alerts[fp] = alert
        group.labels[fp] = alert_labels(alert)
        if alert.state is AlertState.RESOLVED and fp not in group.notified:
            self._forget(group, fp)  # never notified: nobody needs to hear it resolved

    def _forget(self, group: _Group, fp: str) -> None:
        group.alerts.pop(fp, None)
        group.labels.pop(fp, None)
        group.first_seen.pop(fp, None)
        self._where.pop(fp, None)
        if not group.alerts and (group.incident is None or not group.incident.open):
            del self._groups[group.key]

    def _firing_labels(self) -> dict[str, dict[str, str]]:
        return {
            fp: group.labels[fp]
            for group in self._groups.values()
            for fp, alert in group.alerts.items()
            if alert.state is AlertState.FIRING
        }

    def _view(self, group: _Group, now: datetime) -> _View:
        firing, muted = set(), 0
        silences = [silence for silence in self._silences if silence.active(now)]
        for fp, alert in group.alerts.items():
            if alert.state is not AlertState.FIRING:
                continue
            if fp in self._inhibited or (silences and silenced_by(silences, group.labels[fp], now)):
                muted += 1
            else:
                firing.add(fp)
        gone = {
            fp
            for fp in group.notified
            if fp not in group.alerts or group.alerts[fp].state is AlertState.RESOLVED
        }
        return _View(frozenset(firing), frozenset(gone), muted)

    def _refresh(self, now: datetime) -> None:
        """Look at every group at `now`: its incident, and whether it has an unsent change."""
        self._now = now
        for group in list(self._groups.values()):
            view = self._view(group, now)
            self._track_incident(group, view, now)
            if not group.flushed:
                continue
            if view.changed(group):
                group.dirty_since = group.dirty_since or now
            else:
                group.dirty_since = None

    def _track_incident(self, group: _Group, view: _View, now: datetime) -> None:
        policy = group.route.incident
        if policy is None:
            return
        firing = {
            fp: group.alerts[fp].fired_at or group.first_seen[fp] for fp in sorted(view.firing)
        }
        scope = self._scopes.get(str(group.key), self._scopes.get(group.key.rule))
        before = group.incident
        group.incident = track(
            before,
            policy,
            firing,
            scope=scope,
            now=now,
            id=f"{group.key}@{now.isoformat()}",
            rule=group.key.rule,
            labels=dict(group.key.labels),
        )
        if group.incident is not None and group.incident is not before:
            self._incidents.append(group.incident)

    def _due_at(self, group: _Group) -> datetime | None:
        route = group.route
        if not group.flushed:
            return group.created_at + route.group_wait
        assert group.anchor is not None
        moments = []
        if group.dirty_since is not None:
            moments.append(_next_tick(group.anchor, route.group_interval, group.dirty_since))
        if group.last_sent is not None and self._repeats(group):
            moments.append(group.last_sent + route.repeat_interval)
        return min(moments, default=None)

    def _repeats(self, group: _Group) -> bool:
        return any(not group.alerts[fp].acknowledged for fp in group.notified if fp in group.alerts)

    def _flush(self, group: _Group, now: datetime) -> Notification | None:
        view = self._view(group, now)
        changed = view.changed(group)
        repeat = (
            not changed
            and bool(view.firing)
            and group.last_sent is not None
            and now >= group.last_sent + group.route.repeat_interval
            and self._repeats(group)
        )
        group.flushed, group.anchor, group.dirty_since = True, now, None
        notification = None
        if changed or repeat:
            notification = self._compose(group, view, now, repeat=repeat)
            group.last_sent = now
            group.notified = view.firing
            incident = group.incident
            group.notified_incident = incident.id if incident and incident.open else None
            for fp in view.resolved:
                self._forget(group, fp)
        else:
            # Nothing to send: notified alerts muted since are forgotten (they count as new
            # when unmuted), and a repeat due on them waits no longer.
            group.notified &= view.firing
        if group.incident is not None and not group.incident.open:
            group.incident = None  # its closing went out with the resolved alerts, or never
        if not group.alerts and group.incident is None:
            self._groups.pop(group.key, None)
        return notification

    def _compose(self, group: _Group, view: _View, now: datetime, *, repeat: bool) -> Notification:
        new = sorted(view.firing - group.notified)
        old = sorted(view.firing & group.notified)
        resolved = sorted(view.resolved)
        incident = group.incident
        n = self._examples
        return Notification(
            channel="",
            at=now,
            kind=NotificationKind.INCIDENT if incident else NotificationKind.GROUP,
            group=group.key,
            firing=len(view.firing),
            resolved=len(resolved),
            new=len(new),
            muted=view.muted,
            examples=tuple(AlertSummary.of(group.alerts[fp]) for fp in (new + old)[:n]),
            new_examples=tuple(AlertSummary.of(group.alerts[fp]) for fp in new[:n]),
            resolved_examples=tuple(
                AlertSummary.of(group.alerts[fp]) for fp in resolved[:n] if fp in group.alerts
            ),
            repeat=repeat,
            incident=incident.id if incident else None,
        )

    def _digest(self, channel: str, parts: list[Notification], now: datetime) -> Notification:
        return Notification(
            channel=channel,
            at=now,
            kind=NotificationKind.DIGEST,
            group=None,
            firing=sum(part.firing for part in parts),
            resolved=sum(part.resolved for part in parts),
            new=sum(part.new for part in parts),
            muted=sum(part.muted for part in parts),
            parts=tuple(parts),
        )


def _next_tick(anchor: datetime, interval: timedelta, since: datetime) -> datetime:
    """The first tick anchor + k * interval (k ≥ 1) at or after `since`."""
    k = max(1, math.ceil((since - anchor) / interval))
    return anchor + k * interval
