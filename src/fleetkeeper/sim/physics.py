"""How a simulated device's measurements behave over time: plain functions over plain state.

`advance` moves one device's `Physics` forward by some fleet time (scenario `time_scale`
fleet seconds per real second) and `readings` turns it into metric values:

- battery (%): drains with load, faster as capacity fades (some units lose capacity month
  after month); solar units charge in daylight, trackers while parked at the depot, mains units
  keep their backup battery full;
- rssi (dBm): a per-unit level with noise and fading; some units are mounted in a dead zone,
  and trackers cross dead zones on their routes (where they cannot reach the server at all);
- storage_used (%): fills at the model's pace; most units rotate their logs at about 92 %,
  a few never do and fill up;
- temperature (°C): the site's climate with its day/night swing (local solar time), plus the
  heat of the unit's own load, which builds up and fades over minutes (the enclosure's
  thermal inertia);
- cpu_load (%), net_tx_kbps: the load behind the heat and the traffic it makes: the model's
  idle level, with busy spells that start now and then and last minutes;
- position: fixed units drift a few metres around where they are mounted; trackers drive a
  loop from their depot and back, at the pace the traffic allows.

Every process runs on fleet time, not on steps: a spell starts at a rate per fleet hour and
the load and the heat follow it exactly (first-order lags, solved in closed form), so a unit
sampled every 10 fleet seconds and one sampled every 10 fleet minutes (`time_scale` 120 at a
5 s interval) show the same unit, only more or less finely.

Nothing here does I/O; randomness comes from the device's own `random.Random`.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass

from fleetkeeper.sim.catalogue import ModelSpec, Power, Site

DAY = 86400.0
METRES_PER_DEG = 111_320.0
ROTATE_AT = 92.0  # % storage at which log rotation frees space
DEPOT_SHARE = 0.25  # share of a tracker's loop spent parked (and charging) at the depot
DEAD_ZONE = (0.55, 0.63)  # part of each route without coverage
OUT_OF_RANGE = (-127.0, 327.67, -273.5, 6553.5)  # what broken temperature sensors report
BUSY_EVERY = 2 * 3600.0  # fleet seconds between the starts of busy spells, on average
BUSY_SPELL = (60.0, 600.0)  # how long a spell lasts, fleet seconds (uniform)
BUSY_LOAD = (0.6, 0.95)  # the load a spell asks for (uniform)
LOAD_TAU = 30.0  # seconds: the load follows what the unit is doing almost at once
THERMAL_TAU = 2400.0  # seconds: the heat of the load builds up and fades with the enclosure
TRAFFIC_TAU = 1200.0  # seconds: how long a van's pace (traffic) stays what it is
TRAFFIC_SPREAD = 0.25  # how far its pace strays from its usual speed (a share of it)


@dataclass(slots=True)
class Physics:
    battery: float  # % of the present capacity
    capacity: float  # fraction of the design capacity
    fade_per_day: float  # capacity lost per fleet day (0 for most units)
    storage: float  # %
    rotates: bool  # rotates its logs before the storage fills
    load: float  # 0..1
    heat: float  # °C above the air the load keeps the unit (self_heating x load, lagging)
    rssi_level: float  # dBm, where the unit is mounted (trackers: typical on the road)
    east: float  # metres from the site (fixed units; trackers: their depot)
    north: float
    drift_e: float  # metres of slow GPS/placement drift
    drift_n: float
    route: tuple[float, ...] | None  # trackers: waypoints as (east, north) pairs, metres
    speed: float  # trackers: km/h when driving, as usual
    progress: float  # trackers: 0..1 around the loop; below DEPOT_SHARE: parked
    pace: float = 1.0  # trackers: the share of the usual speed the traffic allows now
    busy_left: float = 0.0  # fleet seconds left of the current busy spell (0: idle)
    busy_load: float = 0.0  # ...and the load it asks for
    temperature: float = 0.0  # last reading


def new_physics(rng: random.Random, model: ModelSpec) -> Physics:
    dead_zone = not model.mobile and rng.random() < 0.08
    route = None
    if model.mobile:
        radius = rng.uniform(3_000, 12_000)
        start = rng.uniform(0, 2 * math.pi)
        points: list[float] = []
        for i in range(1, 5):
            angle = start + i * math.pi / 2.5 + rng.uniform(-0.3, 0.3)
            reach = radius * rng.uniform(0.5, 1.0)
            points += [reach * math.cos(angle), reach * math.sin(angle)]
        route = tuple(points)
    battery = rng.uniform(40, 100)
    return Physics(
        battery=100.0 if model.power is Power.MAINS else battery,  # mains keeps it full
        capacity=rng.uniform(0.85, 1.0),
        fade_per_day=rng.uniform(0.002, 0.01) if rng.random() < 0.2 else 0.0,
        storage=rng.uniform(10, 60),
        rotates=rng.random() < 0.9,
        load=model.idle_load,
        heat=model.self_heating * model.idle_load,
        rssi_level=rng.uniform(-108, -100) if dead_zone else rng.uniform(-85, -55),
        east=rng.uniform(-1500, 1500),
        north=rng.uniform(-1500, 1500),
        drift_e=0.0,
        drift_n=0.0,
        route=route,
        speed=rng.uniform(25, 60),
        progress=rng.random(),
    )


def local_hour(site: Site, fleet_ts: float) -> float:
    """Local solar time at the site, in hours (0..24)."""
    return ((fleet_ts % DAY) / 3600.0 + site.lon / 15.0) % 24.0


def daylight(site: Site, fleet_ts: float) -> float:
    """Sun strength 0..1: a half sine from 6 to 18 local solar time."""
    hour = local_hour(site, fleet_ts)
    return max(0.0, math.sin(math.pi * (hour - 6.0) / 12.0))


def ambient(site: Site, fleet_ts: float) -> float:
    """Air temperature: the site's mean, warmest at 15:00, coldest at 03:00."""
    hour = local_hour(site, fleet_ts)
    return site.climate + site.swing * math.sin(2 * math.pi * (hour - 9.0) / 24.0)


