"""What a simulated device does with the commands it is handed at check-in.

- `ping`: `{"pong": true, "time": ...}`.
- `get_diagnostics`: uptime, boot count, firmware slots and the latest measurements.
- `update` (`version`; optional `sha256`, `url`): runs the A/B update (`sim.update`), one
  phase per `update_step` seconds, and answers when it is over: succeeded on the new firmware,
  or failed with `checksum_mismatch`, `install_failed` or `health_check_failed` (then
  `rolled_back: true` and the old firmware still runs).
- `reboot`: off for `reboot_seconds`, answers after it is back up.
- the remedies of `sim.remedies`, which heal the faults a command can heal:
  `restart_service` (answers after a second), `safe_mode` (reboots into safe mode, answers
  once back up), `recalibrate` (`metric`, by default the temperature sensor), `disable_sensor`
  (`metric`) and `health_check` (a small report, at once). `reboot`, `restart_service` and
  `safe_mode` are the rungs of a crash loop's ladder: the fault's `heals_with` says which
  suffices.
- anything else: failed with `{"error": "unknown_command"}`.

Answers wait in the device's outbox until the server takes them (`sim.outbox`), so a flaky
link delays an answer but never loses it. A device that is busy (updating, rebooting, or
working on a deployment's job) refuses `update`, `reboot`, `restart_service` and `safe_mode`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fleetkeeper.protocol.messages import Command
from fleetkeeper.sim import firmware, remedies
from fleetkeeper.sim.catalogue import image_sha256
from fleetkeeper.sim.device import SimDevice, World


def run(dev: SimDevice, world: World, cmd: Command, now: float) -> None:
    """Start `cmd`; simple commands answer at once, `update` and `reboot` later."""
    world.stats.commands[cmd.name] += 1
    if cmd.name == "ping":
        dev.reply(cmd.id, "succeeded", {"pong": True, "time": iso(world.wall())})
    elif cmd.name == "get_diagnostics":
        dev.reply(cmd.id, "succeeded", diagnostics(dev, world, now))
    elif cmd.name == "update":
        begin_update(dev, world, cmd.id, cmd.args, now)
    elif cmd.name == "reboot":
        if dev.busy:
            dev.reply(cmd.id, "failed", {"error": "busy"})
            return
        dev.reboot_command = cmd.id
        remedies.rebooting(dev, world, now)
        dev.power_cycle(now, world.scenario.reboot_seconds)
    elif cmd.name in remedies.COMMANDS:
        remedies.run(dev, world, cmd, now)
    else:
        dev.reply(cmd.id, "failed", {"error": "unknown_command", "name": cmd.name})


def diagnostics(dev: SimDevice, world: World, now: float) -> dict[str, Any]:
    ph = dev.physics
    return {
        "uptime": round(remedies.uptime(dev, world, now), 1),
        "boot_count": dev.boot_count,
        "agent_restarts": remedies.crashes(dev, world, now),
        "safe_mode": dev.safe_mode,
        "firmware_version": dev.firmware.version,
        "slots": {"a": dev.firmware.a, "b": dev.firmware.b, "active": dev.firmware.active},
        "update": dev.update.phase.value if dev.update else None,
        "job": dev.job.id if dev.job else None,
        "battery": round(ph.battery, 1),
        "battery_capacity": round(ph.capacity * 100, 1),
        "storage_used": round(ph.storage, 1),
        "temperature": ph.temperature,
        "cpu_load": round(ph.load * 100, 1),
        "buffered_points": len(dev.buffer or ()),
    }


def begin_update(
    dev: SimDevice, world: World, command_id: str, args: dict[str, Any], now: float
) -> None:
    version = args.get("version")
    if not isinstance(version, str) or not version:
        dev.reply(command_id, "failed", {"error": "invalid_argument", "argument": "version"})
        return
    if dev.busy:
        dev.reply(command_id, "failed", {"error": "update_in_progress"})
        return
    if version == dev.firmware.version:
        dev.reply(command_id, "succeeded", {"version": version, "unchanged": True})
        return
    wanted = args.get("sha256")
    expected = wanted if isinstance(wanted, str) else image_sha256(dev.model.name, version)
    refused = firmware.begin(dev, world, version, expected, now, command_id)
    if refused is not None:
        dev.reply(command_id, "failed", {"error": "update_in_progress", "detail": refused})


def finish_reboot(dev: SimDevice) -> None:
    """Back up after a reboot (or a `safe_mode`) it was asked for: answer it."""
    if dev.reboot_command is not None:
        result: dict[str, Any] = {"rebooted": True, "boot_count": dev.boot_count}
        if dev.safe_mode:
            result["safe_mode"] = True
        dev.reply(dev.reboot_command, "succeeded", result)
        dev.reboot_command = None


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")
