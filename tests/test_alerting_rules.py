"""Alert rules: the condition grammar, its errors, the rule's defaults and checks, judging."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from fleetkeeper.services.alerting.rules import (
    AlertRule,
    ConditionError,
    HealthFlag,
    Observation,
    Offline,
    RateOfChange,
    Reading,
    Threshold,
    parse_condition,
)

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def rule(**fields: Any) -> AlertRule:
    return AlertRule.model_validate({"name": "low-battery", "condition": "battery < 15", **fields})


def seen(now: float = 0, **metrics: float) -> Observation:
    return Observation(at(now), {m: [Reading(at(now), v)] for m, v in metrics.items()})


# --- the grammar -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("battery < 15 for 10m", Threshold("battery", "<", 15, 600)),
        ("battery<15", Threshold("battery", "<", 15)),
        ("temperature >= 70.5", Threshold("temperature", ">=", 70.5)),
        ("rssi <= -110 for 90s", Threshold("rssi", "<=", -110, 90)),
        ("cpu_load > 90 for 2h", Threshold("cpu_load", ">", 90, 7200)),
        ("errors = 3", Threshold("errors", "=", 3)),
        ("errors == 3", Threshold("errors", "=", 3)),
        ("errors != 0 for 1d", Threshold("errors", "!=", 0, 86400)),
        ("battery < 15 for 600", Threshold("battery", "<", 15, 600)),
        ("offline for 30m", Offline(1800)),
        ("OFFLINE FOR 30m", Offline(1800)),
        ("health = faulty_sensor", HealthFlag("faulty_sensor")),
        ("health == flood for 5m", HealthFlag("flood", 300)),
        ("rate(storage_used) > 5 per 1h", RateOfChange("storage_used", ">", 5, 3600, 3600)),
        (
            "rate(battery) < -10 per 1h over 30m for 10m",
            RateOfChange("battery", "<", -10, 3600, 1800, 600),
        ),
    ],
)
def test_every_form_of_condition_parses(text: str, parsed: object) -> None:
    assert parse_condition(text) == parsed


@pytest.mark.parametrize(
    "text",
    [
        "battery < 15 for 10m",
        "rssi <= -110",
        "offline for 30m",
        "health = outage for 5m",
        "rate(battery) < -10 per 1h over 30m for 10m",
        "rate(storage_used) > 5 per 1h",
    ],
)
def test_a_condition_reads_back_as_written(text: str) -> None:
    assert str(parse_condition(text)) == text


def test_a_metric_named_like_a_keyword_still_compares() -> None:
    assert parse_condition("offline > 3") == Threshold("offline", ">", 3)
    assert parse_condition("health > 3") == Threshold("health", ">", 3)
    assert parse_condition("rate > 3") == Threshold("rate", ">", 3)


@pytest.mark.parametrize(
    ("text", "what", "column"),
    [
        ("", "empty condition", 1),
        ("battery", "expected an operator", 8),
        ("battery <", "expected a number, found end of condition", 10),
        ("battery ~ 3", "unexpected character '~'", 9),
        ("battery < ten", "expected a number, found 'ten'", 11),
        ("battery < 10m", "expected a number, found the duration '10m'", 11),
        ("battery < 15 for", "expected a duration", 17),
        ("battery < 15 for soon", "expected a duration", 18),
        ("battery < 15 for 0s", "duration '0s' out of range", 18),
        ("battery < 15 for 10min", "unexpected 'min'", 20),
        ("battery < 15 and 3", "unexpected 'and'", 14),
        ("offline 30m", "expected 'for' after offline", 9),
        ("offline for", "expected a duration", 12),
        ("health = happy", "unknown health flag 'happy'", 10),
        ("health != flood", "health takes '=', not '!='", 8),
        ("rate(battery) < 1", "expected 'per DURATION'", 18),
        ("rate(battery < 1 per 1h", "expected ')'", 14),
        ("rate() < 1 per 1h", "expected a metric name", 6),
        ("< 15", "unexpected '<'", 1),
    ],
)
def test_a_mistake_is_named_with_its_column(text: str, what: str, column: int) -> None:
    with pytest.raises(ConditionError, match=re.escape(what)) as caught:
        parse_condition(text)
    assert caught.value.position == column - 1
    assert f"at column {column}" in str(caught.value)
    assert caught.value.field == "condition"


def test_an_overlong_condition_is_refused() -> None:
    with pytest.raises(ConditionError, match="too long"):
        parse_condition("battery < " + "1" * 600)


def test_the_error_names_the_field_it_is_in() -> None:
    with pytest.raises(ConditionError, match=r"^clear: ") as caught:
        parse_condition("battery >", field="clear")
    assert caught.value.field == "clear"
    assert isinstance(caught.value, ValueError)


@given(st.text(max_size=40))
def test_any_text_parses_or_is_refused_with_a_position(text: str) -> None:
    try:
        parse_condition(text)
    except ConditionError as exc:
        assert 0 <= exc.position <= len(text)


# --- the rule ----------------------------------------------------------------------------------


def test_the_defaults_are_alertmanagers() -> None:
    r = rule()
    assert (r.group_wait, r.group_interval, r.repeat_interval) == (30, 300, 4 * 3600)
    assert (r.scope, r.clear, r.severity, r.labels, r.channels) == ("", None, "warning", {}, [])
    assert r.group_by == ["rule"]
    assert (r.flap_flips, r.flap_window, r.flap_settle) == (4, 1800, 900)


def test_a_rule_stores_its_conditions_as_text() -> None:
    r = rule(
        scope="model = sensor-v2 AND tag:outdoor",
        condition="battery < 15 for 10m",
        clear="battery > 20",
        severity="critical",
        labels={"team": "field"},
        group_by=["rule", "site"],
        group_wait="1m",
        channels=[3, "ops"],
    )
    stored = r.model_dump(mode="json")
    assert stored["condition"] == "battery < 15 for 10m"
    assert stored["clear"] == "battery > 20"
    assert stored["group_wait"] == 60
    assert stored["channels"] == ["3", "ops"]
    assert AlertRule.model_validate(stored) == r
    assert r.pending == 600


def test_the_schema_shows_conditions_as_strings() -> None:
    properties = AlertRule.model_json_schema()["properties"]
    assert properties["condition"]["type"] == "string"


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"condition": "battery <"}, "condition\n.*condition: expected a number"),
        ({"clear": "battery >"}, "clear\n.*clear: expected a number"),
        ({"condition": 15}, "a condition is a string"),
        ({"name": ""}, "name"),
        ({"name": "a/b"}, "name"),
        ({"group_wait": "soon"}, "not a duration"),
        ({"repeat_interval": "0s"}, "greater than 0"),
        ({"labels": {"rule": "x"}}, "set by the rule itself"),
        ({"labels": {"9lives": "x"}}, "label name '9lives'"),
        ({"group_by": ["site", "site"]}, "twice"),
        ({"severity": "dire"}, "severity"),
        ({"flap_flips": 1}, "flap_flips"),
        ({"remediation": "reboot"}, "remediation\n.*valid dictionary"),
        ({"remediation": {"steps": []}}, "steps"),
        ({"incident": {"min_devices": None}}, "give min_devices"),
        ({"escalate": True}, "Extra inputs"),
    ],
)
def test_a_bad_rule_is_refused_naming_the_field(fields: dict[str, Any], match: str) -> None:
    with pytest.raises(ValidationError, match=match):
        rule(**fields)


@pytest.mark.parametrize(
    ("condition", "clear"),
    [("battery < 15", "battery < 20"), ("battery < 15", "battery != 20"), ("x = 3", "x <= 3")],
)
def test_a_clear_that_holds_with_the_condition_is_refused(condition: str, clear: str) -> None:
    with pytest.raises(ValidationError, match="would fire and clear at once"):
        rule(condition=condition, clear=clear)


@pytest.mark.parametrize(
    ("condition", "clear"),
    [("battery < 15", "battery > 20"), ("battery < 15", "battery >= 15"), ("t > 80", "t < 70")],
)
def test_a_clear_apart_from_the_condition_is_accepted(condition: str, clear: str) -> None:
    assert rule(condition=condition, clear=clear).clear is not None


# --- judging one observation -------------------------------------------------------------------


def test_a_threshold_judges_the_latest_reading() -> None:
    r = rule(condition="battery < 15")
    history = Observation(at(60), {"battery": [Reading(at(0), 10), Reading(at(60), 30)]})
    assert r.judge(history) == (False, True)
    assert r.judge(seen(battery=10)) == (True, False)


def test_a_missing_metric_is_unknown_both_ways() -> None:
    assert rule(clear="battery > 20").judge(seen(temperature=20)) == (None, None)
    assert rule().judge(seen(temperature=20)) == (None, None)


def test_an_explicit_clear_leaves_a_band_between() -> None:
    r = rule(clear="battery > 20")
    assert r.judge(seen(battery=17)) == (False, False)
    assert r.judge(seen(battery=25)) == (False, True)


def test_offline_counts_from_last_seen() -> None:
    condition = parse_condition("offline for 30m")
    assert condition.holds(Observation(at(1800), last_seen=at(0))) is True
    assert condition.holds(Observation(at(1799), last_seen=at(0))) is False
    assert condition.measure(Observation(at(600), last_seen=at(0))) == 600


def test_a_device_that_says_it_is_online_is_not_offline() -> None:
    condition = parse_condition("offline for 30m")
    assert condition.holds(Observation(at(3600), last_seen=at(0), online=True)) is False


def test_a_device_never_seen_is_unknown_not_offline() -> None:
    assert parse_condition("offline for 30m").holds(Observation(at(3600))) is None


def test_a_health_condition_reads_the_flags() -> None:
    condition = parse_condition("health = faulty_sensor")
    assert condition.holds(Observation(at(0), flags=frozenset({"faulty_sensor"}))) is True
    assert condition.holds(Observation(at(0), flags=frozenset({"flood"}))) is False
    assert condition.holds(Observation(at(0))) is None  # health not known


def series(metric: str, points: list[tuple[float, float]], now: float) -> Observation:
    return Observation(at(now), {metric: [Reading(at(t), v) for t, v in points]})


def test_a_rate_is_the_change_per_unit_over_the_window() -> None:
    condition = parse_condition("rate(storage_used) > 5 per 1h")
    # 3 % in 30 minutes is 6 % an hour.
    observed = series("storage_used", [(0, 50), (900, 51), (1800, 53)], now=1800)
    assert condition.measure(observed) == pytest.approx(6)
    assert condition.holds(observed) is True


def test_a_rate_ignores_readings_before_its_window() -> None:
    condition = parse_condition("rate(battery) < -10 per 1h over 30m")
    observed = series("battery", [(0, 100), (3600, 80), (5400, 70)], now=5400)
    assert condition.measure(observed) == pytest.approx(-20)


def test_a_rate_without_enough_span_is_unknown() -> None:
    condition = parse_condition("rate(battery) < -10 per 1h")
    assert condition.holds(series("battery", [(3500, 80)], now=3600)) is None
    assert condition.holds(series("battery", [(3000, 90), (3600, 80)], now=3600)) is None
    assert condition.holds(series("battery", [(1800, 90), (3600, 80)], now=3600)) is True


def test_update_failed_condition() -> None:
    condition = parse_condition("update failed for 5m")
    assert str(condition) == "update failed for 5m"
    at = datetime(2026, 1, 1, tzinfo=UTC)
    assert condition.holds(Observation(at=at, update="rolled_back")) is True
    assert condition.holds(Observation(at=at, update="succeeded")) is False
    assert condition.holds(Observation(at=at)) is None
    with pytest.raises(ConditionError, match="'failed' after update"):
        parse_condition("update done")
