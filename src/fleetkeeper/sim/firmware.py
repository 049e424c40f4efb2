"""Driving a device's A/B update (`sim.update`) for whoever asked: a command or a job.

An `update` command and a deployment's `update` job start the same machine; it moves one
phase every `update_step` seconds and is offline for `reboot_seconds` on each reboot. What
differs is who hears about it:

- a command hears once, when it is over: its result (`sim.update.result`);
- a job hears every step, as the execution states of docs/ota.md (`REPORTED`), and the end
  with a reason from the server's taxonomy (`REASONS`) and the firmware the device runs.

A job may drop the update while nothing has been written yet (`cancel`); after that the
update runs to its end.
"""

from __future__ import annotations

from fleetkeeper.sim.catalogue import image_sha256
from fleetkeeper.sim.device import NEVER, SimDevice, World
from fleetkeeper.sim.scenario import UPDATE_FAULTS
from fleetkeeper.sim.update import (
    OFFLINE,
    UNTOUCHED,
    Phase,
    Update,
    UpdateError,
    next_event,
    result,
    start,
    step,
)

# The execution state a job reports when its update enters a phase. Rolling back has none:
# for the server the device is still verifying until it says `rolled_back`.
REPORTED: dict[Phase, str] = {
    Phase.DOWNLOADING: "downloading",
    Phase.VERIFYING: "downloaded",
    Phase.INSTALLING: "installing",
    Phase.REBOOTING: "rebooting",
    Phase.HEALTH_CHECK: "verifying",
    Phase.COMMITTED: "succeeded",
    Phase.FAILED: "failed",
    Phase.ROLLED_BACK: "rolled_back",
}
# The simulator's own error (kept as the report's detail) -> the failure taxonomy's reason.
REASONS: dict[str, str] = {
    "download_failed": "connection_lost",
    "checksum_mismatch": "integrity_check_failure",
    "install_failed": "update_failed",
    "health_check_failed": "health_check_failed",
}
OUTCOMES: dict[Phase, str] = {
    Phase.COMMITTED: "succeeded",
    Phase.ROLLED_BACK: "rolled_back",
    Phase.FAILED: "failed",
}


def begin(
    dev: SimDevice,
    world: World,
    version: str,
    expected_sha256: str,
    now: float,
    command_id: str | None = None,
) -> str | None:
    """Start updating to `version`; returns why it cannot (None: it started)."""
    try:
        dev.update = start(dev.firmware, version, expected_sha256.lower(), command_id)
    except UpdateError as exc:
        return str(exc)
    world.stats.updates["attempted"] += 1
    dev.update_due = now + world.scenario.update_step
    _tell_job(dev, dev.update)
    return None


def progress(dev: SimDevice, world: World, now: float) -> None:
    """One phase of the running update."""
    update = dev.update
    assert update is not None
    defects = dev.active_faults(now) & UPDATE_FAULTS
    update, dev.firmware = step(update, dev.firmware, next_event(update, defects, _image(dev)))
    dev.update = update
    if update.phase in OFFLINE:
        dev.power_cycle(now, world.scenario.reboot_seconds)
    if not update.done:
        dev.update_due = now + world.scenario.update_step
        _tell_job(dev, update)
        return
    world.stats.updates[OUTCOMES[update.phase]] += 1
    dev.update, dev.update_due = None, NEVER
    dev.next_inventory = now  # the firmware it runs may have changed: say so first
    if update.command_id is not None:
        dev.reply(update.command_id, *result(update, dev.firmware))
    else:
        _tell_job(dev, update)


def cancel(dev: SimDevice, world: World) -> bool:
    """Drop the running update if it has not written anything yet; False when too late."""
    update = dev.update
    if update is None or update.phase not in UNTOUCHED:
        return False
    world.stats.updates["canceled"] += 1
    dev.update, dev.update_due = None, NEVER
    return True


def _image(dev: SimDevice) -> str:
    """The sha256 of what the download brought. The simulator downloads no bytes: a job's
    artifact is what it says it is (a corrupt download is a fault of the device), and a
    command's image is the genuine release, whatever checksum the operator typed in."""
    update = dev.update
    assert update is not None
    if update.command_id is None:
        return update.expected_sha256
    return image_sha256(dev.model.name, update.version)


def _tell_job(dev: SimDevice, update: Update) -> None:
    job = dev.job
    state = REPORTED.get(update.phase)
    if job is None or job.kind != "update" or update.command_id is not None or state is None:
        return
    if not update.done:
        dev.report(job.id, state)
        return
    reason = None if update.error is None else REASONS.get(update.error, "update_failed")
    dev.report(job.id, state, reason=reason, detail=update.error)
    dev.job = None
