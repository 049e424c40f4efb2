"""Faults a command can heal, and the commands that heal them (automatic failure recovery).

- `crash_loop`: the agent crashes every `every` seconds (the first crash `every` seconds after
  the fault begins) and the unit's watchdog brings it straight back: `uptime` starts again from
  0 and the `agent_restarts` counter (reported from the first crash on) goes up by one. The
  escalation ladder's rungs are `restart_service` < `reboot` < `safe_mode`; the fault's
  `heals_with` names the lowest that cures it. A lower rung answers `succeeded` and changes
  nothing: the crashes go on. `safe_mode` always stops them: the unit boots into safe mode,
  stays there, and says so (`safe_mode` = 1 in its telemetry, `attributes.safe_mode`).
- the temperature sensor's faults: `recalibrate` cures a stuck or noisy sensor
  (`sensor_stuck`, `sensor_noisy`); one that reports impossible values (`sensor_out_of_range`)
  is broken, and recalibrating it fails with `sensor_fault`. `disable_sensor` stops a metric
  being reported at all, for good.
- `health_check` answers at once with what the unit knows of itself: uptime, battery, storage,
  the crashes it has seen, whether it is crashing now or in safe mode, what it no longer
  reports.

Crashes are no scheduled events: how many there were by a time follows from when the loop
began, `every`, and when (if ever) a command cured it, so a unit sampled rarely still counts
every crash, and the same seed and the same commands give the same crashes. Nothing here draws
from the device's random generator, so the rest of its measurements are as they would be.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from fleetkeeper.protocol.messages import Command
from fleetkeeper.sim.device import SimDevice, World
from fleetkeeper.sim.physics import metric_names
from fleetkeeper.sim.scenario import RUNGS, Rung

RESTART_SECONDS = 1.0  # how long `restart_service` takes before it answers
SENSOR = "temperature"  # the sensor the sensor faults break
RECALIBRATED = frozenset({"sensor_stuck", "sensor_noisy"})
# What a unit reports about itself, besides what its sensors measure.
OWN_METRICS = ("uptime", "agent_restarts", "safe_mode")


# --- the crash loop ------------------------------------------------------------------------------


def _loop(dev: SimDevice, world: World) -> tuple[float, float, float] | None:
    """(onset, stop, every) of the device's crash loop; stop is its end or its cure."""
    window = dev.faults.get("crash_loop") if dev.faults is not None else None
    if window is None:
        return None
    spec = world.scenario.faults.get("crash_loop")
    every = spec.every if spec is not None else 30.0
    cured = dev.healed.get("crash_loop", math.inf) if dev.healed is not None else math.inf
    return window[0], min(window[1], cured), every


def crashes(dev: SimDevice, world: World, now: float) -> int:
    """Crashes so far: one at each `onset + k·every` (k ≥ 1) before the loop stopped."""
    loop = _loop(dev, world)
    if loop is None:
        return 0
    onset, stop, every = loop
    until = min(now, stop)
    if until <= onset:
        return 0
    n = math.floor((until - onset) / every)
    if stop <= now and onset + n * every >= stop:
        n -= 1  # the loop stopped at that very moment: that crash never came
    return max(0, n)


def crashing(dev: SimDevice, world: World, now: float) -> bool:
    """The loop goes on now (not over, not cured)."""
    loop = _loop(dev, world)
    return loop is not None and loop[0] <= now < loop[1]


def uptime(dev: SimDevice, world: World, now: float) -> float:
    """Seconds since the unit last came up: booted, or brought back after a crash."""
    started = dev.booted_at
    n = crashes(dev, world, now)
    loop = _loop(dev, world)
    if n and loop is not None:
        started = max(started, loop[0] + n * loop[2])
    return max(0.0, now - started)


def cure(dev: SimDevice, world: World, rung: Rung, at: float) -> bool:
    """A rung of the ladder taken at `at`: True when it ends the device's crash loop.

    `restart_service` and `reboot` cure a loop going on at `at` when they are at least the
    fault's `heals_with`; `safe_mode` always does, and keeps a later loop from starting."""
    loop = _loop(dev, world)
    if loop is None or at >= loop[1]:
        return False
    if rung != "safe_mode":
        spec = world.scenario.faults.get("crash_loop")
        needed = spec.heals_with if spec is not None else RUNGS[0]
        if at < loop[0] or RUNGS.index(rung) < RUNGS.index(needed):
            return False
    heal(dev, world, "crash_loop", at)
    return True


