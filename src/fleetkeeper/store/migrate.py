"""Schema migrations (Alembic), run on server start and by `fleetkeeper db upgrade`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from fleetkeeper.store import partitions

MIGRATIONS = Path(__file__).parent / "migrations"
_PG_LOCK_KEY = 0x466B6D67  # "Fkmg": replicas starting together migrate one at a time


# Indexes the models declare with .ddl_if(dialect="postgresql"); autogenerate ignores ddl_if.
POSTGRES_ONLY_INDEXES = frozenset({"ix_devices_attributes"})


def include_object_for(dialect: str) -> Callable[..., bool]:
    """Alembic filter: PostgreSQL-only indexes neither exist nor are missing elsewhere."""

    def include(_obj: Any, name: str | None, type_: str, _reflected: bool, _other: Any) -> bool:
        if type_ == "table" and name is not None and partitions.is_partition(name):
            return False  # the days of the partitioned telemetry table (store/partitions.py)
        return not (type_ == "index" and name in POSTGRES_ONLY_INDEXES and dialect != "postgresql")

    return include


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


async def upgrade(url: str, revision: str = "head") -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                await conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY})
            await conn.run_sync(lambda sync: command.upgrade(alembic_config(sync), revision))
    finally:
        await engine.dispose()


async def current_revision(url: str) -> str | None:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(
                lambda sync: MigrationContext.configure(sync).get_current_revision()
            )
    finally:
        await engine.dispose()
