"""Users, API tokens and passwords.

Passwords are hashed with argon2 (slow on purpose). API tokens are 256-bit random strings, so a
single sha256 is enough to store them safely and keeps token checks cheap on every request.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import datetime, timedelta
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from fleetkeeper.clock import Clock
from fleetkeeper.errors import Conflict, Forbidden, Invalid, NotFound, Unauthenticated
from fleetkeeper.ids import uuid7
from fleetkeeper.services import audit
from fleetkeeper.services.context import Change, Principal
from fleetkeeper.services.roles import check_user_role, role_within
from fleetkeeper.store.models import ApiToken, Tenant, User

TOKEN_PREFIX = "fkt_"
_hasher = PasswordHasher()
_USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,99}$")
_LAST_USED_RESOLUTION = timedelta(minutes=5)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def password_matches(stored: str | None, password: str) -> bool:
    if not stored:
        return False
    try:
        return _hasher.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False


def _check_password(password: str) -> None:
    if len(password) < 8:
        raise Invalid("password must have at least 8 characters", field="password")


def user_view(user: User) -> dict[str, Any]:
    return {
        "id": user.id,
        "username": user.username,
        "role": user.role,
        "tenant": user.tenant_id,
        "disabled": user.disabled,
        "created_at": user.created_at,
    }


def token_view(token: ApiToken) -> dict[str, Any]:
    return {
        "id": token.id,
        "name": token.name,
        "prefix": token.prefix,
        "role": token.role,
        "user_id": token.user_id,
        "source": token.source,
        "created_at": token.created_at,
        "expires_at": token.expires_at,
        "revoked_at": token.revoked_at,
        "last_used_at": token.last_used_at,
    }


async def authenticate_token(
    session: AsyncSession, token: str, clock: Clock
) -> tuple[Principal, bool]:
    """The caller behind a token, and whether its last-used time is due for an update."""
    row = (
        await session.execute(
            select(ApiToken, User)
            .join(User, User.id == ApiToken.user_id)
            .where(ApiToken.token_hash == hash_token(token))
        )
    ).one_or_none()
    now = clock.now()
    if row is None:
        raise Unauthenticated("unknown API token")
    api_token, user = row
    if api_token.revoked_at is not None:
        raise Unauthenticated("this API token was revoked")
    if api_token.expires_at is not None and api_token.expires_at <= now:
        raise Unauthenticated("this API token has expired")
    if user.disabled:
        raise Unauthenticated(f"user {user.username!r} is disabled")
    principal = Principal(
        actor=f"{user.username}/token:{api_token.name}",
        role=api_token.role,
        tenant_id=user.tenant_id,
        user_id=user.id,
        token_id=api_token.id,
    )
    last = api_token.last_used_at
    return principal, last is None or last < now - _LAST_USED_RESOLUTION


async def touch_token(session: AsyncSession, token_id: str, now: datetime) -> None:
    """Record use at most every few minutes, so reads don't turn into writes."""
    await session.execute(update(ApiToken).where(ApiToken.id == token_id).values(last_used_at=now))


async def authenticate_password(session: AsyncSession, username: str, password: str) -> User:
    user = await session.scalar(select(User).where(User.username == username))
    # Hash even for unknown users so timing does not tell which usernames exist.
    stored = user.password_hash if user else _DUMMY_HASH
    if not password_matches(stored, password) or user is None or user.disabled:
        raise Unauthenticated("wrong username or password")
    return user


_DUMMY_HASH = _hasher.hash("not-a-real-password")


async def get_user(session: AsyncSession, principal: Principal, username: str) -> User:
    user = await session.scalar(select(User).where(User.username == username))
    if user is None or (principal.tenant_id is not None and user.tenant_id != principal.tenant_id):
        raise NotFound(f"no user {username!r}")
    return user


async def create_user(
    session: AsyncSession,
    change: Change,
    *,
    username: str,
    role: str,
    password: str | None = None,
    tenant_id: str | None = None,
) -> User:
    principal = change.principal
    principal.require("users:manage")
    if not _USERNAME.match(username):
        raise Invalid(f"invalid username {username!r}", field="username")
    check_user_role(role)
    if principal.tenant_id is not None:
        if tenant_id not in (None, principal.tenant_id):
            raise Forbidden("tenant administrators create users in their own tenant only")
        tenant_id = principal.tenant_id
    if tenant_id is not None and await session.get(Tenant, tenant_id) is None:
        raise Invalid(f"unknown tenant {tenant_id!r}", field="tenant")
    if await session.scalar(select(User.id).where(User.username == username)):
        raise Conflict(f"user {username!r} exists already", field="username")
    if password is not None:
        _check_password(password)
    user = User(
        id=uuid7(change.now()),
        username=username,
        password_hash=hash_password(password) if password else None,
        role=role,
        tenant_id=tenant_id,
        disabled=False,
        created_at=change.now(),
    )
    session.add(user)
    await session.flush()
    await audit.append(
        session,
        change,
        action="user.create",
        target=f"user:{username}",
        tenant_id=tenant_id,
        after={"role": role, "tenant": tenant_id},
    )
    return user


