"""The health watch: updated devices against the rest, by proportions and by metric means."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetkeeper.services.rollout.health import (
    Cohort,
    MetricSample,
    Verdict,
    compare,
    proportion_p_value,
    regularized_beta,
    student_t_two_sided,
    welch_p_value,
)
from fleetkeeper.services.rollout.policy import HealthWatch

WATCH = HealthWatch()  # 20 devices a cohort, 99 % confidence, 5 points of difference
BASELINE = Cohort(devices=200, offline=10, rebooted=4)


def watch(**fields: object) -> HealthWatch:
    return HealthWatch.model_validate(fields)


# --- when to judge -----------------------------------------------------------------------------


def test_nothing_is_judged_while_the_updated_cohort_is_small() -> None:
    verdict = compare(Cohort(devices=19, offline=19), BASELINE, WATCH)
    assert verdict == Verdict(worse=False, judged=False)


def test_nothing_is_judged_while_the_baseline_is_small() -> None:
    verdict = compare(Cohort(devices=100, offline=90), Cohort(devices=5), WATCH)
    assert verdict == Verdict(worse=False, judged=False)


def test_nothing_is_judged_when_the_watch_is_off() -> None:
    verdict = compare(Cohort(devices=100, offline=90), BASELINE, watch(enabled=False))
    assert not verdict.judged and not verdict.worse


def test_cohorts_alike_are_judged_fine() -> None:
    verdict = compare(Cohort(devices=40, offline=2, rebooted=1), BASELINE, WATCH)
    assert verdict == Verdict(worse=False, findings=(), judged=True)


# --- rates -------------------------------------------------------------------------------------


def test_many_more_updated_devices_offline_is_worse() -> None:
    verdict = compare(Cohort(devices=40, offline=12), BASELINE, WATCH)
    assert verdict.worse and verdict.judged
    (finding,) = verdict.findings
    assert finding.startswith("offline 30.0 % of 40 updated vs 5.0 % of 200 others (p")
    assert finding.endswith("<0.0001)")


def test_the_finding_shows_the_p_value() -> None:
    verdict = compare(Cohort(devices=40, offline=7), BASELINE, watch(confidence=0.95))
    (finding,) = verdict.findings
    p = proportion_p_value(7, 40, 10, 200)
    assert 0.0001 < p < 0.05
    assert finding.endswith(f"(p={p:.4f})")


def test_more_reboots_are_worse() -> None:
    verdict = compare(Cohort(devices=40, rebooted=10), BASELINE, WATCH)
    assert verdict.worse
    assert verdict.findings[0].startswith("rebooted 25.0 % of 40 updated vs 2.0 % of 200 others")


def test_a_significant_but_tiny_difference_is_not_worth_a_pause() -> None:
    big = Cohort(devices=100_000, offline=6_000)
    baseline = Cohort(devices=100_000, offline=5_000)  # 6 % against 5 %: very significant
    assert proportion_p_value(6_000, 100_000, 5_000, 100_000) < 1e-6
    assert not compare(big, baseline, watch(min_difference=0.02)).worse


def test_a_large_difference_on_few_devices_is_not_significant() -> None:
    verdict = compare(Cohort(devices=20, offline=2), Cohort(devices=20, offline=0), WATCH)
    assert verdict.judged and not verdict.worse


def test_updated_devices_doing_better_is_not_worse() -> None:
    verdict = compare(Cohort(devices=40, offline=0), Cohort(devices=200, offline=100), WATCH)
    assert not verdict.worse


def test_rates_the_policy_does_not_watch_are_ignored() -> None:
    sick = Cohort(devices=40, offline=12, rebooted=12)
    assert not compare(sick, BASELINE, watch(offline=False, reboots=False)).worse
    assert [f.split()[0] for f in compare(sick, BASELINE, watch(offline=False)).findings] == [
        "rebooted"
    ]


def test_a_lower_confidence_finds_more() -> None:
    updated = Cohort(devices=40, offline=5)  # 12.5 % against 5 %: p is about 0.04
    assert compare(updated, BASELINE, watch(confidence=0.95)).worse
    assert not compare(updated, BASELINE, watch(confidence=0.99)).worse


# --- metrics -----------------------------------------------------------------------------------


def metric(n: int, mean: float, sd: float) -> MetricSample:
    return MetricSample(n=n, mean=mean, variance=sd * sd)


def with_metric(devices: int, sample: MetricSample, name: str = "cpu_temp") -> Cohort:
    return Cohort(devices=devices, metrics={name: sample})


def test_a_metric_mean_far_from_the_baseline_is_worse() -> None:
    updated = with_metric(40, metric(40, 62.0, 3.0))
    baseline = with_metric(200, metric(200, 55.0, 3.0))
    verdict = compare(updated, baseline, watch(metrics=["cpu_temp"]))
    assert verdict.worse
    assert verdict.findings == (
        "cpu_temp mean 62 on 40 updated vs 55 on 200 others (+12.7 %, p<0.0001)",
    )


def test_a_metric_is_watched_both_ways() -> None:
    updated = with_metric(40, metric(40, 48.0, 3.0))
    baseline = with_metric(200, metric(200, 55.0, 3.0))
    assert compare(updated, baseline, watch(metrics=["cpu_temp"])).worse


def test_a_small_relative_difference_in_a_metric_is_not_worth_a_pause() -> None:
    updated = with_metric(5000, metric(5000, 56.0, 1.0))
    baseline = with_metric(5000, metric(5000, 55.0, 1.0))  # 1.8 %: significant, but small
    assert not compare(updated, baseline, watch(metrics=["cpu_temp"])).worse


def test_a_noisy_metric_is_not_significant() -> None:
    updated = with_metric(25, metric(25, 62.0, 30.0))
    baseline = with_metric(25, metric(25, 55.0, 30.0))
    assert not compare(updated, baseline, watch(metrics=["cpu_temp"])).worse


def test_metrics_not_watched_or_missing_on_one_side_are_ignored() -> None:
    updated = with_metric(40, metric(40, 90.0, 1.0))
    baseline = with_metric(200, metric(200, 55.0, 1.0))
    assert not compare(updated, baseline, WATCH).worse
    assert not compare(updated, Cohort(devices=200), watch(metrics=["cpu_temp"])).worse
    assert not compare(updated, baseline, watch(metrics=["battery"])).worse


def test_a_metric_from_a_single_device_is_ignored() -> None:
    updated = with_metric(40, metric(1, 90.0, 0.0))
    baseline = with_metric(200, metric(200, 55.0, 1.0))
    assert not compare(updated, baseline, watch(metrics=["cpu_temp"])).worse


def test_a_metric_without_any_noise_differs_or_not_for_certain() -> None:
    assert welch_p_value(metric(30, 1.0, 0.0), metric(30, 1.0, 0.0)) == 1.0
    assert welch_p_value(metric(30, 2.0, 0.0), metric(30, 1.0, 0.0)) == 0.0


def test_a_metric_with_a_zero_baseline_mean_still_judges() -> None:
    updated = with_metric(40, metric(40, 3.0, 0.5), "errors")
    baseline = with_metric(200, metric(200, 0.0, 0.5), "errors")
    verdict = compare(updated, baseline, watch(metrics=["errors"]))
    assert verdict.worse and "+inf %" in verdict.findings[0]


# --- the statistics ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("t", "df", "p"),
    [(12.706, 1, 0.05), (4.303, 2, 0.05), (2.228, 10, 0.05), (2.086, 20, 0.05), (2.845, 20, 0.01)],
)
def test_student_t_matches_the_table(t: float, df: float, p: float) -> None:
    assert student_t_two_sided(t, df) == pytest.approx(p, abs=2e-4)


@given(t=st.floats(0, 1e3))
def test_student_t_matches_the_closed_forms_for_one_and_two_degrees(t: float) -> None:
    assert student_t_two_sided(t, 1) == pytest.approx(1 - 2 / math.pi * math.atan(t), abs=1e-12)
    assert student_t_two_sided(t, 2) == pytest.approx(1 - t / math.sqrt(2 + t * t), abs=1e-12)


def test_student_t_becomes_the_normal_for_many_degrees() -> None:
    assert student_t_two_sided(1.96, 1e6) == pytest.approx(0.05, abs=1e-4)
    assert student_t_two_sided(3.0, 99_999) == pytest.approx(
        student_t_two_sided(3.0, 1e9), rel=1e-3
    )


@given(t=st.floats(-50, 50), df=st.floats(1, 5000))
def test_student_t_p_values_are_probabilities_symmetric_in_t(t: float, df: float) -> None:
    p = student_t_two_sided(t, df)
    assert 0 <= p <= 1
    assert p == pytest.approx(student_t_two_sided(-t, df), abs=1e-12)
    assert student_t_two_sided(abs(t) + 0.5, df) <= p + 1e-12


@given(
    x=st.integers(0, 1024).map(lambda k: k / 1024),  # 1 - x is exact too
    a=st.floats(0.1, 500),
    b=st.floats(0.1, 500),
)
def test_the_incomplete_beta_is_symmetric(x: float, a: float, b: float) -> None:
    assert regularized_beta(x, a, b) == pytest.approx(1 - regularized_beta(1 - x, b, a), abs=1e-9)


@given(x=st.floats(0, 1), a=st.floats(0.1, 50))
def test_the_incomplete_beta_has_its_closed_forms(x: float, a: float) -> None:
    assert regularized_beta(x, 1, 1) == pytest.approx(x, abs=1e-12)
    assert regularized_beta(x, a, 1) == pytest.approx(x**a, abs=1e-9)


def test_the_proportion_test_is_one_sided() -> None:
    assert proportion_p_value(10, 100, 10, 100) == pytest.approx(0.5)
    assert proportion_p_value(20, 100, 10, 100) < 0.05
    assert proportion_p_value(10, 100, 20, 100) > 0.95


def test_no_spread_at_all_is_no_evidence() -> None:
    assert proportion_p_value(0, 40, 0, 200) == 1.0
    assert proportion_p_value(40, 40, 200, 200) == 1.0


@pytest.mark.parametrize(
    "bad",
    [
        lambda: Cohort(devices=10, offline=11),
        lambda: Cohort(devices=10, rebooted=-1),
        lambda: MetricSample(n=3, mean=1.0, variance=-1.0),
    ],
)
def test_impossible_counts_are_refused(bad: Callable[[], object]) -> None:
    with pytest.raises(ValueError):
        bad()
