"""/api/v1/users and /api/v1/tenants: who may do what, and for which tenant."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel, Field

from fleetkeeper.api.deps import PrincipalDep, ReasonHeader, StateDep, make_change
from fleetkeeper.schemas.common import Input, Page, Reason
from fleetkeeper.services import auth, tenants

router = APIRouter(prefix="/api/v1", tags=["users"])


class UserCreate(Input):
    username: str = Field(min_length=1, max_length=100)
    role: str = Field(description="admin, operator, viewer or auditor")
    password: str | None = Field(default=None, min_length=8, max_length=1000)
    tenant: str | None = Field(default=None, description="None: a platform user (all tenants).")
    reason: Reason = None


class UserPatch(Input):
    role: str | None = None
    password: str | None = Field(default=None, min_length=8, max_length=1000)
    disabled: bool | None = None
    reason: Reason = None


class UserOut(BaseModel):
    id: str
    username: str
    role: str
    tenant: str | None
    disabled: bool
    created_at: datetime


class TenantCreate(Input):
    id: str = Field(min_length=1, max_length=64)
    name: str = Field(min_length=1, max_length=200)
    reason: Reason = None


class TenantOut(BaseModel):
    id: str
    name: str
    created_at: datetime


@router.get("/users", response_model=Page[UserOut], summary="List users")
async def list_users(state: StateDep, principal: PrincipalDep) -> Page[UserOut]:
    async with state.db.read() as session:
        rows = await auth.list_users(session, principal)
    return Page(items=[UserOut(**auth.user_view(u)) for u in rows])


@router.post("/users", status_code=201, response_model=UserOut, summary="Create a user")
async def create_user(
    state: StateDep, principal: PrincipalDep, body: UserCreate, x_change_reason: ReasonHeader = None
) -> UserOut:
    change = make_change(state, principal, body.reason, x_change_reason)
    async with state.db.write() as session:
        user = await auth.create_user(
            session,
            change,
            username=body.username,
            role=body.role,
            password=body.password,
            tenant_id=body.tenant,
        )
    return UserOut(**auth.user_view(user))


@router.patch("/users/{username}", response_model=UserOut, summary="Change a user")
async def update_user(
    state: StateDep,
    principal: PrincipalDep,
    username: str,
    body: UserPatch,
    x_change_reason: ReasonHeader = None,
) -> UserOut:
    change = make_change(state, principal, body.reason, x_change_reason, reason_required=True)
    async with state.db.write() as session:
        user = await auth.update_user(
            session,
            change,
            username,
            role=body.role,
            password=body.password,
            disabled=body.disabled,
        )
    return UserOut(**auth.user_view(user))


@router.get("/tenants", response_model=Page[TenantOut], summary="List tenants")
async def list_tenants(state: StateDep, principal: PrincipalDep) -> Page[TenantOut]:
    async with state.db.read() as session:
        rows = await tenants.list_tenants(session, principal)
    return Page(items=[TenantOut(id=t.id, name=t.name, created_at=t.created_at) for t in rows])


@router.post("/tenants", status_code=201, response_model=TenantOut, summary="Create a tenant")
async def create_tenant(
    state: StateDep,
    principal: PrincipalDep,
    body: TenantCreate,
    x_change_reason: ReasonHeader = None,
) -> TenantOut:
    change = make_change(state, principal, body.reason, x_change_reason)
    async with state.db.write() as session:
        t = await tenants.create_tenant(session, change, body.id, body.name)
    return TenantOut(id=t.id, name=t.name, created_at=t.created_at)
