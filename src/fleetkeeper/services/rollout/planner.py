"""What a deployment does next: a pure function of its persisted state, its counts and the time.

The scheduler (services/scheduler.py) builds a `Snapshot` from the database, calls `plan`,
and persists the returned `Plan` in one transaction before any device hears of it.

One tick of a running deployment, in this order:

1. **Schedule.** Before `start_at` a scheduled deployment waits; at `end_at` it stops (no new
   devices) or is canceled (`end_behaviour`).
2. **Error criteria.** For every phase up to the current one (an earlier phase's last devices
   may fail after the next phase began), each criterion of `policy.criteria()` compares the
   failing executions with the executed ones (succeeded + failed, timed out, rolled back).
   It trips when *more than* `threshold` % fail, so a threshold of 0 trips on the first
   failure and 100 never trips, once at least `min_executed` devices are done. `on_error`
   then pauses or aborts.
3. **Health watch.** A verdict that the updated devices do worse pauses the deployment.
4. **Phases.** A phase is done when `success_threshold` % of it succeeded (an empty phase at
   once); the next one starts when that has held for `soak` seconds. After the last phase is
   done and nothing is queued or at work, the deployment is finished (a continuous one never
   finishes by itself). A phase that can no longer reach its threshold (nothing left to run
   in it) pauses the deployment instead of letting it hang.
5. **Pacing.** Exponential, like AWS IoT Jobs: `base_per_minute` devices a minute, times
   `increment_factor` each time `increase_after_notified` more devices were notified or
   `increase_after_succeeded` more succeeded at the current rate, up to `max_per_minute`,
   never more than `max_in_progress` at work. Time earns *credit* (rate * minutes since the
   last tick, fractions carried), so a tick every second and one every ten seconds notify the
   same devices a minute. An increase from notifications takes effect at the device that
   reached the count, even in the middle of a tick; one from successes takes effect from the
   previous tick, when the device that made it was last seen (the scheduler honours
   `next_tick_at`, so that is at most one device's interval at the old rate early). At most a
   minute's credit accrues in one tick, and while nothing can be notified the credit is held
   to one second's worth, so a stalled wave never bursts when it frees up.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from fractions import Fraction
from typing import Any

from fleetkeeper.services.rollout import windows
from fleetkeeper.services.rollout.execution import FINAL, UNSUCCESSFUL, State
from fleetkeeper.services.rollout.health import Verdict
from fleetkeeper.services.rollout.policy import AbortCriterion, Rate, RolloutPolicy

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

    def count(self, *states: str) -> int:
        return sum(self.states.get(str(state), 0) for state in states)

    @property
    def pending(self) -> int:
        """Executions not in a final state: queued, or a device at work on them."""
        return sum(n for state, n in self.states.items() if state not in FINAL)


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
    """A timeline entry. `detail` is JSON; its `phase` is the index into policy.phases."""

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


# Float slack when credit is compared with whole devices (six times 1/6 is not quite 1).
_EPSILON = 1e-9
_UNSUCCESSFUL = tuple(str(state) for state in UNSUCCESSFUL)
_SUCCEEDED = str(State.SUCCEEDED)
_QUEUED = str(State.QUEUED)
# The longest retry delay handed out: a year (policy durations stop there too).
MAX_RETRY_DELAY = 366 * 86400.0


def phase_sizes(policy: RolloutPolicy, total: int) -> list[int]:
    """Cumulative device counts at the end of each phase; the last always covers `total`.

    A percent phase reaches ceil(percent % of total), at least one device; a count phase
    `count` devices; neither more than `total`, and never fewer than the phase before (a list
    mixing counts and percentages may otherwise go down). Small fleets repeat boundaries: an
    empty phase just passes.
    """
    if total < 0:
        raise ValueError(f"a deployment cannot target {total} devices")
    sizes: list[int] = []
    reached = 0
    for spec in policy.phases:
        if spec.count is not None:
            size = spec.count
        else:
            # Decimal arithmetic: 14.3 % of 1000 is 143, not ceil(143.00000000000003).
            share = Fraction(str(spec.percent)) * total / 100
            size = max(math.ceil(share), 1)
        reached = max(reached, min(size, total))
        sizes.append(reached)
    sizes[-1] = total
    return sizes


def plan(snapshot: Snapshot, now: datetime) -> Plan:
    """The deployment's next step at `now` (see the module docstring for the rules)."""
    _check(snapshot, now)
    rollout = snapshot.rollout
    if rollout.state in DEPLOYMENT_FINAL or rollout.state == PAUSED:
        return Plan(rollout=rollout)
    schedule = snapshot.policy.schedule
    tick = _Tick(rollout)
    if schedule.end_at is not None:
        if now >= schedule.end_at:
            return _end(tick, snapshot.policy, now)
        tick.wake(schedule.end_at)
    if rollout.state == SCHEDULED:
        if schedule.start_at is not None and now < schedule.start_at:
            return Plan(rollout=rollout, next_tick_at=schedule.start_at)
        tick.update(state=RUNNING, reason=None, phase_started_at=now, last_tick_at=None)
        tick.emit("started", phase=rollout.phase, size=snapshot.phases[rollout.phase].size)
    elif rollout.state != RUNNING:
        raise ValueError(f"unknown deployment state {rollout.state!r}")
    elif rollout.phase_started_at is None:
        tick.update(phase_started_at=now)
        tick.emit("phase_started", phase=rollout.phase, size=snapshot.phases[rollout.phase].size)
    return _run(tick, snapshot, now)


