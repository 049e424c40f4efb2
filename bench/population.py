"""Filling a database with a synthetic fleet fast, straight through the driver.

The rows look like what the API writes (same ids, version keys, JSON), so the server can be
started on the result. Deterministic for a seed.
"""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.engine import make_url

from bench.databases import RawConnection
from fleetkeeper.ids import uuid7
from fleetkeeper.services.identity import issue_token
from fleetkeeper.store.migrate import upgrade
from fleetkeeper.versions import firmware_key

MODELS = [f"m{i}" for i in range(5)]
VERSIONS = ["1.0.0", "1.2.3", "1.9.9", "1.10.0", "2.0.0", "2.1.0", "2.10.1", "3.0.0-rc1", "3.0.0"]
SITES = 500
NOW = datetime(2026, 11, 1, tzinfo=UTC)


def device_rows(n: int, seed: int = 7, prefix: str = "SN") -> Iterator[dict[str, Any]]:
    rng = random.Random(seed)
    start = NOW - timedelta(days=400)
    for i in range(n):
        created = start + timedelta(seconds=i * 30)
        version = rng.choice(VERSIONS)
        site = rng.randrange(SITES)
        yield {
            "id": uuid7(created),
            "serial": f"{prefix}-{i:08d}",
            "name": f"{prefix}-{i:08d}",
            "model": MODELS[rng.randrange(len(MODELS))],
            "firmware_version": version,
            "attributes": {"site": f"site-{site}", "floor": rng.randrange(1, 12)},
            "location": {"lat": 48 + site / 100, "lon": 9 + site / 100},
            "last_seen": NOW - timedelta(seconds=rng.randrange(0, 3 * 86400)),
            "created_at": created,
            "tags": ["pilot"] if rng.random() < 0.05 else [],
        }


def csv_text(n: int, seed: int = 11, prefix: str = "IMP") -> str:
    lines = ["serial,model,firmware_version,tags,attributes.site,attributes.floor"]
    for row in device_rows(n, seed, prefix):
        lines.append(
            f"{row['serial']},{row['model']},{row['firmware_version']},{';'.join(row['tags'])},"
            f"{row['attributes']['site']},{row['attributes']['floor']}"
        )
    return "\n".join(lines) + "\n"


def _naive(t: datetime) -> datetime:
    return t.astimezone(UTC).replace(tzinfo=None)


def _record(row: dict[str, Any], model_ids: dict[str, int]) -> tuple[Any, ...]:
    return (
        row["id"],
        row["serial"],
        row["name"],
        model_ids[row["model"]],
        "default",
        "active",
        row["firmware_version"],
        firmware_key(row["firmware_version"]),
        None,
        json.dumps(row["attributes"]),
        json.dumps(row["location"]),
        _naive(row["last_seen"]),
        _naive(row["created_at"]),
        _naive(row["created_at"]),
    )


COLUMNS = (
    "id",
    "serial",
    "name",
    "model_id",
    "tenant_id",
    "state",
    "firmware_version",
    "firmware_key",
    "hardware_revision",
    "attributes",
    "location",
    "last_seen",
    "created_at",
    "updated_at",
)


def populate(url: str, n: int, seed: int = 7) -> None:
    """A migrated database with the default tenant, the models and n devices."""
    asyncio.run(upgrade(url))
    if url.startswith("sqlite"):
        _populate_sqlite(make_url(url).database or "", n, seed)
    else:
        asyncio.run(_populate_postgres(url, n, seed))


def device_tokens(url: str) -> list[str]:
    """An access token for every device, in id order, signed with the server's own key as
    `/device/v1/auth/token` would (a setup shortcut: no time goes to authenticating). The
    server makes its key when it first starts: call this once a server has run on `url`."""
    raw = RawConnection(url)
    try:
        key = raw.fetch("SELECT value FROM server_secrets WHERE name = 'device_token_key'")
        ids = [row[0] for row in raw.fetch("SELECT id FROM devices ORDER BY id")]
    finally:
        raw.close()
    now = datetime.now(UTC)
    return [issue_token(bytes.fromhex(key[0][0]), i, 0, now)[0] for i in ids]


def _populate_sqlite(path: str, n: int, seed: int) -> None:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    now = _naive(NOW).isoformat(sep=" ")
    conn.execute("INSERT OR IGNORE INTO tenants VALUES ('default', 'Default tenant', ?)", (now,))
    for name in MODELS:
        conn.execute(
            "INSERT INTO device_models (name, capabilities, created_at, updated_at) "
            "VALUES (?, '[]', ?, ?)",
            (name, now, now),
        )
    model_ids = dict(conn.execute("SELECT name, id FROM device_models"))
    placeholders = ",".join("?" * len(COLUMNS))
    batch: list[tuple[Any, ...]] = []
    tags: list[tuple[str, str]] = []

    def flush() -> None:
        conn.executemany(
            f"INSERT INTO devices ({','.join(COLUMNS)}) VALUES ({placeholders})",
            [tuple(_sqlite_value(v) for v in r) for r in batch],
        )
        conn.executemany("INSERT INTO device_tags VALUES (?, ?)", tags)
        batch.clear()
        tags.clear()

    for row in device_rows(n, seed):
        batch.append(_record(row, model_ids))
        tags.extend((row["id"], t) for t in row["tags"])
        if len(batch) >= 20_000:
            flush()
    flush()
    conn.commit()
    conn.execute("ANALYZE")
    conn.close()


def _sqlite_value(value: Any) -> Any:
    # SQLAlchemy stores DateTime on SQLite as 'YYYY-MM-DD HH:MM:SS.ffffff'.
    return (
        value.isoformat(sep=" ", timespec="microseconds") if isinstance(value, datetime) else value
    )


async def _populate_postgres(url: str, n: int, seed: int) -> None:
    import asyncpg

    conn = await asyncpg.connect(_plain_pg_url(url))
    try:
        now = _naive(NOW)
        await conn.execute(
            "INSERT INTO tenants VALUES ('default', 'Default tenant', $1) ON CONFLICT DO NOTHING",
            now,
        )
        for name in MODELS:
            await conn.execute(
                "INSERT INTO device_models (name, capabilities, created_at, "
                "updated_at) VALUES ($1, '[]', $2, $2)",
                name,
                now,
            )
        model_ids = {
            r["name"]: r["id"] for r in await conn.fetch("SELECT name, id FROM device_models")
        }
        batch: list[tuple[Any, ...]] = []
        tags: list[tuple[str, str]] = []
        for row in device_rows(n, seed):
            batch.append(_record(row, model_ids))
            tags.extend((row["id"], t) for t in row["tags"])
            if len(batch) >= 50_000:
                await conn.copy_records_to_table("devices", records=batch, columns=COLUMNS)
                batch.clear()
        await conn.copy_records_to_table("devices", records=batch, columns=COLUMNS)
        await conn.copy_records_to_table("device_tags", records=tags)
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


def _plain_pg_url(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
