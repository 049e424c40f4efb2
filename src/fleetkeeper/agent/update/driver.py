"""The I/O side of a job: perform the current step, tell the machine what happened, report.

    while not done:
        persist the state            (a power loss from here on resumes at this step)
        send what the outbox holds   (a network error keeps it there for the next try)
        apply a cancel request
        perform the step's action    (download, verify, install, switch, reboot, check, ...)
        advance the machine          (machine.py decides the next step and the reports)
    send the final report, retrying until the server takes it; remember the job as finished

`hook(checkpoint)` runs after each persist (`"<step>"`), after each action (`"<step>:done"`)
and after each report the server took (`"sent:<state>"`): tests raise from it to cut the power
at every point and start a new driver on the same state dir.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path

from fleetkeeper.agent.commands import CommandRunner, Outcome, execute
from fleetkeeper.agent.config import UpdateSettings, substitute
from fleetkeeper.agent.update.download import Sink, file_size, first_of, sha256_file
from fleetkeeper.agent.update.journal import Journal, valid_sha256
from fleetkeeper.agent.update.machine import (
    Event,
    Readings,
    Step,
    UpdateState,
    advance,
    move_for,
    progress,
    sent,
    storage_shortfall,
    timeout,
    unmet_preconditions,
)
from fleetkeeper.agent.update.slots import SlotError, SlotHandler
from fleetkeeper.agent.update.trust import TrustStore, check_signature
from fleetkeeper.clock import Clock
from fleetkeeper.protocol.backoff import Backoff, Sleep
from fleetkeeper.protocol.client import DeviceClient
from fleetkeeper.protocol.connectivity import Connectivity
from fleetkeeper.protocol.errors import (
    AuthenticationFailed,
    InvalidTransition,
    JobClosed,
    Refused,
    Restricted,
    Stopped,
    Unavailable,
)
from fleetkeeper.protocol.messages import ArtifactRef

log = logging.getLogger("fleetkeeper.agent.update")
Execute = Callable[[list[str], float], Awaitable[Outcome]]
Hook = Callable[[str], None]
# Answers that mean "not now": the same request may work later (a 403 device_pending or
# device_quarantined lasts until an operator acts; an expired token until the next login).
NOT_NOW = (Unavailable, AuthenticationFailed, Restricted)


@dataclass(frozen=True)
class Result:
    """What a step's action came to; `event` None: the state moved already (closed, cancel)."""

    event: Event | None
    reason: str | None = None
    detail: str | None = None


class _Interrupted(Exception):
    """A download stopped for a cancel request or because the server closed the job."""


def _no_hook(checkpoint: str) -> None:
    pass


