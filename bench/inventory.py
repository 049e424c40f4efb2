"""Inventory scenarios: fleet query latency, aggregation, bulk import — each beside the bare
database doing the same work."""

from __future__ import annotations

import json
from datetime import timedelta
from functools import partial
from typing import Any

import httpx
from sqlalchemy import func, select, true
from sqlalchemy.dialects import postgresql, sqlite

from bench.databases import RawConnection, fresh_database
from bench.harness import Result, measure, server
from bench.population import COLUMNS, NOW, csv_text, device_rows, populate
from fleetkeeper.query import CompileContext, compile_query, parse
from fleetkeeper.store.models import Device

QUERY = "model = m3 AND firmware_version < 2.0.0 AND attributes.site = site-7"
_DIALECTS = {"sqlite": sqlite.dialect(), "postgresql": postgresql.asyncpg.dialect()}


def _sql(kind: str, stmt: Any) -> str:
    return str(stmt.compile(dialect=_DIALECTS[kind], compile_kwargs={"literal_binds": True}))


def _list_sql(kind: str, query: str, limit: int) -> str:
    ctx = CompileContext(dialect=kind, now=NOW, online_window=timedelta(minutes=5), groups={})
    where = compile_query(parse(query), ctx)
    return _sql(kind, select(Device).where(true(), where).order_by(Device.id).limit(limit + 1))


def _get(client: httpx.Client, path: str, **params: Any) -> Any:
    r = client.get(path, params=params)
    r.raise_for_status()
    return r.json()


def query_and_aggregate(kind: str, sizes: list[int], pg_url: str, rounds: int) -> list[Result]:
    results = []
    for size in sizes:
        with fresh_database(kind, pg_url) as url:
            populate(url, size)
            raw = RawConnection(url)
            try:
                with server(url) as client:
                    results += _query(kind, size, client, raw, rounds)
                    results += _aggregate(kind, size, client, raw, max(3, rounds // 5))
            finally:
                raw.close()
    return results


def _query(
    kind: str, size: int, client: httpx.Client, raw: RawConnection, rounds: int
) -> list[Result]:
    page = _get(client, "/api/v1/devices", q=QUERY, limit=50)
    sql = _list_sql(kind, QUERY, 50)
    assert len(raw.fetch(sql)) == min(51, len(page["items"]) + (1 if page["next_cursor"] else 0))
    ours = measure(lambda: _get(client, "/api/v1/devices", q=QUERY, limit=50), rounds=rounds)
    limit = measure(lambda: raw.fetch(sql), rounds=rounds)
    return [
        Result(
            scenario="fleet-query",
            metric="first page (50) of an indexed fleet query, latency",
            fleet_size=size,
            database=kind,
            ours=ours.summary(),
            limit_name="same SQL, bare driver",
            limit=limit.summary(),
            goal="< 50 ms median at 10^6 devices",
            extra={"query": QUERY, "matches_on_page": len(page["items"])},
        )
    ]


def _aggregate(
    kind: str, size: int, client: httpx.Client, raw: RawConnection, rounds: int
) -> list[Result]:
    sql = _sql(
        kind,
        select(Device.firmware_version, func.count())
        .group_by(Device.firmware_version)
        .order_by(func.count().desc()),
    )
    body = _get(client, "/api/v1/devices/aggregate", by="firmware_version")
    assert body["total"] == size, body
    ours = measure(
        lambda: _get(client, "/api/v1/devices/aggregate", by="firmware_version"),
        rounds=rounds,
        warmup=1,
    )
    limit = measure(lambda: raw.fetch(sql), rounds=rounds, warmup=1)
    return [
        Result(
            scenario="fleet-aggregate",
            metric="count by firmware_version over all devices",
            fleet_size=size,
            database=kind,
            ours=ours.summary(),
            limit_name="same GROUP BY, bare driver",
            limit=limit.summary(),
            goal="< 1 s at 10^6 devices",
        )
    ]


def bulk_import(kind: str, size: int, pg_url: str, rounds: int) -> list[Result]:
    """POST a CSV of `size` devices vs inserting the same rows through the bare driver."""
    ours_samples: list[float] = []
    raw_samples: list[float] = []
    for r in range(rounds):
        body = csv_text(size, seed=11 + r, prefix=f"IMP{r}")
        with fresh_database(kind, pg_url) as url:
            populate(url, 0)
            with server(url) as client:
                ours_samples += measure(
                    partial(_post_csv, client, body), rounds=1, warmup=0
                ).samples
        with fresh_database(kind, pg_url) as url:
            populate(url, 0)
            raw = RawConnection(url)
            try:
                insert = _inserter(kind, _raw_rows(size, r))
                raw_samples += measure(partial(raw.run, insert), rounds=1, warmup=0).samples
            finally:
                raw.close()
    from bench.harness import Stats

    return [
        Result(
            scenario="bulk-import",
            metric=f"import {size} devices from CSV (all or nothing)",
            fleet_size=size,
            database=kind,
            ours=Stats(ours_samples).summary(),
            limit_name="insert the same rows, bare driver (executemany / COPY)",
            limit=Stats(raw_samples).summary(),
            goal="< 30 s for 100,000 devices",
        )
    ]


def _post_csv(client: httpx.Client, body: str) -> None:
    r = client.post("/api/v1/devices/import", content=body, headers={"content-type": "text/csv"})
    if r.status_code != 201:
        raise RuntimeError(f"import failed: {r.status_code} {r.text[:500]}")


def _raw_rows(size: int, round_no: int) -> list[tuple[Any, ...]]:
    from bench.population import _naive  # same row shape the populator writes

    rows = []
    for row in device_rows(size, seed=101 + round_no, prefix=f"RAW{round_no}"):
        rows.append(
            (
                row["id"],
                row["serial"],
                row["name"],
                1,
                "default",
                "registered",
                row["firmware_version"],
                None,
                None,
                json.dumps(row["attributes"]),
                None,
                None,
                _naive(NOW),
                _naive(NOW),
            )
        )
    return rows


def _inserter(kind: str, rows: list[tuple[Any, ...]]) -> Any:
    placeholders = ",".join("?" * len(COLUMNS))

    def sqlite_insert(conn: Any) -> None:
        conn.executemany(
            f"INSERT INTO devices ({','.join(COLUMNS)}) VALUES ({placeholders})",
            [
                tuple(v.isoformat(sep=" ") if hasattr(v, "isoformat") else v for v in r)
                for r in rows
            ],
        )
        conn.commit()

    async def pg_copy(conn: Any) -> None:
        await conn.copy_records_to_table("devices", records=rows, columns=COLUMNS)

    return sqlite_insert if kind == "sqlite" else pg_copy
