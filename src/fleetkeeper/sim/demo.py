"""The scenario `fleetkeeper demo` plays, and the timeline it announces.

A few hundred devices over eight sites; fleet time runs 120 times faster than real time, so a
fleet day (temperatures, solar charging) passes in twelve minutes. Over the first minutes:
a firmware release for thermo-v2 rolls out through a deployment in three phases (a few
devices carry update defects, so some updates fail and some roll back), a sensor sticks and
another reports impossible values, one device floods the server, one is compromised, and a
whole site loses power for a minute and a half.
"""

from __future__ import annotations

from typing import Any

from fleetkeeper.sim.fleet import identities, plan_faults
from fleetkeeper.sim.scenario import Scenario, parse

ROLLOUT_MODEL = "thermo-v2"
ROLLOUT_VERSION = "2.4.0"


def demo_scenario(devices: int = 200, seed: int = 7) -> Scenario:
    one = 1.0 / devices  # at least one device for the faults the demo wants to show
    faults: dict[str, Any] = {
        "update_download_corrupt": 0.03,
        "update_install_fail": 0.02,
        "update_health_fail": 0.06,
        "flaky": {"rate": 0.03, "loss": 0.4},
        "sensor_stuck": {"rate": max(one, 0.01), "at": 60},
        "sensor_out_of_range": {"rate": max(one, 0.01), "at": 90},
        "sensor_noisy": {"rate": 0.01, "at": 90},
        "flood": {"rate": one, "at": 150, "duration": 60, "messages_per_second": 30},
        "compromised": {"rate": one, "at": 180, "every": 45, "burst": 5},
        "site_outage": {"rate": 1.0, "at": 240, "duration": 90},
        "disappear": {"rate": 0.01, "at": 120, "spread": 300},
    }
    return parse(
        {
            "name": "demo",
            "seed": seed,
            "devices": devices,
            "serial_prefix": f"demo{seed}",
            "checkin_interval": 10,
            "telemetry_interval": 5,
            "inventory_interval": 60,
            "time_scale": 120,
            "update_step": 3,
            "reboot_seconds": 4,
            "enroll_rate": 20,
            "concurrency": 32,
            "faults": faults,
            "rollout": {
                "model": ROLLOUT_MODEL,
                "version": ROLLOUT_VERSION,
                "percent": [5, 20, 100],
                "start": 45,
                "soak": 30,
                "max_failure_rate": 0.5,
            },
        },
        "demo scenario",
    )


def timeline(scenario: Scenario) -> list[str]:
    """What will happen when, in words (seconds after the start)."""
    fleet = identities(scenario)
    serials = [who.serial for who, _ in fleet]
    plan = plan_faults(scenario, [who.site.name for who, _ in fleet])
    lines = []
    if scenario.rollout:
        r = scenario.rollout
        count = sum(who.model.name == r.model for who, _ in fleet)
        phases = ", ".join(f"{p:g} %" for p in r.percentages(count))
        lines.append(
            f"{_at(r.start)}  firmware {r.version} for {r.model} rolls out through a deployment "
            f"to its {count} devices, in phases of {phases}, each holding {r.soak:g} s; "
            "some updates fail, some roll back"
        )
    for kind, what in _STORIES.items():
        hit = plan.windows.get(kind)
        if not hit:
            continue
        start = min(onset for onset, _ in hit.values())
        names = [serials[i] for i in sorted(hit)]
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        story = what.format(site=plan.outage_site, n=len(names), devices=shown)
        lines.append(f"{_at(start)}  {story}")
    return sorted(lines)


_STORIES = {
    "sensor_stuck": "a temperature sensor sticks: {devices}",
    "sensor_out_of_range": "a sensor reports impossible values: {devices}",
    "disappear": "devices start vanishing for good: {devices}",
    "flood": "{devices} floods the server with telemetry (rate limited, for a minute)",
    "compromised": "{devices} is compromised: bad logins, odd ports, traffic spikes",
    "site_outage": "site {site} loses power ({n} devices) for a while",
}


def _at(seconds: float) -> str:
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes:d}:{rest:02d}"
