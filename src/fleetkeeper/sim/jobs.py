"""What a simulated device does with the deployment jobs it is handed at check-in.

docs/ota.md ("Device side") is the contract; in short:

- `update`: the A/B update of `sim.update`, driven by `sim.firmware`, reported step by step.
  The device downloads no bytes: it takes the artifact's sha256 as what it would have
  downloaded (unless it carries `update_download_corrupt`).
- `rollback`: boot the other slot when it holds `rollback_to`, report `rolled_back` once
  back up; `failed` with `rollback_unavailable` when it does not.
- `command`: `reboot` (off for `reboot_seconds`, `succeeded` once back; it is the `reboot`
  rung of a crash loop, as the command is), `ping`, `get_diagnostics`; any other name fails
  with `command_failed`.

A job is recognised by its id, attempt and kind: a job seen before is not started again (the
server repeats a job until the device reports on it), a new attempt of it is a retry and
starts afresh, and the kind tells a rollback from the update it undoes (same id and attempt).
A cancel request (`cancel: true` in a job, or in the answer to a report) drops an update that
has not started installing (`canceled`); later, the device carries on and its next report
says `cancel_refused`. One job at a time: a busy device fails a new one with
`precondition_failed`, which the server may retry later. Reports wait in the outbox
(`sim.outbox`) like command answers; a job the server has closed (`job_closed`) is dropped.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from fleetkeeper.protocol.messages import Job, JobAnswer
from fleetkeeper.sim import commands, firmware, remedies
from fleetkeeper.sim.device import FINAL_REPORTS, ActiveJob, Report, SimDevice, World
from fleetkeeper.sim.update import UpdateError, switch_back

# The reason a device gives for a rollback the server asked for (an aborted deployment);
# the taxonomy has no code of its own for it. The agent reports the same.
ROLLBACK_REASON = "rollback_requested"
MAX_DETAIL = 1000


def receive(dev: SimDevice, world: World, job: Job, now: float) -> None:
    """A job from a check-in: start it, or take note of a cancel for one under way."""
    seen = dev.jobs_seen if dev.jobs_seen is not None else {}
    attempt, kind = seen.get(job.id, (0, ""))
    if attempt >= job.attempt and kind == job.kind:
        if job.cancel:
            cancel_asked(dev, world, job.id)
        return
    seen[job.id] = (job.attempt, job.kind)
    dev.jobs_seen = seen
    world.stats.jobs["received"] += 1
    if job.cancel:  # called off before the device got to it
        dev.report(job.id, "canceled")
        return
    if dev.busy:
        _fail(dev, job, "precondition_failed", "busy: another update, reboot or job is under way")
        return
    start = _KINDS.get(job.kind)
    if start is None:
        _fail(dev, job, "unsupported_protocol", f"unknown job kind {job.kind!r}")
        return
    start(dev, world, job, now)


def back_up(dev: SimDevice) -> None:
    """The device booted: a reboot or rollback it was asked for is done."""
    job = dev.job
    if job is None or job.kind == "update":
        return  # an update goes on in its own time (`sim.firmware`)
    if job.kind == "rollback":
        dev.report(job.id, "rolled_back", reason=ROLLBACK_REASON)
    else:
        detail = _detail({"rebooted": True, "boot_count": dev.boot_count})
        dev.report(job.id, "succeeded", detail=detail)
    dev.job = None


def cancel_asked(dev: SimDevice, world: World, job_id: str) -> None:
    """The server wants the job dropped: agree before installing, refuse after."""
    job = dev.job
    if (
        job is not None
        and job.id == job_id
        and job.kind == "update"
        and firmware.cancel(dev, world)
    ):
        dev.report(job_id, "canceled")
        dev.job = None
        return
    waiting = _waiting(dev, job_id)
    if any(report.state == "canceled" for _, report in waiting):
        return  # agreed already: the server will hear it
    if waiting:  # the next report on its way says so
        assert dev.outbox is not None
        index, report = waiting[0]
        dev.outbox[index] = replace(report, cancel_refused=True)
    elif job is not None and job.id == job_id:
        job.refuse_cancel = True  # ... or the next one it makes
    # Otherwise the job is over and reported: the server knows better already.


def answered(dev: SimDevice, world: World, report: Report, answer: JobAnswer | None) -> None:
    """What the server said to a report; None: the job is closed, stop working on it."""
    if answer is None:
        world.stats.jobs["closed"] += 1
        _forget(dev, world, report.job_id)
        return
    if report.state in FINAL_REPORTS:
        world.stats.jobs[report.state] += 1
    if answer.cancel:
        cancel_asked(dev, world, report.job_id)


# --- the kinds ----------------------------------------------------------------------------


def _update(dev: SimDevice, world: World, job: Job, now: float) -> None:
    artifact = job.artifact
    if artifact is None:
        _fail(dev, job, "unsupported_package", "the job names no artifact")
        return
    if artifact.version == dev.firmware.version:
        dev.report(job.id, "succeeded", detail="already running")
        return
    dev.job = ActiveJob(job.id, "update")
    refused = firmware.begin(dev, world, artifact.version, artifact.sha256, now)
    if refused is not None:
        dev.job = None
        _fail(dev, job, "update_failed", refused)


def _rollback(dev: SimDevice, world: World, job: Job, now: float) -> None:
    wanted = job.rollback_to
    if wanted is not None and wanted == dev.firmware.version:
        dev.report(job.id, "rolled_back", reason=ROLLBACK_REASON)
        return
    try:
        if wanted is None:
            raise UpdateError("the job names no version to return to")
        dev.firmware = switch_back(dev.firmware, wanted)
    except UpdateError as exc:
        _fail(dev, job, "rollback_unavailable", str(exc))
        return
    dev.job = ActiveJob(job.id, "rollback")
    dev.power_cycle(now, world.scenario.reboot_seconds)


def _command(dev: SimDevice, world: World, job: Job, now: float) -> None:
    name = job.command.name if job.command is not None else ""
    if name == "reboot":
        dev.job = ActiveJob(job.id, "command")
        remedies.rebooting(dev, world, now)
        dev.power_cycle(now, world.scenario.reboot_seconds)
    elif name == "ping":
        dev.report(
            job.id, "succeeded", detail=_detail({"pong": True, "time": commands.iso(world.wall())})
        )
    elif name == "get_diagnostics":
        dev.report(job.id, "succeeded", detail=_detail(commands.diagnostics(dev, world, now)))
    else:
        _fail(dev, job, "command_failed", f"unknown command {name!r}")


_KINDS: dict[str, Callable[[SimDevice, World, Job, float], None]] = {
    "update": _update,
    "rollback": _rollback,
    "command": _command,
}


# --- plumbing -----------------------------------------------------------------------------


def _fail(dev: SimDevice, job: Job, reason: str, detail: str) -> None:
    dev.report(job.id, "failed", reason=reason, detail=detail)


def _forget(dev: SimDevice, world: World, job_id: str) -> None:
    """Drop a closed job's reports; stop working on it if nothing has been written yet."""
    if dev.outbox:
        dev.outbox = [
            item for item in dev.outbox if not (isinstance(item, Report) and item.job_id == job_id)
        ]
    job = dev.job
    if job is not None and job.id == job_id:
        # An update past installing runs to its end without telling anyone (the inventory
        # still says what the device runs); a reboot or rollback is under way anyway.
        if job.kind == "update":
            firmware.cancel(dev, world)
        dev.job = None


def _waiting(dev: SimDevice, job_id: str) -> list[tuple[int, Report]]:
    """The job's reports in the outbox, with their places."""
    return [
        (i, item)
        for i, item in enumerate(dev.outbox or ())
        if isinstance(item, Report) and item.job_id == job_id
    ]


def _detail(data: dict[str, Any]) -> str:
    return json.dumps(data, separators=(",", ":"), default=str)[:MAX_DETAIL]
