"""The agent: enrol once, then check in, run commands and jobs, send inventory and telemetry.

Four loops run side by side, sharing one `DeviceClient` (and so one access token):

- check-in: long-polls the server and queues the commands and jobs it hands out;
- commands: runs queued commands one at a time, oldest first, and reports each outcome;
- jobs: works on deployment jobs (updates, rollbacks, bulk commands) one at a time, through
  `agent.update`, and reports the inventory again after each (the firmware may have changed);
- telemetry: samples the machine every `telemetry_interval`, keeps the points in the on-disk
  queue, and sends the queue (and the inventory, when it changed) whenever the server takes it.

Network errors and 5xx wait with exponential backoff and jitter; a 429 waits what it asks.
Retirement (a 403 `device_retired`, or `wipe: true` at check-in) deletes the credentials and
ends the agent; revoked credentials end it with an error. The clock, the sleep and the random
generator are injected, and each step (`checkin_once`, `sync`, `sample`, `run_next_command`)
can be driven on its own.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import astuple
from typing import Any

import httpx

from fleetkeeper.agent import hardware
from fleetkeeper.agent.commands import CommandRunner, Outcome
from fleetkeeper.agent.config import AgentConfig
from fleetkeeper.agent.enrolment import EnrollOptions, EnrolmentFailed, enroll
from fleetkeeper.agent.metrics import MetricsCollector
from fleetkeeper.agent.state import Identity, StateDir, StateError
from fleetkeeper.agent.update import SlotHandler, UpdateState, UpdateWorker, build_slots
from fleetkeeper.clock import Clock, SystemClock
from fleetkeeper.protocol.backoff import Backoff, Sleep
from fleetkeeper.protocol.client import MAX_POINTS, DeviceClient
from fleetkeeper.protocol.connectivity import Connectivity
from fleetkeeper.protocol.errors import (
    AuthenticationFailed,
    CommandClosed,
    Refused,
    Restricted,
    Retired,
    Revoked,
    Stopped,
    Unavailable,
)
from fleetkeeper.protocol.keys import KeyFileError
from fleetkeeper.protocol.messages import CheckinResult, Command
from fleetkeeper.protocol.queue import TelemetryQueue

log = logging.getLogger("fleetkeeper.agent")
RESTRICTED_STATES = frozenset({"pending", "quarantined"})
MIN_CHECKIN_INTERVAL = 1.0  # whatever next_checkin says: a device never polls in a tight loop


class AgentExit(Exception):
    """The agent stops: `code` is the process exit status, the message says why."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class Agent:
    def __init__(
        self,
        server: str,
        state: StateDir,
        config: AgentConfig | None = None,
        *,
        enroll: EnrollOptions | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Clock | None = None,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        collector: MetricsCollector | None = None,
        runner: CommandRunner | None = None,
        facts: Callable[[], dict[str, Any]] = hardware.facts,
        slots: SlotHandler | None = None,
    ) -> None:
        self.server = server
        self.state = state
        self.config = config or AgentConfig()
        self.enroll_options = enroll or EnrollOptions()
        self.clock = clock or SystemClock()
        self.connectivity = Connectivity(server, log)
        self.commands: asyncio.Queue[Command] = asyncio.Queue()
        self.device_state: str | None = None
        self.identity: Identity | None = None
        self._transport = transport
        self._sleep = sleep
        self._monotonic = monotonic
        rng = rng or random.Random()
        self._rng = rng
        self._checkin_backoff = Backoff(sleep=sleep, rng=rng)
        self._report_backoff = Backoff(sleep=sleep, rng=rng)
        self._collector = collector or MetricsCollector(clock=lambda: self.clock.now().timestamp())
        self._runner = runner or CommandRunner(self.config, self.clock)
        self._facts = facts
        self._reported: dict[str, Any] | None = None
        self._refusal: str | None = None
        self._queue_full = False
        self._stop = asyncio.Event()
        self._client: DeviceClient | None = None
        self._queue: TelemetryQueue | None = None
        self._slots = slots  # None: what the config's [update] table asks for
        self._updates: UpdateWorker | None = None
        self._command_running = False

    @property
    def client(self) -> DeviceClient:
        assert self._client is not None, "start() first"
        return self._client

    @property
    def queue(self) -> TelemetryQueue:
        assert self._queue is not None, "start() first"
        return self._queue

    @property
    def updates(self) -> UpdateWorker:
        assert self._updates is not None, "start() first"
        return self._updates

    @property
    def busy(self) -> bool:
        """A command or a job is under way."""
        return self._command_running or (self._updates is not None and self._updates.busy)

    # --- life cycle ---------------------------------------------------------------------

    async def run(self) -> None:
        """Run until `stop()`; raises AgentExit when the agent must end by itself."""
        main = asyncio.ensure_future(self._main())
        stopper = asyncio.ensure_future(self._stop.wait())
        try:
            await asyncio.wait([main, stopper], return_when=asyncio.FIRST_COMPLETED)
            if main.done():
                main.result()  # the loops never end by themselves: this raises why they did
        except Stopped as exc:
            raise self._stopped(exc) from None
        finally:
            for task in (main, stopper):
                task.cancel()
            await asyncio.gather(main, stopper, return_exceptions=True)
            await self.close()

    def stop(self) -> None:
        self._stop.set()

    async def _main(self) -> None:
        await self.start()
        loops = [self.checkin_loop(), self.command_loop(), self.job_loop(), self.telemetry_loop()]
        tasks = [asyncio.ensure_future(loop) for loop in loops]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()  # one loop failing ends them all
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def start(self) -> Identity:
        """Load (or make) the key and identity, enrolling once if there is none."""
        try:
            self.state.prepare()
            key, created = self.state.load_key()
            identity = self.state.load_identity()
        except (KeyFileError, StateError) as exc:
            raise AgentExit(str(exc)) from None
        if created:
            log.info("made a new device key in %s", self.state.key_path)
        self._queue = TelemetryQueue(self.state.queue_path, self.config.queue_max_points)
        self._client = DeviceClient(
            self.server, key, identity.device_id if identity else None, transport=self._transport
        )
        self._updates = UpdateWorker(
            self._client,
            self.state.path,
            self.config,
            slots=self._slots or build_slots(self.config, self.state.path),
            runner=self._runner,
            connectivity=self.connectivity,
            clock=self.clock,
            sleep=self._sleep,
            monotonic=self._monotonic,
            rng=self._rng,
            busy=lambda: self._command_running,
        )
        await self._updates.start()  # a boot: the job it interrupted, if any, carries on
        if identity is None:
            identity = await self.enroll()
        self.identity = identity
        log.info("device %s (serial %s) checks in with %s", *astuple(identity)[:2], self.server)
        return identity

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
        if self._queue is not None:
            self._queue.close()

    def _stopped(self, exc: Stopped) -> AgentExit:
        if isinstance(exc, Retired):
            if self._queue is not None:
                self._queue.close()
                self._queue = None
            removed = self.state.wipe(local_data=exc.wipe)
            what = "credentials and local data" if exc.wipe else "credentials"
            names = ", ".join(p.name for p in removed) or "nothing left to delete"
            return AgentExit(
                f"the server retired this device: deleted its {what} from "
                f"{self.state.path} ({names}); stopping",
                code=0,
            )
        assert isinstance(exc, Revoked)
        return AgentExit(
            f"the server revoked this device's credentials ({exc.detail or exc.code});"
            " stopping: an operator must restore or replace the device"
        )

    # --- enrolment ----------------------------------------------------------------------

    def inventory(self) -> dict[str, Any]:
        found = hardware.inventory(self.config, self._facts())
        if self._updates is not None and self._updates.running_version:
            found["firmware_version"] = self._updates.running_version  # the active slot's
        return found

    async def enroll(self) -> Identity:
        inventory = self.inventory()
        try:
            identity, state = await enroll(
                self.client,
                self.enroll_options,
                inventory,
                connectivity=self.connectivity,
                sleep=self._sleep,
            )
        except EnrolmentFailed as exc:
            raise AgentExit(str(exc)) from None
        self.state.save_identity(identity)
        if state is not None:
            self.device_state = state
            self._reported = inventory  # sent with the enrolment
        log.info("enrolled as device %s (%s)", identity.device_id, state or "enrolled before")
        return identity

    # --- check-in -----------------------------------------------------------------------

    async def checkin_once(self) -> CheckinResult:
        result = await self.client.checkin(wait=self.config.checkin_wait)
        self.connectivity.restored()
        self._refusal = None
        if result.wipe or result.state == "retired":
            raise Retired("device_retired", 200, "retired, as the check-in says", wipe=result.wipe)
        self._set_state(result.state)
        for command in result.commands:
            self.commands.put_nowait(command)
        if self._updates is not None:
            self._updates.offer(result.jobs)
        return result

    async def checkin_loop(self) -> None:
        while True:
            started = self._monotonic()
            try:
                result = await self.checkin_once()
            except Unavailable as exc:
                self.connectivity.lost(exc)
                await self._checkin_backoff.wait(exc)
                continue
            except Stopped:
                raise
            except Refused as exc:
                self._refused(exc)
                await self._checkin_backoff.wait()
                continue
            self._checkin_backoff.reset()
            if result.commands:
                continue
            wait = self.config.checkin_wait
            # A server that answered at once although asked to wait would be hammered.
            quick = self._monotonic() - started < min(1.0, wait / 2)
            if wait <= 0 or quick or result.state in RESTRICTED_STATES:
                await self._sleep(max(MIN_CHECKIN_INTERVAL, result.next_checkin))

    def _set_state(self, state: str) -> None:
        if state != self.device_state:
            if self.device_state is not None:
                log.info("device state is now %s (was %s)", state, self.device_state)
            elif state in RESTRICTED_STATES:
                log.info("device is %s: only check-in works until an operator acts", state)
            self.device_state = state

    def _refused(self, exc: Refused) -> None:
        """Log a refusal once, until the next success."""
        if exc.code != self._refusal:
            log.error("the server refused the device: %s (retrying with backoff)", exc)
            self._refusal = exc.code

    # --- commands -----------------------------------------------------------------------

    async def command_loop(self) -> None:
        while True:
            await self.run_next_command()

    async def run_next_command(self) -> Outcome:
        command = await self.commands.get()
        log.info("running command %s (%s)", command.name, command.id)
        self._command_running = True
        try:
            outcome = await self._runner.run(command)
        finally:
            self._command_running = False
        await self.report(command, outcome)
        return outcome

    async def report(self, command: Command, outcome: Outcome) -> None:
        backoff = self._report_backoff
        while True:
            try:
                await self.client.report_command(
                    command.id, outcome.state, outcome.result, outcome.output
                )
            except Unavailable as exc:
                self.connectivity.lost(exc)
                await backoff.wait(exc)
                continue
            except AuthenticationFailed as exc:
                self._refused(exc)
                await backoff.wait()
                continue
            except CommandClosed:
                log.warning(
                    "command %s (%s) ended after the server closed it; result dropped",
                    command.name,
                    command.id,
                )
            except Stopped:
                raise
            except Refused as exc:
                log.error(
                    "the result of command %s (%s) was refused: %s", command.name, command.id, exc
                )
            else:
                self.connectivity.restored()
                log.info("command %s (%s) %s", command.name, command.id, outcome.state)
            backoff.reset()
            return

    # --- jobs ---------------------------------------------------------------------------

    async def job_loop(self) -> None:
        while True:
            await self.run_next_job()

    async def run_next_job(self) -> UpdateState:
        """Work on the next job to its end, then report the inventory (the firmware it runs)."""
        final = await self.updates.run_next()
        if self.may_send:
            await self.report_inventory()
        return final

    # --- telemetry and inventory --------------------------------------------------------

    async def telemetry_loop(self) -> None:
        while True:
            await self.sync()
            await self._sleep(self.config.telemetry_interval)
            self.sample()

    def sample(self) -> int:
        """Measure the machine into the queue; returns how many points were taken."""
        points = self._collector.collect()
        dropped = self.queue.push(points)
        if dropped and not self._queue_full:
            log.warning(
                "telemetry queue is full (%d points): dropping the oldest", self.queue.max_points
            )
        self._queue_full = bool(dropped)
        return len(points)

    @property
    def may_send(self) -> bool:
        return self.device_state not in RESTRICTED_STATES

    async def sync(self) -> int:
        """Send the inventory if it changed, then the queued telemetry; returns points sent."""
        if self.may_send and await self.report_inventory():
            return await self.flush()
        return 0

    async def report_inventory(self) -> bool:
        """Report the inventory if it changed; False when the server cannot be told now."""
        inventory = self.inventory()
        if inventory == self._reported:
            return True
        attributes = dict(inventory["attributes"])
        old = (self._reported or {}).get("attributes") or {}
        attributes.update({key: None for key in old if key not in attributes})  # removals
        try:
            await self.client.report_inventory(
                firmware_version=inventory["firmware_version"],
                hardware_revision=inventory["hardware_revision"],
                attributes=attributes,
            )
        except Unavailable as exc:
            self.connectivity.lost(exc)
            return False
        except Restricted as exc:
            self._restricted(exc)
            return False
        except Stopped:
            raise
        except Refused as exc:
            self._refused(exc)
            return exc.status not in (401, 403)
        self.connectivity.restored()
        self._reported = inventory
        return True

    async def flush(self) -> int:
        """Send queued points, oldest first, while the server takes them."""
        sent = 0
        while self.may_send and (batch := self.queue.peek(MAX_POINTS)):
            try:
                result = await self.client.send_telemetry(batch)
            except Unavailable as exc:
                self.connectivity.lost(exc)
                break
            except Restricted as exc:
                self._restricted(exc)
                break
            except Stopped:
                raise
            except Refused as exc:
                if exc.status in (401, 403):
                    self._refused(exc)
                    break
                # The server will never take this batch: drop it, or it blocks the queue.
                log.error("telemetry batch of %d points refused, dropped: %s", len(batch), exc)
                self.queue.ack(len(batch))
                continue
            self.connectivity.restored()
            self.queue.ack(len(batch))
            sent += result.accepted
            if result.rejected:
                first = result.rejected[0]
                count = len(result.rejected)
                log.warning("server rejected %d points, e.g. #%d: %s", count, *astuple(first))
        return sent

    def _restricted(self, exc: Restricted) -> None:
        self._set_state("quarantined" if exc.code == "device_quarantined" else "pending")