def _run(tick: _Tick, snapshot: Snapshot, now: datetime) -> Plan:
    policy = snapshot.policy
    tripped = _tripped(snapshot)
    if tripped is not None:
        return _on_error(tick, policy, tripped, now)
    if snapshot.health is not None and snapshot.health.worse:
        findings = list(snapshot.health.findings)
        reason = "health watch: " + ("; ".join(findings) or "the updated devices do worse")
        tick.update(state=PAUSED, reason=reason, last_tick_at=now)
        tick.emit("health_watch", phase=tick.rollout.phase, findings=findings, reason=reason)
        return tick.plan()
    started = _advance(tick, snapshot, now)
    current = tick.rollout.phase
    counts = snapshot.phases[current]
    last = current == len(policy.phases) - 1
    # The success threshold gates the next phase; after the last one there is none to gate, so
    # a last phase with nothing left to run finishes (its failures stayed under error_threshold).
    if last and _over(snapshot):
        met = _done(policy, current, counts)
        tick.update(
            state=FINISHED,
            reason=None if met else "finished below the success threshold",
            last_tick_at=now,
        )
        tick.emit("finished", succeeded=snapshot.succeeded_total, threshold_met=met)
        return tick.plan()
    if not last and _stalled(snapshot, current):
        return _stall(tick, policy, current, counts, now)
    return _pace(tick, snapshot, now, phase_started=started)


# --- the pieces of a tick ----------------------------------------------------------------------


class _Tick:
    """The decision being built: the new state, its events and when to look again."""

    def __init__(self, rollout: RolloutState) -> None:
        self.rollout = rollout
        self.events: list[Event] = []
        self.wakes: list[datetime] = []

    def update(self, **changes: Any) -> None:
        self.rollout = replace(self.rollout, **changes)

    def emit(self, kind: str, **detail: Any) -> None:
        self.events.append(Event(kind, detail))

    def wake(self, at: datetime) -> None:
        self.wakes.append(at)

    def plan(self, notify: int = 0, *, cancel_queued: bool = False, rollback: bool = False) -> Plan:
        final = self.rollout.state in DEPLOYMENT_FINAL or self.rollout.state == PAUSED
        return Plan(
            rollout=self.rollout,
            notify=notify,
            events=tuple(self.events),
            cancel_queued=cancel_queued,
            rollback=rollback,
            next_tick_at=None if final else min(self.wakes, default=None),
        )


def _check(snapshot: Snapshot, now: datetime) -> None:
    if now.tzinfo is None:
        raise ValueError("plan() needs an aware `now`")
    if len(snapshot.phases) != len(snapshot.policy.phases):
        raise ValueError(
            f"{len(snapshot.phases)} phase counts for {len(snapshot.policy.phases)} phases"
        )
    if not 0 <= snapshot.rollout.phase < len(snapshot.policy.phases):
        raise ValueError(f"phase {snapshot.rollout.phase} is not one of the policy's phases")