def parked(ph: Physics) -> bool:
    return ph.route is not None and ph.progress < DEPOT_SHARE


def in_dead_zone(ph: Physics) -> bool:
    """A tracker on the part of its route without coverage: it cannot reach the server."""
    return ph.route is not None and DEAD_ZONE[0] <= ph.progress < DEAD_ZONE[1]


def charging(ph: Physics, model: ModelSpec, site: Site, fleet_ts: float) -> float:
    """% per fleet hour that flows into the battery now."""
    if model.power is Power.MAINS:
        return 40.0
    if model.power is Power.VEHICLE:
        return 30.0 if parked(ph) else 0.0
    return 6.0 * daylight(site, fleet_ts)


def advance(
    ph: Physics,
    rng: random.Random,
    model: ModelSpec,
    site: Site,
    seconds: float,
    fleet_ts: float,
    *,
    powered: bool = True,
) -> None:
    """Move `ph` forward by `seconds` of fleet time ending at `fleet_ts`."""
    seconds = min(max(0.0, seconds), DAY)
    hours = seconds / 3600.0
    work(ph, rng, model, seconds)
    # Battery: mains units only drain when the power is out.
    inflow = charging(ph, model, site, fleet_ts) if powered else 0.0
    drain = 100.0 / (model.battery_hours * ph.capacity) * (0.6 + 0.8 * ph.load)
    if model.power is Power.MAINS and powered:
        drain = 0.0
    ph.battery = _clamp(ph.battery + (inflow - drain) * hours, 0.0, 100.0)
    ph.capacity = max(0.4, ph.capacity - ph.fade_per_day * seconds / DAY)
    # Storage fills, and most units rotate their logs before it is full.
    ph.storage += model.storage_fill_per_day * seconds / DAY * rng.uniform(0.5, 1.5)
    if ph.storage >= ROTATE_AT and ph.rotates:
        ph.storage -= rng.uniform(25.0, 40.0)
    ph.storage = _clamp(ph.storage, 0.0, 99.9)
    # Position: slow bounded drift; trackers drive their loop.
    step = math.sqrt(max(seconds, 1.0)) * 0.3
    ph.drift_e = _clamp(ph.drift_e + rng.gauss(0, step), -15.0, 15.0)
    ph.drift_n = _clamp(ph.drift_n + rng.gauss(0, step), -15.0, 15.0)
    if ph.route is not None:
        ph.pace = traffic(ph.pace, rng, seconds)
        loop_km = _loop_metres(ph.route) / 1000.0
        # Parked time counts as part of the loop: the van covers its route in the rest, as fast
        # as the traffic lets it; it stays at the depot as long as it always does.
        pace = 1.0 if parked(ph) else ph.pace
        covered = ph.speed * pace * hours / loop_km * (1 - DEPOT_SHARE)
        ph.progress = (ph.progress + covered) % 1.0


def traffic(pace: float, rng: random.Random, seconds: float) -> float:
    """A van's pace `seconds` later: it wanders around 1 (the usual speed) and holds for about
    TRAFFIC_TAU, so no two rounds of the loop take the same time."""
    keep = math.exp(-seconds / TRAFFIC_TAU)
    drift = TRAFFIC_SPREAD * math.sqrt(1.0 - keep * keep) * rng.gauss(0.0, 1.0)
    return _clamp(1.0 + (pace - 1.0) * keep + drift, 0.3, 1.5)


def work(ph: Physics, rng: random.Random, model: ModelSpec, seconds: float) -> None:
    """The load and its heat over `seconds` of fleet time: idle, busy spells starting at random
    (`BUSY_EVERY` apart on average) and lasting `BUSY_SPELL`, the load and the heat following
    what the unit does exactly, however long the step."""
    left = seconds
    while left > 0:
        if ph.busy_left > 0:
            span = min(left, ph.busy_left)
            target = ph.busy_load
            ph.busy_left -= span
        else:
            wait = rng.expovariate(1.0 / BUSY_EVERY)  # memoryless: drawn afresh each step
            span = min(left, wait)
            target = model.idle_load
            if wait <= left:
                ph.busy_left = rng.uniform(*BUSY_SPELL)
                ph.busy_load = rng.uniform(*BUSY_LOAD)
        _follow(ph, model.self_heating, target, span)
        left -= span


