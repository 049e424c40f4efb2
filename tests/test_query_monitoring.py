"""Fleet queries over monitoring data: latest metric values, health flags, per-model grace.

The fleet (times relative to NOW; the server's online window is 5 minutes):

    serial tenant model           last seen battery rssi temperature cpu.load health
    A      acme   sensor-v2       1 min     15      -95  21.5        -        faulty_sensor
    B      acme   sensor-v2       2 h       80      -60  -           0.5      -
    C      acme   meter-e5 (6 h)  2 h       -       -    -           -        flood, faulty_sensor
    D      globex meter-e5 (6 h)  10 h      19.5    -    -           -        flood
    E      globex sensor-v2       never     -       -    -           -        -

meter-e5 sets offline_after_seconds to 6 hours, so C is online and D is not.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from fleetkeeper.errors import BadRequest, Invalid, QuerySyntaxError
from fleetkeeper.query import CompileContext, compile_query, field_expression, parse
from fleetkeeper.query.ast import Comparison, Value
from fleetkeeper.store.db import Database
from fleetkeeper.store.models import (
    Device,
    DeviceHealth,
    DeviceModel,
    TelemetryLatest,
    Tenant,
)

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
WINDOW = timedelta(minutes=5)
ALL = ["A", "B", "C", "D", "E"]
GRACE = timedelta(hours=6)

# serial: (tenant, model, seen ago, {metric: value}, flags)
FLEET: dict[str, tuple[str, str, timedelta | None, dict[str, float], tuple[str, ...]]] = {
    "A": (
        "acme",
        "sensor-v2",
        timedelta(minutes=1),
        {"battery": 15, "rssi": -95, "temperature": 21.5},
        ("faulty_sensor",),
    ),
    "B": (
        "acme",
        "sensor-v2",
        timedelta(hours=2),
        {"battery": 80, "rssi": -60, "cpu.load": 0.5},
        (),
    ),
    "C": ("acme", "meter-e5", timedelta(hours=2), {}, ("flood", "faulty_sensor")),
    "D": ("globex", "meter-e5", timedelta(hours=10), {"battery": 19.5}, ("flood",)),
    "E": ("globex", "sensor-v2", None, {}, ()),
}


class Fleet:
    def __init__(self, db: Database, grace: dict[int, timedelta]) -> None:
        self.db = db
        self.grace = grace
        self.ctx = CompileContext(
            dialect=db.dialect, now=NOW, online_window=WINDOW, groups={}, offline_after=grace
        )

    async def match(self, text: str) -> list[str]:
        where = compile_query(parse(text), self.ctx)
        async with self.db.read() as session:
            return sorted((await session.scalars(select(Device.serial).where(where))).all())

    async def count_by(self, name: str) -> dict[Any, int]:
        expr = field_expression(
            name, self.db.dialect, now=NOW, online_window=WINDOW, offline_after=self.grace
        )
        stmt = select(expr, func.count()).select_from(Device).group_by(expr)
        async with self.db.read() as session:
            return {value: n for value, n in (await session.execute(stmt)).all()}


@pytest.fixture
async def fleet(db: Database) -> Fleet:
    async with db.write() as session:
        session.add_all(Tenant(id=t, name=t.title(), created_at=NOW) for t in ("acme", "globex"))
        models = {
            "sensor-v2": DeviceModel(name="sensor-v2", created_at=NOW, updated_at=NOW),
            "meter-e5": DeviceModel(
                name="meter-e5",
                offline_after_seconds=int(GRACE.total_seconds()),
                created_at=NOW,
                updated_at=NOW,
            ),
        }
        session.add_all(models.values())
        await session.flush()
        for serial, (tenant, model, seen, metrics, flags) in FLEET.items():
            device_id = f"00000000-0000-0000-0000-00000000000{serial}"
            session.add(
                Device(
                    id=device_id,
                    serial=serial,
                    name=serial,
                    model_id=models[model].id,
                    tenant_id=tenant,
                    state="active",
                    attributes={},
                    last_seen=NOW - seen if seen else None,
                    created_at=NOW,
                    updated_at=NOW,
                )
            )
            await session.flush()
            session.add_all(
                TelemetryLatest(device_id=device_id, metric=m, ts=NOW, value=v)
                for m, v in metrics.items()
            )
            session.add_all(
                DeviceHealth(
                    device_id=device_id,
                    flag=flag,
                    metric="",
                    detector="test",
                    severity="warning",
                    evidence={},
                    since=NOW,
                    checked_at=NOW,
                )
                for flag in flags
            )
        grace = {models["meter-e5"].id: GRACE}
    return Fleet(db, grace)


# -- Metrics ----------------------------------------------------------------------------------


async def test_metric_compares_the_latest_value(fleet: Fleet) -> None:
    assert await fleet.match("battery < 20") == ["A", "D"]
    assert await fleet.match("battery >= 20") == ["B"]
    assert await fleet.match("rssi <= -90") == ["A"]


async def test_shorthand_is_the_metrics_field(fleet: Fleet) -> None:
    assert await fleet.match("metrics.battery < 20") == await fleet.match("battery < 20")


async def test_any_metric_by_name_even_with_dots(fleet: Fleet) -> None:
    assert await fleet.match("metrics.cpu.load > 0.1") == ["B"]
    assert await fleet.match("metrics.temperature = 21.5") == ["A"]


async def test_a_device_without_the_reading_matches_no_comparison(fleet: Fleet) -> None:
    for op in ("=", "<", ">", "<=", ">="):
        assert "E" not in await fleet.match(f"battery {op} 20")


async def test_not_includes_devices_without_the_reading(fleet: Fleet) -> None:
    assert await fleet.match("NOT battery < 20") == ["B", "C", "E"]
    assert await fleet.match("battery != 15") == ["B", "C", "D", "E"]


async def test_metric_null_means_no_reading(fleet: Fleet) -> None:
    assert await fleet.match("battery = null") == ["C", "E"]
    assert await fleet.match("battery != null") == ["A", "B", "D"]


async def test_metric_in_list_compares_numbers(fleet: Fleet) -> None:
    assert await fleet.match("battery IN (15, 80.0)") == ["A", "B"]
    assert await fleet.match("battery NOT IN (15, 80)") == ["C", "D", "E"]


async def test_metric_combines_with_online(fleet: Fleet) -> None:
    assert await fleet.match("battery < 20 AND online = true") == ["A"]


async def test_an_unknown_metric_matches_nothing(fleet: Fleet) -> None:
    assert await fleet.match("metrics.pressure > 0") == []
    assert await fleet.match("NOT metrics.pressure > 0") == ALL


async def test_count_by_metric_gives_the_latest_value(fleet: Fleet) -> None:
    assert await fleet.count_by("battery") == {15.0: 1, 80.0: 1, 19.5: 1, None: 2}


# -- Health -----------------------------------------------------------------------------------


async def test_health_matches_devices_carrying_the_flag(fleet: Fleet) -> None:
    assert await fleet.match("health = faulty_sensor") == ["A", "C"]
    assert await fleet.match("health = flood") == ["C", "D"]


async def test_health_not_equal_is_the_exact_negation(fleet: Fleet) -> None:
    assert await fleet.match("health != faulty_sensor") == ["B", "D", "E"]


async def test_health_star_matches_any_flag(fleet: Fleet) -> None:
    assert await fleet.match('health = "*"') == ["A", "C", "D"]
    assert await fleet.match("health = *") == ["A", "C", "D"]
    assert await fleet.match('health != "*"') == ["B", "E"]


async def test_health_wildcard_and_list(fleet: Fleet) -> None:
    assert await fleet.match("health = FAULTY*") == ["A", "C"]
    assert await fleet.match("health IN (flood, nothing)") == ["C", "D"]


async def test_health_null_means_no_flag(fleet: Fleet) -> None:
    assert await fleet.match("health = null") == ["B", "E"]


async def test_grouping_by_health_is_refused() -> None:
    with pytest.raises(Invalid, match="several flags"):
        field_expression("health", "sqlite")


# -- Online with each model's grace -----------------------------------------------------------


async def test_online_honours_the_models_grace(fleet: Fleet) -> None:
    assert await fleet.match("online = true") == ["A", "C"]
    assert await fleet.match("online = false") == ["B", "D", "E"]


async def test_without_grace_every_device_uses_the_online_window(fleet: Fleet) -> None:
    fleet.ctx = CompileContext(dialect=fleet.db.dialect, now=NOW, online_window=WINDOW, groups={})
    assert await fleet.match("online = true") == ["A"]


async def test_count_by_online_honours_the_models_grace(fleet: Fleet) -> None:
    counts = await fleet.count_by("online")
    assert {bool(k): v for k, v in counts.items()} == {True: 2, False: 3}


# -- Mistakes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("battery < low", "'low' is not a number"),
        ('battery = "20"', "without quotes"),
        ("battery = 2*", "is not a number"),
        ("battery < null", "null cannot be compared"),
        ("metrics.rssi >= true", "is not a number"),
        ("metrics.a+b = 1", r"invalid metric name 'a\+b'"),
        ("metrics. = 1", "invalid metric name"),
        ("health > flood", "use = or !="),
        ("colour = red", "known fields are id, serial"),
    ],
)
def test_bad_monitoring_queries_are_refused(text: str, message: str) -> None:
    with pytest.raises(QuerySyntaxError, match=message):
        parse(text)


def test_unknown_field_names_the_monitoring_fields() -> None:
    with pytest.raises(QuerySyntaxError) as caught:
        parse("colour = red")
    assert "health, battery, rssi" in caught.value.detail
    assert "metrics.NAME" in caught.value.detail


async def test_hand_built_metric_query_with_text_is_a_bad_request(fleet: Fleet) -> None:
    with pytest.raises(BadRequest, match="not a number"):
        compile_query(Comparison("battery", "<", Value.of("low")), fleet.ctx)


# -- Every comparison, both ways --------------------------------------------------------------


async def test_every_monitoring_comparison_runs_and_not_is_its_complement(fleet: Fleet) -> None:
    ran = 0
    for name in ("battery", "metrics.rssi", "metrics.cpu.load", "health", "online"):
        for op in ("=", "!=", "<", ">", "<=", ">="):
            for value in ("15", "19.5", "-60", "null", "true", "flood", "*", "0.5"):
                text = f"{name} {op} {value}"
                try:
                    parse(text)
                except BadRequest:
                    continue
                matched, rest = await fleet.match(text), await fleet.match(f"NOT ({text})")
                assert sorted(matched + rest) == ALL, text
                ran += 1
    assert ran > 60
