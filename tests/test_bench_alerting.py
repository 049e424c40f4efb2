"""The alerting bench: its fleet and rules, how it reads its samples, and one tiny run on
SQLite whose report has the shape the table and docs/performance.md expect (never timings)."""

from __future__ import annotations

import random
from collections import Counter
from datetime import UTC, datetime

from bench.alerting import (
    METRICS,
    PROBE_RULE,
    RATE_RULE,
    RULES,
    TIMES,
    alerting,
    pieces,
    points,
    points_between,
    probe_indices,
    profile,
)
from bench.databases import DEFAULT_PG

from fleetkeeper.services.alerting.observe import kind_of
from fleetkeeper.services.alerting.rules import AlertRule

NOW = 1_790_000_000.0


def test_there_are_twenty_rules_of_every_kind_grouped_by_site() -> None:
    rules = [AlertRule(name=n, condition=c, scope=s, group_by=["site"]) for n, c, s in RULES]
    assert len(rules) == 20
    kinds = Counter(kind_of(rule.condition) for rule in rules)
    assert set(kinds) == {"metric", "offline", "health", "update", "rate"}
    assert kinds["rate"] == 1
    assert any(rule.scope.startswith("model") for rule in rules)
    assert any("attributes.site" in rule.scope for rule in rules)


def test_the_probe_rule_fires_at_once_on_a_low_battery() -> None:
    name, condition, _ = RULES[0]
    assert name == PROBE_RULE
    assert condition == "battery < 15"  # no `for`: fires at the first round that sees it


def test_a_devices_profile_is_the_same_for_the_same_index_and_seed() -> None:
    assert profile(42) == profile(42)
    assert profile(42) != profile(43)
    assert profile(42, seed=1) != profile(42, seed=2)


def test_a_request_is_one_devices_ten_metrics_at_ten_times_ending_now() -> None:
    batch = points("dev-1", profile(0), NOW, NOW - 60, random.Random(0))
    assert len(batch) == len(METRICS) * TIMES == 100
    assert {device for device, *_ in batch} == {"dev-1"}
    assert {metric for _, metric, _, _ in batch} == {m for m, *_ in METRICS}
    times = sorted({ts for _, _, ts, _ in batch})
    assert len(times) == TIMES
    assert times[-1] == datetime.fromtimestamp(NOW, UTC)


def test_probes_are_spread_over_the_fleet() -> None:
    probes = probe_indices(1000, 10)
    assert len(probes) == len(set(probes)) == 10
    assert probes[0] < 100 and probes[-1] >= 900


def test_points_between_two_times_are_interpolated_between_samples() -> None:
    samples = [(0.0, 0), (1.0, 100), (2.0, 100), (3.0, 400)]
    assert points_between(samples, 0.0, 3.0) == 400
    assert points_between(samples, 0.5, 1.5) == 50
    assert points_between(samples, 2.5, 9.0) == 150


def test_windows_are_cut_into_pieces_and_a_short_window_is_one() -> None:
    assert pieces(0.0, 25.0, 10.0) == [(0.0, 10.0), (10.0, 20.0), (20.0, 25.0)]
    assert pieces(0.0, 23.0, 10.0) == [(0.0, 10.0), (10.0, 20.0)]
    assert pieces(0.0, 3.0, 10.0) == [(0.0, 3.0)]


def test_a_tiny_run_reports_lag_round_time_and_ingestion_with_and_without_the_engine() -> None:
    results = alerting("sqlite", 300, DEFAULT_PG, seconds=3, alone=1, interval=1.0)
    lag, round_, ingest = results
    assert [r.scenario for r in results] == ["alerting", "alerting-round", "alerting-ingest"]
    assert {r.database for r in results} == {"sqlite"}
    assert {r.fleet_size for r in results} == {300}
    for r in results:
        assert set(r.ours) == set(r.limit) == {"median_s", "p10_s", "p90_s", "rounds"}
    assert lag.extra["probes"] >= 1
    assert {"lag_max_s", "seen_lag_median_s", "probe_write_median_s"} <= set(lag.extra)
    assert lag.extra["engine_errors"] == 0
    assert lag.limit["median_s"] == 1.0  # the evaluation interval
    assert set(round_.extra["spent"]) >= {name for name, *_ in RULES if name != RATE_RULE}
    assert {"store", "dispatch"} <= set(round_.extra["spent"])
    assert ingest.extra["points_per_s_with_engine"] > 0
    assert ingest.extra["points_per_s_alone"] > 0
    assert set(ingest.extra["cpu_cores"]) == {"alone", "engine"}
