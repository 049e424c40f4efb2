"""One simulated device's state, the world it lives in, and how it makes a request.

A device is a slots dataclass of small values (about 2 KB with its key and its random
generator): 10,000 of them fit easily in memory. It has no task of its own; the scheduler
(`sim.scheduler`) calls `behaviour.tick` when the device is due, and the tick returns when it
wants to be called again. Times in a device are seconds since the fleet started
(`World.elapsed`); wall-clock time, for telemetry timestamps, comes from `World.clock`.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar

import httpx

from fleetkeeper.clock import Clock
from fleetkeeper.protocol.backoff import Backoff
from fleetkeeper.protocol.client import DeviceClient
from fleetkeeper.protocol.connectivity import Connectivity
from fleetkeeper.protocol.errors import (
    RateLimited,
    Refused,
    Restricted,
    Retired,
    Stopped,
    Unavailable,
)
from fleetkeeper.protocol.messages import Command, Job, Point
from fleetkeeper.sim.catalogue import ModelSpec, Site
from fleetkeeper.sim.physics import Physics
from fleetkeeper.sim.scenario import Scenario
from fleetkeeper.sim.stats import Stats
from fleetkeeper.sim.update import Firmware, Update

log = logging.getLogger("fleetkeeper.sim")
T = TypeVar("T")
MAX_BUFFER = 600  # telemetry points a device keeps while it cannot send
NEVER = math.inf


class Status(StrEnum):
    NEW = "new"  # not enrolled yet
    ACTIVE = "active"
    PENDING = "pending"  # waits for an operator: only check-in
    QUARANTINED = "quarantined"  # check-in and command results only
    STOPPED = "stopped"  # retired, revoked, refused or gone for good


Answer = tuple[str, str, Any]  # a command's (id, state, result), waiting in the outbox
FINAL_REPORTS = frozenset({"succeeded", "failed", "rolled_back", "canceled"})


@dataclass(frozen=True, slots=True)
class Report:
    """A deployment job's progress (`POST /device/v1/jobs/{id}`), waiting in the outbox."""

    job_id: str
    state: str
    reason: str | None = None
    version: str | None = None  # with final states: the firmware the device runs
    detail: str | None = None
    cancel_refused: bool = False


@dataclass(slots=True)
class ActiveJob:
    """The deployment job the device is working on (one at a time)."""

    id: str
    kind: str  # update, rollback, command
    refuse_cancel: bool = False  # asked to cancel too late: its next report says so


class Deferred(Exception):
    """The tick ends here: the device is offline, backing off, or was told no."""

    def __init__(self, refused: bool = False) -> None:
        super().__init__()
        self.refused = refused


@dataclass(slots=True)
class World:
    """What every device shares: the scenario, the HTTP client, the clocks, the counters."""

    scenario: Scenario
    server: str
    http: httpx.AsyncClient
    clock: Clock
    elapsed: Callable[[], float]  # seconds since the fleet started
    stats: Stats
    provisioning_token: str | None = None
    start_wall: float = 0.0
    connectivity: Connectivity = field(default_factory=lambda: Connectivity("server", log))
    warned: set[str] = field(default_factory=set)

    def wall(self) -> float:
        return self.clock.now().timestamp()

    def fleet_ts(self, wall: float) -> float:
        """Fleet time (for the physics): the run's wall time sped up by `time_scale`."""
        return self.start_wall + (wall - self.start_wall) * self.scenario.time_scale

    def backoff(self, rng: random.Random, failures: int) -> float:
        s = self.scenario
        base = min(1.0, s.telemetry_interval, s.checkin_interval)
        cap = max(base, min(300.0, 10 * s.checkin_interval))
        backoff = Backoff(base, cap, rng=rng)
        backoff.attempt = failures
        return backoff.next_delay()

    def warn_once(self, key: str, message: str, *args: Any) -> None:
        if key not in self.warned:
            self.warned.add(key)
            log.warning(message + " (logged once)", *args)


