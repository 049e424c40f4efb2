"""/api/v1/security-events: refused credentials and other signs of intrusion."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel

from fleetkeeper.api.deps import PrincipalDep, StateDep
from fleetkeeper.api.pagination import IdCursor, Limit, id_page
from fleetkeeper.schemas.common import Page
from fleetkeeper.services import security

router = APIRouter(prefix="/api/v1/security-events", tags=["security"])


class SecurityEventOut(BaseModel):
    id: int
    at: datetime
    kind: str
    device_id: str | None
    serial: str | None
    remote_addr: str | None
    detail: str


@router.get("", response_model=Page[SecurityEventOut], summary="Security events, newest first")
async def list_events(
    state: StateDep,
    principal: PrincipalDep,
    device_id: Annotated[str | None, Query(max_length=36)] = None,
    limit: Limit = 100,
    cursor: IdCursor = None,
) -> Page[SecurityEventOut]:
    async with state.db.read() as session:
        rows = await security.list_events(
            session,
            principal,
            device_id=device_id,
            limit=limit + 1,
            before_id=cursor,
        )
    items, next_cursor = id_page(rows, limit, lambda e: e.id)
    return Page(
        items=[SecurityEventOut.model_validate(r, from_attributes=True) for r in items],
        next_cursor=next_cursor,
    )
