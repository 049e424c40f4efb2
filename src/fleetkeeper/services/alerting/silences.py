"""Silences: time-bounded mutes by matchers, with who set them and why.

A silence applies from `starts_at` (inclusive) to `ends_at` (exclusive); before it starts and
after it ends it does nothing, so an expired silence simply stops applying. A silenced alert
still fires and stays visible (with the silences that mute it); it only goes unnotified.

Maintenance windows and deployments silence the alerts they cause by design: a device
rebooting for an update is not "offline". They are ordinary silences with a `kind` and a
`source` saying what created them (`deployment 42`, `window nightly`), built by
`maintenance_silence` from the devices concerned.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from fleetkeeper.services.alerting.model import Labels, Matcher, matches_all


class SilenceKind(StrEnum):
    MANUAL = "manual"  # an operator's
    MAINTENANCE = "maintenance"  # a maintenance window
    DEPLOYMENT = "deployment"  # devices being updated


@dataclass(frozen=True)
class Silence:
    id: str
    matchers: tuple[Matcher, ...]
    starts_at: datetime
    ends_at: datetime
    author: str
    comment: str = ""
    kind: SilenceKind = SilenceKind.MANUAL
    source: str | None = None  # what created it, for maintenance and deployment silences

    def __post_init__(self) -> None:
        if not self.matchers:
            # A silence without matchers would mute every alert of the fleet.
            raise ValueError(f"silence {self.id}: give at least one matcher")
        if self.ends_at <= self.starts_at:
            raise ValueError(f"silence {self.id}: ends_at must be after starts_at")

    def active(self, now: datetime) -> bool:
        return self.starts_at <= now < self.ends_at

    def mutes(self, labels: Labels, now: datetime) -> bool:
        return self.active(now) and matches_all(self.matchers, labels)


def maintenance_silence(
    id: str,
    devices: Iterable[str],
    starts_at: datetime,
    ends_at: datetime,
    *,
    source: str,
    kind: SilenceKind = SilenceKind.MAINTENANCE,
    author: str = "fleetkeeper",
    extra: Sequence[Matcher] = (),
) -> Silence:
    """A silence over the alerts of `devices` (their `device` label) for a window.

    `extra` narrows it, e.g. `rule=~"device_offline|update_failed"` so that a deployment
    mutes what a reboot causes and nothing else.
    """
    names = sorted(set(devices))
    if not names:
        raise ValueError(f"silence {id}: no devices to silence")
    pattern = "|".join(re.escape(name) for name in names)
    return Silence(
        id=id,
        matchers=(Matcher("device", "=~", pattern), *extra),
        starts_at=starts_at,
        ends_at=ends_at,
        author=author,
        comment=f"{kind.value}: {source}",
        kind=kind,
        source=source,
    )


def silenced_by(silences: Iterable[Silence], labels: Labels, now: datetime) -> tuple[str, ...]:
    """The ids of the silences muting an alert with `labels` at `now`."""
    return tuple(silence.id for silence in silences if silence.mutes(labels, now))


def next_change(silences: Iterable[Silence], after: datetime) -> datetime | None:
    """The first moment strictly after `after` when a silence starts or ends."""
    moments = [
        moment
        for silence in silences
        for moment in (silence.starts_at, silence.ends_at)
        if moment > after
    ]
    return min(moments, default=None)
