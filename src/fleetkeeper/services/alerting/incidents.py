"""Fleet-wide incidents: many devices firing the same rule together are one event.

When at least `min_devices` devices, or `min_fraction` of the scope's device count, of one
notification group (one rule and its group labels, e.g. `device_offline` at `site=oslo-3`)
start firing within `window`, one incident opens. Every firing alert of the group is attached
to it, later ones too, and the group is notified as that incident: one message for 800
devices, its count growing in later updates. It closes when its last attached alert stops
firing. Silenced and inhibited alerts do not count: they are explained already.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta


@dataclass(frozen=True)
class IncidentPolicy:
    min_devices: int | None = None
    min_fraction: float | None = None  # of the scope's device count, in (0, 1]
    window: timedelta = timedelta(minutes=5)

    def __post_init__(self) -> None:
        if self.min_devices is None and self.min_fraction is None:
            raise ValueError("incident policy: give min_devices, min_fraction or both")
        if self.min_devices is not None and self.min_devices < 2:
            raise ValueError("incident policy: min_devices must be at least 2")
        if self.min_fraction is not None and not 0 < self.min_fraction <= 1:
            raise ValueError("incident policy: min_fraction must be in (0, 1]")
        if self.window <= timedelta(0):
            raise ValueError("incident policy: window must be positive")

    def reached(self, count: int, scope: int | None) -> bool:
        """Either threshold will do; the fraction needs the scope's device count."""
        if self.min_devices is not None and count >= self.min_devices:
            return True
        return (
            self.min_fraction is not None
            and scope is not None
            and scope > 0
            and count >= self.min_fraction * scope
        )


@dataclass
class Incident:
    id: str
    rule: str
    labels: dict[str, str]  # the group labels it is keyed by
    opened_at: datetime
    closed_at: datetime | None = None
    alerts: set[str] = field(default_factory=set)  # every fingerprint ever attached
    firing: int = 0  # attached alerts firing now
    peak: int = 0

    @property
    def open(self) -> bool:
        return self.closed_at is None

    def _attach(self, firing: Mapping[str, datetime], now: datetime) -> None:
        self.alerts.update(firing)
        self.firing = len(firing)
        self.peak = max(self.peak, self.firing)
        if not firing:
            self.closed_at = now


def track(
    incident: Incident | None,
    policy: IncidentPolicy,
    firing: Mapping[str, datetime],
    *,
    scope: int | None,
    now: datetime,
    id: str,
    rule: str,
    labels: Mapping[str, str],
) -> Incident | None:
    """The group's incident after this look at its firing alerts (fingerprint → fired at).

    An open incident takes in every firing alert and closes when none is left; without one,
    a new incident opens when enough alerts started firing within the window.
    """
    if incident is not None and incident.open:
        incident._attach(firing, now)
        return incident
    recent = sum(1 for fired_at in firing.values() if fired_at > now - policy.window)
    if not policy.reached(recent, scope):
        return incident
    opened = Incident(id=id, rule=rule, labels=dict(labels), opened_at=now)
    opened._attach(firing, now)
    return opened