def _end(tick: _Tick, policy: RolloutPolicy, now: datetime) -> Plan:
    end_at = policy.schedule.end_at
    assert end_at is not None
    reason = f"the schedule ended at {end_at.isoformat()}"
    cancel = policy.schedule.end_behaviour == "cancel"
    tick.update(state=CANCELED if cancel else STOPPED, reason=reason, last_tick_at=now)
    tick.emit("canceled" if cancel else "stopped", reason=reason, end_at=end_at.isoformat())
    return tick.plan(cancel_queued=cancel)


@dataclass(frozen=True)
class _Trip:
    name: str  # error_threshold, abort_criteria[0], ...
    criterion: AbortCriterion
    phase: int
    failing: int
    executed: int


def _tripped(snapshot: Snapshot) -> _Trip | None:
    """The first criterion that holds for a phase up to the current one, if any."""
    criteria = snapshot.policy.criteria()
    for index in range(snapshot.rollout.phase + 1):
        counts = snapshot.phases[index]
        unsuccessful = counts.count(*_UNSUCCESSFUL)
        executed = counts.count(_SUCCEEDED) + unsuccessful
        for position, criterion in enumerate(criteria):
            if criterion.failure == "any":
                failing = unsuccessful
            else:
                failing = counts.failures.get(criterion.failure, 0)
            # More than threshold %, in integers: 0 % trips on one failure, 100 % never.
            over = failing * 100 > criterion.threshold * executed
            if over and executed >= criterion.min_executed:
                name = "error_threshold" if position == 0 else f"abort_criteria[{position - 1}]"
                return _Trip(name, criterion, index, failing, executed)
    return None


def _on_error(tick: _Tick, policy: RolloutPolicy, trip: _Trip, now: datetime) -> Plan:
    criterion = trip.criterion
    how = "" if criterion.failure == "any" else f" with {criterion.failure}"
    reason = (
        f"phase {trip.phase + 1}: {trip.failing} of {trip.executed} executed devices failed{how} "
        f"({trip.failing * 100 / trip.executed:.1f} % > {criterion.threshold:g} %, {trip.name})"
    )
    detail = {
        "criterion": trip.name,
        "failure": criterion.failure,
        "threshold": criterion.threshold,
        "min_executed": criterion.min_executed,
        "phase": trip.phase,
        "failing": trip.failing,
        "executed": trip.executed,
        "reason": reason,
    }
    if policy.on_error == "pause":
        tick.update(state=PAUSED, reason=reason, last_tick_at=now)
        tick.emit("paused", **detail)
        return tick.plan()
    tick.update(state=ABORTED, reason=reason, last_tick_at=now)
    tick.emit("aborted", **detail, rollback=policy.rollback_on_abort)
    return tick.plan(cancel_queued=True, rollback=policy.rollback_on_abort)


def _threshold(policy: RolloutPolicy, index: int) -> float:
    spec = policy.phases[index]
    return policy.success_threshold if spec.success_threshold is None else spec.success_threshold


def _soak(policy: RolloutPolicy, index: int) -> float:
    spec = policy.phases[index]
    return policy.soak if spec.soak is None else spec.soak


def _done(policy: RolloutPolicy, index: int, counts: PhaseCounts) -> bool:
    if counts.size <= 0:
        return True
    return counts.count(_SUCCEEDED) * 100 >= _threshold(policy, index) * counts.size


def _advance(tick: _Tick, snapshot: Snapshot, now: datetime) -> bool:
    """Move through the phases that are done and have soaked; True when one started."""
    policy = snapshot.policy
    last = len(policy.phases) - 1
    started = False
    while True:
        index = tick.rollout.phase
        counts = snapshot.phases[index]
        if not _done(policy, index, counts):
            if tick.rollout.threshold_met_at is not None:
                tick.update(threshold_met_at=None)  # it no longer holds: the soak restarts
            return started
        met = tick.rollout.threshold_met_at
        if met is None and counts.size > 0:
            met = now
            tick.update(threshold_met_at=now)
        if index == last:
            return started
        if met is not None:  # an empty phase passes without soaking
            soaked_at = met + timedelta(seconds=_soak(policy, index))
            if now < soaked_at:
                tick.wake(soaked_at)
                return started
        following = index + 1
        tick.update(phase=following, phase_started_at=now, threshold_met_at=None)
        tick.emit("phase_started", phase=following, size=snapshot.phases[following].size)
        started = True


