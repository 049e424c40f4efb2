"""The fleet simulator: thousands of virtual devices speaking the real device protocol.

Each simulated device has its own Ed25519 key and talks to the server through the same
protocol client as the agent (`fleetkeeper.protocol`), with measurements that behave like real
hardware and the faults real fleets have. Like the agent, this package never imports the
server. `fleetkeeper simulate` and `fleetkeeper demo` run it; docs/simulator.md describes
scenarios, faults and the summary.
"""

from fleetkeeper.sim.admin import AdminError, Rollout
from fleetkeeper.sim.catalogue import MODELS, SITES, ModelSpec, Site
from fleetkeeper.sim.fleet import FaultPlan, build, plan_faults
from fleetkeeper.sim.runner import SimulationError, Simulator
from fleetkeeper.sim.scenario import (
    FAULT_KINDS,
    FaultSpec,
    RolloutSpec,
    Scenario,
    ScenarioError,
    SiteSpec,
    load,
    parse,
    parse_fault_option,
    with_overrides,
)

__all__ = [
    "FAULT_KINDS",
    "MODELS",
    "SITES",
    "AdminError",
    "FaultPlan",
    "FaultSpec",
    "ModelSpec",
    "Rollout",
    "RolloutSpec",
    "Scenario",
    "ScenarioError",
    "SimulationError",
    "Simulator",
    "Site",
    "SiteSpec",
    "build",
    "load",
    "parse",
    "parse_fault_option",
    "plan_faults",
    "with_overrides",
]
