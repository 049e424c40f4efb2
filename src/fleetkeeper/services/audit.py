"""The audit trail: an append-only, hash-chained log of every change.

Each record's hash covers its own fields and the previous record's hash, so editing, inserting
or deleting a record in the middle breaks the chain at that point, and `verify` names it.
(Cutting records off the end is only detectable against a hash noted elsewhere: `verify`
returns the newest hash so it can be kept outside the database.)
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from fleetkeeper.services.context import Change, Principal
from fleetkeeper.store.db import dialect_of
from fleetkeeper.store.models import AuditRecord

GENESIS = "0" * 64
_PG_LOCK_KEY = 0x466B6175  # "Fkau": one appender at a time keeps the chain linear


def canonical_json(value: Any) -> str | None:
    if value is None:
        return None
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def record_hash(prev_hash: str, record: AuditRecord) -> str:
    fields = [
        record.at.isoformat(timespec="microseconds"),
        record.actor,
        record.action,
        record.target,
        record.tenant_id,
        record.reason,
        record.request_id,
        record.before,
        record.after,
    ]
    payload = json.dumps([prev_hash, *fields], separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()


async def append(
    session: AsyncSession,
    change: Change,
    *,
    action: str,
    target: str,
    tenant_id: str | None,
    before: Any = None,
    after: Any = None,
) -> AuditRecord:
    """Add one record to the chain inside the caller's transaction (so both land or neither)."""
    if dialect_of(session) == "postgresql":
        # Held until commit: appenders queue here, and ids are handed out in chain order.
        await session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY})
    prev = await session.scalar(select(AuditRecord.hash).order_by(AuditRecord.id.desc()).limit(1))
    record = AuditRecord(
        at=change.now(),
        actor=change.principal.actor,
        action=action,
        target=target,
        tenant_id=tenant_id,
        reason=change.reason,
        request_id=change.request_id,
        before=canonical_json(before),
        after=canonical_json(after),
        prev_hash=prev or GENESIS,
    )
    record.hash = record_hash(record.prev_hash, record)
    session.add(record)
    await session.flush()
    return record


async def append_changes(
    session: AsyncSession,
    change: Change,
    *,
    action: str,
    target: str,
    tenant_id: str | None,
    before: dict[str, Any],
    after: dict[str, Any],
) -> bool:
    """Record only the keys whose value changed; nothing (and False) when none did."""
    changed = sorted(k for k in after if after[k] != before.get(k))
    if not changed:
        return False
    await append(
        session,
        change,
        action=action,
        target=target,
        tenant_id=tenant_id,
        before={k: before.get(k) for k in changed},
        after={k: after[k] for k in changed},
    )
    return True


@dataclass(frozen=True)
class AuditFilter:
    actor: str | None = None
    action: str | None = None
    target: str | None = None
    since: datetime | None = None
    until: datetime | None = None


def _conditions(principal: Principal, flt: AuditFilter) -> list[ColumnElement[bool]]:
    conds = [principal.tenant_filter(AuditRecord.tenant_id)]
    if flt.actor:
        conds.append(AuditRecord.actor == flt.actor)
    if flt.action:
        conds.append(AuditRecord.action == flt.action)
    if flt.target:
        conds.append(AuditRecord.target == flt.target)
    if flt.since:
        conds.append(AuditRecord.at >= flt.since)
    if flt.until:
        conds.append(AuditRecord.at < flt.until)
    return conds


async def list_records(
    session: AsyncSession,
    principal: Principal,
    flt: AuditFilter,
    *,
    limit: int,
    before_id: int | None = None,
) -> list[AuditRecord]:
    """Newest first; `before_id` continues a page."""
    principal.require("audit:read")
    stmt = select(AuditRecord).where(*_conditions(principal, flt))
    if before_id is not None:
        stmt = stmt.where(AuditRecord.id < before_id)
    stmt = stmt.order_by(AuditRecord.id.desc()).limit(limit)
    return list((await session.scalars(stmt)).all())


@dataclass(frozen=True)
class Verification:
    ok: bool
    checked: int
    last_hash: str
    first_broken_id: int | None = None
    problem: str | None = None


async def _stream(session: AsyncSession, batch: int = 5000) -> AsyncIterator[AuditRecord]:
    last = 0
    while True:
        rows = (
            await session.scalars(
                select(AuditRecord)
                .where(AuditRecord.id > last)
                .order_by(AuditRecord.id)
                .limit(batch)
            )
        ).all()
        if not rows:
            return
        for row in rows:
            yield row
        last = rows[-1].id
        session.expunge_all()


async def verify(session: AsyncSession) -> Verification:
    """Walk the whole chain in order and report the first record that does not fit."""
    prev, checked = GENESIS, 0
    async for record in _stream(session):
        if record.prev_hash != prev:
            return Verification(
                False,
                checked,
                prev,
                record.id,
                f"record {record.id} does not follow the record before it "
                "(a record was removed or inserted here)",
            )
        if record_hash(prev, record) != record.hash:
            return Verification(
                False,
                checked,
                prev,
                record.id,
                f"record {record.id} was altered after it was written",
            )
        prev = record.hash
        checked += 1
    return Verification(True, checked, prev)
