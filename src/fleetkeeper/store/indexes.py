"""Indexes chosen by the operator rather than the schema: attributes that are queried a lot.

On PostgreSQL the GIN index on `attributes` already serves equality on every key. SQLite has
no such index, so each attribute named in FLEETKEEPER_INDEXED_ATTRIBUTES gets an expression
index on exactly the expression the query compiler emits for `attributes.KEY = value`.
"""

from __future__ import annotations

import re

from sqlalchemy import text

from fleetkeeper.store.db import Database

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,62}$")


def parse_keys(setting: str) -> list[str]:
    keys = [k.strip() for k in setting.split(",") if k.strip()]
    bad = [k for k in keys if not _KEY.match(k)]
    if bad:
        raise ValueError(f"FLEETKEEPER_INDEXED_ATTRIBUTES: invalid attribute name(s) {bad}")
    return keys


def attribute_index(key: str) -> str:
    name = "ix_devices_attr_" + key.replace("-", "_")
    return f"CREATE INDEX IF NOT EXISTS {name} ON devices (json_extract(attributes, '$.\"{key}\"'))"


async def ensure_attribute_indexes(db: Database, keys: list[str]) -> None:
    if not db.is_sqlite or not keys:
        return
    async with db.write() as session:
        for key in keys:
            await session.execute(text(attribute_index(key)))
