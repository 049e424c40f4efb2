"""/api/v1/audit: who did what, when and why."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel

from fleetkeeper.api.deps import PrincipalDep, StateDep
from fleetkeeper.api.pagination import IdCursor, Limit, id_page
from fleetkeeper.errors import BadRequest
from fleetkeeper.schemas.common import Page
from fleetkeeper.services import audit
from fleetkeeper.store.models import AuditRecord

router = APIRouter(prefix="/api/v1/audit", tags=["audit"])


class AuditOut(BaseModel):
    id: int
    at: datetime
    actor: str
    action: str
    target: str
    tenant: str | None
    reason: str | None
    request_id: str | None
    before: Any
    after: Any
    hash: str


class VerificationOut(BaseModel):
    ok: bool
    checked: int
    last_hash: str
    first_broken_id: int | None
    problem: str | None


def _view(r: AuditRecord) -> AuditOut:
    import json

    return AuditOut(
        id=r.id,
        at=r.at,
        actor=r.actor,
        action=r.action,
        target=r.target,
        tenant=r.tenant_id,
        reason=r.reason,
        request_id=r.request_id,
        before=json.loads(r.before) if r.before else None,
        after=json.loads(r.after) if r.after else None,
        hash=r.hash,
    )


@router.get("", response_model=Page[AuditOut], summary="List audit records, newest first")
async def list_audit(
    state: StateDep,
    principal: PrincipalDep,
    actor: Annotated[str | None, Query(max_length=200)] = None,
    action: Annotated[str | None, Query(max_length=100)] = None,
    target: Annotated[str | None, Query(max_length=200, description="e.g. device:<id>")] = None,
    since: Annotated[datetime | None, Query(description="ISO time, inclusive")] = None,
    until: Annotated[datetime | None, Query(description="ISO time, exclusive")] = None,
    limit: Limit = 100,
    cursor: IdCursor = None,
) -> Page[AuditOut]:
    for name, value in (("since", since), ("until", until)):
        if value is not None and value.tzinfo is None:
            raise BadRequest(f"{name} needs a time zone, e.g. 2026-01-01T00:00:00Z", field=name)
    flt = audit.AuditFilter(actor=actor, action=action, target=target, since=since, until=until)
    async with state.db.read() as session:
        rows = await audit.list_records(session, principal, flt, limit=limit + 1, before_id=cursor)
    items, next_cursor = id_page(rows, limit, lambda r: r.id)
    return Page(items=[_view(r) for r in items], next_cursor=next_cursor)


@router.post(
    "/verify",
    response_model=VerificationOut,
    summary="Check the hash chain of the whole audit trail",
)
async def verify(state: StateDep, principal: PrincipalDep) -> VerificationOut:
    principal.require("audit:read")
    if principal.tenant_id is not None:
        principal.require("tenants:manage")
    async with state.db.read() as session:
        result = await audit.verify(session)
    return VerificationOut(**result.__dict__)
