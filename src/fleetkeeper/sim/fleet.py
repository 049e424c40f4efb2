"""Building a fleet from a scenario: who each device is, and which faults hit which devices.

Everything here follows from the scenario's seed: device `i` draws its model, site, hardware
revision, firmware and Ed25519 key from its own `random.Random(f"{seed}:{i}")`, and each fault
kind picks its devices with `random.Random(f"{seed}:fault:{kind}")`. The same seed gives the
same fleet, the same serials, the same keys (so a second run against the same server carries
on as the same devices) and the same fault assignment; changing the fleet size or one fault
rate leaves the rest alone. The keys are therefore no secret: they are simulated devices.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleetkeeper.protocol.client import DeviceClient
from fleetkeeper.sim.catalogue import MODELS_BY_NAME, ModelSpec, Site
from fleetkeeper.sim.device import SimDevice
from fleetkeeper.sim.physics import new_physics
from fleetkeeper.sim.scenario import Scenario
from fleetkeeper.sim.update import Firmware


@dataclass(frozen=True)
class Identity:
    """Who device `index` is: everything about it that does not change while it runs."""

    index: int
    serial: str
    model: ModelSpec
    site: Site
    hardware_revision: str
    firmware_version: str


@dataclass(frozen=True)
class FaultPlan:
    """Which devices (by index) each fault kind hits, and the window in which it acts."""

    windows: dict[str, dict[int, tuple[float, float]]]
    outage_site: str | None = None

    def for_device(self, index: int) -> dict[str, tuple[float, float]] | None:
        found = {kind: hit[index] for kind, hit in self.windows.items() if index in hit}
        return found or None


def device_rng(seed: int, index: int) -> random.Random:
    return random.Random(f"{seed}:{index}")


def sites_of(scenario: Scenario) -> tuple[Site, ...]:
    return tuple(Site(**s.model_dump()) for s in scenario.sites)


def serial(scenario: Scenario, index: int) -> str:
    width = max(5, len(str(scenario.devices - 1)))
    return f"{scenario.prefix}-{index:0{width}d}"


def identity(scenario: Scenario, index: int, rng: random.Random, sites: Sequence[Site]) -> Identity:
    names = sorted(scenario.mix)
    model = MODELS_BY_NAME[rng.choices(names, weights=[scenario.mix[n] for n in names])[0]]
    site = rng.choice(sites)
    revision = rng.choice(model.hardware_revisions)
    # Newer releases are more common in the field, but every one is still out there.
    releases = model.releases
    firmware = rng.choices(releases, weights=range(1, len(releases) + 1))[0]
    return Identity(index, serial(scenario, index), model, site, revision, firmware)


def identities(scenario: Scenario) -> list[tuple[Identity, random.Random]]:
    """Who each device is, with its random generator ready for what it draws next."""
    sites = sites_of(scenario)
    fleet = []
    for index in range(scenario.devices):
        rng = device_rng(scenario.seed, index)
        fleet.append((identity(scenario, index, rng, sites), rng))
    return fleet


def build(
    scenario: Scenario, server: str, http: httpx.AsyncClient
) -> tuple[list[SimDevice], FaultPlan]:
    """The fleet's devices, each with its own key and a DeviceClient on the shared `http`."""
    fleet = identities(scenario)
    plan = plan_faults(scenario, [who.site.name for who, _ in fleet])
    devices = []
    for who, rng in fleet:
        key = Ed25519PrivateKey.from_private_bytes(rng.randbytes(32))
        devices.append(
            SimDevice(
                index=who.index,
                serial=who.serial,
                model=who.model,
                site=who.site,
                hardware_revision=who.hardware_revision,
                rng=rng,
                client=DeviceClient(server, key, http=http),
                firmware=Firmware(a=who.firmware_version, b=None),
                physics=new_physics(rng, who.model),
                faults=plan.for_device(who.index),
            )
        )
    return devices, plan


def plan_faults(scenario: Scenario, sites: Sequence[str]) -> FaultPlan:
    """Pick the devices of each fault kind. `sites[i]` is the site of device i.

    A kind with rate r hits round(r * n) of the n devices it may hit (all devices; for
    `site_outage`, the devices of one site: the scenario's `site`, else one the seed picks).
    Each device's fault begins `at` plus up to `spread` seconds after the start and lasts
    `duration` seconds (for good when unset); a site outage begins for its whole site at once.
    """
    windows: dict[str, dict[int, tuple[float, float]]] = {}
    outage_site = None
    for kind in sorted(scenario.faults):
        spec = scenario.faults[kind]
        rng = random.Random(f"{scenario.seed}:fault:{kind}")
        pool = list(range(len(sites)))
        if kind == "site_outage":
            present = sorted(set(sites))
            if not present:
                continue
            outage_site = spec.site if spec.site else rng.choice(present)
            pool = [i for i in pool if sites[i] == outage_site]
        count = min(len(pool), round(spec.rate * len(pool)))
        chosen = sorted(rng.sample(pool, count))
        hit = {}
        for index in chosen:
            onset = spec.at
            if kind != "site_outage" and spec.spread:
                onset += rng.uniform(0.0, spec.spread)
            end = onset + spec.duration if spec.duration is not None else math.inf
            hit[index] = (onset, end)
        if hit:
            windows[kind] = hit
    return FaultPlan(windows, outage_site)
