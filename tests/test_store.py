from __future__ import annotations

from sqlalchemy import select, text

from fleetkeeper.store.db import Database
from fleetkeeper.store.migrate import current_revision, head_revision
from fleetkeeper.store.models import Tenant


async def test_schema_is_at_the_newest_migration(db: Database) -> None:
    assert await current_revision(db.url.render_as_string(hide_password=False)) == head_revision()


async def test_write_commits_and_read_sees_it(db: Database) -> None:
    from fleetkeeper.clock import FakeClock

    async with db.write() as session:
        session.add(Tenant(id="acme", name="Acme", created_at=FakeClock().now()))
    async with db.read() as session:
        assert (await session.scalars(select(Tenant.name))).all() == ["Acme"]


async def test_failed_write_leaves_nothing(db: Database) -> None:
    from fleetkeeper.clock import FakeClock

    try:
        async with db.write() as session:
            session.add(Tenant(id="acme", name="Acme", created_at=FakeClock().now()))
            await session.flush()
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    async with db.read() as session:
        assert (await session.scalar(text("SELECT count(*) FROM tenants"))) == 0


async def test_migrations_match_the_models(db: Database) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from fleetkeeper.store.migrate import include_object_for
    from fleetkeeper.store.models import Base

    def diff(sync_conn):  # type: ignore[no-untyped-def]
        opts = {"compare_type": True, "include_object": include_object_for(db.dialect)}
        ctx = MigrationContext.configure(sync_conn, opts=opts)
        return compare_metadata(ctx, Base.metadata)

    async with db.engine.connect() as conn:
        changes = await conn.run_sync(diff)
    assert changes == [], f"models and migrations differ; add a migration: {changes}"


async def test_exclusive_work_runs_on_one_replica_at_a_time(db: Database) -> None:
    async with db.exclusive("chore") as first:
        assert first
        if db.is_postgres:  # a second replica (another connection) is told to skip it
            async with db.exclusive("chore") as second:
                assert not second
            async with db.exclusive("other chore") as unrelated:
                assert unrelated
    async with db.exclusive("chore") as again:
        assert again  # released
