"""Shared fixtures: a clean database per test, on SQLite always and on PostgreSQL when reachable.

PostgreSQL tests use FLEETKEEPER_TEST_POSTGRES_URL (default: the local server, database `test`).
When it is unreachable they skip with a message, unless FLEETKEEPER_TEST_REQUIRE_SERVICES=1
(as `.ci/run` sets it), in which case they fail.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from fleetkeeper.store.db import Database
from fleetkeeper.store.migrate import upgrade
from fleetkeeper.store.models import Base

if TYPE_CHECKING:
    import httpx
    from fastapi import FastAPI

    from fleetkeeper.clock import FakeClock
    from fleetkeeper.settings import Settings

PG_URL = os.environ.get(
    "FLEETKEEPER_TEST_POSTGRES_URL", "postgresql+asyncpg://root@127.0.0.1:5432/test"
)
REQUIRE_SERVICES = os.environ.get("FLEETKEEPER_TEST_REQUIRE_SERVICES", "") not in {"", "0"}


async def _create_pg_database() -> str | None:
    """Create a throw-away database for this test session; None when no server answers."""
    admin = create_async_engine(PG_URL, isolation_level="AUTOCOMMIT")
    name = f"fk_test_{uuid.uuid4().hex[:12]}"
    try:
        async with admin.connect() as conn:
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
    except (OSError, Exception) as exc:
        if REQUIRE_SERVICES:
            raise RuntimeError(f"PostgreSQL required but unreachable at {PG_URL}: {exc}") from exc
        return None
    finally:
        await admin.dispose()
    url = make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    await upgrade(url)
    return url


async def _drop_pg_database(url: str) -> None:
    admin = create_async_engine(PG_URL, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.execute(
                text(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)')
            )
    finally:
        await admin.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    asyncio.run(upgrade(f"sqlite+aiosqlite:///{path}"))
    return path


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str | None]:
    url = asyncio.run(_create_pg_database())
    yield url
    if url:
        asyncio.run(_drop_pg_database(url))


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, sqlite_template: Path, tmp_path: Path) -> str:
    if request.param == "sqlite":
        path = tmp_path / "fleetkeeper.db"
        shutil.copy(sqlite_template, path)
        return f"sqlite+aiosqlite:///{path}"
    url: str | None = request.getfixturevalue("postgres_url")
    if url is None:
        pytest.skip(f"PostgreSQL not reachable at {PG_URL} (set FLEETKEEPER_TEST_POSTGRES_URL)")
    return url


_TABLES = ", ".join(f'"{t.name}"' for t in reversed(Base.metadata.sorted_tables))


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url)
    if database.is_postgres:
        async with database.engine.begin() as conn:
            await conn.execute(text(f"TRUNCATE {_TABLES} RESTART IDENTITY CASCADE"))
    yield database
    await database.dispose()


ADMIN_TOKEN = "fkt_test-admin-token-0123456789abcdef"


@pytest.fixture
def clock() -> FakeClock:
    from fleetkeeper.clock import FakeClock

    return FakeClock()


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    from fleetkeeper.settings import Settings

    # The rollout scheduler is driven by the tests themselves (scheduler.tick()), in FakeClock time.
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        admin_token=ADMIN_TOKEN,
        scheduler_interval_seconds=0,
        monitor_interval_seconds=0,  # and so is the health watch (HealthWatch.tick())
        alert_interval_seconds=0,  # and the alerting engine and deliverer (tick() them)
    )


@pytest.fixture
async def app(settings: Settings, clock: FakeClock, db: Database) -> AsyncIterator[FastAPI]:
    """A started server app on a clean database (the `db` fixture truncates it first)."""
    from fleetkeeper.api.app import create_app

    application = create_app(settings, clock=clock)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An admin API client talking to the app in-process."""
    import httpx

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport,
        base_url="http://fleetkeeper.test",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    ) as c:
        yield c
