"""Alert rules: what to watch on which devices, when it fires and when it clears.

A rule names a scope (a fleet query, kept as text: the services compile it), a condition, an
optional clearing condition, a severity, labels, how its notifications are grouped and where
they go. Conditions are small sentences, one of:

- `METRIC OP NUMBER [for DURATION]`: the latest reading of a metric (`battery < 15 for 10m`);
  OP is one of `<`, `<=`, `>`, `>=`, `=` (or `==`), `!=`.
- `offline for DURATION`: nothing heard from the device for that long (from `last_seen`).
- `health = FLAG [for DURATION]`: the device carries a health flag of the monitoring watch
  (`faulty_sensor`, `flood`, `silent`, `outage`, `battery_degraded`, `storage_filling`).
- `update failed [for DURATION]`: the device's latest finished update (a deployment's
  execution) failed, timed out or was rolled back; it clears once an update succeeds.
- `rate(METRIC) OP NUMBER per DURATION [over DURATION] [for DURATION]`: the change of a metric
  per unit of time, measured from the earliest to the latest reading within the `over` window
  (by default as long as `per`): `rate(storage_used) > 5 per 1h`, `rate(battery) < -10 per 1h
  over 30m`. It needs two readings at least half the window apart, else it is unknown.

`for` is the pending duration: the condition must hold that long, without a break, before the
alert fires. The clearing condition uses the same grammar; its `for` is how long it must hold
before the alert resolves. Without one, an alert clears when its condition no longer holds;
with one (`battery > 20` for `battery < 15`) an alert in between keeps the state it had
(hysteresis). A condition on data that is missing is unknown: it neither fires nor clears.

Pure: the rule is validated once (`AlertRule.model_validate`), conditions are judged on an
`Observation` that carries the time judged.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from fleetkeeper.services.alerting.model import Severity, check_label
from fleetkeeper.services.rollout.policy import Seconds

__all__ = [
    "HEALTH_FLAGS",
    "OPERATORS",
    "AlertRule",
    "Condition",
    "ConditionError",
    "ConditionText",
    "HealthFlag",
    "IncidentSettings",
    "Observation",
    "Offline",
    "RateOfChange",
    "Reading",
    "Remediation",
    "RemediationStep",
    "Threshold",
    "UpdateFailed",
    "parse_condition",
]

# The flags of `services.monitoring.flags.Flag`, spelled out: rules are judged without it.
HEALTH_FLAGS = frozenset(
    {"faulty_sensor", "flood", "silent", "outage", "battery_degraded", "storage_filling"}
)
OPERATORS: Mapping[str, Callable[[float, float], bool]] = MappingProxyType(
    {
        "<": operator.lt,
        "<=": operator.le,
        ">": operator.gt,
        ">=": operator.ge,
        "=": operator.eq,
        "!=": operator.ne,
    }
)
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
MAX_CONDITION_LENGTH = 500


# --- what a condition is judged on ---------------------------------------------------------------


@dataclass(frozen=True)
class Reading:
    at: datetime
    value: float


@dataclass(frozen=True)
class Observation:
    """One subject (a device) as known at `at`, the time judged.

    `metrics` holds each metric's recent readings, oldest first (the last is the latest; a
    threshold needs only that one, a rate the readings of its window). `flags` is None when
    the device's health is not known, and the set of its flags' names otherwise.
    """

    at: datetime
    metrics: Mapping[str, Sequence[Reading]] = field(default_factory=dict)
    last_seen: datetime | None = None
    online: bool | None = None
    flags: frozenset[str] | None = None
    update: str | None = None  # the state of the device's latest finished update, if any

    def latest(self, metric: str) -> Reading | None:
        readings = self.metrics.get(metric)
        return readings[-1] if readings else None


# --- conditions ----------------------------------------------------------------------------------


def _number(value: float) -> str:
    return f"{value:g}"


def _duration(seconds: float) -> str:
    for unit in ("d", "h", "m"):
        if seconds >= _UNITS[unit] and seconds % _UNITS[unit] == 0:
            return f"{seconds / _UNITS[unit]:g}{unit}"
    return f"{seconds:g}s"


def _pending(hold: float) -> str:
    return f" for {_duration(hold)}" if hold else ""


@dataclass(frozen=True)
class Threshold:
    """`battery < 15 for 10m`: the latest reading compared with a number."""

    metric: str
    op: str
    value: float
    hold: float = 0.0  # seconds the condition must hold before it counts (`for`)

    def measure(self, observation: Observation) -> float | None:
        latest = observation.latest(self.metric)
        return None if latest is None else latest.value

    def holds(self, observation: Observation) -> bool | None:
        measured = self.measure(observation)
        return None if measured is None else OPERATORS[self.op](measured, self.value)

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {_number(self.value)}{_pending(self.hold)}"


@dataclass(frozen=True)
class Offline:
    """`offline for 30m`: the device has not been heard from for `after` seconds."""

    after: float
    hold: float = 0.0  # the silence itself is the duration: no pending time on top

    def measure(self, observation: Observation) -> float | None:
        """Seconds since the device was last heard from (0 while it says it is online)."""
        if observation.online:
            return 0.0
        if observation.last_seen is None:
            return None  # never seen, or not known: not evidence of an outage
        return max(0.0, (observation.at - observation.last_seen).total_seconds())

    def holds(self, observation: Observation) -> bool | None:
        measured = self.measure(observation)
        return None if measured is None else measured >= self.after

    def __str__(self) -> str:
        return f"offline for {_duration(self.after)}"


@dataclass(frozen=True)
class HealthFlag:
    """`health = faulty_sensor for 5m`: the device carries a flag of the health watch."""

    flag: str
    hold: float = 0.0

    def measure(self, observation: Observation) -> float | None:
        if observation.flags is None:
            return None
        return 1.0 if self.flag in observation.flags else 0.0

    def holds(self, observation: Observation) -> bool | None:
        measured = self.measure(observation)
        return None if measured is None else measured == 1.0

    def __str__(self) -> str:
        return f"health = {self.flag}{_pending(self.hold)}"


@dataclass(frozen=True)
class RateOfChange:
    """`rate(battery) < -10 per 1h over 30m`: change per `per` seconds within `over` seconds."""

    metric: str
    op: str
    value: float
    per: float
    over: float
    hold: float = 0.0

    def measure(self, observation: Observation) -> float | None:
        since = observation.at.timestamp() - self.over
        window = [r for r in observation.metrics.get(self.metric, ()) if r.at.timestamp() >= since]
        if len(window) < 2:
            return None
        first, last = window[0], window[-1]
        span = (last.at - first.at).total_seconds()
        if span < self.over / 2:
            return None  # two readings close together say little about a trend
        return (last.value - first.value) / span * self.per

    def holds(self, observation: Observation) -> bool | None:
        measured = self.measure(observation)
        return None if measured is None else OPERATORS[self.op](measured, self.value)

    def __str__(self) -> str:
        over = "" if self.over == self.per else f" over {_duration(self.over)}"
        return (
            f"rate({self.metric}) {self.op} {_number(self.value)} per {_duration(self.per)}"
            f"{over}{_pending(self.hold)}"
        )


UPDATE_FAILURES = frozenset({"failed", "timed_out", "rolled_back"})


@dataclass(frozen=True)
class UpdateFailed:
    """`update failed`: the latest finished update of the device did not succeed."""

    hold: float = 0.0

    def measure(self, observation: Observation) -> float | None:
        if observation.update is None:
            return None  # never updated: nothing to judge
        return 1.0 if observation.update in UPDATE_FAILURES else 0.0

    def holds(self, observation: Observation) -> bool | None:
        measured = self.measure(observation)
        return None if measured is None else measured == 1.0

    def __str__(self) -> str:
        return f"update failed{_pending(self.hold)}"


Condition = Threshold | Offline | HealthFlag | RateOfChange | UpdateFailed


# --- the grammar ---------------------------------------------------------------------------------


class ConditionError(ValueError):
    """A condition that does not parse: what is wrong, where (`position`, 0-based), in `field`."""

    def __init__(
        self, what: str, *, text: str, position: int, field: str = "condition", hint: str = ""
    ) -> None:
        message = f"{field}: {what} at column {position + 1}" + (f": {hint}" if hint else "")
        super().__init__(message)
        self.what = what
        self.text = text
        self.position = position
        self.field = field


_TOKEN = re.compile(
    r"\s*(?:(?P<number>-?\d+(?:\.\d+)?(?:[smhd](?![A-Za-z0-9_]))?)"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_.]*)"
    r"|(?P<op><=|>=|!=|==|<|>|=)"
    r"|(?P<punct>[()]))"
)
_FORMS = (
    "METRIC OP NUMBER [for DURATION], offline for DURATION, health = FLAG [for DURATION], "
    "update failed [for DURATION] "
    "or rate(METRIC) OP NUMBER per DURATION [over DURATION] [for DURATION]"
)


@dataclass(frozen=True)
class _Token:
    kind: str  # number, name, op, punct, end
    text: str
    position: int


class _Parser:
    def __init__(self, text: str, field: str) -> None:
        self.text, self.field = text, field
        self.tokens = self._tokenize()
        self.index = 0

    def error(self, what: str, token: _Token, hint: str = "") -> ConditionError:
        return ConditionError(
            what, text=self.text, position=token.position, field=self.field, hint=hint
        )

    def _tokenize(self) -> list[_Token]:
        tokens, position = [], 0
        while True:
            match = _TOKEN.match(self.text, position)
            if match is None or match.lastgroup is None:
                rest = len(self.text) - len(self.text[position:].lstrip())
                if rest == len(self.text):
                    tokens.append(_Token("end", "", len(self.text.rstrip())))
                    return tokens
                bad = _Token("char", self.text[rest], rest)
                raise self.error(f"unexpected character {bad.text!r}", bad, f"write {_FORMS}")
            kind = match.lastgroup
            tokens.append(_Token(kind, match.group(kind), match.start(kind)))
            position = match.end()

    @property
    def peek(self) -> _Token:
        return self.tokens[self.index]

    def after(self, n: int) -> _Token:
        return self.tokens[min(self.index + n, len(self.tokens) - 1)]

    def take(self) -> _Token:
        token = self.tokens[self.index]
        self.index = min(self.index + 1, len(self.tokens) - 1)
        return token

    def describe(self, token: _Token) -> str:
        return "end of condition" if token.kind == "end" else repr(token.text)

    def expect(self, kind: str, what: str, text: str | None = None) -> _Token:
        token = self.take()
        if token.kind != kind or (text is not None and token.text.lower() != text):
            raise self.error(f"expected {what}, found {self.describe(token)}", token)
        return token

    def keyword(self, word: str) -> bool:
        if self.peek.kind == "name" and self.peek.text.lower() == word:
            self.take()
            return True
        return False

    def number(self) -> float:
        token = self.expect("number", "a number")
        if token.text[-1] in _UNITS:
            raise self.error(f"expected a number, found the duration {token.text!r}", token)
        return float(token.text)

    def duration(self) -> float:
        token = self.expect("number", "a duration such as 30s, 10m, 4h or 1d")
        unit = token.text[-1] if token.text[-1] in _UNITS else "s"
        seconds = float(token.text.rstrip("smhd")) * _UNITS[unit]
        if seconds <= 0 or seconds > 366 * 86400:
            raise self.error(f"duration {token.text!r} out of range", token, "0 < it <= 366d")
        return seconds

    def op(self) -> str:
        token = self.expect("op", "an operator (<, <=, >, >=, =, !=)")
        return "=" if token.text == "==" else token.text

    def hold(self) -> float:
        return self.duration() if self.keyword("for") else 0.0

    def metric(self) -> str:
        token = self.expect("name", "a metric name")
        if token.text.lower() in {"for", "per", "over"}:
            raise self.error(f"expected a metric name, found {token.text!r}", token)
        return token.text

    def parse(self) -> Condition:
        first = self.peek
        if first.kind == "end":
            raise self.error("empty condition", first, f"write {_FORMS}")
        if first.kind != "name":
            raise self.error(f"unexpected {first.text!r}", first, f"write {_FORMS}")
        word = first.text.lower()
        following = self.tokens[self.index + 1]
        condition: Condition
        if word == "offline" and following.kind != "op":
            self.take()
            self.expect("name", "'for' after offline", "for")
            condition = Offline(self.duration())
        elif word == "health" and following.kind == "op" and self.after(2).kind == "name":
            self.take()
            sign = self.take()
            if sign.text not in {"=", "=="}:
                raise self.error(f"health takes '=', not {sign.text!r}", sign)
            flag = self.expect("name", "a health flag")
            if flag.text not in HEALTH_FLAGS:
                known = ", ".join(sorted(HEALTH_FLAGS))
                raise self.error(f"unknown health flag {flag.text!r}", flag, f"one of {known}")
            condition = HealthFlag(flag.text, self.hold())
        elif word == "update" and following.kind == "name":
            self.take()
            self.expect("name", "'failed' after update", "failed")
            condition = UpdateFailed(self.hold())
        elif word == "rate" and following.text == "(":
            condition = self.rate()
        else:
            metric, op, value = self.metric(), self.op(), self.number()
            condition = Threshold(metric, op, value, self.hold())
        end = self.take()
        if end.kind != "end":
            raise self.error(f"unexpected {end.text!r}", end, "expected the end of the condition")
        return condition

    def rate(self) -> RateOfChange:
        self.take()
        self.expect("punct", "'('", "(")
        metric = self.metric()
        self.expect("punct", "')'", ")")
        op, value = self.op(), self.number()
        self.expect("name", "'per DURATION' (the unit of time of the rate)", "per")
        per = self.duration()
        over = self.duration() if self.keyword("over") else per
        return RateOfChange(metric, op, value, per, over, self.hold())


def parse_condition(text: str, *, field: str = "condition") -> Condition:
    """Parse a condition; raises ConditionError naming `field` and the position of the mistake."""
    if len(text) > MAX_CONDITION_LENGTH:
        raise ConditionError(
            f"too long ({len(text)} characters, at most {MAX_CONDITION_LENGTH})",
            text=text,
            position=MAX_CONDITION_LENGTH,
            field=field,
        )
    return _Parser(text, field).parse()


def _overlap(condition: Threshold, clear: Threshold) -> float | None:
    """A value at which both hold (they would fire and clear at once), else None."""
    marks = sorted({condition.value, clear.value})
    candidates = [marks[0] - 1, marks[-1] + 1, (marks[0] + marks[-1]) / 2]
    for mark in marks:
        candidates += [mark, math.nextafter(mark, -math.inf), math.nextafter(mark, math.inf)]
    for value in candidates:
        if OPERATORS[condition.op](value, condition.value) and OPERATORS[clear.op](
            value, clear.value
        ):
            return value
    return None


# --- the rule ------------------------------------------------------------------------------------


def _condition_value(value: Any, info: ValidationInfo) -> Condition:
    name = info.field_name or "condition"
    if isinstance(value, Threshold | Offline | HealthFlag | RateOfChange | UpdateFailed):
        return value
    if not isinstance(value, str):
        raise ValueError(f"{name}: a condition is a string, such as 'battery < 15 for 10m'")
    return parse_condition(value, field=name)


# Stored and shown as its text; parsed (and checked) once, on the way in.
ConditionText = Annotated[
    Condition,
    PlainValidator(_condition_value),
    PlainSerializer(str, return_type=str),
    WithJsonSchema({"type": "string", "examples": ["battery < 15 for 10m", "offline for 30m"]}),
]


def _channel_id(value: object) -> object:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.:\- ]*$"
_RESERVED_LABELS = frozenset({"rule", "severity"})
_COMMAND = r"^[a-z][a-z0-9_.-]{0,99}$"


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IncidentSettings(_Part):
    """When many devices of one notification group fire together, they become one incident.

    Either threshold will do: `min_devices` alerts, or `min_fraction` of the devices in the
    rule's scope, started firing within `window`."""

    min_devices: int | None = Field(default=50, ge=2)
    min_fraction: float | None = Field(default=None, gt=0, le=1)
    window: Annotated[Seconds, Field(gt=0)] = 300

    @model_validator(mode="after")
    def _some_threshold(self) -> IncidentSettings:
        if self.min_devices is None and self.min_fraction is None:
            raise ValueError("incident: give min_devices, min_fraction or both")
        return self


