"""The health watch: does the updated cohort do measurably worse than the rest of the target?

Rates (offline, rebooted) are compared with a one-sided two-proportion z-test, metrics with
Welch's t-test (two-sided); a finding needs both significance at the policy's confidence and a
difference of at least `min_difference`, and each cohort needs `min_devices` before anything
is judged. Pure functions over counts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from fleetkeeper.services.rollout.policy import HealthWatch


@dataclass(frozen=True)
class MetricSample:
    n: int
    mean: float
    variance: float


@dataclass(frozen=True)
class Cohort:
    devices: int
    offline: int = 0
    rebooted: int = 0
    metrics: Mapping[str, MetricSample] = field(default_factory=dict)


@dataclass(frozen=True)
class Verdict:
    worse: bool
    findings: tuple[str, ...] = ()  # e.g. "offline 30.0 % of 40 updated vs 5.0 % of 200 (p=0.0001)"
    judged: bool = True  # False while a cohort is below min_devices


def compare(updated: Cohort, baseline: Cohort, watch: HealthWatch) -> Verdict:
    raise NotImplementedError