@dataclass(slots=True, eq=False)
class SimDevice:
    index: int
    serial: str
    model: ModelSpec
    site: Site
    hardware_revision: str
    rng: random.Random
    client: DeviceClient
    firmware: Firmware
    physics: Physics
    faults: dict[str, tuple[float, float]] | None = None  # kind → (onset, end)
    status: Status = Status.NEW
    next_checkin: float = 0.0
    next_telemetry: float = 0.0
    next_inventory: float = 0.0
    next_attack: float = NEVER
    next_flood: float = NEVER
    hold_until: float = 0.0  # backing off or rate limited
    down_until: float = 0.0  # powered off or rebooting
    off: bool = False
    failures: int = 0
    update: Update | None = None  # the A/B update under way
    update_due: float = NEVER  # when its next phase happens
    job: ActiveJob | None = None
    jobs_seen: dict[str, tuple[int, str]] | None = None  # job id -> (attempt, kind) taken on
    reboot_command: str | None = None
    inbox: list[Command | Job] | None = None  # received at check-in, not yet run
    outbox: list[Answer | Report] | None = None  # what the server has not taken yet
    buffer: list[Point] | None = None
    sampled_at: float = 0.0  # fleet time of the last physics step
    boot_count: int = 1
    booted_at: float = 0.0
    reported: int | None = None  # hash of the last inventory the server took
    stuck_value: float | None = None
    healed: dict[str, float] | None = None  # fault kind → when a command cured it
    safe_mode: bool = False  # booted into safe mode on request (`sim.remedies`); for good
    disabled: frozenset[str] = frozenset()  # metrics it was told to stop reporting
    later: list[tuple[float, Answer]] | None = None  # answers not ready yet, soonest first

    # --- faults -----------------------------------------------------------------------

    def has(self, kind: str) -> bool:
        return self.faults is not None and kind in self.faults

    def active(self, kind: str, now: float) -> bool:
        """The fault acts now: within its window, and not cured by a command."""
        if self.faults is None:
            return False
        window = self.faults.get(kind)
        return window is not None and window[0] <= now < window[1] and not self.cured(kind, now)

    def active_faults(self, now: float) -> frozenset[str]:
        if self.faults is None:
            return frozenset()
        return frozenset(
            k for k, (a, b) in self.faults.items() if a <= now < b and not self.cured(k, now)
        )

    def cured(self, kind: str, now: float) -> bool:
        return self.healed is not None and self.healed.get(kind, NEVER) <= now

    def next_fault_change(self, now: float) -> float:
        if self.faults is None:
            return NEVER
        return min((t for w in self.faults.values() for t in w if t > now), default=NEVER)

    # --- plumbing ---------------------------------------------------------------------

    def stop(self, world: World, why: str) -> None:
        if self.status is not Status.STOPPED:
            self.status = Status.STOPPED
            world.stats.stopped[why] += 1

    def power_cycle(self, now: float, seconds: float) -> None:
        """Off for `seconds`; memory (the access token) is lost; it boots when it comes back."""
        self.off = True
        self.down_until = max(self.down_until, now + seconds)
        self.client.forget_token()

    def boot(self, now: float) -> None:
        self.off = False
        self.boot_count += 1
        self.booted_at = now
        self.next_inventory = min(self.next_inventory, now)

    def released(self, due: float) -> float:
        """When an action due at `due` could start at the earliest: not while the device was
        off or backing off (lateness the device chose is not lateness of the simulator)."""
        return max(due, self.hold_until, self.down_until)

    @property
    def busy(self) -> bool:
        """Updating, rebooting on request or working on a job: it takes on nothing else."""
        return self.update is not None or self.reboot_command is not None or self.job is not None

    def reply(self, command_id: str, state: str, result: Any) -> None:
        if self.outbox is None:
            self.outbox = []
        self.outbox.append((command_id, state, result))

    def reply_at(self, when: float, command_id: str, state: str, result: Any) -> None:
        """Answer a command once it is done, at `when` (the device ticks then)."""
        later = self.later if self.later is not None else []
        later.append((when, (command_id, state, result)))
        later.sort(key=lambda item: item[0])
        self.later = later

    def release_answers(self, now: float) -> None:
        """Answers whose time has come go to the outbox."""
        while self.later and self.later[0][0] <= now:
            self.reply(*self.later.pop(0)[1])
        if not self.later:
            self.later = None

    def report(
        self,
        job_id: str,
        state: str,
        *,
        reason: str | None = None,
        version: str | None = None,
        detail: str | None = None,
    ) -> None:
        """Queue a job report; the first one after a refused cancel says so, and a final one
        says what the device runs (`version`: the server keeps it whatever the outcome)."""
        if version is None and state in FINAL_REPORTS:
            version = self.firmware.version
        job = self.job
        refused = job is not None and job.id == job_id and job.refuse_cancel
        if job is not None and refused:
            job.refuse_cancel = False
        if self.outbox is None:
            self.outbox = []
        self.outbox.append(Report(job_id, state, reason, version, detail, refused))

    def next_due(self, now: float) -> float | None:
        if self.status is Status.STOPPED:
            return None
        answer = self.later[0][0] if self.later else NEVER
        if self.status is Status.NEW:
            due = self.next_checkin
        elif self.status is not Status.ACTIVE:
            due = min(self.next_checkin if not self.outbox else now, answer)
        else:
            due = min(
                self.next_checkin,
                self.next_telemetry,
                self.next_inventory,
                self.next_attack,
                self.next_flood,
                self.update_due,
                answer,
                now if (self.outbox or self.inbox) else NEVER,
            )
        due = min(due, self.next_fault_change(now))
        return max(due, self.hold_until, self.down_until if self.off else 0.0)

    async def call(self, world: World, request: Callable[[], Awaitable[T]]) -> T:
        """Make one request; on trouble, set when to try again and raise Deferred."""
        now = world.elapsed()
        flaky = self.faults is not None and self.active("flaky", now)
        if flaky and self.rng.random() < world.scenario.faults["flaky"].loss:
            world.stats.lost += 1
            self._back_off(world, now)
            raise Deferred
        try:
            answer = await request()
        except RateLimited as exc:
            world.stats.rate_limited += 1
            self.hold_until = world.elapsed() + exc.retry_after
            raise Deferred from None
        except Unavailable as exc:
            world.stats.unreachable += 1
            world.connectivity.lost(exc)
            self._back_off(world, world.elapsed())
            raise Deferred from None
        except Stopped as exc:
            self.stop(world, "retired" if isinstance(exc, Retired) else "revoked")
            raise Deferred(refused=True) from None
        except Restricted as exc:
            self.status = Status.PENDING if exc.code == "device_pending" else Status.QUARANTINED
            raise Deferred(refused=True) from None
        except Refused as exc:
            world.stats.error(f"{self.serial}: {exc}")
            world.warn_once(exc.code, "the server refused a device request: %s", exc)
            self._back_off(world, world.elapsed())
            raise Deferred(refused=True) from None
        world.connectivity.restored()
        self.failures = 0
        return answer

    def _back_off(self, world: World, now: float) -> None:
        self.hold_until = now + world.backoff(self.rng, self.failures)
        self.failures += 1