class RemediationStep(_Part):
    """One rung of the escalation ladder: a command sent to the device, then a wait for the
    alert to resolve before the next rung."""

    action: str = Field(
        pattern=_COMMAND,
        description="the device command to send: restart_service, reboot, safe_mode, "
        "recalibrate, disable_sensor, health_check, rollback, ...",
    )
    args: dict[str, Any] = Field(default_factory=dict)
    wait: Annotated[Seconds, Field(gt=0)] = Field(
        default=300, description="how long the alert may keep firing before the next step"
    )


class Remediation(_Part):
    """Automatic failure recovery attached to a rule.

    `on: firing` works through `steps` while the alert fires, holding its notification back
    (the platform heals before anyone is paged); an alert still firing after the last step
    escalates: it is notified, marked escalated and raised to critical. `on: resolved` sends the
    first step once when the alert resolves (a device back from offline gets a health check).
    `cooldown` keeps a device from being remediated by the same rule again too soon, and the
    budget (`max_fraction` of the scope, at least `min_devices`, per `period`) is a circuit
    breaker: past it, alerts are notified instead of remediated."""

    on: Literal["firing", "resolved"] = "firing"
    steps: list[RemediationStep] = Field(min_length=1, max_length=10)
    cooldown: Seconds = 3600
    max_fraction: float = Field(default=0.05, gt=0, le=1)
    min_devices: int = Field(default=1, ge=0)
    period: Annotated[Seconds, Field(gt=0)] = 3600

    def budget(self, scope: int) -> int:
        """Devices the policy may remediate per period in a scope of `scope` devices."""
        return max(self.min_devices, math.floor(self.max_fraction * scope))


