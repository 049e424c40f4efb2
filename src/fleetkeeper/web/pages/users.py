"""Who may do what: one's own account (API tokens, password) and, for administrators, the
users of their tenant (create, disable, enable) and everyone's tokens (revoke).

A new token's secret is shown once, in the answer to the form that made it, never in an
address (a redirect would put it in the browser's history and the server's logs).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy import select
from starlette.datastructures import FormData

from fleetkeeper.api.deps import StateDep
from fleetkeeper.errors import Conflict, Invalid
from fleetkeeper.services import auth, tenants
from fleetkeeper.services.roles import USER_ROLES, role_within
from fleetkeeper.store.models import ApiToken, User
from fleetkeeper.web.common import ActionDep, UserDep, back, change, render, safe_next, text_field
from fleetkeeper.web.sessions import WebUser

router = APIRouter(include_in_schema=False)

MANAGE_USERS = "users:manage"
OWN_TOKENS = "tokens:own"
MANAGE_TOKENS = "tokens:manage"
MAX_DAYS = 3650


def _roles_within(role: str) -> list[str]:
    return [r for r in USER_ROLES if role_within(r, role)]


def _reason(request: Request, form: FormData) -> str | None:
    """A reason, required for changes to users when the server asks for reasons (as the API)."""
    reason = text_field(form, "reason")[:2000]
    if not reason and request.app.state.fleetkeeper.settings.require_reason:
        raise Invalid("this change needs a reason", field="reason")
    return reason or None


def _split(tokens: list[ApiToken], now: Any) -> tuple[list[ApiToken], list[ApiToken]]:
    """Usable tokens, and the revoked or expired ones."""
    usable = [
        t for t in tokens if t.revoked_at is None and (t.expires_at is None or t.expires_at > now)
    ]
    ids = {t.id for t in usable}
    return usable, [t for t in tokens if t.id not in ids]


# --- one's own account ---------------------------------------------------------------------------


async def _account(
    request: Request, user: WebUser, *, new_token: tuple[ApiToken, str] | None = None
) -> HTMLResponse:
    state = request.app.state.fleetkeeper
    principal = user.principal
    tokens: list[ApiToken] = []
    async with state.db.read() as session:
        me = await session.get(User, principal.user_id) if principal.user_id else None
        if user.can(OWN_TOKENS):
            everyone = await auth.list_tokens(session, principal)
            tokens = [t for t in everyone if t.user_id == principal.user_id]
    usable, spent = _split(tokens, state.clock.now())
    response = render(
        request,
        "account.html",
        user,
        me=me,
        tokens=usable,
        spent=spent,
        roles=_roles_within(principal.role),
        ttl_days=state.settings.token_ttl_days,
        new_token=new_token,
        can_own=user.can(OWN_TOKENS),
        can_password=me is not None,
    )
    if new_token:
        response.headers["Cache-Control"] = "no-store"
    return response


@router.get("/account", response_class=HTMLResponse)
async def account_page(request: Request, user: UserDep) -> HTMLResponse:
    return await _account(request, user)


@router.post("/account/tokens", response_class=HTMLResponse)
async def create_token(request: Request, state: StateDep, user: ActionDep) -> Response:
    """Make a token for oneself and show its secret, this once."""
    form = await request.form()
    user.principal.require(OWN_TOKENS)
    days_text = text_field(form, "expires_in_days")
    try:
        days = float(days_text) if days_text else float(state.settings.token_ttl_days)
    except ValueError:
        return back("/account", error="expires in: give a number of days")
    if not 0 < days <= MAX_DAYS:
        return back("/account", error=f"expires in: 1 to {MAX_DAYS} days")
    try:
        async with state.db.write() as session:
            token, secret = await auth.create_token(
                session,
                change(request, user),
                name=text_field(form, "name"),
                role=text_field(form, "role") or None,
                expires_in_days=days,
            )
    except Invalid as exc:
        return back("/account", error=exc.detail)
    return await _account(request, user, new_token=(token, secret))


@router.post("/tokens/{token_id}/revoke")
async def revoke_token(
    request: Request, state: StateDep, user: ActionDep, token_id: str
) -> Response:
    form = await request.form()
    to = safe_next(text_field(form, "next") or "/account")
    async with state.db.write() as session:
        token = await auth.revoke_token(session, change(request, user), token_id)
    return back(to, ok=f"Token {token.name!r} ({token.prefix}…) revoked")


@router.post("/account/password")
async def change_password(request: Request, state: StateDep, user: ActionDep) -> Response:
    """Every user changes their own password here, after proving the current one."""
    form = await request.form()
    current, new = text_field(form, "current"), text_field(form, "password")
    if new != text_field(form, "confirm"):
        return back("/account", error="the new passwords differ")
    try:
        async with state.db.write() as session:
            await auth.change_own_password(
                session, change(request, user, "own password"), current=current, new=new
            )
    except Invalid as exc:
        return back("/account", error=exc.detail)
    return back("/account", ok="Password changed")


# --- users of the tenant -------------------------------------------------------------------------


@router.get("/users", response_class=HTMLResponse)
async def users_page(
    request: Request,
    state: StateDep,
    user: UserDep,
    revoked: Annotated[bool, Query(description="Also revoked and expired tokens")] = False,
) -> HTMLResponse:
    principal = user.principal
    tokens: list[ApiToken] = []
    async with state.db.read() as session:
        users = await auth.list_users(session, principal)
        tenant_rows = await tenants.list_tenants(session, principal)
        if user.can(MANAGE_TOKENS):
            tokens = await auth.list_tokens(session, principal)
        if tokens and principal.tenant_id is None:
            # A platform view: name the owners the list above may not hold (none, usually).
            known = {u.id for u in users}
            missing = {t.user_id for t in tokens} - known
            if missing:
                users += list(
                    (await session.scalars(select(User).where(User.id.in_(missing)))).all()
                )
    usable, spent = _split(tokens, state.clock.now())
    return render(
        request,
        "users.html",
        user,
        users=users,
        names={u.id: u.username for u in users},
        tenants=tenant_rows,
        roles=USER_ROLES,
        tokens=usable + spent if revoked else usable,
        spent=len(spent),
        revoked=revoked,
        can_tokens=user.can(MANAGE_TOKENS),
        platform=principal.tenant_id is None,
        me=principal.user_id,
        here="/users" + ("?revoked=1" if revoked else ""),
    )


@router.post("/users")
async def create_user(request: Request, state: StateDep, user: ActionDep) -> Response:
    form = await request.form()
    user.principal.require(MANAGE_USERS)
    username = text_field(form, "username")
    try:
        async with state.db.write() as session:
            await auth.create_user(
                session,
                change(request, user, _reason(request, form)),
                username=username,
                role=text_field(form, "role"),
                password=text_field(form, "password") or None,
                tenant_id=text_field(form, "tenant") or None,
            )
    except (Invalid, Conflict) as exc:
        return back("/users", error=exc.detail)
    return back("/users", ok=f"User {username} created")


async def _set_disabled(request: Request, user: WebUser, username: str, disabled: bool) -> Response:
    form = await request.form()
    user.principal.require(MANAGE_USERS)
    try:
        reason = _reason(request, form)
    except Invalid as exc:
        return back("/users", error=exc.detail)
    state = request.app.state.fleetkeeper
    async with state.db.write() as session:
        target = await auth.get_user(session, user.principal, username)
        if disabled and target.id == user.principal.user_id:
            return back("/users", error="you cannot disable yourself: ask another administrator")
        await auth.update_user(session, change(request, user, reason), username, disabled=disabled)
    return back("/users", ok=f"User {username} {'disabled' if disabled else 'enabled'}")


@router.post("/users/{username}/disable")
async def disable_user(request: Request, user: ActionDep, username: str) -> Response:
    return await _set_disabled(request, user, username, True)


@router.post("/users/{username}/enable")
async def enable_user(request: Request, user: ActionDep, username: str) -> Response:
    return await _set_disabled(request, user, username, False)
