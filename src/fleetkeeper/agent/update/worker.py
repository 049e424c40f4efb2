"""The update worker: takes jobs from check-ins, one at a time, and drives each to its end.

A job the server repeats at every check-in is recognised by `id` and `attempt` (a retried
execution keeps its id and counts up its attempt): the job being worked on only passes on a
cancel request, a job finished here is never started again, and any other job waits for a later
check-in while one is under way. At start the worker plays the boot (`SlotHandler.boot`) and
carries on with the job the journal holds, if any.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Sequence
from pathlib import Path

from fleetkeeper.agent import hardware
from fleetkeeper.agent.commands import CommandRunner, execute
from fleetkeeper.agent.config import AgentConfig
from fleetkeeper.agent.update.driver import Driver, Execute, Hook
from fleetkeeper.agent.update.journal import Journal
from fleetkeeper.agent.update.machine import Readings, UpdateState, resume_event, start
from fleetkeeper.agent.update.slots import DirectorySlots, ScriptSlots, SlotError, SlotHandler
from fleetkeeper.agent.update.trust import PIN_FILE, TrustStore
from fleetkeeper.clock import Clock
from fleetkeeper.protocol.backoff import Sleep
from fleetkeeper.protocol.client import DeviceClient
from fleetkeeper.protocol.connectivity import Connectivity
from fleetkeeper.protocol.messages import Job

log = logging.getLogger("fleetkeeper.agent.update")
UPDATE_DIR = "update"
SLOTS_DIR = "slots"
VERSIONS_FILE = "slots.json"


def build_slots(config: AgentConfig, state_dir: Path) -> SlotHandler | None:
    """The install handler the config asks for; None without an `[update]` table."""
    settings = config.update
    if settings is None:
        return None
    if settings.handler == "script":
        assert settings.script is not None, "the config parser requires [update.script]"
        return ScriptSlots(
            settings.script,
            state_dir / UPDATE_DIR / VERSIONS_FILE,
            initial_version=config.firmware_version,
        )
    return DirectorySlots(
        settings.slots_dir or state_dir / SLOTS_DIR, initial_version=config.firmware_version
    )


def measure_machine(path: Path, busy: Callable[[], bool]) -> Readings:
    """The machine's readings for the preconditions (storage where downloads go)."""
    power = hardware.battery()
    return Readings(
        battery=power[0] if power else None,
        on_power=power[1] if power else None,
        free_storage=hardware.free_storage(path),
        busy=busy(),
    )


def _same(a: Job, b: Job) -> bool:
    return a.id == b.id and a.attempt == b.attempt


class UpdateWorker:
    def __init__(
        self,
        client: DeviceClient,
        state_dir: Path,
        config: AgentConfig,
        *,
        slots: SlotHandler | None,
        runner: CommandRunner,
        connectivity: Connectivity,
        clock: Clock,
        sleep: Sleep,
        monotonic: Callable[[], float],
        rng: random.Random,
        busy: Callable[[], bool] = lambda: False,
        measure: Callable[[], Readings] | None = None,
        execute: Execute = execute,
        hook: Hook | None = None,
    ) -> None:
        self.journal = Journal(Path(state_dir) / UPDATE_DIR)
        self.slots = slots
        settings = config.update
        trust = TrustStore(settings.trusted_keys if settings else (), self.journal.path / PIN_FILE)
        self.driver = Driver(
            client,
            self.journal,
            trust,
            slots=slots,
            runner=runner,
            settings=settings,
            fallback_version=config.firmware_version,
            connectivity=connectivity,
            clock=clock,
            sleep=sleep,
            monotonic=monotonic,
            rng=rng,
            measure=measure or (lambda: measure_machine(self.journal.path, busy)),
            execute=execute,
            hook=hook,
        )
        self.running_version: str | None = config.firmware_version
        self._resumed: UpdateState | None = None
        self._next: Job | None = None
        self._ready = asyncio.Event()

    @property
    def pending(self) -> Job | None:
        """The job that starts next (None: waiting for a check-in to bring one)."""
        return self._next

    @property
    def busy(self) -> bool:
        """A job is under way (or waiting to be carried on after a restart)."""
        return self.driver.working is not None or self._resumed is not None

    async def start(self) -> None:
        """The boot, then what it means for the job the journal holds."""
        running: str | None = None
        if self.slots is not None:
            try:
                await self.slots.boot()
                running = await self.slots.active_slot()
            except (SlotError, OSError) as exc:
                log.error("the update handler does not work: %s", exc)
        state = self.journal.load()
        if state is not None:
            meaning = None if state.done else resume_event(state, running)
            if meaning is not None:
                state = await self.driver.resume(state, *meaning)
            log.info("carrying on with job %s (%s) at %s", state.job.id, state.job.kind, state.step)
            self._resumed = state
            self._ready.set()
        self.running_version = await self.driver.running_version()

    def offer(self, jobs: Sequence[Job]) -> None:
        """The jobs of one check-in."""
        for job in jobs:
            current = self.driver.working or self._resumed
            if current is not None and _same(job, current.job):
                if job.cancel:
                    self.driver.request_cancel()
                continue
            if self._next is not None and _same(job, self._next):
                self._next = job  # a cancel may have come since
                continue
            if self.busy or self._next is not None or self.journal.is_finished(job):
                continue
            self._next = job
            self._ready.set()

    async def run_next(self) -> UpdateState:
        """Wait for a job (or take the one to carry on with) and work on it to its end."""
        await self._ready.wait()
        self._ready.clear()
        resumed, job = self._resumed, self._next
        self._next = None
        try:
            if resumed is not None:
                final = await self.driver.drive(resumed)
            else:
                assert job is not None
                log.info("starting job %s (%s, attempt %d)", job.id, job.kind, job.attempt)
                final = await self.driver.drive(start(job), cancel=job.cancel)
        finally:
            self._resumed = None
        self.running_version = await self.driver.running_version()
        return final
