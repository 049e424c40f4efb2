"""The health watch: does the updated cohort do measurably worse than the rest of the target?

Rates (offline, rebooted) are compared with a one-sided two-proportion z-test, metrics with
Welch's t-test (two-sided); a finding needs both significance at the policy's confidence and a
difference of at least `min_difference`, and each cohort needs `min_devices` before anything
is judged. Pure functions over counts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from fleetkeeper.services.rollout.policy import HealthWatch


@dataclass(frozen=True)
class MetricSample:
    """A metric over a cohort: how many devices reported it, their mean and sample variance."""

    n: int
    mean: float
    variance: float

    def __post_init__(self) -> None:
        if self.n < 0 or self.variance < 0:
            raise ValueError(f"a metric sample needs n >= 0 and variance >= 0, not {self}")


@dataclass(frozen=True)
class Cohort:
    devices: int
    offline: int = 0
    rebooted: int = 0
    metrics: Mapping[str, MetricSample] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 0 <= self.offline <= self.devices or not 0 <= self.rebooted <= self.devices:
            raise ValueError(f"offline and rebooted are counts among the devices: {self}")


@dataclass(frozen=True)
class Verdict:
    worse: bool
    # e.g. "offline 30.0 % of 40 updated vs 5.0 % of 200 others (p=0.0001)"
    findings: tuple[str, ...] = ()
    judged: bool = True  # False while a cohort is below min_devices


# Beyond this many degrees of freedom Student's t and the normal differ by under 0.1 % in p.
_NORMAL_DF = 100_000.0


def compare(updated: Cohort, baseline: Cohort, watch: HealthWatch) -> Verdict:
    """Judge the updated cohort against the baseline (the target's not-yet-updated devices)."""
    if not watch.enabled or min(updated.devices, baseline.devices) < watch.min_devices:
        return Verdict(worse=False, judged=False)
    alpha = 1.0 - watch.confidence
    findings: list[str] = []
    rates = (("offline", watch.offline), ("rebooted", watch.reboots))
    for name, wanted in rates:
        if wanted:
            finding = _rate_finding(name, updated, baseline, alpha, watch.min_difference)
            if finding:
                findings.append(finding)
    for name in watch.metrics:
        if name in updated.metrics and name in baseline.metrics:
            sample, reference = updated.metrics[name], baseline.metrics[name]
            finding = _metric_finding(name, sample, reference, alpha, watch.min_difference)
            if finding:
                findings.append(finding)
    return Verdict(worse=bool(findings), findings=tuple(findings))


def _rate_finding(
    name: str, updated: Cohort, baseline: Cohort, alpha: float, min_difference: float
) -> str | None:
    hits, reference = getattr(updated, name), getattr(baseline, name)
    p = proportion_p_value(hits, updated.devices, reference, baseline.devices)
    rate, base_rate = hits / updated.devices, reference / baseline.devices
    if p >= alpha or rate - base_rate < min_difference:
        return None
    return (
        f"{name} {rate * 100:.1f} % of {updated.devices} updated vs "
        f"{base_rate * 100:.1f} % of {baseline.devices} others ({_p(p)})"
    )


def _metric_finding(
    name: str, sample: MetricSample, reference: MetricSample, alpha: float, min_difference: float
) -> str | None:
    if sample.n < 2 or reference.n < 2:
        return None  # no variance estimate from fewer than two devices
    difference = sample.mean - reference.mean
    p = welch_p_value(sample, reference)
    if p >= alpha or abs(difference) < min_difference * max(abs(reference.mean), 1e-9):
        return None
    relative = difference / abs(reference.mean) * 100 if reference.mean else math.inf
    return (
        f"{name} mean {sample.mean:.4g} on {sample.n} updated vs {reference.mean:.4g} on "
        f"{reference.n} others ({relative:+.1f} %, {_p(p)})"
    )


def _p(p: float) -> str:
    return f"p={p:.4f}" if p >= 0.0001 else "p<0.0001"


def proportion_p_value(hits: int, n: int, reference_hits: int, reference_n: int) -> float:
    """One-sided p-value that the first rate exceeds the second (pooled two-proportion z-test)."""
    pooled = (hits + reference_hits) / (n + reference_n)
    spread = math.sqrt(pooled * (1 - pooled) * (1 / n + 1 / reference_n))
    if spread == 0:
        return 1.0  # both rates 0 % or both 100 %: no evidence of anything
    z = (hits / n - reference_hits / reference_n) / spread
    return 0.5 * math.erfc(z / math.sqrt(2))


def welch_p_value(sample: MetricSample, reference: MetricSample) -> float:
    """Two-sided p-value that the two means differ (Welch's unequal-variances t-test)."""
    share, reference_share = sample.variance / sample.n, reference.variance / reference.n
    spread = share + reference_share
    difference = sample.mean - reference.mean
    if spread == 0:
        return 1.0 if difference == 0 else 0.0  # no noise at all: any difference is real
    t = difference / math.sqrt(spread)
    df = spread**2 / (share**2 / (sample.n - 1) + reference_share**2 / (reference.n - 1))
    return student_t_two_sided(t, df)


def student_t_two_sided(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with `df` degrees of freedom (the normal when df is large)."""
    if df >= _NORMAL_DF:
        return math.erfc(abs(t) / math.sqrt(2))
    square = t * t
    if square < df:
        # df / (df + t²) would round to 1 for a small t: use its exact complement instead.
        return 1.0 - regularized_beta(square / (df + square), 0.5, df / 2)
    return regularized_beta(df / (df + square), df / 2, 0.5)


def regularized_beta(x: float, a: float, b: float) -> float:
    """The regularized incomplete beta function I_x(a, b), by its continued fraction."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    front = math.exp(log_front)
    # The fraction converges fast on this side of the mean; use the symmetry on the other.
    if x < (a + 1) / (a + b + 2):
        return front / (a * _beta_fraction(x, a, b))
    return 1.0 - front / (b * _beta_fraction(1 - x, b, a))


def _beta_fraction(x: float, a: float, b: float) -> float:
    """1 + d1/(1 + d2/(1 + ...)) for the incomplete beta, by the modified Lentz method."""
    tiny = 1e-300
    value = 1.0
    c, d = 1.0, 0.0
    for step in range(1, 2000):
        m = step // 2
        if step % 2:
            term = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        else:
            term = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        d = 1.0 + term * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + term / c
        c = c if abs(c) > tiny else tiny
        delta = c * d
        value *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return value
