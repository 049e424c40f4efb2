"""Dependencies shared by the routes: `StateDep`, `PrincipalDep`, `ScopeDep`, `change()`."""

from __future__ import annotations

import contextvars
from typing import Annotated

from fastapi import Depends, Header, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from fleetkeeper.api.state import AppState
from fleetkeeper.errors import Invalid, Unauthenticated
from fleetkeeper.services import auth
from fleetkeeper.services.context import Change, Principal
from fleetkeeper.services.selection import QueryScope

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "request_id", default=None
)
_bearer = HTTPBearer(auto_error=False, description="An API token: `Authorization: Bearer fkt_...`")


async def get_state(request: Request) -> AppState:
    # async: a plain def would run on a worker thread, once per request.
    state: AppState = request.app.state.fleetkeeper
    return state


StateDep = Annotated[AppState, Depends(get_state)]


async def get_principal(
    state: StateDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise Unauthenticated("missing API token: send `Authorization: Bearer <token>`")
    async with state.db.read() as session:
        principal, stale = await auth.authenticate_token(
            session, credentials.credentials, state.clock
        )
    if stale and principal.token_id:
        async with state.db.write() as session:
            await auth.touch_token(session, principal.token_id, state.clock.now())
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def get_scope(state: StateDep, principal: PrincipalDep) -> QueryScope:
    return QueryScope(principal=principal, now=state.clock.now(), online_window=state.online_window)


ScopeDep = Annotated[QueryScope, Depends(get_scope)]

ReasonHeader = Annotated[
    str | None,
    Header(alias="X-Change-Reason", description="Why: lands in the audit record.", max_length=2000),
]


ReasonQuery = Annotated[
    str | None,
    Query(max_length=2000, description="Why, for requests without a JSON body (audit record)."),
]


def make_change(
    state: AppState,
    principal: Principal,
    body_reason: str | None,
    header_reason: str | None,
    *,
    reason_required: bool = False,
) -> Change:
    """The audit context of a mutation; the body's `reason` wins over the header's."""
    reason = body_reason or header_reason
    if reason_required and state.settings.require_reason and not reason:
        raise Invalid(
            "this change needs a reason (`reason` field or X-Change-Reason header)", field="reason"
        )
    return Change(
        principal=principal, reason=reason, request_id=request_id_var.get(), clock=state.clock
    )
