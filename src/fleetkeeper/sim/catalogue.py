"""What a simulated fleet is made of: device models and sites, as data.

A model describes a kind of hardware by how it behaves (power source, battery life, how fast
its storage fills, how warm it runs under load, whether it moves), not by a subclass: the
physics in `sim.physics` reads these numbers. Scenario files pick models from this catalogue
by name and may bring their own sites.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from enum import StrEnum


class Power(StrEnum):
    SOLAR = "solar"  # charges in daylight
    MAINS = "mains"  # a backup battery kept full while powered
    VEHICLE = "vehicle"  # charges while parked at its depot


@dataclass(frozen=True)
class ModelSpec:
    name: str
    manufacturer: str
    description: str
    hardware_revisions: tuple[str, ...]
    releases: tuple[str, ...]  # firmware found in the field, oldest first
    share: float  # weight in the default mix
    power: Power
    battery_hours: float  # full to empty on battery alone, at idle (fleet hours)
    storage_fill_per_day: float  # % of the storage a fleet day fills
    idle_load: float  # 0..1
    self_heating: float  # °C above ambient at full load
    exposure: float  # how much of the daily temperature swing reaches the sensor
    mobile: bool = False
    ports: tuple[int, ...] = ()  # ports the genuine firmware listens on


@dataclass(frozen=True)
class Site:
    name: str
    lat: float
    lon: float
    climate: float = 12.0  # mean temperature, °C
    swing: float = 8.0  # half the difference between day and night, °C


MODELS: tuple[ModelSpec, ...] = (
    ModelSpec(
        name="thermo-v2",
        manufacturer="Northwind Sensors",
        description="Outdoor environment sensor, solar powered",
        hardware_revisions=("A", "B"),
        releases=("2.1.0", "2.2.1", "2.3.0"),
        share=0.4,
        power=Power.SOLAR,
        battery_hours=24 * 30,
        storage_fill_per_day=0.2,
        idle_load=0.05,
        self_heating=1.0,
        exposure=1.0,
    ),
    ModelSpec(
        name="tracker-m3",
        manufacturer="Tern Mobility",
        description="GPS asset tracker on delivery vans, charges at the depot",
        hardware_revisions=("C", "D"),
        releases=("1.8.0", "1.9.2", "2.0.0"),
        share=0.25,
        power=Power.VEHICLE,
        battery_hours=36,
        storage_fill_per_day=0.5,
        idle_load=0.12,
        self_heating=4.0,
        exposure=0.8,
        mobile=True,
    ),
    ModelSpec(
        name="meter-e5",
        manufacturer="Voltaic",
        description="Smart energy meter with a backup battery",
        hardware_revisions=("E5", "E5R"),
        releases=("3.2.0", "3.3.1"),
        share=0.2,
        power=Power.MAINS,
        battery_hours=4,
        storage_fill_per_day=1.0,
        idle_load=0.08,
        self_heating=6.0,
        exposure=0.4,
    ),
    ModelSpec(
        name="gateway-x1",
        manufacturer="Northwind Systems",
        description="LTE field gateway with a UPS",
        hardware_revisions=("1.0", "1.1"),
        releases=("4.0.2", "4.1.0"),
        share=0.15,
        power=Power.MAINS,
        battery_hours=6,
        storage_fill_per_day=2.0,
        idle_load=0.25,
        self_heating=18.0,
        exposure=0.5,
        ports=(22, 443, 1883),
    ),
)

SITES: tuple[Site, ...] = (
    Site("berlin-1", 52.5200, 13.4050, climate=10.0, swing=7.0),
    Site("lyon-2", 45.7640, 4.8357, climate=13.0, swing=9.0),
    Site("oslo-3", 59.9139, 10.7522, climate=6.0, swing=5.0),
    Site("madrid-4", 40.4168, -3.7038, climate=16.0, swing=11.0),
    Site("dubai-5", 25.2048, 55.2708, climate=30.0, swing=8.0),
    Site("austin-6", 30.2672, -97.7431, climate=21.0, swing=10.0),
    Site("singapore-7", 1.3521, 103.8198, climate=28.0, swing=4.0),
    Site("toronto-8", 43.6532, -79.3832, climate=8.0, swing=8.0),
)

MODELS_BY_NAME = {m.name: m for m in MODELS}


IMAGE_SIZE = 64 * 1024


def image(model: str, version: str) -> bytes:
    """The firmware image of `model` at `version`: synthetic bytes, the same every time.

    A rollout uploads it as the release's artifact, so the artifact's sha256 is the genuine
    image's, and an updated device reports the `firmware_hash` of what it installed."""
    return hashlib.shake_256(f"firmware:{model}:{version}".encode()).digest(IMAGE_SIZE)


@functools.lru_cache(maxsize=256)
def image_sha256(model: str, version: str) -> str:
    """The sha256 of the firmware image of `model` at `version`."""
    return hashlib.sha256(image(model, version)).hexdigest()


def firmware_hash(model: str, version: str) -> str:
    """What genuine firmware reports as `attributes.firmware_hash` (its running image)."""
    return image_sha256(model, version)[:32]
