"""PostgreSQL partitions of the raw telemetry table: one per UTC day.

Raw points are the bulk of the database and expire by age, so `telemetry` is partitioned by
range of `ts`: retention drops whole days (no vacuum debt), and a chart query reads only the
days it covers. Partitions are made on demand for the days a batch touches (points older than
the late window are refused before they get here) and ahead of time by the housekeeping round.
SQLite has no partitions; these functions are for PostgreSQL only.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.engine import Connection

TABLE = "telemetry"
_NAME = re.compile(rf"^{TABLE}_p(\d{{8}})$")


def partition_name(day: date) -> str:
    return f"{TABLE}_p{day:%Y%m%d}"


def is_partition(name: str) -> bool:
    return _NAME.match(name) is not None


def days_between(start: datetime, end: datetime) -> list[date]:
    """Every UTC day from `start`'s to `end`'s, both included."""
    first, last = start.date(), end.date()
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def create_sql(day: date) -> str:
    following = day + timedelta(days=1)
    return (
        f"CREATE TABLE IF NOT EXISTS {partition_name(day)} PARTITION OF {TABLE} "
        f"FOR VALUES FROM ('{day.isoformat()}') TO ('{following.isoformat()}')"
    )


def existing(conn: Connection) -> set[date]:
    """The days that have a partition."""
    rows = conn.execute(
        text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = :table"
        ),
        {"table": TABLE},
    )
    days = set()
    for (name,) in rows:
        found = _NAME.match(name)
        if found:
            days.add(datetime.strptime(found.group(1), "%Y%m%d").date())
    return days


def drop_before(conn: Connection, day: date) -> list[str]:
    """Drop the partitions of days before `day`; returns their names."""
    dropped = []
    for old in sorted(d for d in existing(conn) if d < day):
        name = partition_name(old)
        conn.execute(text(f"DROP TABLE IF EXISTS {name}"))
        dropped.append(name)
    return dropped


def convert(conn: Connection) -> None:
    """Turn a plain `telemetry` table into a partitioned one, rows and constraints kept."""
    conn.execute(text(f"ALTER TABLE {TABLE} RENAME TO {TABLE}_plain"))
    conn.execute(
        text(f"ALTER TABLE {TABLE}_plain RENAME CONSTRAINT {TABLE}_pkey TO {TABLE}_plain_pkey")
    )
    conn.execute(
        text(
            f"ALTER TABLE {TABLE}_plain RENAME CONSTRAINT {TABLE}_device_id_fkey "
            f"TO {TABLE}_plain_device_id_fkey"
        )
    )
    conn.execute(
        text(
            f"CREATE TABLE {TABLE} (LIKE {TABLE}_plain INCLUDING DEFAULTS) PARTITION BY RANGE (ts)"
        )
    )
    conn.execute(
        text(f"ALTER TABLE {TABLE} ADD CONSTRAINT {TABLE}_pkey PRIMARY KEY (device_id, metric, ts)")
    )
    conn.execute(
        text(
            f"ALTER TABLE {TABLE} ADD CONSTRAINT {TABLE}_device_id_fkey FOREIGN KEY (device_id) "
            "REFERENCES devices (id) ON DELETE CASCADE"
        )
    )
    span = conn.execute(text(f"SELECT min(ts), max(ts) FROM {TABLE}_plain")).one()
    if span[0] is not None:
        for day in days_between(span[0], span[1]):
            conn.execute(text(create_sql(day)))
        conn.execute(text(f"INSERT INTO {TABLE} SELECT * FROM {TABLE}_plain"))
    conn.execute(text(f"DROP TABLE {TABLE}_plain"))