def heal(dev: SimDevice, world: World, kind: str, at: float) -> None:
    healed = dev.healed if dev.healed is not None else {}
    if kind not in healed:
        healed[kind] = at
        world.stats.healed.setdefault(kind, set()).add(dev.serial)
    dev.healed = healed


# --- what the unit reports -----------------------------------------------------------------------


def own_metrics(dev: SimDevice, world: World, now: float, values: dict[str, float]) -> None:
    """Add what the unit reports about itself to its readings; drop what it was told not to
    report."""
    values["uptime"] = round(uptime(dev, world, now), 1)  # reboots and crashes show as a reset
    n = crashes(dev, world, now)
    if n:
        values["agent_restarts"] = float(n)
    if dev.safe_mode:
        values["safe_mode"] = 1.0
    for metric in dev.disabled:
        values.pop(metric, None)


def health_report(dev: SimDevice, world: World, now: float) -> dict[str, Any]:
    ph = dev.physics
    looping = crashing(dev, world, now)
    return {
        "healthy": not looping and not dev.safe_mode,
        "uptime": round(uptime(dev, world, now), 1),
        "boot_count": dev.boot_count,
        "battery": round(ph.battery, 1),
        "storage_used": round(ph.storage, 1),
        "agent_restarts": crashes(dev, world, now),
        "crashing": looping,
        "safe_mode": dev.safe_mode,
        "disabled_sensors": sorted(dev.disabled),
    }


# --- the commands --------------------------------------------------------------------------------


def run(dev: SimDevice, world: World, cmd: Command, now: float) -> None:
    """Run one of `COMMANDS`."""
    COMMANDS[cmd.name](dev, world, cmd.id, cmd.args, now)


def rebooting(dev: SimDevice, world: World, now: float) -> None:
    """The device reboots on request (a command or a job): the `reboot` rung."""
    cure(dev, world, "reboot", now)


def _restart_service(
    dev: SimDevice, world: World, command_id: str, args: Mapping[str, Any], now: float
) -> None:
    if dev.busy:
        dev.reply(command_id, "failed", {"error": "busy"})
        return
    done = now + RESTART_SECONDS
    cure(dev, world, "restart_service", done)
    dev.reply_at(done, command_id, "succeeded", {"restarted": True})


def _safe_mode(
    dev: SimDevice, world: World, command_id: str, args: Mapping[str, Any], now: float
) -> None:
    """Reboot into safe mode; answered once back up (`commands.finish_reboot`)."""
    if dev.busy:
        dev.reply(command_id, "failed", {"error": "busy"})
        return
    dev.safe_mode = True
    cure(dev, world, "safe_mode", now)
    dev.reboot_command = command_id
    dev.power_cycle(now, world.scenario.reboot_seconds)


def _recalibrate(
    dev: SimDevice, world: World, command_id: str, args: Mapping[str, Any], now: float
) -> None:
    metric = args.get("metric", SENSOR)
    if not isinstance(metric, str) or metric not in metric_names(dev.model):
        dev.reply(command_id, "failed", {"error": "invalid_argument", "argument": "metric"})
        return
    if metric == SENSOR:
        for kind in RECALIBRATED & dev.active_faults(now):
            heal(dev, world, kind, now)
            dev.stuck_value = None
        if dev.active("sensor_out_of_range", now):
            dev.reply(
                command_id,
                "failed",
                {"error": "sensor_fault", "metric": metric, "detail": "no answer to calibration"},
            )
            return
    dev.reply(command_id, "succeeded", {"recalibrated": metric})


def _disable_sensor(
    dev: SimDevice, world: World, command_id: str, args: Mapping[str, Any], now: float
) -> None:
    metric = args.get("metric")
    known = (*metric_names(dev.model), *OWN_METRICS)
    if not isinstance(metric, str) or metric not in known:
        dev.reply(command_id, "failed", {"error": "invalid_argument", "argument": "metric"})
        return
    dev.disabled = dev.disabled | {metric}
    dev.reply(command_id, "succeeded", {"disabled": sorted(dev.disabled)})


def _health_check(
    dev: SimDevice, world: World, command_id: str, args: Mapping[str, Any], now: float
) -> None:
    dev.reply(command_id, "succeeded", health_report(dev, world, now))


Handler = Callable[[SimDevice, World, str, Mapping[str, Any], float], None]
COMMANDS: Mapping[str, Handler] = {
    "restart_service": _restart_service,
    "safe_mode": _safe_mode,
    "recalibrate": _recalibrate,
    "disable_sensor": _disable_sensor,
    "health_check": _health_check,
}