def _over(snapshot: Snapshot) -> bool:
    """Nothing is queued or at work, and no device will join (not continuous)."""
    if snapshot.continuous or snapshot.in_progress > 0:
        return False
    return not any(phase.pending for phase in snapshot.phases)


def _stalled(snapshot: Snapshot, current: int) -> bool:
    """The current phase misses its threshold and nothing left in reach can change that."""
    if snapshot.in_progress > 0 or _done(snapshot.policy, current, snapshot.phases[current]):
        return False
    return not any(phase.pending for phase in snapshot.phases[: current + 1])


def _stall(
    tick: _Tick, policy: RolloutPolicy, current: int, counts: PhaseCounts, now: datetime
) -> Plan:
    succeeded, threshold = counts.count(_SUCCEEDED), _threshold(policy, current)
    reason = (
        f"phase {current + 1} cannot reach its success threshold: {succeeded} of {counts.size} "
        f"succeeded, {threshold:g} % needed, and none is left to run"
    )
    tick.update(state=PAUSED, reason=reason, last_tick_at=now)
    tick.emit(
        "paused",
        phase=current,
        succeeded=succeeded,
        size=counts.size,
        success_threshold=threshold,
        reason=reason,
    )
    return tick.plan()


# --- pacing ------------------------------------------------------------------------------------


@dataclass
class _Credit:
    """Pacing's working values during one tick."""

    rate: float
    credit: float
    notified_at: int
    succeeded_at: int
    increases: int = 0


def _pace(tick: _Tick, snapshot: Snapshot, now: datetime, *, phase_started: bool) -> Plan:
    policy, rollout = snapshot.policy, tick.rollout
    current = rollout.phase
    ready = sum(phase.ready for phase in snapshot.phases[: current + 1])
    budget = max(min(ready, policy.rate.max_in_progress - snapshot.in_progress), 0)
    pace = _Credit(
        rate=min(rollout.rate or policy.rate.base_per_minute, policy.rate.max_per_minute),
        credit=max(rollout.credit, 0.0),
        notified_at=rollout.notified_at_rate,
        succeeded_at=rollout.succeeded_at_rate,
    )
    previous = pace.rate
    _grow_after_successes(pace, policy.rate, snapshot.notified_total, snapshot.succeeded_total)
    if rollout.last_tick_at is None:
        # The first tick: one second's worth, and at least one device, right away.
        minutes = 0.0
        pace.credit = max(pace.credit, 1.0, pace.rate / 60)
    else:
        elapsed = (now - rollout.last_tick_at).total_seconds()
        minutes = min(max(elapsed, 0.0), 60.0) / 60  # a long gap earns one minute at most
    notify = _spend(
        pace, policy.rate, minutes, budget, snapshot.notified_total, snapshot.succeeded_total
    )
    if notify < budget or phase_started:
        # More devices wait (or a new phase's may): look again when the next one is due.
        seconds = max(1.0 - pace.credit, 0.0) * 60 / pace.rate
        tick.wake(now + timedelta(microseconds=max(math.ceil(seconds * 1e6), 1)))
    elif ready == 0 and policy.schedule.windows and _queued(snapshot, current):
        opens = windows.next_start(policy.schedule.windows, now, policy.expected_duration)
        if opens is not None and opens > now:
            tick.wake(opens)
    if pace.increases:
        tick.emit("rate_increased", rate=pace.rate, previous=previous, increases=pace.increases)
    last = rollout.last_tick_at
    tick.update(
        rate=pace.rate,
        credit=pace.credit,
        last_tick_at=now if last is None else max(last, now),
        notified_at_rate=pace.notified_at,
        succeeded_at_rate=pace.succeeded_at,
    )
    return tick.plan(notify)


def _queued(snapshot: Snapshot, current: int) -> bool:
    return any(phase.count(_QUEUED) for phase in snapshot.phases[: current + 1])


def _can_grow(pace: _Credit, rate: Rate) -> bool:
    return rate.increment_factor > 1 and pace.rate < rate.max_per_minute


def _grow(pace: _Credit, rate: Rate, times: int = 1) -> None:
    pace.rate = min(pace.rate * rate.increment_factor**times, rate.max_per_minute)
    pace.increases += times