async def update_user(
    session: AsyncSession,
    change: Change,
    username: str,
    *,
    role: str | None = None,
    password: str | None = None,
    disabled: bool | None = None,
) -> User:
    change.principal.require("users:manage")
    user = await get_user(session, change.principal, username)
    before = {"role": user.role, "disabled": user.disabled}
    if role is not None:
        check_user_role(role)
        user.role = role
    if disabled is not None:
        user.disabled = disabled
    if password is not None:
        _check_password(password)
        user.password_hash = hash_password(password)
    after = {"role": user.role, "disabled": user.disabled, "password_changed": password is not None}
    await audit.append(
        session,
        change,
        action="user.update",
        target=f"user:{username}",
        tenant_id=user.tenant_id,
        before=before,
        after=after,
    )
    return user


async def change_own_password(
    session: AsyncSession, change: Change, *, current: str, new: str
) -> User:
    """Any user changes their own password, proving the current one first."""
    user_id = change.principal.user_id
    user = await session.get(User, user_id) if user_id else None
    if user is None or user.disabled:
        raise Unauthenticated("only a logged-in user changes their own password")
    if not password_matches(user.password_hash, current):
        raise Invalid("the current password is wrong", field="current")
    _check_password(new)
    user.password_hash = hash_password(new)
    await audit.append(
        session,
        change,
        action="user.password",
        target=f"user:{user.username}",
        tenant_id=user.tenant_id,
        after={"password_changed": True},
    )
    return user


async def list_users(session: AsyncSession, principal: Principal) -> list[User]:
    principal.require("users:manage")
    stmt = select(User).where(principal.tenant_filter(User.tenant_id)).order_by(User.username)
    return list((await session.scalars(stmt)).all())


async def create_token(
    session: AsyncSession,
    change: Change,
    *,
    name: str,
    role: str | None = None,
    expires_in_days: float | None = None,
    username: str | None = None,
    source: str = "api",
    value: str | None = None,
) -> tuple[ApiToken, str]:
    """A new token and its secret value, which is shown to the caller once and never stored."""
    principal = change.principal
    principal.require("tokens:own")
    if username is not None and principal.user_id is not None:
        user = await get_user(session, principal, username)
        if user.id != principal.user_id:
            principal.require("tokens:manage")
    else:
        if principal.user_id is None:
            raise Invalid("a token needs a user", field="user")
        user = await session.get_one(User, principal.user_id)
    role = check_user_role(role or user.role)
    if not role_within(role, user.role) or not role_within(role, principal.role):
        raise Forbidden(f"a token cannot have more rights than its user: {role!r} > {user.role!r}")
    if not name or len(name) > 200:
        raise Invalid("token name must have 1 to 200 characters", field="name")
    if expires_in_days is not None and expires_in_days <= 0:
        raise Invalid("expires_in_days must be positive", field="expires_in_days")
    secret = value or new_token()
    now = change.now()
    token = ApiToken(
        id=uuid7(now),
        token_hash=hash_token(secret),
        prefix=secret[:8],
        name=name,
        user_id=user.id,
        role=role,
        source=source,
        created_at=now,
        expires_at=now + timedelta(days=expires_in_days) if expires_in_days else None,
    )
    session.add(token)
    await session.flush()
    await audit.append(
        session,
        change,
        action="token.create",
        target=f"token:{token.id}",
        tenant_id=user.tenant_id,
        after={"name": name, "role": role, "user": user.username, "expires_at": token.expires_at},
    )
    return token, secret


async def list_tokens(session: AsyncSession, principal: Principal) -> list[ApiToken]:
    principal.require("tokens:own")
    stmt = select(ApiToken).order_by(ApiToken.created_at)
    if not principal.can("tokens:manage"):
        stmt = stmt.where(ApiToken.user_id == principal.user_id)
    elif principal.tenant_id is not None:
        stmt = stmt.join(User, User.id == ApiToken.user_id).where(
            User.tenant_id == principal.tenant_id
        )
    return list((await session.scalars(stmt)).all())


async def revoke_token(session: AsyncSession, change: Change, token_id: str) -> ApiToken:
    tokens = {t.id: t for t in await list_tokens(session, change.principal)}
    token = tokens.get(token_id)
    if token is None:
        raise NotFound(f"no token {token_id!r}")
    if token.revoked_at is None:
        token.revoked_at = change.now()
        user = await session.get_one(User, token.user_id)
        await audit.append(
            session,
            change,
            action="token.revoke",
            target=f"token:{token.id}",
            tenant_id=user.tenant_id,
            after={"name": token.name},
        )
    return token
