"""/api/v1/tokens: API tokens (shown once, stored hashed, expiring, revocable)."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel, Field

from fleetkeeper.api.deps import PrincipalDep, ReasonHeader, ReasonQuery, StateDep, make_change
from fleetkeeper.schemas.common import Input, Page, Reason
from fleetkeeper.services import auth

router = APIRouter(prefix="/api/v1/tokens", tags=["tokens"])


class TokenCreate(Input):
    name: str = Field(min_length=1, max_length=200)
    role: str | None = Field(default=None, description="At most the user's own role.")
    expires_in_days: float | None = Field(
        default=None, gt=0, le=3650, description="Default: the server's token_ttl_days."
    )
    user: str | None = Field(default=None, description="Username; default: yourself.")
    reason: Reason = None


class TokenOut(BaseModel):
    id: str
    name: str
    prefix: str
    role: str
    user_id: str
    source: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


class NewToken(TokenOut):
    token: str = Field(description="The secret. Shown this once; only its hash is stored.")


@router.get("", response_model=Page[TokenOut], summary="List API tokens (never their secrets)")
async def list_tokens(state: StateDep, principal: PrincipalDep) -> Page[TokenOut]:
    async with state.db.read() as session:
        rows = await auth.list_tokens(session, principal)
    return Page(items=[TokenOut(**auth.token_view(t)) for t in rows])


@router.post("", status_code=201, response_model=NewToken, summary="Create an API token")
async def create_token(
    state: StateDep,
    principal: PrincipalDep,
    body: TokenCreate,
    x_change_reason: ReasonHeader = None,
) -> NewToken:
    change = make_change(state, principal, body.reason, x_change_reason)
    days = body.expires_in_days or state.settings.token_ttl_days
    async with state.db.write() as session:
        token, secret = await auth.create_token(
            session,
            change,
            name=body.name,
            role=body.role,
            expires_in_days=days,
            username=body.user,
        )
    return NewToken(**auth.token_view(token), token=secret)


@router.delete("/{token_id}", response_model=TokenOut, summary="Revoke an API token")
async def revoke_token(
    state: StateDep,
    principal: PrincipalDep,
    token_id: str,
    reason: ReasonQuery = None,
    x_change_reason: ReasonHeader = None,
) -> TokenOut:
    change = make_change(state, principal, reason, x_change_reason)
    async with state.db.write() as session:
        token = await auth.revoke_token(session, change, token_id)
    return TokenOut(**auth.token_view(token))
