"""What the simulator counts while it runs, and the summary it prints at the end.

The summary says what really happened, so tests and benchmarks can hold it against what the
server recorded: which devices enrolled, how many messages went out, how updates ended, and
which devices each fault hit and which a command healed.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from fleetkeeper.sim.scenario import FAULT_KINDS, HEALABLE_FAULTS


@dataclass(slots=True)
class Lag:
    """How late actions started against their schedule (seconds)."""

    count: int = 0
    total: float = 0.0
    worst: float = 0.0
    behind: int = 0  # later than the action's own interval

    def note(self, lag: float, interval: float) -> None:
        """One action that started `lag` seconds after it was due."""
        lag = max(0.0, lag)
        self.count += 1
        self.total += lag
        self.worst = max(self.worst, lag)
        if lag > interval:
            self.behind += 1

    def summary(self) -> dict[str, Any]:
        return {
            "actions": self.count,
            "mean_lag": round(self.total / self.count, 4) if self.count else 0.0,
            "max_lag": round(self.worst, 4),
            "behind": self.behind,
        }


@dataclass(slots=True)
class Stats:
    devices: int
    enrolled: int = 0
    resumed: int = 0  # enrolled before (same seed, same server): carried on with the same key
    enroll_failed: int = 0
    requests: Counter[str] = field(default_factory=Counter)  # by endpoint
    statuses: Counter[int] = field(default_factory=Counter)
    lost: int = 0  # messages a flaky link swallowed before they reached the server
    unreachable: int = 0  # requests that got no answer (network error, timeout, 5xx)
    rate_limited: int = 0  # 429 answers (their Retry-After was honoured)
    errors: int = 0  # refusals and server errors other than 429
    telemetry_accepted: int = 0
    telemetry_rejected: int = 0
    telemetry_dropped: int = 0  # points pushed out of a full offline buffer
    commands: Counter[str] = field(default_factory=Counter)
    updates: Counter[str] = field(default_factory=Counter)  # A/B updates, commands' and jobs'
    jobs: Counter[str] = field(default_factory=Counter)  # deployment jobs: received, final reports
    auth_failures: int = 0  # failed authentications a compromised device attempted
    stopped: Counter[str] = field(default_factory=Counter)  # why devices stopped for good
    faults: dict[str, set[str]] = field(default_factory=lambda: {k: set() for k in FAULT_KINDS})
    # Devices a command cured, by fault kind (`sim.remedies`).
    healed: dict[str, set[str]] = field(
        default_factory=lambda: {k: set() for k in sorted(HEALABLE_FAULTS)}
    )
    lag: Lag = field(default_factory=Lag)
    recent: Lag = field(default_factory=Lag)  # since the last progress report
    first_error: str | None = None

    @property
    def messages_sent(self) -> int:
        return sum(self.requests.values())

    def hit(self, kind: str, serial: str) -> bool:
        """Note that `kind` acts on the device; True the first time."""
        hit = self.faults.setdefault(kind, set())
        if serial in hit:
            return False
        hit.add(serial)
        return True

    def late(self, lag: float, interval: float) -> None:
        self.lag.note(lag, interval)
        self.recent.note(lag, interval)

    def error(self, reason: str) -> None:
        self.errors += 1
        if self.first_error is None:
            self.first_error = reason

    def summary(self, **extra: Any) -> dict[str, Any]:
        updates = {k: self.updates.get(k, 0) for k in UPDATE_OUTCOMES}
        jobs = {k: self.jobs.get(k, 0) for k in JOB_OUTCOMES}
        return {
            "devices": self.devices,
            "enrolled": self.enrolled,
            "resumed": self.resumed,
            "enroll_failed": self.enroll_failed,
            "messages_sent": self.messages_sent,
            "messages_lost": self.lost,
            "unreachable": self.unreachable,
            "requests": dict(sorted(self.requests.items())),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "rate_limited": self.rate_limited,
            "errors": self.errors,
            "first_error": self.first_error,
            "telemetry": {
                "accepted": self.telemetry_accepted,
                "rejected": self.telemetry_rejected,
                "dropped": self.telemetry_dropped,
            },
            "commands": dict(sorted(self.commands.items())),
            "updates": updates,
            "jobs": jobs,
            "auth_failures": self.auth_failures,
            "stopped": dict(sorted(self.stopped.items())),
            "faults": {k: sorted(v) for k, v in sorted(self.faults.items())},
            "healed": {k: sorted(v) for k, v in sorted(self.healed.items())},
            "schedule": self.lag.summary(),
            **extra,
        }


UPDATE_OUTCOMES = ("attempted", "succeeded", "rolled_back", "failed", "canceled")
JOB_OUTCOMES = ("received", "succeeded", "failed", "rolled_back", "canceled", "closed")


def endpoint(path: str) -> str:
    """The device API endpoint of a request path: enroll, auth, checkin, commands, ..."""
    _, _, rest = path.partition("/device/v1/")
    return rest.split("/", 1)[0] or "other"
