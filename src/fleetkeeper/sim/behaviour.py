"""What a simulated device does when it is due: `tick` and the actions it is made of.

One tick runs whatever is due, in the order a real device would: enrol (once), move a running
update on, report the inventory when it changed (before answering commands, so a finished
update's firmware is on record when its command succeeds), send what the outbox holds
(command answers, job reports), check in and run the commands and jobs it hands out, send
telemetry. A fault that is active changes what happens:
the device is gone (`disappear`), without power (`site_outage`), loses messages (`flaky`),
reports broken values (`sensor_*`), floods the server (`flood`), behaves like an intruder
(`compromised`) or crashes again and again (`crash_loop`). Faults only act on enrolled
devices; a command may heal some of them (`sim.remedies`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleetkeeper.protocol.client import MAX_POINTS, DeviceClient
from fleetkeeper.protocol.errors import AlreadyEnrolled, AuthenticationFailed, ProtocolError
from fleetkeeper.protocol.messages import Command, Location, Point
from fleetkeeper.sim import commands, firmware, jobs, outbox, remedies
from fleetkeeper.sim.catalogue import firmware_hash
from fleetkeeper.sim.device import MAX_BUFFER, NEVER, Deferred, SimDevice, Status, World
from fleetkeeper.sim.physics import advance, faulty_temperature, in_dead_zone, position, readings
from fleetkeeper.sim.scenario import SENSOR_FAULTS

INTRUDER_PORTS = (23, 4444, 31337)
_STATES = {"pending": Status.PENDING, "quarantined": Status.QUARANTINED}


async def tick(dev: SimDevice, world: World) -> float | None:
    """Do what is due; returns when the device wants its next tick (None: never again)."""
    now = world.elapsed()
    if dev.status is Status.STOPPED:
        return None
    if dev.status is not Status.NEW and not _faults_allow(dev, world, now):
        return dev.next_due(now)
    if dev.off:
        if now < dev.down_until:
            return dev.down_until
        dev.boot(now)
        commands.finish_reboot(dev)
        jobs.back_up(dev)
    if now >= dev.hold_until:
        with contextlib.suppress(Deferred):
            await _act(dev, world, now)
    return dev.next_due(world.elapsed())


async def _act(dev: SimDevice, world: World, now: float) -> None:
    if dev.status is Status.NEW:
        await enroll(dev, world, now)
        return
    if dev.update is not None and now >= dev.update_due:
        firmware.progress(dev, world, now)
        if dev.off:
            return  # rebooting into the new slot (or back into the old one)
    active = dev.status is Status.ACTIVE
    if active and now >= dev.next_inventory:
        await report_inventory(dev, world, now)
    if dev.later:
        dev.release_answers(now)
    if dev.outbox:
        await outbox.send(dev, world)
    if now >= dev.next_checkin:
        await checkin(dev, world, now)
    while dev.inbox:
        item = dev.inbox.pop(0)
        if isinstance(item, Command):
            commands.run(dev, world, item, now)
        else:
            jobs.receive(dev, world, item, now)
        if dev.off:
            return  # a reboot: the rest of the inbox is lost with the memory (jobs come again)
    dev.inbox = None
    if dev.outbox:
        await outbox.send(dev, world)
    active = dev.status is Status.ACTIVE
    if active and now >= dev.next_telemetry:
        await send_telemetry(dev, world, now)
    if active and now >= dev.next_flood:
        await flood(dev, world, now)
    if active and now >= dev.next_attack:
        await attack(dev, world, now)


def _faults_allow(dev: SimDevice, world: World, now: float) -> bool:
    """Note the faults that act now; False when the device cannot do anything."""
    if dev.faults is None:
        return True
    active = dev.active_faults(now)
    for kind in active - {"site_outage"}:
        world.stats.hit(kind, dev.serial)
    if "disappear" in active:
        dev.stop(world, "disappeared")
        return False
    outage = dev.faults.get("site_outage")
    if outage is None or now < outage[0] or not world.stats.hit("site_outage", dev.serial):
        return True
    # The power went out (this device may notice late when the fleet is behind schedule). It
    # comes back at the end for the whole site, and each device takes its own time to boot.
    end = outage[1]
    boot = dev.rng.uniform(0.0, min(5.0, 0.2 * (end - outage[0])))
    dev.power_cycle(now, max(0.0, end - now) + boot)
    return False


async def enroll(dev: SimDevice, world: World, now: float) -> None:
    async def request() -> str:
        try:
            enrollment = await dev.client.enroll(
                dev.serial,
                dev.model.name,
                provisioning_token=world.provisioning_token,
                firmware_version=dev.firmware.version,
                hardware_revision=dev.hardware_revision,
                attributes={"site": dev.site.name},
            )
        except AlreadyEnrolled as exc:
            # Enrolled by an earlier run with the same seed: the key proves it is this device.
            if exc.device_id is None:
                raise
            dev.client.device_id = exc.device_id
            world.stats.resumed += 1
            return "active"
        return enrollment.state

    try:
        state = await dev.call(world, request)
    except Deferred as exc:
        if exc.refused:
            world.stats.enroll_failed += 1
            dev.stop(world, "enroll_refused")
        raise
    world.stats.enrolled += 1
    dev.status = _STATES.get(state, Status.ACTIVE)
    dev.booted_at = now
    dev.sampled_at = world.fleet_ts(world.wall())
    s = world.scenario
    dev.next_inventory = now
    dev.next_checkin = now + dev.rng.uniform(0.1, 1.0) * s.checkin_interval
    dev.next_telemetry = now + dev.rng.uniform(0.0, 1.0) * s.telemetry_interval
    if dev.faults:
        dev.next_attack = dev.faults["compromised"][0] if dev.has("compromised") else NEVER
        dev.next_flood = dev.faults["flood"][0] if dev.has("flood") else NEVER


def inventory(dev: SimDevice, now: float) -> dict[str, Any]:
    """What the device says about itself: firmware, site, position, and what it runs."""
    compromised = dev.active("compromised", now)
    if compromised:
        running_hash = hashlib.sha256(f"tampered:{dev.serial}".encode()).hexdigest()[:32]
        ports = sorted({*dev.model.ports, *INTRUDER_PORTS})
    else:
        running_hash = firmware_hash(dev.model.name, dev.firmware.version)
        ports = list(dev.model.ports)
    lat, lon = position(dev.physics, dev.site)
    if not dev.model.mobile:
        lat, lon = round(lat, 4), round(lon, 4)  # a fixed unit reports where it is mounted
    attributes: dict[str, Any] = {
        "site": dev.site.name,
        "firmware_hash": running_hash,
        "boot_slot": dev.firmware.active,
        "open_ports": ports,
    }
    if dev.safe_mode:
        attributes["safe_mode"] = True
    return {
        "firmware_version": dev.firmware.version,
        "hardware_revision": dev.hardware_revision,
        "attributes": attributes,
        "location": Location(lat, lon, accuracy=5.0 if dev.model.mobile else 10.0),
    }


async def report_inventory(dev: SimDevice, world: World, now: float) -> None:
    body = inventory(dev, now)
    fingerprint = hash(repr(body))
    if fingerprint != dev.reported:
        await dev.call(world, lambda: dev.client.report_inventory(**body))
        dev.reported = fingerprint
    dev.next_inventory = now + world.scenario.inventory_interval


async def checkin(dev: SimDevice, world: World, now: float) -> None:
    due, interval = dev.next_checkin, world.scenario.checkin_interval
    world.stats.late(now - dev.released(due), interval)
    answer = await dev.call(world, lambda: dev.client.checkin(0))
    dev.next_checkin = _next(due, interval, world.elapsed())
    if answer.wipe:
        dev.stop(world, "retired")
        raise Deferred(refused=True)
    dev.status = _STATES.get(answer.state, Status.ACTIVE)
    if answer.commands or answer.jobs:
        dev.inbox = [*(dev.inbox or ()), *answer.commands, *answer.jobs]


def sample(dev: SimDevice, world: World, now: float) -> list[Point]:
    """Measure: move the physics to now and read the sensors (broken ones included)."""
    wall = world.wall()
    fleet_ts = world.fleet_ts(wall)
    ph, rng = dev.physics, dev.rng
    advance(ph, rng, dev.model, dev.site, fleet_ts - dev.sampled_at, fleet_ts)
    dev.sampled_at = fleet_ts
    values = readings(ph, rng, dev.model, dev.site, fleet_ts)
    if dev.faults is not None:
        for kind in SENSOR_FAULTS & dev.active_faults(now):
            if dev.stuck_value is None:
                dev.stuck_value = values["temperature"]
            values["temperature"] = faulty_temperature(
                kind, values["temperature"], dev.stuck_value, rng
            )
        if dev.active("compromised", now) and rng.random() < 0.3:
            values["net_tx_kbps"] = round(values["net_tx_kbps"] * rng.uniform(20, 80), 2)
    remedies.own_metrics(dev, world, now, values)  # uptime, crashes, safe mode; disabled ones
    return [Point(metric, value, wall) for metric, value in values.items()]


async def send_telemetry(dev: SimDevice, world: World, now: float) -> None:
    due, interval = dev.next_telemetry, world.scenario.telemetry_interval
    world.stats.late(now - dev.released(due), interval)
    dev.next_telemetry = _next(due, interval, now)
    points = sample(dev, world, now)
    buffer = dev.buffer = [*(dev.buffer or ()), *points]
    if len(buffer) > MAX_BUFFER:
        world.stats.telemetry_dropped += len(buffer) - MAX_BUFFER
        del buffer[: len(buffer) - MAX_BUFFER]
    if in_dead_zone(dev.physics):
        return  # no coverage on this stretch of the route: keep them for later
    while dev.buffer:
        batch = dev.buffer[:MAX_POINTS]
        try:
            answer = await dev.call(world, functools.partial(dev.client.send_telemetry, batch))
        except Deferred as exc:
            if exc.refused:
                dev.buffer = None  # the server will not take them: do not try for ever
            raise
        world.stats.telemetry_accepted += answer.accepted
        world.stats.telemetry_rejected += len(answer.rejected)
        del dev.buffer[: len(batch)]
    dev.buffer = None


async def flood(dev: SimDevice, world: World, now: float) -> None:
    """A misbehaving device: telemetry as fast as it can, though it honours Retry-After."""
    assert dev.faults is not None
    onset, end = dev.faults["flood"]
    if not onset <= now < end:
        dev.next_flood = onset if now < onset else NEVER
        return
    dev.next_flood = now + 1.0 / world.scenario.faults["flood"].messages_per_second
    wall = world.wall()
    values = readings(dev.physics, dev.rng, dev.model, dev.site, world.fleet_ts(wall))
    points = [Point(metric, value, wall) for metric, value in values.items()]
    answer = await dev.call(world, lambda: dev.client.send_telemetry(points))
    world.stats.telemetry_accepted += answer.accepted


async def attack(dev: SimDevice, world: World, now: float) -> None:
    """A compromised device: bursts of logins with a key that is not its own, traffic spikes."""
    assert dev.faults is not None
    onset, end = dev.faults["compromised"]
    if not onset <= now < end:
        dev.next_attack = onset if now < onset else NEVER
        return
    spec = world.scenario.faults["compromised"]
    dev.next_attack = now + spec.every
    dev.next_inventory = min(dev.next_inventory, now)  # its odd hash and ports show at once
    intruder = DeviceClient(
        world.server,
        Ed25519PrivateKey.from_private_bytes(dev.rng.randbytes(32)),
        dev.client.device_id,
        http=world.http,
    )
    for _ in range(spec.burst):
        try:
            await intruder.authenticate()
        except AuthenticationFailed:
            world.stats.auth_failures += 1
        except ProtocolError:
            break
    wall = world.wall()
    spike = [
        Point("net_tx_kbps", round(dev.rng.uniform(5_000, 50_000), 1), wall + i / 1000)
        for i in range(20)
    ]
    answer = await dev.call(world, lambda: dev.client.send_telemetry(spike))
    world.stats.telemetry_accepted += answer.accepted


def _next(due: float, interval: float, now: float) -> float:
    """The next time on the schedule; a device more than an interval late starts afresh."""
    following = due + interval
    return following if following > now else now + interval