class Driver:
    def __init__(
        self,
        client: DeviceClient,
        journal: Journal,
        trust: TrustStore,
        *,
        slots: SlotHandler | None,
        runner: CommandRunner,
        settings: UpdateSettings | None,
        fallback_version: str | None,
        connectivity: Connectivity,
        clock: Clock,
        sleep: Sleep,
        monotonic: Callable[[], float],
        rng: random.Random,
        measure: Callable[[], Readings],
        execute: Execute = execute,
        hook: Hook | None = None,
    ) -> None:
        self.client = client
        self.journal = journal
        self.trust = trust
        self.slots = slots
        self.runner = runner
        self.settings = settings or UpdateSettings()
        self.fallback_version = fallback_version
        self.connectivity = connectivity
        self._clock = clock
        self._sleep = sleep
        self._monotonic = monotonic
        self._measure = measure
        self._execute = execute
        self._hook = hook or _no_hook
        self._backoff = Backoff(sleep=sleep, rng=rng)
        self._cancel = False
        self._wake = asyncio.Event()
        self._state: UpdateState | None = None

    @property
    def state(self) -> UpdateState:
        assert self._state is not None, "no job is being driven"
        return self._state

    @property
    def working(self) -> UpdateState | None:
        return self._state

    def request_cancel(self) -> None:
        self._cancel = True
        self._wake.set()

    async def running_version(self) -> str | None:
        """The version the device runs: the active slot's, else the configured one."""
        if self.slots is not None:
            try:
                found = await self.slots.version(await self.slots.active_slot())
            except (SlotError, OSError) as exc:
                log.warning("cannot tell the running version: %s", exc)
                found = None
            if found:
                return found
        return self.fallback_version

    def _not_now(self, exc: Exception) -> Unavailable | None:
        """Note a "not now" answer; what the backoff should wait for (None: its next step)."""
        if isinstance(exc, Unavailable):
            self.connectivity.lost(exc)
            return exc
        return None

    # --- the loop -----------------------------------------------------------------------

    async def resume(self, state: UpdateState, event: Event, detail: str) -> UpdateState:
        """Apply what a restart means to a persisted job (machine.resume_event)."""
        self._state = state
        try:
            await self._apply(Result(event, detail=detail))
            self._save()
            return self.state
        finally:
            self._state = None

    async def drive(self, state: UpdateState, *, cancel: bool = False) -> UpdateState:
        """Work on the job until it is over and the server has heard its end."""
        self._state = state
        self._cancel = cancel
        try:
            while True:
                step = self.state.step
                self._save()
                self._hook(str(step))
                await self._flush(wait=self.state.done)
                if self.state.done:
                    break
                if self.state.step is not step:
                    continue  # the server closed the job
                if self._cancel:
                    self._cancel = False
                    await self._apply(Result(Event.CANCEL))
                    continue
                result = await self._perform()
                self._hook(f"{step}:done")
                if result.event is not None:
                    await self._apply(result)
            final = self.state
            self.journal.finish(final, self._clock.now())
            log.info("job %s (%s) is over: %s", final.job.id, final.job.kind, final.result)
            return final
        finally:
            self._state = None

    def _save(self) -> None:
        self.journal.save(self.state)

    async def _apply(self, result: Result) -> None:
        assert result.event is not None
        move = move_for(self.state, result.event)
        final = move.to is Step.DONE and move.report is not None
        version = await self.running_version() if final else None
        before = self.state.step
        self._state = advance(
            self.state,
            result.event,
            reason=result.reason,
            detail=result.detail,
            version=version,
        )
        if self.state.step is not before:
            log.info(
                "job %s: %s -> %s (%s)", self.state.job.id, before, self.state.step, result.event
            )

    async def _flush(self, *, wait: bool, deadline: float | None = None) -> None:
        """Send the outbox in order. With `wait`, retry until it is empty (or `deadline`)."""
        while self.state.outbox and not self.state.closed:
            report = self.state.outbox[0]
            try:
                answer = await self.client.report_job(
                    self.state.job.id,
                    report.state,
                    progress=report.progress,
                    reason=report.reason,
                    detail=report.detail,
                    version=report.version,
                    cancel_refused=report.cancel_refused,
                )
            except NOT_NOW as exc:
                problem = self._not_now(exc)
                late = deadline is not None and self._monotonic() >= deadline
                if not wait or late:
                    return
                await self._backoff.wait(problem)
                continue
            except Stopped:
                raise
            except Refused as exc:
                if isinstance(exc, JobClosed) or exc.code == "unknown_job":
                    log.warning("the server ended job %s (%s): stopping", self.state.job.id, exc)
                    await self._apply(Result(Event.CLOSED))
                    self._save()
                    return
                # Most likely a report sent twice across a restart: the server has it.
                level = logging.INFO if isinstance(exc, InvalidTransition) else logging.ERROR
                log.log(
                    level, "job %s: report %s refused: %s", self.state.job.id, report.state, exc
                )
            else:
                self.connectivity.restored()
                self._backoff.reset()
                if answer.cancel and not report.final:
                    self.request_cancel()
            self._hook(f"sent:{report.state}")
            self._state = sent(self.state)
            self._save()

    # --- the steps ----------------------------------------------------------------------

    async def _perform(self) -> Result:
        actions = {
            Step.CHECK: self._check,
            Step.DOWNLOAD: self._download,
            Step.VERIFY: self._verify,
            Step.DOWNLOADED: self._gate,
            Step.INSTALL: self._install,
            Step.SWITCH: self._switch,
            Step.BOOT: self._boot,
            Step.HEALTH: self._health,
            Step.COMMIT: self._commit,
            Step.ROLLBACK: self._rollback,
            Step.BOOT_BACK: self._boot_back,
            Step.RUN: self._run,
        }
        try:
            return await actions[self.state.step]()
        except (SlotError, OSError) as exc:
            no_space = isinstance(exc, OSError) and exc.errno == errno.ENOSPC
            return Result(Event.FAILED, "not_enough_storage" if no_space else None, str(exc))

    def _need_slots(self) -> SlotHandler:
        assert self.slots is not None, "checked at the start of the job"
        return self.slots

    def _artifact(self) -> ArtifactRef:
        assert self.state.job.artifact is not None, "checked at the start of the job"
        return self.state.job.artifact

    async def _check(self) -> Result:
        job = self.state.job
        if job.kind == "command":
            return self._check_command()
        if job.kind == "rollback":
            return await self._check_rollback()
        if job.kind != "update":
            return Result(Event.UNSUPPORTED, detail=f"this agent knows no {job.kind!r} jobs")
        if self.slots is None:
            return Result(Event.UNSUPPORTED, detail="this agent has no [update] handler")
        artifact = job.artifact
        if artifact is None or not valid_sha256(artifact.sha256) or not artifact.url:
            return Result(Event.UNSUPPORTED, detail="the job names no usable artifact")
        readings = self._measure()
        problems = unmet_preconditions(job.preconditions, readings)
        if problems:
            return Result(Event.BLOCKED, detail="; ".join(problems))
        have = file_size(self.journal.download_path(artifact))
        short = storage_shortfall(readings.free_storage, artifact.size - have)
        if short:
            return Result(Event.NO_SPACE, detail=short)
        untrusted = await self._untrusted(artifact)
        if untrusted:
            return Result(Event.UNTRUSTED, detail=untrusted)
        active = await self.slots.active_slot()
        self._state = replace(
            self.state,
            from_slot=active,
            from_version=await self.running_version(),
            target=self.slots.other(active),
        )
        return Result(Event.READY)

    def _check_command(self) -> Result:
        job = self.state.job
        if job.command is None:
            return Result(Event.UNSUPPORTED, detail="the job names no command")
        problems = unmet_preconditions(job.preconditions, self._measure())
        if problems:
            return Result(Event.BLOCKED, detail="; ".join(problems))
        return Result(Event.READY)

    async def _check_rollback(self) -> Result:
        wanted = self.state.job.rollback_to
        if self.slots is None:
            return Result(Event.UNSUPPORTED, detail="this agent has no [update] handler")
        if not wanted:
            return Result(Event.UNSUPPORTED, detail="the job names no version to return to")
        active = await self.slots.active_slot()
        other = self.slots.other(active)
        running = await self.running_version()
        self._state = replace(self.state, from_slot=active, from_version=running, target=other)
        if running == wanted:
            return Result(Event.ALREADY, detail=f"{wanted} runs already")
        held = await self.slots.version(other)
        if held != wanted:
            return Result(
                Event.UNSUPPORTED,
                detail=f"slot {other} holds {held or 'no known version'}, not {wanted}",
            )
        return Result(Event.READY)

    async def _untrusted(self, artifact: ArtifactRef) -> str | None:
        """Why the artifact's signature is not to be trusted; None when it verifies."""
        while True:
            try:
                keys = await self.trust.keys(self.client.release_keys)
            except NOT_NOW as exc:
                await self._backoff.wait(self._not_now(exc))
                continue
            except Stopped:
                raise
            except Refused as exc:
                return f"cannot get the server's release keys to pin: {exc}"
            self._backoff.reset()
            return check_signature(artifact, keys)

    async def _download(self) -> Result:
        artifact = self._artifact()
        path = self.journal.download_path(artifact)
        limit = timeout(self.state.job, "download")
        deadline = self._monotonic() + limit
        while True:
            if self._cancel or self.state.step is not Step.DOWNLOAD:
                return Result(None)
            have = file_size(path)
            if artifact.size and have > artifact.size:
                path.unlink()  # not a prefix of this artifact: start over
                have = 0
            if artifact.size and have == artifact.size:
                return Result(Event.DOWNLOADED)
            try:
                if await self._fetch(path, have):
                    self.connectivity.restored()
                    self._backoff.reset()
                    return Result(Event.DOWNLOADED)
                problem: Unavailable | None = None  # the answer ended early: try the rest
            except _Interrupted:
                return Result(None)
            except NOT_NOW as exc:
                problem = self._not_now(exc)
            except Stopped:
                raise
            except Refused as exc:
                reason = "unsupported_package" if exc.code == "incompatible" else None
                reason = "invalid_uri" if exc.status == 404 else reason
                return Result(Event.FAILED, reason or "update_failed", f"download refused: {exc}")
            if self._monotonic() >= deadline:
                why = f": {problem}" if problem else ""
                detail = f"the download did not finish within {limit:g} s{why}"
                return Result(Event.FAILED, "connection_lost", detail)
            await self._backoff.wait(problem)

    async def _fetch(self, path: Path, have: int) -> bool:
        """One request for the rest of the artifact; True when it brought everything."""
        artifact = self._artifact()
        with Sink(path, have, artifact.size, self._wake) as sink:
            task = asyncio.ensure_future(
                self.client.download(artifact.url, sink.write, offset=have)
            )
            try:
                while not task.done():
                    self._wake.clear()
                    await first_of(task, self._wake)
                    if self._cancel:
                        raise _Interrupted
                    sink.sync()
                    self._state = progress(self.state, sink.position, artifact.size)
                    if self.state.outbox:
                        self._save()
                        await self._flush(wait=False)
                    if self.state.step is not Step.DOWNLOAD:
                        raise _Interrupted
                download = task.result()
            finally:
                if not task.done():
                    task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        total = artifact.size or download.total
        return total is None or sink.position >= total

    async def _verify(self) -> Result:
        artifact = self._artifact()
        path = self.journal.download_path(artifact)
        problem = await self._integrity(path, artifact)
        if problem:
            path.unlink(missing_ok=True)
            return Result(Event.CORRUPT, detail=problem)
        untrusted = await self._untrusted(artifact)
        if untrusted:
            path.unlink(missing_ok=True)
            return Result(Event.UNTRUSTED, detail=untrusted)
        return Result(Event.VERIFIED)

    async def _integrity(self, path: Path, artifact: ArtifactRef) -> str | None:
        size = file_size(path)
        if size == 0 and artifact.size:
            return "the download is gone"
        if artifact.size and size != artifact.size:
            return f"downloaded {size} bytes, the artifact has {artifact.size}"
        digest = await asyncio.to_thread(sha256_file, path)
        if digest != artifact.sha256:
            return f"the download's sha256 is {digest}, the artifact's {artifact.sha256}"
        return None

    async def _gate(self) -> Result:
        not_after = self.state.job.not_after
        if not_after is not None and self._clock.now() > not_after:
            detail = f"the maintenance window ended at {not_after.isoformat()}"
            return Result(Event.EXPIRED, detail=detail)
        return Result(Event.GO)

    async def _install(self) -> Result:
        artifact = self._artifact()
        path = self.journal.download_path(artifact)
        if not path.exists():
            return Result(Event.FAILED, detail="the verified download is gone")
        target = self.state.target
        assert target is not None
        limit = timeout(self.state.job, "install")
        try:
            async with asyncio.timeout(limit):
                await self._need_slots().install(target, path, artifact.version)
        except TimeoutError:
            return Result(Event.FAILED, detail=f"installing took longer than {limit:g} s")
        return Result(Event.INSTALLED)

    async def _switch(self) -> Result:
        assert self.state.target is not None
        try:
            await self._need_slots().switch(self.state.target, trial=True)
        except (SlotError, OSError) as exc:
            await self._undo_switch()
            return Result(Event.FAILED, detail=f"switching to slot {self.state.target}: {exc}")
        return Result(Event.SWITCHED)

    async def _undo_switch(self) -> None:
        try:
            await self._need_slots().rollback()
        except (SlotError, OSError) as exc:
            log.error("could not point the boot back at the committed slot: %s", exc)

    async def _reboot(self) -> None:
        if not await self._need_slots().reboot():
            # The machine is going down; if it is still up after this, it did not reboot.
            await self._sleep(timeout(self.state.job, "reboot"))

    async def _boot(self) -> Result:
        try:
            await self._reboot()
        except (SlotError, OSError) as exc:
            await self._undo_switch()
            return Result(Event.FAILED, detail=f"reboot: {exc}")
        return self._runs(await self._need_slots().active_slot())

    def _runs(self, running: str) -> Result:
        if running == self.state.target:
            return Result(Event.RUNS_NEW)
        detail = f"slot {self.state.target} did not stay up: the device runs slot {running}"
        return Result(Event.RUNS_OLD, detail=detail)

    async def _health(self) -> Result:
        job = self.state.job
        limit = timeout(job, "verify")
        deadline = self._monotonic() + limit
        # The agent is up on the new slot; it must also get through to the server.
        await self._flush(wait=True, deadline=deadline)
        if self.state.step is not Step.HEALTH:
            return Result(None)
        if self.state.outbox:
            detail = f"the server could not be reached within {limit:g} s of booting"
            return Result(Event.UNHEALTHY, detail=detail)
        if not self.settings.health_check:
            return Result(Event.HEALTHY)
        values = {
            "slot": self.state.target or "",
            "version": job.artifact.version if job.artifact else "",
        }
        argv = [substitute(element, values) for element in self.settings.health_check]
        seconds = max(1.0, min(self.settings.health_timeout, deadline - self._monotonic()))
        outcome = await self._execute(argv, seconds)
        if outcome.state == "succeeded":
            return Result(Event.HEALTHY)
        code = outcome.result.get("exit_code")
        why = f"exit status {code}" if code is not None else outcome.result.get("error")
        tail = f": {outcome.output.strip()[-500:]}" if outcome.output else ""
        return Result(Event.UNHEALTHY, detail=f"the health check {argv[0]} failed ({why}){tail}")

    async def _commit(self) -> Result:
        await self._need_slots().commit()
        return Result(Event.COMMITTED)

    async def _rollback(self) -> Result:
        await self._need_slots().rollback()
        return Result(Event.SWITCHED)

    async def _boot_back(self) -> Result:
        slots = self._need_slots()
        running = await slots.active_slot()
        if running != self.state.from_slot:
            await self._reboot()
            running = await slots.active_slot()
        if running == self.state.from_slot:
            return Result(Event.RUNS_OLD)
        return Result(Event.RUNS_NEW, detail=f"going back failed: slot {running} still runs")

    async def _run(self) -> Result:
        command = self.state.job.command
        assert command is not None
        outcome = await self.runner.run(command)
        detail = outcome.output or json.dumps(outcome.result)
        if outcome.state == "succeeded":
            return Result(Event.RAN, detail=detail)
        return Result(Event.FAILED, detail=detail)
