"""A fleet for alerting tests, written straight into the database (thousands of devices in a
blink), with rules, readings and check-ins set by hand, and an engine ticked in FakeClock time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import insert, select, update

from fleetkeeper.clock import FakeClock
from fleetkeeper.ids import uuid7
from fleetkeeper.services.alerting.engine import AlertEngine, EngineReport
from fleetkeeper.services.alerting.rules import AlertRule
from fleetkeeper.store.db import Database
from fleetkeeper.store.models import (
    AlertChannel,
    AlertInhibitRule,
    AlertNotification,
    AlertRecord,
    AlertRuleRecord,
    AlertSilence,
    Device,
    DeviceModel,
    TelemetryLatest,
    Tenant,
)

TENANT = "default"
ONLINE = timedelta(minutes=5)


@dataclass
class Fleet:
    db: Database
    clock: FakeClock
    models: dict[str, int] = field(default_factory=dict)
    devices: dict[str, str] = field(default_factory=dict)  # serial → id
    engine: AlertEngine | None = None

    async def setup(self) -> Fleet:
        now = self.clock.now()
        async with self.db.write() as session:
            if await session.get(Tenant, TENANT) is None:
                session.add(Tenant(id=TENANT, name="Default", created_at=now))
        return self

    async def model(self, name: str) -> int:
        if name not in self.models:
            now = self.clock.now()
            async with self.db.write() as session:
                row = DeviceModel(name=name, capabilities=[], created_at=now, updated_at=now)
                session.add(row)
                await session.flush()
                self.models[name] = row.id
        return self.models[name]

    async def add(
        self,
        serials: Sequence[str],
        *,
        model: str = "thermo-v2",
        attributes: dict[str, Any] | None = None,
        seen: datetime | None = None,
        tenant: str = TENANT,
    ) -> list[str]:
        model_id = await self.model(model)
        now = self.clock.now()
        rows = []
        for serial in serials:
            device_id = uuid7(now)
            self.devices[serial] = device_id
            rows.append(
                {
                    "id": device_id,
                    "serial": serial,
                    "name": serial,
                    "model_id": model_id,
                    "tenant_id": tenant,
                    "state": "active",
                    "attributes": dict(attributes or {}),
                    "last_seen": seen or now,
                    "created_at": now,
                    "updated_at": now,
                }
            )
        async with self.db.write() as session:
            for start in range(0, len(rows), 500):
                await session.execute(insert(Device), rows[start : start + 500])
        return [row["id"] for row in rows]

    async def seen(self, serials: Sequence[str], at: datetime | None = None) -> None:
        ids = [self.devices[s] for s in serials]
        async with self.db.write() as session:
            for start in range(0, len(ids), 500):
                await session.execute(
                    update(Device)
                    .where(Device.id.in_(ids[start : start + 500]))
                    .values(last_seen=at or self.clock.now())
                )

    async def reading(self, serial: str, metric: str, value: float) -> None:
        device_id = self.devices[serial]
        now = self.clock.now()
        async with self.db.write() as session:
            row = await session.get(TelemetryLatest, (device_id, metric))
            if row is None:
                session.add(
                    TelemetryLatest(device_id=device_id, metric=metric, ts=now, value=value)
                )
            else:
                row.ts, row.value = now, value

    async def rule(self, enabled: bool = True, tenant: str = TENANT, **fields: Any) -> str:
        rule = AlertRule.model_validate(fields)
        now = self.clock.now()
        rule_id = uuid7(now)
        async with self.db.write() as session:
            session.add(
                AlertRuleRecord(
                    id=rule_id,
                    tenant_id=tenant,
                    name=rule.name,
                    definition=rule.model_dump(mode="json"),
                    enabled=enabled,
                    version=1,
                    created_by="test",
                    created_at=now,
                    updated_at=now,
                )
            )
        return rule_id

    async def inhibit(
        self, name: str, source: list[str], target: list[str], equal: list[str]
    ) -> None:
        now = self.clock.now()
        async with self.db.write() as session:
            session.add(
                AlertInhibitRule(
                    id=uuid7(now),
                    tenant_id=TENANT,
                    name=name,
                    source=source,
                    target=target,
                    equal=equal,
                    created_by="test",
                    created_at=now,
                    updated_at=now,
                )
            )

    async def silence(self, matchers: list[str], hours: float = 2.0) -> str:
        now = self.clock.now()
        silence_id = uuid7(now)
        async with self.db.write() as session:
            session.add(
                AlertSilence(
                    id=silence_id,
                    tenant_id=TENANT,
                    matchers=matchers,
                    starts_at=now,
                    ends_at=now + timedelta(hours=hours),
                    author="test",
                    comment="planned work",
                    created_at=now,
                    updated_at=now,
                )
            )
        return silence_id

    async def channel(self, url: str, *, secret: str | None = "s3cret", **settings: Any) -> str:
        now = self.clock.now()
        channel_id = uuid7(now)
        async with self.db.write() as session:
            session.add(
                AlertChannel(
                    id=channel_id,
                    tenant_id=TENANT,
                    name=f"hook-{channel_id[-6:]}",
                    kind="webhook",
                    url=url,
                    secret=secret,
                    settings=settings,
                    enabled=True,
                    created_by="test",
                    created_at=now,
                    updated_at=now,
                )
            )
        return channel_id

    def start(self, **options: Any) -> AlertEngine:
        options.setdefault("every", 5.0)
        self.engine = AlertEngine(self.db, self.clock, online_window=ONLINE, **options)
        return self.engine

    async def run(self, seconds: float, step: float = 5.0) -> list[EngineReport]:
        """Tick the engine every `step` seconds of FakeClock time for `seconds`."""
        assert self.engine is not None
        reports = []
        end = self.clock.now() + timedelta(seconds=seconds)
        while self.clock.now() < end:
            self.clock.advance(step)
            reports.append(await self.engine.tick())
        return reports

    async def notifications(self) -> list[AlertNotification]:
        async with self.db.read() as session:
            return list(
                (
                    await session.scalars(
                        select(AlertNotification).order_by(AlertNotification.created_at)
                    )
                ).all()
            )

    async def alerts(self, state: str | None = None) -> list[AlertRecord]:
        async with self.db.read() as session:
            stmt = select(AlertRecord).order_by(AlertRecord.active_since)
            if state is not None:
                stmt = stmt.where(AlertRecord.state == state)
            return list((await session.scalars(stmt)).all())
