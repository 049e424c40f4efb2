"""`Simulator`: a whole simulated fleet against one server, in one asyncio loop.

    simulator = Simulator(scenario, "http://127.0.0.1:8080", admin_token=token)
    summary = await simulator.run(duration=60)

All devices share one `httpx.AsyncClient` (one connection pool, sized to the scenario's
concurrency); a request hook counts every message that leaves. Devices enrol spread out
(`enroll_rate` a second at most, `concurrency` at once) and start their lives as soon as they
are in. `stop()` ends a run early (Ctrl-C); the summary says what happened either way.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx

from fleetkeeper import __version__
from fleetkeeper.clock import Clock, SystemClock
from fleetkeeper.protocol.connectivity import Connectivity
from fleetkeeper.sim import admin
from fleetkeeper.sim.behaviour import tick
from fleetkeeper.sim.device import SimDevice, Status, World
from fleetkeeper.sim.fleet import FaultPlan, build
from fleetkeeper.sim.scenario import Scenario
from fleetkeeper.sim.scheduler import Scheduler
from fleetkeeper.sim.stats import Lag, Stats, endpoint
from fleetkeeper.sim.transport import LeanTransport

log = logging.getLogger("fleetkeeper.sim")
REFUSALS_TO_GIVE_UP = 20  # enrolments refused, none accepted: the token or models are wrong


class SimulationError(Exception):
    """The simulation cannot run: the server is out of reach or refuses every device."""


Progress = Callable[[dict[str, Any]], None]


class Simulator:
    def __init__(
        self,
        scenario: Scenario,
        server: str,
        *,
        provisioning_token: str | None = None,
        admin_token: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Clock | None = None,
        on_progress: Progress | None = None,
        progress_every: float = 10.0,
        note: Callable[[str], None] | None = None,
    ) -> None:
        if provisioning_token is None and admin_token is None:
            raise ValueError("a simulator needs a provisioning token or an admin token")
        self.scenario = scenario
        self.server = server.rstrip("/")
        self.provisioning_token = provisioning_token
        self.admin_token = admin_token
        self.transport = transport
        self.clock = clock or SystemClock()
        self.on_progress = on_progress
        self.progress_every = progress_every
        self.note = note or (lambda message: log.info("%s", message))
        self.stats = Stats(scenario.devices)
        self.devices: list[SimDevice] = []
        self.plan: FaultPlan | None = None
        self.rollout: admin.Rollout | None = None
        self._stop = asyncio.Event()
        self._started = 0.0
        self._elapsed = 0.0

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def elapsed(self) -> float:
        return time.monotonic() - self._started

    async def run(self, duration: float | None = None) -> dict[str, Any]:
        """Run the fleet for `duration` seconds (None: until `stop()`); returns the summary."""
        self._started = time.monotonic()
        s = self.scenario
        # The pool's limits bind the default transport only; LeanTransport has its own.
        limits = httpx.Limits(
            max_connections=s.concurrency, max_keepalive_connections=s.concurrency
        )
        async with httpx.AsyncClient(
            transport=self.transport or LeanTransport(s.concurrency),
            limits=limits,
            headers={"User-Agent": f"fleetkeeper-sim/{__version__}"},
            event_hooks={"request": [self._sent], "response": [self._answered]},
        ) as http:
            await self._reach(http)
            tasks = [asyncio.create_task(self._watch(), name="sim-watch")]
            if self.admin_token is not None:
                async with admin.admin_client(self.server, self.admin_token, self.transport) as api:
                    token = await self._prepare(api)
                    if s.rollout is not None:
                        self.rollout = admin.Rollout(s, self._rollout_fleet)
                        tasks.append(asyncio.create_task(self._roll_out(api), name="rollout"))
                    await self._live(http, token, duration, tasks)
            else:
                await self._live(http, self.provisioning_token, duration, tasks)
        self._elapsed = self.elapsed()
        if self.stats.enrolled == 0 and self.stats.enroll_failed:
            raise SimulationError(f"no device could enrol: {self.stats.first_error}")
        return self.summary()

    def summary(self) -> dict[str, Any]:
        devices = self.devices
        return self.stats.summary(
            seed=self.scenario.seed,
            scenario=self.scenario.name,
            seconds=round(self._elapsed or self.elapsed(), 3),
            models=dict(sorted(Counter(d.model.name for d in devices).items())),
            sites=dict(sorted(Counter(d.site.name for d in devices).items())),
            firmware=dict(
                sorted(Counter(f"{d.model.name} {d.firmware.version}" for d in devices).items())
            ),
            outage_site=self.plan.outage_site if self.plan else None,
            rollout=self.rollout.view() if self.rollout else None,
        )

    def snapshot(self) -> dict[str, Any]:
        """A short view for progress lines; lateness counts since the last snapshot."""
        states = Counter(d.status.value for d in self.devices)
        recent, self.stats.recent = self.stats.recent, Lag()
        return {
            "seconds": round(self.elapsed(), 1),
            "enrolled": self.stats.enrolled,
            "states": dict(states),
            "messages_sent": self.stats.messages_sent,
            "rate_limited": self.stats.rate_limited,
            "updates": dict(self.stats.updates),
            "jobs": dict(self.stats.jobs),
            "behind": recent.behind,
            "max_lag": round(recent.worst, 3),
            "actions": recent.count,
        }

    # --- the run ------------------------------------------------------------------------

    async def _reach(self, http: httpx.AsyncClient) -> None:
        try:
            response = await http.get(f"{self.server}/device/v1/ping", timeout=10.0)
        except httpx.TransportError as exc:
            raise SimulationError(
                f"cannot reach {self.server}: {exc or type(exc).__name__}"
            ) from None
        if response.status_code != 200:
            raise SimulationError(
                f"{self.server} is not a Fleetkeeper server (/device/v1/ping: "
                f"{response.status_code})"
            )

    async def _prepare(self, api: httpx.AsyncClient) -> str:
        try:
            token = await admin.prepare(api, self.scenario)
        except admin.AdminError as exc:
            raise SimulationError(f"setting up the server failed: {exc}") from None
        return self.provisioning_token or token

    async def _live(
        self,
        http: httpx.AsyncClient,
        token: str | None,
        duration: float | None,
        tasks: list[asyncio.Task[None]],
    ) -> None:
        s = self.scenario
        self.devices, self.plan = build(s, self.server, http)
        world = World(
            scenario=s,
            server=self.server,
            http=http,
            clock=self.clock,
            elapsed=self.elapsed,
            stats=self.stats,
            provisioning_token=token,
            start_wall=self.clock.now().timestamp(),
            connectivity=Connectivity(self.server, log),
        )

        async def run_tick(device: SimDevice) -> float | None:
            return await tick(device, world)

        scheduler: Scheduler[SimDevice] = Scheduler(
            run_tick, concurrency=s.concurrency, now=self.elapsed
        )
        start = self.elapsed()
        for device in self.devices:
            device.next_checkin = start + device.index / s.enroll_rate  # when it enrols
            scheduler.add(device, device.next_checkin)
        try:
            await scheduler.run(until=duration, stop=self._stop)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        if scheduler.crashes:
            self.stats.error(f"{scheduler.crashes} device ticks crashed (see the log)")

    async def _watch(self) -> None:
        """Give up when every enrolment is refused; report progress now and then."""
        last = self.elapsed()
        while not self._stop.is_set():
            await asyncio.sleep(0.1)
            stats = self.stats
            refused = stats.enroll_failed >= min(stats.devices, REFUSALS_TO_GIVE_UP)
            if refused and stats.enrolled == 0:
                self.note(f"giving up: devices cannot enrol ({stats.first_error})")
                self.stop()
            if self.on_progress is not None and self.elapsed() - last >= self.progress_every:
                last = self.elapsed()
                self.on_progress(self.snapshot())

    def _rollout_fleet(self) -> tuple[int, int]:
        """The fleet's devices of the rollout's model, and how many are still enrolling."""
        assert self.scenario.rollout is not None
        mine = [d for d in self.devices if d.model.name == self.scenario.rollout.model]
        return len(mine), sum(d.status is Status.NEW for d in mine)

    async def _roll_out(self, api: httpx.AsyncClient) -> None:
        assert self.rollout is not None
        await self.rollout.run(api, self.elapsed, note=self.note)

    async def _sent(self, request: httpx.Request) -> None:
        path = request.url.path
        if "/device/v1/" in path and not path.endswith("/ping"):
            self.stats.requests[endpoint(path)] += 1

    async def _answered(self, response: httpx.Response) -> None:
        self.stats.statuses[response.status_code] += 1
