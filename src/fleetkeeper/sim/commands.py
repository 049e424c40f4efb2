"""What a simulated device does with the commands it is handed at check-in.

- `ping`: `{"pong": true, "time": ...}`.
- `get_diagnostics`: uptime, boot count, firmware slots and the latest measurements.
- `update` (`version`; optional `sha256`, `url`): runs the A/B update (`sim.update`), one
  phase per `update_step` seconds, and answers when it is over: succeeded on the new firmware,
  or failed with `checksum_mismatch`, `install_failed` or `health_check_failed` (then
  `rolled_back: true` and the old firmware still runs).
- `reboot`: off for `reboot_seconds`, answers after it is back up.
- anything else: failed with `{"error": "unknown_command"}`.

Answers wait in the device's outbox until the server takes them, so a flaky link delays an
answer but never loses it.
"""

from __future__ import annotations

import contextlib
import functools
from datetime import UTC, datetime
from typing import Any

from fleetkeeper.protocol.errors import CommandClosed
from fleetkeeper.protocol.messages import Command
from fleetkeeper.sim.catalogue import image_sha256
from fleetkeeper.sim.device import Deferred, SimDevice, World
from fleetkeeper.sim.scenario import UPDATE_FAULTS
from fleetkeeper.sim.update import OFFLINE, Phase, UpdateError, next_event, result, start, step


def run(dev: SimDevice, world: World, cmd: Command, now: float) -> None:
    """Start `cmd`; simple commands answer at once, `update` and `reboot` later."""
    world.stats.commands[cmd.name] += 1
    if cmd.name == "ping":
        dev.reply(cmd.id, "succeeded", {"pong": True, "time": _iso(world.wall())})
    elif cmd.name == "get_diagnostics":
        dev.reply(cmd.id, "succeeded", diagnostics(dev, world, now))
    elif cmd.name == "update":
        begin_update(dev, world, cmd.id, cmd.args, now)
    elif cmd.name == "reboot":
        if dev.reboot_command is not None or dev.job is not None:
            dev.reply(cmd.id, "failed", {"error": "busy"})
            return
        dev.reboot_command = cmd.id
        dev.power_cycle(now, world.scenario.reboot_seconds)
    else:
        dev.reply(cmd.id, "failed", {"error": "unknown_command", "name": cmd.name})


def diagnostics(dev: SimDevice, world: World, now: float) -> dict[str, Any]:
    ph = dev.physics
    return {
        "uptime": round(now - dev.booted_at, 1),
        "boot_count": dev.boot_count,
        "firmware_version": dev.firmware.version,
        "slots": {"a": dev.firmware.a, "b": dev.firmware.b, "active": dev.firmware.active},
        "update": dev.job.phase.value if dev.job else None,
        "battery": round(ph.battery, 1),
        "battery_capacity": round(ph.capacity * 100, 1),
        "storage_used": round(ph.storage, 1),
        "temperature": ph.temperature,
        "cpu_load": round(ph.load * 100, 1),
        "buffered_points": len(dev.buffer or ()),
    }


def begin_update(
    dev: SimDevice, world: World, command_id: str | None, args: dict[str, Any], now: float
) -> None:
    version = args.get("version")
    if not isinstance(version, str) or not version:
        _answer(dev, command_id, "failed", {"error": "invalid_argument", "argument": "version"})
        return
    if dev.job is not None or dev.reboot_command is not None:
        _answer(dev, command_id, "failed", {"error": "update_in_progress"})
        return
    if version == dev.firmware.version:
        _answer(dev, command_id, "succeeded", {"version": version, "unchanged": True})
        return
    wanted = args.get("sha256")
    expected = wanted if isinstance(wanted, str) else image_sha256(dev.model.name, version)
    try:
        dev.job = start(dev.firmware, version, expected.lower(), command_id)
    except UpdateError as exc:
        _answer(dev, command_id, "failed", {"error": "update_in_progress", "detail": str(exc)})
        return
    world.stats.updates["attempted"] += 1
    dev.job_due = now + world.scenario.update_step


def progress_update(dev: SimDevice, world: World, now: float) -> None:
    """One phase of the running update."""
    job = dev.job
    assert job is not None
    defects = dev.active_faults(now) & UPDATE_FAULTS
    downloaded = image_sha256(dev.model.name, job.version)
    job, dev.firmware = step(job, dev.firmware, next_event(job, defects, downloaded))
    dev.job = job
    if job.phase in OFFLINE:
        dev.power_cycle(now, world.scenario.reboot_seconds)
    if not job.done:
        dev.job_due = now + world.scenario.update_step
        return
    state, outcome = result(job, dev.firmware)
    world.stats.updates[_OUTCOMES[job.phase]] += 1
    dev.job, dev.job_due = None, float("inf")
    dev.next_inventory = now  # the firmware it runs may have changed: say so first
    _answer(dev, job.command_id, state, outcome)


def finish_reboot(dev: SimDevice) -> None:
    if dev.reboot_command is not None:
        dev.reply(dev.reboot_command, "succeeded", {"rebooted": True, "boot_count": dev.boot_count})
        dev.reboot_command = None


async def send_answers(dev: SimDevice, world: World) -> None:
    while dev.outbox:
        command_id, state, outcome = dev.outbox[0]
        try:
            await dev.call(world, functools.partial(_report, dev, command_id, state, outcome))
        except Deferred as exc:
            if not exc.refused:
                raise
        dev.outbox.pop(0)  # taken, or refused for good (e.g. the command expired)
    dev.outbox = None


async def _report(dev: SimDevice, command_id: str, state: str, outcome: Any) -> None:
    # CommandClosed: it expired on the server before the device was done; nothing to do.
    with contextlib.suppress(CommandClosed):
        await dev.client.report_command(command_id, state, outcome)


def _answer(dev: SimDevice, command_id: str | None, state: str, outcome: dict[str, Any]) -> None:
    if command_id is not None:  # None: an update started by the simulator itself
        dev.reply(command_id, state, outcome)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


_OUTCOMES = {Phase.COMMITTED: "succeeded", Phase.ROLLED_BACK: "rolled_back", Phase.FAILED: "failed"}
