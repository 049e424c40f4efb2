"""Database connections: one engine, read and write transactions.

SQLite allows one writer at a time. Writers here take an in-process lock and start with
`BEGIN IMMEDIATE`, so a transaction never fails half-way on upgrading its read lock; readers
use plain `BEGIN` and run beside the writer thanks to WAL. PostgreSQL needs neither.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event, func, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry


class Database:
    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = make_url(url)
        self.dialect = self.url.get_backend_name()
        if self.dialect not in {"sqlite", "postgresql"}:
            raise ValueError(f"unsupported database {self.dialect!r}: use sqlite or postgresql")
        kwargs: dict[str, Any] = {"echo": echo}
        if self.is_sqlite:
            kwargs["connect_args"] = {"timeout": 30}
        else:
            kwargs.update(pool_size=10, max_overflow=10, pool_pre_ping=True)
            # asyncpg prepares every statement; after five runs PostgreSQL may switch to a
            # generic plan that ignores the values. Fleet queries differ wildly in
            # selectivity (one site vs a whole model), so always plan for the actual values.
            kwargs["connect_args"] = {"server_settings": {"plan_cache_mode": "force_custom_plan"}}
        self.engine: AsyncEngine = create_async_engine(self.url, **kwargs)
        self._writer = self.engine.execution_options(fk_write=True)
        self._write_lock = asyncio.Lock()
        if self.is_sqlite:
            _configure_sqlite(self.engine)

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    @property
    def is_postgres(self) -> bool:
        return self.dialect == "postgresql"

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        async with AsyncSession(self.engine, expire_on_commit=False) as session:
            yield session

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncSession]:
        """A transaction that commits when the block ends without an exception."""
        if self.is_sqlite:
            async with self._write_lock, self._session(self._writer) as session:
                yield session
        else:
            async with self._session(self.engine) as session:
                yield session

    @asynccontextmanager
    async def _session(self, bind: AsyncEngine) -> AsyncIterator[AsyncSession]:
        async with AsyncSession(bind, expire_on_commit=False) as session, session.begin():
            yield session

    @asynccontextmanager
    async def exclusive(self, name: str) -> AsyncIterator[bool]:
        """Whether this process may do the named singleton work now: on PostgreSQL, while
        it holds an advisory lock that no other replica holds (False: another one does);
        on SQLite, always (one server process per file)."""
        if self.is_sqlite:
            yield True
            return
        key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
        async with self.engine.connect() as conn:
            held = bool(await conn.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}))
            await conn.commit()
            try:
                yield held
            finally:
                if held:
                    await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                    await conn.commit()

    async def dispose(self) -> None:
        if self.is_sqlite:
            # SQLite's advice: let it refresh planner statistics before closing.
            async with self.engine.connect() as conn:
                await conn.exec_driver_sql("PRAGMA optimize")
        await self.engine.dispose()


def dialect_of(session: AsyncSession) -> str:
    """ "sqlite" or "postgresql": the database a session talks to."""
    return session.get_bind().dialect.name


def rowcount(result: Any) -> int:
    """The rows an UPDATE or DELETE touched (0 when the driver does not say)."""
    return int(getattr(result, "rowcount", 0) or 0)


def epoch_seconds(session: AsyncSession, column: Any) -> Any:
    """SQL for a UTCDateTime column as Unix seconds, on either database."""
    if dialect_of(session) == "postgresql":
        return func.extract("epoch", column)
    # julianday() is a double of days: about 0.1 ms of noise once scaled to seconds, enough to
    # put 22:00:00 at 21:59:59.9999. Rounded to the millisecond, whole seconds stay whole.
    return func.round((func.julianday(column) - _UNIX_EPOCH_JULIAN_DAY) * 86400.0, 3)


_UNIX_EPOCH_JULIAN_DAY = 2440587.5


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        # Take over transaction control from the driver so we can choose BEGIN IMMEDIATE.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in (
            "PRAGMA journal_mode=WAL",
            "PRAGMA synchronous=NORMAL",
            "PRAGMA foreign_keys=ON",
            "PRAGMA busy_timeout=30000",
        ):
            cursor.execute(pragma)
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get("fk_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")