def _grow_after_successes(pace: _Credit, rate: Rate, notified: int, succeeded: int) -> None:
    """Each `increase_after_succeeded` successes at the current rate raise it one step.

    The success count carries over (35 successes with a step of 10 are three steps, and the
    fourth comes after 5 more), so the steps do not depend on how often the scheduler ticks.
    """
    step = rate.increase_after_succeeded
    if step is None or not _can_grow(pace, rate) or succeeded - pace.succeeded_at < step:
        return
    to_top = math.ceil(math.log(rate.max_per_minute / pace.rate, rate.increment_factor))
    times = min((succeeded - pace.succeeded_at) // step, max(to_top, 1))
    _grow(pace, rate, times)
    pace.succeeded_at += times * step
    pace.notified_at = notified  # the other count starts again at the new rate


def _spend(
    pace: _Credit, rate: Rate, minutes: float, budget: int, notified: int, succeeded: int
) -> int:
    """Earn `minutes` of credit at the pace's rate and spend it on at most `budget` devices.

    With `increase_after_notified`, the rate rises at the device that completes the count:
    the credit up to it is earned at the old rate, the rest of the interval at the new one.
    """
    step = rate.increase_after_notified
    notify = 0
    while True:
        room = budget - notify
        if step is not None and room > 0 and _can_grow(pace, rate):
            until = pace.notified_at + step - (notified + notify)
            if until <= 0:  # the count was already reached (a retry notified again)
                pace.notified_at, pace.succeeded_at = notified + notify, succeeded
                _grow(pace, rate)
                continue
            if until <= room and pace.credit + pace.rate * minutes + _EPSILON >= until:
                wait = min(max(until - pace.credit, 0.0) / pace.rate, minutes)
                pace.credit = max(pace.credit + pace.rate * wait - until, 0.0)
                minutes -= wait
                notify += until
                pace.notified_at, pace.succeeded_at = notified + notify, succeeded
                _grow(pace, rate)
                continue
        pace.credit += pace.rate * minutes
        take = max(min(math.floor(pace.credit + _EPSILON), room), 0)
        notify += take
        pace.credit = max(pace.credit - take, 0.0)
        if pace.credit + _EPSILON >= 1:
            # Held back by readiness or max_in_progress: keep no more than a second's worth.
            pace.credit = min(pace.credit, pace.rate / 60)
        return notify


# --- per device --------------------------------------------------------------------------------


def jitter_offsets(count: int, spread: float, rng: random.Random) -> list[float]:
    """Start offsets in seconds within [0, spread) for `count` devices of one wave.

    Stratified: the spread is cut into `count` equal slots and device i starts at a random
    moment of slot i, so a wave is even without being regular.
    """
    if count < 0 or spread < 0:
        raise ValueError("jitter needs a count and a spread of at least 0")
    if spread == 0:
        return [0.0] * count
    slot = spread / count if count else 0.0
    below = math.nextafter(spread, 0.0)
    return [min((i + rng.random()) * slot, below) for i in range(count)]


def retry_delay(policy: RolloutPolicy, kind: str, attempt: int, rng: random.Random) -> float | None:
    """Seconds before retry number `attempt` (1 = first retry) of a `kind` failure; None: no more.

    The first `retries` entry for `kind` applies, else the first `all` entry; the delay is
    `backoff * backoff_factor ** (attempt - 1)`, ±10 % jitter, at most a year.
    """
    if attempt < 1:
        raise ValueError(f"retry number {attempt}: retries count from 1")
    rule = next((r for r in policy.retries if r.on == kind), None)
    rule = rule or next((r for r in policy.retries if r.on == "all"), None)
    if rule is None or attempt > rule.limit:
        return None
    try:
        delay = rule.backoff * rule.backoff_factor ** (attempt - 1)
    except OverflowError:
        delay = MAX_RETRY_DELAY
    return min(delay * rng.uniform(0.9, 1.1), MAX_RETRY_DELAY)


def eta(snapshot: Snapshot, now: datetime) -> datetime | None:
    """When the deployment should be done at its current pace; None when it cannot say.

    The devices not yet finished at the current rate: an upper bound while the rate grows.
    """
    rollout = snapshot.rollout
    if rollout.state != RUNNING or rollout.rate <= 0:
        return None
    final = tuple(str(state) for state in FINAL if state != State.SKIPPED)
    finished = sum(phase.count(*final) for phase in snapshot.phases)
    remaining = max(sum(phase.size for phase in snapshot.phases) - finished, 0)
    return now + timedelta(minutes=remaining / rollout.rate)
