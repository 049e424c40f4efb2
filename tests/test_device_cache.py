from __future__ import annotations

from sqlalchemy import update

from fleetkeeper.clock import FakeClock
from fleetkeeper.ids import uuid7
from fleetkeeper.services.device_cache import DeviceCache
from fleetkeeper.store.db import Database
from fleetkeeper.store.models import Device, DeviceModel, Tenant


async def _device(db: Database, clock: FakeClock) -> str:
    now = clock.now()
    async with db.write() as session:
        session.add(Tenant(id="default", name="Default", created_at=now))
        model = DeviceModel(name="m", capabilities=[], created_at=now, updated_at=now)
        session.add(model)
        await session.flush()
        device = Device(
            id=uuid7(now),
            serial="S-1",
            name="S-1",
            model_id=model.id,
            tenant_id="default",
            state="active",
            attributes={},
            created_at=now,
            updated_at=now,
            credential_generation=0,
            wipe_pending=False,
        )
        session.add(device)
    return device.id


async def test_a_change_made_elsewhere_is_seen_after_the_next_sweep(db: Database) -> None:
    clock = FakeClock()
    cache = DeviceCache()
    device_id = await _device(db, clock)
    await cache.forget_changed(db, clock.now())
    first = await cache.get(db, device_id)
    assert first is not None and first.state == "active"
    clock.advance(seconds=30)
    # Another replica retires the device: only the database knows.
    async with db.write() as session:
        await session.execute(
            update(Device)
            .where(Device.id == device_id)
            .values(state="retired", updated_at=clock.now())
        )
    cached = await cache.get(db, device_id)
    assert cached is not None and cached.state == "active"  # not yet swept
    clock.advance(seconds=1)
    assert await cache.forget_changed(db, clock.now()) == 1
    fresh = await cache.get(db, device_id)
    assert fresh is not None and fresh.state == "retired"


async def test_unchanged_devices_stay_cached(db: Database) -> None:
    clock = FakeClock()
    cache = DeviceCache()
    device_id = await _device(db, clock)
    clock.advance(seconds=30)
    await cache.forget_changed(db, clock.now())
    first = await cache.get(db, device_id)
    clock.advance(seconds=60)
    assert await cache.forget_changed(db, clock.now()) == 0
    assert await cache.get(db, device_id) is first
