"""Throw-away databases for a benchmark run, and running SQL on them through the bare driver."""

from __future__ import annotations

import asyncio
import sqlite3
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

DEFAULT_PG = "postgresql+asyncpg://root@127.0.0.1:5432/test"


@contextmanager
def fresh_database(kind: str, pg_url: str = DEFAULT_PG) -> Iterator[str]:
    """The URL of an empty database of `kind` ("sqlite" or "postgresql"), removed afterwards."""
    if kind == "sqlite":
        folder = Path(tempfile.mkdtemp(prefix="fk-bench-db-"))
        yield f"sqlite+aiosqlite:///{folder / 'fleetkeeper.db'}"
        for f in folder.iterdir():
            f.unlink()
        folder.rmdir()
        return
    name = f"fk_bench_{uuid.uuid4().hex[:10]}"
    asyncio.run(_pg_admin(pg_url, f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(pg_url).set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(_pg_admin(pg_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _pg_admin(url: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(plain_pg(url))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def plain_pg(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class RawConnection:
    """One bare driver connection (sqlite3 or asyncpg) running SQL text: the physical limit."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.kind = make_url(url).get_backend_name()
        self._loop = asyncio.new_event_loop()
        if self.kind == "sqlite":
            self._sqlite = sqlite3.connect(make_url(url).database or "")
        else:
            import asyncpg

            self._pg = self._loop.run_until_complete(asyncpg.connect(plain_pg(url)))

    def fetch(self, sql: str) -> list[Any]:
        if self.kind == "sqlite":
            return self._sqlite.execute(sql).fetchall()
        return list(self._loop.run_until_complete(self._pg.fetch(sql)))

    def run(self, fn: Callable[[Any], Any]) -> Any:
        """Call fn with the driver connection (awaiting it on PostgreSQL)."""
        if self.kind == "sqlite":
            return fn(self._sqlite)
        return self._loop.run_until_complete(fn(self._pg))

    def close(self) -> None:
        if self.kind == "sqlite":
            self._sqlite.close()
        else:
            self._loop.run_until_complete(self._pg.close())
        self._loop.close()
