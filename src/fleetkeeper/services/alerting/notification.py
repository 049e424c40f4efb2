"""What the dispatcher says: notifications, their alert summaries, and each alert's status.

The channels (webhook, e-mail, chat) render a `Notification`; the API shows `AlertStatus`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from fleetkeeper.services.alerting.model import Alert, AlertState, Severity


@dataclass(frozen=True, order=True)
class GroupKey:
    rule: str
    labels: tuple[tuple[str, str], ...]

    def __str__(self) -> str:
        inner = ",".join(f'{name}="{value}"' for name, value in self.labels)
        return f"{self.rule}{{{inner}}}"


class NotificationKind(StrEnum):
    GROUP = "group"
    INCIDENT = "incident"  # the group is notified as its fleet-wide incident
    DIGEST = "digest"  # notifications held by a channel's rate limit, folded into one


@dataclass(frozen=True)
class AlertSummary:
    fingerprint: str
    labels: dict[str, str]
    severity: Severity
    state: AlertState
    fired_at: datetime | None
    value: float | None
    summary: str | None

    @classmethod
    def of(cls, alert: Alert) -> AlertSummary:
        return cls(
            fingerprint=alert.fingerprint,
            labels=dict(alert.labels),
            severity=alert.severity,
            state=alert.state,
            fired_at=alert.fired_at,
            value=alert.value,
            summary=alert.annotations.get("summary"),
        )


@dataclass(frozen=True)
class Notification:
    """One message to one channel: a group's state and what changed since its last one."""

    channel: str
    at: datetime
    kind: NotificationKind
    group: GroupKey | None  # None for a digest
    firing: int = 0  # notifiable alerts firing now
    resolved: int = 0  # notified before, resolved since
    new: int = 0  # firing now, not in the last notification
    muted: int = 0  # firing but silenced or inhibited, not counted in `firing`
    examples: tuple[AlertSummary, ...] = ()  # a few firing alerts, the new ones first
    new_examples: tuple[AlertSummary, ...] = ()
    resolved_examples: tuple[AlertSummary, ...] = ()
    repeat: bool = False  # nothing changed: the repeat_interval reminder
    incident: str | None = None  # the incident's id when kind is INCIDENT
    parts: tuple[Notification, ...] = ()  # a digest's notifications, oldest first

    @property
    def title(self) -> str:
        if self.kind is NotificationKind.DIGEST:
            return f"{len(self.parts)} notifications held by the rate limit"
        what = "incident" if self.kind is NotificationKind.INCIDENT else "alerts"
        change = "still firing" if self.repeat else f"{self.new} new, {self.resolved} resolved"
        return f"[{self.firing} firing] {self.group} {what}: {change}"


@dataclass(frozen=True)
class AlertStatus:
    fingerprint: str
    group: GroupKey
    state: AlertState
    silenced_by: tuple[str, ...] = ()
    inhibited_by: tuple[str, ...] = ()  # fingerprints of the firing sources
    incident: str | None = None

    @property
    def muted(self) -> bool:
        return bool(self.silenced_by or self.inhibited_by)
