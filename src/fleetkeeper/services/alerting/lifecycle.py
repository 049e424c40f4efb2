"""The alert lifecycle: one rule's alerts driven by observations over time.

`RuleEvaluator` keeps at most one open alert (pending or firing) per fingerprint, the rule and
the subject's labels, so the same condition never opens twice. Each observation is judged into
a verdict (the condition holds; the clear holds; neither, in the hysteresis band; unknown) and
the transition table says what that does to the alert in its state:

- no alert: the condition holds → pending (and firing at once when the rule has no `for`);
- pending: held for `for` without a break → firing; the condition stopped holding → the
  pending alert is cancelled without ever being notified; unknown → it waits;
- firing: the clear has held for its own `for` → resolved; anything else keeps it firing.

Flapping: an alert whose fingerprint changed between firing and resolved `flap_flips` times
within `flap_window` is marked flapping and held firing instead of resolving; it resolves once
its clear has held for `flap_settle` without a break, and emits no resolve/refire in between.
Operators acknowledge a firing alert (who, when, a note: it stays firing, marked) or resolve it.

Every step returns the `Transition`s it made, for the caller to store and to notify. Pure: the
time is the observation's, or given.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from types import MappingProxyType

from fleetkeeper.services.alerting.model import Alert, AlertState, Labels, fingerprint
from fleetkeeper.services.alerting.rules import AlertRule, Observation

__all__ = [
    "NOTIFIED",
    "TABLE",
    "Change",
    "NoSuchAlert",
    "RuleEvaluator",
    "Transition",
    "Verdict",
    "alert_labels",
    "verdict",
]


class Verdict(StrEnum):
    HOLDS = "holds"  # the condition holds
    CLEARS = "clears"  # the clearing condition holds (and the condition does not)
    BETWEEN = "between"  # neither: inside the hysteresis band of an explicit clear
    UNKNOWN = "unknown"  # the data to judge is missing


class Change(StrEnum):
    PENDING = "pending"
    FIRING = "firing"
    CANCELLED = "cancelled"  # a pending alert whose condition stopped holding: never notified
    RESOLVED = "resolved"
    ACKNOWLEDGED = "acknowledged"
    FLAPPING = "flapping"  # held firing from now on, until it settles


# The changes operators hear of; pending and cancelled alerts are stored, not notified.
NOTIFIED = frozenset({Change.FIRING, Change.RESOLVED, Change.FLAPPING})


@dataclass(frozen=True)
class Transition:
    change: Change
    fingerprint: str
    rule: str
    labels: Mapping[str, str]
    at: datetime
    value: float | None = None
    by: str | None = None  # the operator, for acknowledgements and manual resolves
    note: str | None = None

    @property
    def notifies(self) -> bool:
        return self.change in NOTIFIED


class NoSuchAlert(KeyError):
    """No open alert has that fingerprint."""


def verdict(rule: AlertRule, observation: Observation) -> Verdict:
    holds, clears = rule.judge(observation)
    if holds:
        return Verdict.HOLDS
    if clears:
        return Verdict.CLEARS
    if holds is None or clears is None:
        return Verdict.UNKNOWN
    return Verdict.BETWEEN


# What a verdict does to an alert in its state (None: no open alert for the fingerprint).
_Step = Callable[["RuleEvaluator", Alert | None, "_Context"], list[Transition]]


@dataclass(frozen=True)
class _Context:
    fingerprint: str
    labels: Mapping[str, str]
    at: datetime
    value: float | None


def alert_labels(rule: AlertRule, subject: Labels) -> dict[str, str]:
    """The rule's labels, the subject's (which win), then `rule` and `severity` (which no one
    overrides): the labels grouping, inhibition and silences match on."""
    return {**rule.labels, **subject, "rule": rule.name, "severity": str(rule.severity)}


class RuleEvaluator:
    """The open alerts of one rule and the recent flips of its fingerprints.

    Both can be handed in (`alerts`, `flips`) to resume from stored state.
    """

    def __init__(
        self,
        rule: AlertRule,
        *,
        alerts: Mapping[str, Alert] | None = None,
        flips: Mapping[str, list[datetime]] | None = None,
    ) -> None:
        self.rule = rule
        self.alerts: dict[str, Alert] = dict(alerts or {})
        self.flips: dict[str, list[datetime]] = {k: list(v) for k, v in (flips or {}).items()}

    # --- observations ------------------------------------------------------------------------

    def observe(self, subject: Labels, observation: Observation) -> list[Transition]:
        """Judge one subject at `observation.at`; the transitions it caused, in order."""
        labels = alert_labels(self.rule, subject)
        fp = fingerprint(self.rule.name, labels)
        alert = self.alerts.get(fp)
        value = self.rule.measure(observation)
        if alert is not None and value is not None:
            alert.value = value
        state = alert.state if alert is not None else None
        step = TABLE[(state, verdict(self.rule, observation))]
        return step(self, alert, _Context(fp, labels, observation.at, value))

    def _idle(self, alert: Alert | None, ctx: _Context) -> list[Transition]:
        return []

    def _open(self, alert: Alert | None, ctx: _Context) -> list[Transition]:
        alert = Alert(
            self.rule.name,
            dict(ctx.labels),
            severity=self.rule.severity,
            active_since=ctx.at,
            value=ctx.value,
            flips=list(self._recent(ctx.fingerprint, ctx.at)),
        )
        self.alerts[ctx.fingerprint] = alert
        return [self._transition(Change.PENDING, alert, ctx.at), *self._ripen(alert, ctx)]

    def _ripen(self, alert: Alert | None, ctx: _Context) -> list[Transition]:
        assert alert is not None and alert.active_since is not None
        alert.clear_since = None
        if _seconds(alert.active_since, ctx.at) < self.rule.pending:
            return []
        alert.state, alert.fired_at = AlertState.FIRING, ctx.at
        flips = self._flip(ctx.fingerprint, alert, ctx.at)
        done = [self._transition(Change.FIRING, alert, ctx.at)]
        if len(flips) >= self.rule.flap_flips:
            alert.flapping = True
            done.append(self._transition(Change.FLAPPING, alert, ctx.at))
        return done

    def _cancel(self, alert: Alert | None, ctx: _Context) -> list[Transition]:
        assert alert is not None
        del self.alerts[ctx.fingerprint]
        return [self._transition(Change.CANCELLED, alert, ctx.at)]

    def _keep(self, alert: Alert | None, ctx: _Context) -> list[Transition]:
        assert alert is not None
        alert.clear_since = None  # a clear must hold without a break
        return []

    def _settle(self, alert: Alert | None, ctx: _Context) -> list[Transition]:
        assert alert is not None
        if alert.clear_since is None:
            alert.clear_since = ctx.at
        needed = self.rule.clear.hold if self.rule.clear is not None else 0.0
        if alert.flapping:
            needed = max(needed, self.rule.flap_settle)
        if _seconds(alert.clear_since, ctx.at) < needed:
            return []
        if not alert.flapping and len(self._recent(ctx.fingerprint, ctx.at)) + 1 >= (
            self.rule.flap_flips
        ):
            # This resolve would be one flip too many: hold it firing until it settles.
            alert.flapping = True
            return [self._transition(Change.FLAPPING, alert, ctx.at)]
        self._flip(ctx.fingerprint, alert, ctx.at)
        return [self._close(ctx.fingerprint, alert, ctx.at)]

    # --- operators ---------------------------------------------------------------------------

    def acknowledge(
        self, fp: str, *, by: str, at: datetime, note: str | None = None
    ) -> list[Transition]:
        """Mark a firing alert as seen by `by`; it keeps firing (and its notifications)."""
        alert = self._open_alert(fp)
        if alert.state is not AlertState.FIRING:
            raise ValueError(f"alert {fp} is {alert.state}: only a firing alert is acknowledged")
        alert.acknowledged_at, alert.acknowledged_by, alert.acknowledged_note = at, by, note
        return [self._transition(Change.ACKNOWLEDGED, alert, at, by=by, note=note)]

    def resolve(
        self, fp: str, *, by: str, at: datetime, note: str | None = None
    ) -> list[Transition]:
        """Resolve an open alert by hand. If its condition still holds, the next observation
        opens a new one (pending again, so it fires only after `for`)."""
        alert = self._open_alert(fp)
        alert.resolved_by = by
        if note is not None:
            alert.annotations["resolution"] = note
        return [self._close(fp, alert, at, by=by, note=note)]

    def prune(self, at: datetime) -> None:
        """Forget flips older than the flap window (of fingerprints with no open alert too)."""
        for fp in list(self.flips):
            if not self._recent(fp, at):
                del self.flips[fp]

    # --- helpers -----------------------------------------------------------------------------

    def _open_alert(self, fp: str) -> Alert:
        try:
            return self.alerts[fp]
        except KeyError:
            raise NoSuchAlert(f"no open alert {fp} for rule {self.rule.name!r}") from None

    def _recent(self, fp: str, at: datetime) -> list[datetime]:
        since = at - timedelta(seconds=self.rule.flap_window)
        recent = [t for t in self.flips.get(fp, ()) if t > since]
        if fp in self.flips:
            self.flips[fp] = recent
        return recent

    def _flip(self, fp: str, alert: Alert, at: datetime) -> list[datetime]:
        flips = [*self._recent(fp, at), at]
        self.flips[fp] = flips
        alert.flips = list(flips)
        return flips

    def _close(
        self, fp: str, alert: Alert, at: datetime, *, by: str | None = None, note: str | None = None
    ) -> Transition:
        alert.state, alert.resolved_at, alert.flapping = AlertState.RESOLVED, at, False
        del self.alerts[fp]
        return self._transition(Change.RESOLVED, alert, at, by=by, note=note)

    def _transition(
        self,
        change: Change,
        alert: Alert,
        at: datetime,
        *,
        by: str | None = None,
        note: str | None = None,
    ) -> Transition:
        labels = MappingProxyType(dict(alert.labels))
        return Transition(change, alert.fingerprint, alert.rule, labels, at, alert.value, by, note)


def _seconds(since: datetime, at: datetime) -> float:
    return (at - since).total_seconds()


_P, _F = AlertState.PENDING, AlertState.FIRING
TABLE: Mapping[tuple[AlertState | None, Verdict], _Step] = MappingProxyType(
    {
        (None, Verdict.HOLDS): RuleEvaluator._open,
        (None, Verdict.CLEARS): RuleEvaluator._idle,
        (None, Verdict.BETWEEN): RuleEvaluator._idle,
        (None, Verdict.UNKNOWN): RuleEvaluator._idle,
        (_P, Verdict.HOLDS): RuleEvaluator._ripen,
        (_P, Verdict.CLEARS): RuleEvaluator._cancel,
        (_P, Verdict.BETWEEN): RuleEvaluator._cancel,
        (_P, Verdict.UNKNOWN): RuleEvaluator._idle,  # missing data neither fires nor clears
        (_F, Verdict.HOLDS): RuleEvaluator._keep,
        (_F, Verdict.CLEARS): RuleEvaluator._settle,
        (_F, Verdict.BETWEEN): RuleEvaluator._keep,
        (_F, Verdict.UNKNOWN): RuleEvaluator._idle,
    }
)