class AlertRule(BaseModel):
    """A rule as stored: validated once, conditions parsed, durations in seconds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=100, pattern=_NAME)
    scope: str = Field(default="", max_length=4000, description="fleet query; empty: all")
    condition: ConditionText
    clear: ConditionText | None = None
    severity: Severity = Severity.WARNING
    labels: dict[str, Annotated[str, Field(max_length=200)]] = Field(
        default_factory=dict, max_length=20
    )
    group_by: list[str] = Field(default_factory=lambda: ["rule"], max_length=10)
    group_wait: Seconds = 30
    group_interval: Annotated[Seconds, Field(gt=0)] = 300
    repeat_interval: Annotated[Seconds, Field(gt=0)] = 4 * 3600
    channels: list[Annotated[str, BeforeValidator(_channel_id)]] = Field(
        default_factory=list, max_length=20
    )
    flap_flips: int = Field(
        default=4, ge=2, le=100, description="firing/resolved changes within flap_window"
    )
    flap_window: Annotated[Seconds, Field(gt=0)] = 1800
    flap_settle: Seconds = Field(
        default=900, description="how long a flapping alert's clear must hold to resolve"
    )
    incident: IncidentSettings | None = Field(
        default_factory=IncidentSettings,
        description="many devices of one group firing together become one incident; null: never",
    )
    remediation: Remediation | None = None

    @field_validator("labels")
    @classmethod
    def _labels(cls, labels: dict[str, str]) -> dict[str, str]:
        for name in labels:
            check_label(name)
            if name in _RESERVED_LABELS:
                raise ValueError(f"label {name!r} is set by the rule itself")
        return labels

    @field_validator("group_by")
    @classmethod
    def _group_by(cls, names: list[str]) -> list[str]:
        for name in names:
            check_label(name)
        if len(set(names)) != len(names):
            raise ValueError("group_by names a label twice")
        return names

    @model_validator(mode="after")
    def _consistent(self) -> AlertRule:
        condition, clear = self.condition, self.clear
        if isinstance(condition, Threshold) and isinstance(clear, Threshold):
            both = _overlap(condition, clear) if condition.metric == clear.metric else None
            if both is not None:
                raise ValueError(
                    f"clear {str(clear)!r} holds together with condition {str(condition)!r} "
                    f"(at {both:g}): the alert would fire and clear at once"
                )
        return self

    @property
    def pending(self) -> float:
        """Seconds the condition must hold before the alert fires."""
        return float(self.condition.hold)

    def judge(self, observation: Observation) -> tuple[bool | None, bool | None]:
        """(condition holds, clear holds) at the observation; None where the data is missing.

        Without an explicit clear, the clear is the condition's negation.
        """
        holds = self.condition.holds(observation)
        if self.clear is None:
            return holds, None if holds is None else not holds
        return holds, self.clear.holds(observation)

    def measure(self, observation: Observation) -> float | None:
        measured = self.condition.measure(observation)
        return None if measured is None else float(measured)
