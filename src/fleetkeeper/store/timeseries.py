"""Telemetry storage: raw points, 1-minute and 1-hour roll-ups, each device's latest values.

One `write` stores a batch of points from any number of devices in a handful of statements,
whatever its size, on either database:

1. the raw points, `ON CONFLICT DO NOTHING` (a resent point is ignored), keeping the rows
   that were new (`RETURNING`);
2. the roll-ups of only those new rows, merged into the 1-minute and 1-hour tables with an
   upsert that takes the min/max and adds the sums and counts, so a late or out-of-order
   point lands in its own bucket and a repeat is never counted twice;
3. the latest value per device and metric, replaced only by a newer point.

On PostgreSQL all three are one statement (a data-modifying CTE over the insert's
`RETURNING`), the rows travelling as one array per column (`unnest`) and none coming back.
On SQLite the new rows come back and are rolled up here, then upserted grouped, the rows
travelling as one JSON document (`json_each`). We measured the alternatives on SQLite: a
trigger per inserted row costs a third more than this, and grouping in SQL through a
temporary table a tenth more (docs/performance.md). PostgreSQL's raw table is partitioned by
day (`store/partitions.py`); `prepare` makes the partitions a batch needs.

Times are passed in the form each database stores them: SQLite holds text in SQLAlchemy's
`YYYY-MM-DD HH:MM:SS.ffffff` (so buckets are prefixes of it), PostgreSQL naive UTC timestamps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import delete, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from fleetkeeper.store import partitions
from fleetkeeper.store.db import Database, rowcount
from fleetkeeper.store.models import TelemetryHour, TelemetryMinute, TelemetryPoint

# (device_id, metric, ts as an aware UTC datetime, value)
Point = tuple[str, str, datetime, float]
ROLLUPS = (("telemetry_1m", 60), ("telemetry_1h", 3600))


@dataclass(frozen=True)
class Written:
    points: int  # points given
    new: int  # points stored (the others were already there)


def sqlite_time(ts: datetime) -> str:
    """An aware datetime as SQLite holds a UTCDateTime column."""
    if ts.tzinfo is not UTC:
        ts = ts.astimezone(UTC)
    return ts.replace(tzinfo=None).isoformat(" ", "microseconds")


def _bucket_sqlite(width: int) -> Callable[[Any], Any]:
    keep = 16 if width == 60 else 13  # "YYYY-MM-DD HH:MM" / "YYYY-MM-DD HH"
    tail = ":00.000000" if width == 60 else ":00:00.000000"
    return lambda ts: ts[:keep] + tail


def aggregate(rows: Iterable[Sequence[Any]], bucket: Callable[[Any], Any]) -> list[tuple[Any, ...]]:
    """Roll rows (device, metric, ts, value) up into (device, metric, bucket, min, max, sum, n),
    sorted by key so concurrent writers lock roll-up rows in one order."""
    out: dict[tuple[Any, Any, Any], list[Any]] = {}
    for device, metric, ts, value in rows:
        key = (device, metric, bucket(ts))
        acc = out.get(key)
        if acc is None:
            out[key] = [value, value, value, 1]
        else:
            if value < acc[0]:
                acc[0] = value
            if value > acc[1]:
                acc[1] = value
            acc[2] += value
            acc[3] += 1
    return [(*key, *acc) for key, acc in sorted(out.items())]


def latest(rows: Iterable[Sequence[Any]]) -> list[tuple[Any, ...]]:
    """The newest (device, metric, ts, value) of each device and metric, sorted by key."""
    out: dict[tuple[Any, Any], tuple[Any, ...]] = {}
    for row in rows:
        key = (row[0], row[1])
        held = out.get(key)
        if held is None or row[2] > held[2]:
            out[key] = tuple(row)
    return [out[key] for key in sorted(out)]


class _Sqlite:
    RAW = text(
        "INSERT INTO telemetry (device_id, metric, ts, value, received_at) "
        "SELECT j.value ->> 0, j.value ->> 1, j.value ->> 2, j.value ->> 3, j.value ->> 4 "
        "FROM json_each(:rows) AS j WHERE true "
        "ON CONFLICT DO NOTHING RETURNING device_id, metric, ts, value"
    )
    ROLLUP = (
        "INSERT INTO {table} (device_id, metric, bucket, min_value, max_value, sum_value, count) "
        "SELECT j.value ->> 0, j.value ->> 1, j.value ->> 2, j.value ->> 3, j.value ->> 4, "
        "j.value ->> 5, j.value ->> 6 FROM json_each(:rows) AS j WHERE true "
        "ON CONFLICT (device_id, metric, bucket) DO UPDATE SET "
        "min_value = min(min_value, excluded.min_value), "
        "max_value = max(max_value, excluded.max_value), "
        "sum_value = sum_value + excluded.sum_value, count = count + excluded.count"
    )
    LATEST = text(
        "INSERT INTO telemetry_latest (device_id, metric, ts, value) "
        "SELECT j.value ->> 0, j.value ->> 1, j.value ->> 2, j.value ->> 3 "
        "FROM json_each(:rows) AS j WHERE true "
        "ON CONFLICT (device_id, metric) DO UPDATE SET ts = excluded.ts, value = excluded.value "
        "WHERE excluded.ts > telemetry_latest.ts"
    )
    bucket = staticmethod(_bucket_sqlite)

    @staticmethod
    def time(ts: datetime) -> Any:
        return sqlite_time(ts)

    @staticmethod
    def params(rows: Sequence[Sequence[Any]]) -> dict[str, Any]:
        return {"rows": orjson.dumps(rows).decode()}


class _Postgres:
    # One statement does it all: the new rows never leave the server. Each roll-up's GROUP BY
    # makes its keys unique (an upsert may touch a row once per statement), and ORDER BY locks
    # roll-up rows in key order, so concurrent writers wait rather than deadlock.
    ROLLUP = (
        "{name} AS (INSERT INTO {table} "
        "(device_id, metric, bucket, min_value, max_value, sum_value, count) "
        "SELECT device_id, metric, date_trunc('{unit}', ts), min(value), max(value), "
        "sum(value), count(*) FROM new GROUP BY 1, 2, 3 ORDER BY 1, 2, 3 "
        "ON CONFLICT (device_id, metric, bucket) DO UPDATE SET "
        "min_value = least({table}.min_value, excluded.min_value), "
        "max_value = greatest({table}.max_value, excluded.max_value), "
        "sum_value = {table}.sum_value + excluded.sum_value, "
        "count = {table}.count + excluded.count)"
    )
    ALL = text(
        "WITH new AS (INSERT INTO telemetry (device_id, metric, ts, value, received_at) "
        "SELECT * FROM unnest(CAST(:c0 AS varchar[]), CAST(:c1 AS varchar[]), "
        "CAST(:c2 AS timestamp[]), CAST(:c3 AS float8[]), CAST(:c4 AS timestamp[])) "
        "ON CONFLICT DO NOTHING RETURNING device_id, metric, ts, value), "
        + ROLLUP.format(name="minutes", table="telemetry_1m", unit="minute")
        + ", "
        + ROLLUP.format(name="hours", table="telemetry_1h", unit="hour")
        + ", latest AS (INSERT INTO telemetry_latest (device_id, metric, ts, value) "
        "SELECT DISTINCT ON (device_id, metric) device_id, metric, ts, value FROM new "
        "ORDER BY device_id, metric, ts DESC "
        "ON CONFLICT (device_id, metric) DO UPDATE SET ts = excluded.ts, value = excluded.value "
        "WHERE excluded.ts > telemetry_latest.ts) "
        "SELECT count(*) FROM new"
    )

    @staticmethod
    def time(ts: datetime) -> Any:
        return ts.astimezone(UTC).replace(tzinfo=None)

    @staticmethod
    def params(rows: Sequence[Sequence[Any]]) -> dict[str, Any]:
        return {f"c{i}": list(column) for i, column in enumerate(zip(*rows, strict=True))}


class TimeSeries:
    """Writes and expires telemetry on one database."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._sql: type[_Sqlite] | type[_Postgres] = _Sqlite if db.is_sqlite else _Postgres
        self._rollups = [
            (text(_Sqlite.ROLLUP.format(table=table)), _Sqlite.bucket(width))
            for table, width in ROLLUPS
        ]
        self._days: set[date] = set()  # days known to have a partition (PostgreSQL)

    async def write(
        self, session: AsyncSession, batches: Sequence[tuple[Sequence[Point], datetime]]
    ) -> Written:
        """Store batches of points, each with the time it was received, in the session's
        transaction; returns how many points were new."""
        sql = self._sql
        rows: list[tuple[Any, ...]] = []
        for points, received_at in batches:
            received = sql.time(received_at)
            rows.extend((d, m, sql.time(ts), v, received) for d, m, ts, v in points)
        if not rows:
            return Written(0, 0)
        if sql is _Postgres:
            new = await session.scalar(_Postgres.ALL, sql.params(rows))
            return Written(len(rows), int(new or 0))
        stored = (await session.execute(_Sqlite.RAW, sql.params(rows))).all()
        if stored:
            for statement, bucket in self._rollups:
                await session.execute(statement, sql.params(aggregate(stored, bucket)))
            await session.execute(_Sqlite.LATEST, sql.params(latest(stored)))
        return Written(len(rows), len(stored))

    async def prepare(self, points: Iterable[Point]) -> None:
        """Make the day partitions these points need (PostgreSQL; nothing on SQLite)."""
        if self.db.is_sqlite:
            return
        days = {ts.astimezone(UTC).date() for _, _, ts, _ in points} - self._days
        if days:
            await self.ensure_days(days)

    async def ensure_days(self, days: Iterable[date]) -> None:
        missing = set(days) - self._days
        if not missing or self.db.is_sqlite:
            return
        engine = self.db.engine
        async with engine.connect() as conn:
            self._days |= await conn.run_sync(partitions.existing)
        for day in sorted(missing - self._days):
            try:
                async with engine.begin() as conn:
                    await conn.execute(text(partitions.create_sql(day)))
            except DBAPIError:
                # Another process made it at the same moment; anything else shows next.
                async with engine.connect() as conn:
                    if day not in await conn.run_sync(partitions.existing):
                        raise
            self._days.add(day)

    async def expire(self, now: datetime, retention: Retention) -> dict[str, int]:
        """Delete what is past its retention; returns rows (or, PostgreSQL, days) removed."""
        removed: dict[str, int] = {}
        raw_cutoff = now - retention.raw
        if self.db.is_sqlite:
            async with self.db.write() as session:
                result = await session.execute(
                    delete(TelemetryPoint).where(TelemetryPoint.ts < raw_cutoff)
                )
                removed["telemetry"] = rowcount(result)
        else:
            # Whole days only: a partition goes when its last point is past retention.
            first_kept = (raw_cutoff - timedelta(days=1)).date() + timedelta(days=1)
            async with self.db.engine.begin() as conn:
                dropped = await conn.run_sync(partitions.drop_before, first_kept)
            self._days -= {d for d in self._days if d < first_kept}
            removed["telemetry_partitions"] = len(dropped)
        for table, keep in ((TelemetryMinute, retention.minute), (TelemetryHour, retention.hour)):
            async with self.db.write() as session:
                result = await session.execute(delete(table).where(table.bucket < now - keep))
                removed[table.__tablename__] = rowcount(result)
        return removed


@dataclass(frozen=True)
class Retention:
    raw: timedelta
    minute: timedelta
    hour: timedelta
