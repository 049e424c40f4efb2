"""Telemetry storage: group commit, roll-ups that never count twice, latest values, retention."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select, text

from fleet import fleet
from fleetkeeper.clock import FakeClock
from fleetkeeper.services import telemetry
from fleetkeeper.services.ingest import IngestFailed, Ingestor, Upkeep
from fleetkeeper.store.db import Database
from fleetkeeper.store.models import (
    TelemetryHour,
    TelemetryLatest,
    TelemetryMinute,
    TelemetryPoint,
)
from fleetkeeper.store.timeseries import Point, Retention, aggregate, latest, sqlite_time

T0 = datetime(2025, 12, 31, 12, 0, tzinfo=UTC)


async def devices(client: httpx.AsyncClient, count: int) -> list[str]:
    made = await fleet(client, *({"serial": f"TS-{i:03d}"} for i in range(count)))
    return [d["id"] for d in made]


def ingestor(app: FastAPI) -> Ingestor:
    state = app.state.fleetkeeper
    assert isinstance(state.ingestor, Ingestor)
    return state.ingestor


async def rollup(db: Database, table: type[TelemetryMinute] | type[TelemetryHour]) -> dict:
    async with db.read() as session:
        rows = await session.execute(
            select(
                table.device_id,
                table.metric,
                table.bucket,
                table.min_value,
                table.max_value,
                table.sum_value,
                table.count,
            )
        )
        return {(d, m, b): (lo, hi, round(s, 6), n) for d, m, b, lo, hi, s, n in rows}


def expected(points: list[Point], width: int) -> dict:
    out: dict = {}
    for d, m, ts, v in points:
        bucket = datetime.fromtimestamp(ts.timestamp() // width * width, tz=UTC)
        lo, hi, s, n = out.get((d, m, bucket), (v, v, 0.0, 0))
        out[(d, m, bucket)] = (min(lo, v), max(hi, v), s + v, n + 1)
    return {k: (lo, hi, round(s, 6), n) for k, (lo, hi, s, n) in out.items()}


async def test_rollups_count_each_point_once_whatever_the_order_and_repeats(
    app: FastAPI, client: httpx.AsyncClient, db: Database
) -> None:
    ids = await devices(client, 3)
    rng = random.Random(7)
    points = [
        (
            rng.choice(ids),
            rng.choice(["battery", "rssi"]),
            T0 + timedelta(seconds=rng.randrange(0, 3 * 3600)),
            round(rng.uniform(-100, 100), 2),
        )
        for _ in range(600)
    ]
    unique = list({(d, m, ts): (d, m, ts, v) for d, m, ts, v in points}.values())
    chunks = [unique[i : i + 50] for i in range(0, len(unique), 50)]
    rng.shuffle(chunks)  # late and out-of-order batches
    writer = ingestor(app)
    await asyncio.gather(*(writer.write(chunk, T0) for chunk in chunks))
    await asyncio.gather(*(writer.write(chunk, T0) for chunk in chunks[:4]))  # resent
    assert await rollup(db, TelemetryMinute) == expected(unique, 60)
    assert await rollup(db, TelemetryHour) == expected(unique, 3600)
    async with db.read() as session:
        raw = await session.scalar(select(func.count()).select_from(TelemetryPoint))
        newest = {
            (d, m): (ts, v)
            for d, m, ts, v in await session.execute(
                select(
                    TelemetryLatest.device_id,
                    TelemetryLatest.metric,
                    TelemetryLatest.ts,
                    TelemetryLatest.value,
                )
            )
        }
    assert raw == len(unique)
    want = {}
    for d, m, ts, v in sorted(unique, key=lambda p: p[2]):
        want[(d, m)] = (ts, v)
    assert newest == want


async def test_concurrent_requests_share_transactions(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    ids = await devices(client, 20)
    writer = ingestor(app)
    before = writer.stats.transactions
    batches = [
        [(d, "battery", T0 + timedelta(seconds=10 * i), float(i)) for i in range(100)] for d in ids
    ]
    await asyncio.gather(*(writer.write(b, T0) for b in batches))
    used = writer.stats.transactions - before
    assert used < len(batches), f"{len(batches)} requests took {used} transactions"
    assert writer.stats.points >= 2000


async def test_a_failing_request_does_not_take_others_down(
    app: FastAPI, client: httpx.AsyncClient, db: Database
) -> None:
    good, doomed = await devices(client, 2)
    writer = ingestor(app)
    ghost = "019b0000-0000-7000-8000-000000000000"  # no such device: the foreign key refuses
    results = await asyncio.gather(
        writer.write([(good, "battery", T0, 1.0)], T0),
        writer.write([(ghost, "battery", T0, 2.0)], T0),
        writer.write([(doomed, "battery", T0, 3.0)], T0),
        return_exceptions=True,
    )
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], IngestFailed)
    async with db.read() as session:
        stored = set(await session.scalars(select(TelemetryPoint.device_id)))
    assert stored == {good, doomed}


async def test_a_device_sees_503_when_its_points_cannot_be_stored(
    app: FastAPI, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from devicekit import online_device

    device = await online_device(client)

    async def broken(*_args: object) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(ingestor(app), "_transaction", broken)
    clock_now = app.state.fleetkeeper.clock.now().timestamp()
    body = {"points": [{"metric": "battery", "value": 1.0, "ts": clock_now}]}
    r = await device.call("POST", "/telemetry", json=body)
    assert r.status_code == 503, r.text
    assert r.json()["code"] == "telemetry_not_stored"


async def test_points_older_than_the_raw_retention_are_refused_by_name(
    app: FastAPI, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    from devicekit import online_device

    device = await online_device(client)
    now = clock.now().timestamp()
    body = {
        "points": [
            {"metric": "battery", "value": 1.0, "ts": now - 31 * 86400},
            {"metric": "battery", "value": 2.0, "ts": now - 29 * 86400},
        ]
    }
    r = await device.call("POST", "/telemetry", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 1
    assert r.json()["rejected"] == [
        {"index": 0, "reason": "ts is older than the late window of 30 days"}
    ]


async def test_retention_expires_raw_points_and_rollups_by_age(
    app: FastAPI, client: httpx.AsyncClient, db: Database, clock: FakeClock
) -> None:
    (device,) = await devices(client, 1)
    now = clock.now()
    writer = ingestor(app)
    ages = [timedelta(days=d, hours=1) for d in (0, 2, 5, 9)]
    await writer.write([(device, "battery", now - age, 1.0) for age in ages], now)
    upkeep = Upkeep(
        writer.series,
        Retention(raw=timedelta(days=3), minute=timedelta(days=6), hour=timedelta(days=8)),
    )
    removed = await upkeep.tick(now)
    assert removed is not None
    assert await upkeep.tick(now + timedelta(minutes=5)) is None  # not due yet
    async with db.read() as session:
        raw = sorted(await session.scalars(select(TelemetryPoint.ts)))
        minutes = await session.scalar(select(func.count()).select_from(TelemetryMinute))
        hours = await session.scalar(select(func.count()).select_from(TelemetryHour))
    # Raw: SQLite deletes rows; PostgreSQL drops whole days, so the 2-day-old point stays and
    # the day holding the cutoff (3 days ago) too.
    assert raw == [now - ages[1], now - ages[0]]
    assert (minutes, hours) == (3, 3)
    if db.is_postgres:
        assert removed["telemetry_partitions"] >= 2


@pytest.mark.postgres
async def test_postgres_partitions_are_made_per_day_on_demand(
    app: FastAPI, client: httpx.AsyncClient, db: Database, clock: FakeClock
) -> None:
    if not db.is_postgres:
        pytest.skip("partitions are PostgreSQL's")
    (device,) = await devices(client, 1)
    writer = ingestor(app)
    days = [clock.now() - timedelta(days=d) for d in (12, 13)]
    await writer.write([(device, "battery", ts, 1.0) for ts in days], clock.now())
    async with db.read() as session:
        names = set(
            await session.scalars(
                text("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid")
            )
        )
    assert {f"telemetry_p{d:%Y%m%d}" for d in days} <= names


async def test_series_reads_the_same_buckets_from_rollups_as_from_raw(
    app: FastAPI, client: httpx.AsyncClient, db: Database
) -> None:
    (device,) = await devices(client, 1)
    rng = random.Random(3)
    points = [
        (device, "temperature", T0 + timedelta(seconds=rng.randrange(0, 86400)), rng.random())
        for _ in range(500)
    ]
    points = list({p[2]: p for p in points}.values())
    await ingestor(app).write(points, T0)
    end = T0 + timedelta(days=1)
    async with db.read() as session:
        for step in (60.0, 300.0, 3600.0, 7200.0):
            rolled = await telemetry.series(session, device, "temperature", T0, end, step)
            raw = await telemetry.series(
                session, device, "temperature", T0, end, step, rollups=False
            )
            assert [(p["t"], p["count"]) for p in rolled] == [(p["t"], p["count"]) for p in raw]
            for a, b in zip(rolled, raw, strict=True):
                assert (a["min"], a["max"]) == (b["min"], b["max"])
                assert a["avg"] == pytest.approx(b["avg"])


def test_aggregate_and_latest_are_plain_functions() -> None:
    rows = [
        ("d", "m", "2026-01-01 10:00:05.000000", 3.0),
        ("d", "m", "2026-01-01 10:00:55.000000", 1.0),
        ("d", "m", "2026-01-01 10:01:00.000000", 2.0),
    ]
    minute = lambda ts: ts[:16]  # noqa: E731
    assert aggregate(rows, minute) == [
        ("d", "m", "2026-01-01 10:00", 1.0, 3.0, 4.0, 2),
        ("d", "m", "2026-01-01 10:01", 2.0, 2.0, 2.0, 1),
    ]
    assert latest(rows) == [rows[2]]
    assert sqlite_time(datetime(2026, 1, 1, 10, 0, tzinfo=UTC)) == "2026-01-01 10:00:00.000000"