def _follow(ph: Physics, heating: float, target: float, seconds: float) -> None:
    """Load and heat after `seconds` at a steady `target` load: the load approaches it with
    LOAD_TAU, the heat approaches the load's (`heating` °C at full load) with THERMAL_TAU."""
    a, b = LOAD_TAU, THERMAL_TAU
    fast, slow = math.exp(-seconds / a), math.exp(-seconds / b)
    warmth = heating * target
    # The heat's answer to a load still on its way to the target: the load's own exponential.
    chase = heating * (ph.load - target) * a / (a - b)
    ph.heat = warmth + chase * fast + (ph.heat - warmth - chase) * slow
    ph.load = target + (ph.load - target) * fast


def position(ph: Physics, site: Site) -> tuple[float, float]:
    """(lat, lon) of the unit now."""
    east, north = ph.east + ph.drift_e, ph.north + ph.drift_n
    if ph.route is not None and not parked(ph):
        e, n = _along(ph.route, (ph.progress - DEPOT_SHARE) / (1 - DEPOT_SHARE))
        east, north = east + e, north + n
    lat = site.lat + north / METRES_PER_DEG
    lon = site.lon + east / (METRES_PER_DEG * max(0.05, math.cos(math.radians(site.lat))))
    return round(_clamp(lat, -90.0, 90.0), 6), round(_clamp(lon, -180.0, 180.0), 6)


def rssi(ph: Physics, rng: random.Random) -> float:
    level = ph.rssi_level
    if ph.route is not None:
        level = -118.0 if in_dead_zone(ph) else level - 10.0 * abs(math.sin(ph.progress * 20))
    fade = -rng.uniform(5, 15) if rng.random() < 0.05 else 0.0
    return round(_clamp(level + rng.gauss(0, 2.5) + fade, -125.0, -30.0), 1)


SENSORS = ("battery", "rssi", "storage_used", "temperature", "cpu_load", "net_tx_kbps")


def metric_names(model: ModelSpec) -> tuple[str, ...]:
    """The metrics `readings` gives for a unit of the model."""
    return (*SENSORS, "speed") if model.mobile else SENSORS


def readings(
    ph: Physics, rng: random.Random, model: ModelSpec, site: Site, fleet_ts: float
) -> dict[str, float]:
    """The unit's metrics now (before any sensor fault)."""
    air = site.climate + (ambient(site, fleet_ts) - site.climate) * model.exposure
    ph.temperature = round(air + ph.heat + rng.gauss(0, 0.3), 2)
    load = _clamp(ph.load + rng.gauss(0, 0.02), 0.0, 1.0)  # what the OS measures jitters
    values = {
        "battery": round(ph.battery, 2),
        "rssi": rssi(ph, rng),
        "storage_used": round(ph.storage, 2),
        "temperature": ph.temperature,
        "cpu_load": round(load * 100.0, 1),
        "net_tx_kbps": round(max(0.0, 2.0 + 40.0 * load + rng.gauss(0, 1.5)), 2),
    }
    if ph.route is not None:
        speed = 0.0 if parked(ph) else max(0.0, ph.speed * ph.pace + rng.gauss(0, 4))
        values["speed"] = round(speed, 1)
    return values


def faulty_temperature(kind: str, value: float, stuck: float, rng: random.Random) -> float:
    """What a broken temperature sensor reports instead of `value`."""
    if kind == "sensor_stuck":
        return stuck
    if kind == "sensor_out_of_range":
        return rng.choice(OUT_OF_RANGE) if rng.random() < 0.5 else value
    return round(value + rng.gauss(0, 8.0), 2)  # sensor_noisy


def _loop_metres(route: tuple[float, ...]) -> float:
    return sum(math.dist(a, b) for a, b in itertools.pairwise(_points(route)))


def _along(route: tuple[float, ...], fraction: float) -> tuple[float, float]:
    """The point `fraction` (0..1) of the way around the loop depot → waypoints → depot."""
    pairs = list(itertools.pairwise(_points(route)))
    legs = [math.dist(a, b) for a, b in pairs]
    remaining = _clamp(fraction, 0.0, 1.0) * sum(legs)
    for (a, b), leg in zip(pairs, legs, strict=True):
        if remaining <= leg and leg > 0:
            t = remaining / leg
            return a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t
        remaining -= leg
    return 0.0, 0.0


def _points(route: tuple[float, ...]) -> list[tuple[float, float]]:
    return [(0.0, 0.0), *zip(route[::2], route[1::2], strict=True), (0.0, 0.0)]


def _clamp(value: float, low: float, high: float) -> float:
    return min(high, max(low, value))
