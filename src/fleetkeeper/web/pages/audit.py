"""The audit log: who did what, when and why, newest first, filtered by actor, action, target
and time; and, on request, a check of its hash chain."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse

from fleetkeeper.api.deps import StateDep
from fleetkeeper.api.pagination import IdCursor, id_page
from fleetkeeper.errors import Invalid
from fleetkeeper.services import audit
from fleetkeeper.services.telemetry import parse_time
from fleetkeeper.store.models import AuditRecord
from fleetkeeper.web.common import UserDep, render
from fleetkeeper.web.sessions import WebUser

router = APIRouter(include_in_schema=False)

PAGE = 50
READ = "audit:read"
# Where a target of the audit trail is shown on the dashboard.
TARGET_PAGES = {
    "device": "/devices/{}",
    "alert": "/alerts/{}",
    "deployment": "/deployments/{}",
    "alert_silence": "/silences?id={}",
}


@dataclass(frozen=True)
class Entry:
    record: AuditRecord
    link: str | None
    before: str | None
    after: str | None


def _pretty(text: str | None) -> str | None:
    if not text:
        return None
    try:
        return json.dumps(json.loads(text), indent=1, ensure_ascii=False, sort_keys=True)
    except ValueError:
        return text


def target_link(target: str) -> str | None:
    kind, _, key = target.partition(":")
    page = TARGET_PAGES.get(kind)
    return page.format(key) if page and key else None


def parse_when(text: str, now: datetime, field: str) -> datetime | None:
    """A time from the filter form: the browser's `datetime-local` (taken as UTC), ISO 8601
    with a zone, Unix seconds, or relative to now (`-1h`)."""
    raw = text.strip()
    if not raw:
        return None
    if raw.startswith("-") or raw.replace(".", "", 1).isdigit():
        return parse_time(raw, now, field)
    try:
        parsed = datetime.fromisoformat(raw)
    except ValueError:
        raise Invalid(
            f"{field}: {raw[:40]!r} is not a time like 2026-01-31T14:00", field=field
        ) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def can_verify(user: WebUser) -> bool:
    """Walking the whole chain crosses tenants: a tenant's auditors may not (as in the API)."""
    return user.can(READ) and (user.principal.tenant_id is None or user.can("tenants:manage"))


@router.get("/audit", response_class=HTMLResponse)
async def audit_page(
    request: Request,
    state: StateDep,
    user: UserDep,
    actor: Annotated[str, Query(max_length=200)] = "",
    action: Annotated[str, Query(max_length=100)] = "",
    target: Annotated[str, Query(max_length=200)] = "",
    since: Annotated[str, Query(alias="from", max_length=40)] = "",
    until: Annotated[str, Query(alias="to", max_length=40)] = "",
    cursor: IdCursor = None,
    verify: Annotated[bool, Query()] = False,
) -> HTMLResponse:
    user.principal.require(READ)
    now = state.clock.now()
    error = None
    rows: list[AuditRecord] = []
    next_cursor = None
    verification = None
    try:
        flt = audit.AuditFilter(
            actor=actor.strip() or None,
            action=action.strip() or None,
            target=target.strip() or None,
            since=parse_when(since, now, "from"),
            until=parse_when(until, now, "to"),
        )
    except Invalid as exc:
        error = exc.detail
    async with state.db.read() as session:
        if error is None:
            found = await audit.list_records(
                session, user.principal, flt, limit=PAGE + 1, before_id=cursor
            )
            rows, next_cursor = id_page(found, PAGE, lambda r: r.id)
        if verify and can_verify(user):
            verification = await audit.verify(session)
    filters = {"actor": actor, "action": action, "target": target, "from": since, "to": until}
    kept = {k: v for k, v in filters.items() if v}
    return render(
        request,
        "audit.html",
        user,
        entries=[
            Entry(r, target_link(r.target), _pretty(r.before), _pretty(r.after)) for r in rows
        ],
        filters=filters,
        filtered=bool(kept),
        error=error,
        verification=verification,
        can_verify=can_verify(user),
        next_url=f"/audit?{urlencode({**kept, 'cursor': next_cursor})}" if next_cursor else None,
        verify_url=f"/audit?{urlencode({**kept, 'verify': 1})}",
    )
