"""The vocabulary of alerting: labels, matchers, fingerprints, alerts and their states.

An alert is one condition of one rule on one subject (a device, or a site for fleet-wide
rules), identified by its fingerprint: the rule and its labels. The same condition therefore
never opens twice; it goes pending → firing → (acknowledged) → resolved, and a new episode of
the same fingerprint after it resolved is a new alert.

Labels are plain strings: `rule`, `severity`, `device`, `serial`, `model`, `site`, `tenant`,
and whatever a rule adds. Matchers select alerts by labels, as Prometheus Alertmanager's do:
`name=value`, `name!=value`, `name=~regex`, `name!~regex` (regexes anchored at both ends).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from functools import cached_property

Labels = Mapping[str, str]

_LABEL = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]{0,63}$")
_MATCHER = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*(=~|!~|!=|=)\s*(.*?)\s*$")


class AlertState(StrEnum):
    PENDING = "pending"  # the condition holds, not yet for the rule's `for` duration
    FIRING = "firing"  # it has held long enough: operators hear of it
    RESOLVED = "resolved"  # the clearing condition held (or an operator resolved it)


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


def check_label(name: str) -> str:
    if not _LABEL.match(name):
        raise ValueError(
            f"label name {name!r}: letters, digits, _ and ., not starting with a digit"
        )
    return name


@dataclass(frozen=True)
class Matcher:
    name: str
    op: str  # "=", "!=", "=~", "!~"
    value: str

    def __post_init__(self) -> None:
        check_label(self.name)
        if self.op not in {"=", "!=", "=~", "!~"}:
            raise ValueError(f"matcher operator {self.op!r}: use =, !=, =~ or !~")
        if self.op in {"=~", "!~"}:
            try:
                re.compile(self.value)
            except re.error as exc:
                raise ValueError(f"matcher {self.name}{self.op}: bad regex ({exc})") from None

    @cached_property
    def _regex(self) -> re.Pattern[str]:
        return re.compile(f"(?:{self.value})\\Z")

    def matches(self, labels: Labels) -> bool:
        """A missing label reads as the empty string (Alertmanager's rule)."""
        value = labels.get(self.name, "")
        if self.op == "=":
            return value == self.value
        if self.op == "!=":
            return value != self.value
        found = self._regex.match(value) is not None
        return found if self.op == "=~" else not found

    @classmethod
    def parse(cls, text: str) -> Matcher:
        """`site=oslo-3`, `severity!=info`, `serial=~SN-1.*` (quotes around the value optional)."""
        found = _MATCHER.match(text)
        if not found:
            raise ValueError(
                f"matcher {text!r}: write NAME=VALUE, NAME!=VALUE, NAME=~RE or NAME!~RE"
            )
        name, op, value = found.groups()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        return cls(name, op, value)

    def __str__(self) -> str:
        return f"{self.name}{self.op}{json.dumps(self.value)}"


def matches_all(matchers: tuple[Matcher, ...] | list[Matcher], labels: Labels) -> bool:
    return all(m.matches(labels) for m in matchers)


def fingerprint(rule: str, labels: Labels) -> str:
    """The identity of an alert: its rule and its labels, order-free (16 hex digits)."""
    canonical = json.dumps([rule, sorted(labels.items())], separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


@dataclass
class Alert:
    """One episode of one rule's condition on one subject."""

    rule: str
    labels: dict[str, str]
    severity: Severity = Severity.WARNING
    state: AlertState = AlertState.PENDING
    active_since: datetime | None = None  # when the condition started to hold
    fired_at: datetime | None = None
    resolved_at: datetime | None = None
    acknowledged_at: datetime | None = None
    acknowledged_by: str | None = None
    value: float | None = None  # the last observed value, for the notification text
    annotations: dict[str, str] = field(default_factory=dict)  # summary, description
    flapping: bool = False
    flips: list[datetime] = field(default_factory=list)  # recent firing/resolved changes
    acknowledged_note: str | None = None
    resolved_by: str | None = None  # the operator who resolved it; None: its clear held
    clear_since: datetime | None = None  # when the clearing condition started to hold

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.rule, self.labels)

    @property
    def acknowledged(self) -> bool:
        return self.acknowledged_at is not None
