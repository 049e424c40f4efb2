"""What a deployment does next: a pure function of its persisted state, its counts and the time.

The scheduler (services/scheduler.py) builds a `Snapshot` from the database, calls `plan`,
and persists the returned `Plan` in one transaction before any device hears of it.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from fleetkeeper.services.rollout.health import Verdict
from fleetkeeper.services.rollout.policy import RolloutPolicy

# Deployment states.
SCHEDULED = "scheduled"  # start_at not reached yet
RUNNING = "running"
PAUSED = "paused"  # a human resumes; devices already working carry on
STOPPED = "stopped"  # no new devices; running ones finish; final
ABORTED = "aborted"  # the rest canceled, optionally rolled back; final
CANCELED = "canceled"  # an operator canceled it; final
FINISHED = "finished"  # every phase done; final
DEPLOYMENT_STATES = (SCHEDULED, RUNNING, PAUSED, STOPPED, ABORTED, CANCELED, FINISHED)
DEPLOYMENT_FINAL = frozenset({STOPPED, ABORTED, CANCELED, FINISHED})


@dataclass(frozen=True)
class RolloutState:
    """What the planner remembers between ticks (columns of the deployment row)."""

    state: str = RUNNING
    phase: int = 0  # index into policy.phases
    phase_started_at: datetime | None = None
    threshold_met_at: datetime | None = None  # success threshold first met (soak starts)
    rate: float = 0.0  # devices per minute now; 0 means "not started: use base"
    credit: float = 0.0  # devices owed by pacing, carried between ticks
    last_tick_at: datetime | None = None
    notified_at_rate: int = 0  # notified_total when the rate last changed
    succeeded_at_rate: int = 0  # succeeded_total when the rate last changed
    reason: str | None = None  # why paused / aborted / stopped


@dataclass(frozen=True)
class PhaseCounts:
    """One phase's executions: how many there are and where they stand."""

    size: int  # executions assigned to the phase (skipped ones excluded)
    states: Mapping[str, int]  # execution state -> count
    failures: Mapping[str, int] = field(default_factory=dict)  # reason or kind -> count
    ready: int = 0  # queued executions that may be notified now (window open, not busy)


@dataclass(frozen=True)
class Snapshot:
    policy: RolloutPolicy
    rollout: RolloutState
    phases: Sequence[PhaseCounts]  # one per policy phase, same index
    notified_total: int  # executions ever notified (retries count again)
    succeeded_total: int
    in_progress: int  # ACTIVE executions of this deployment
    continuous: bool = False  # devices that match later join: never finishes by itself
    health: Verdict | None = None


@dataclass(frozen=True)
class Event:
    kind: str  # phase_started, rate_increased, paused, aborted, finished, stopped, ...
    detail: dict[str, Any]


@dataclass(frozen=True)
class Plan:
    rollout: RolloutState  # persist this
    notify: int = 0  # notify this many ready executions of phases <= rollout.phase
    events: Sequence[Event] = ()
    cancel_queued: bool = False  # abort / cancel / end behaviour "cancel"
    rollback: bool = False  # ask succeeded devices to roll back (abort + rollback_on_abort)
    next_tick_at: datetime | None = None  # None: only when something changes


def phase_sizes(policy: RolloutPolicy, total: int) -> list[int]:
    """Cumulative device counts at the end of each phase; the last always covers `total`."""
    raise NotImplementedError


def plan(snapshot: Snapshot, now: datetime) -> Plan:
    raise NotImplementedError


def jitter_offsets(count: int, spread: float, rng: random.Random) -> list[float]:
    """Start offsets in seconds within [0, spread) for `count` devices of one wave."""
    raise NotImplementedError


def retry_delay(
    policy: RolloutPolicy, kind: str, attempt: int, rng: random.Random
) -> float | None:
    """Seconds before retry number `attempt` (1 = first retry) of a `kind` failure; None: no more."""
    raise NotImplementedError


def eta(snapshot: Snapshot, now: datetime) -> datetime | None:
    """When the deployment should be done at its current pace; None when it cannot say."""
    raise NotImplementedError
