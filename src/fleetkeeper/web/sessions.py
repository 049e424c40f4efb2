"""Dashboard sessions: a random cookie value, stored only as its sha256, expiring.

A session lasts `IDLE` after its last use and at most `ABSOLUTE` after login. Its CSRF token
is sent with every form and fetch that changes something and compared in constant time
(`check_csrf`); the cookie itself is HttpOnly and SameSite=Lax, so a page of another site
can neither read it nor post a form with it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from fleetkeeper.errors import Forbidden
from fleetkeeper.services.context import Principal
from fleetkeeper.store.models import User, WebSession

COOKIE = "fk_session"
IDLE = timedelta(hours=12)
ABSOLUTE = timedelta(days=7)
_TOUCH = timedelta(minutes=5)  # last_seen_at is written at most this often


def _hash(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


@dataclass(frozen=True)
class WebUser:
    """Who is looking at the dashboard."""

    principal: Principal
    username: str
    csrf: str
    session_hash: str

    def can(self, permission: str) -> bool:
        return self.principal.can(permission)


async def open_session(session: AsyncSession, user: User, now: datetime) -> tuple[str, WebSession]:
    """A new session for `user`: the cookie value (shown once) and the stored row."""
    value = secrets.token_urlsafe(32)
    row = WebSession(
        id_hash=_hash(value),
        user_id=user.id,
        csrf_token=secrets.token_urlsafe(32),
        created_at=now,
        last_seen_at=now,
        expires_at=now + ABSOLUTE,
    )
    session.add(row)
    # Sessions past their time are swept by whoever logs in next.
    await session.execute(delete(WebSession).where(WebSession.expires_at <= now))
    await session.flush()
    return value, row


async def find(session: AsyncSession, value: str | None, now: datetime) -> WebUser | None:
    """The user behind a cookie value, or None when it is unknown, expired or disabled."""
    if not value or len(value) > 200:
        return None
    row = (
        await session.execute(
            select(WebSession, User)
            .join(User, User.id == WebSession.user_id)
            .where(WebSession.id_hash == _hash(value))
        )
    ).one_or_none()
    if row is None:
        return None
    web, user = row
    if user.disabled or web.expires_at <= now or web.last_seen_at + IDLE <= now:
        return None
    if web.last_seen_at + _TOUCH <= now:
        await session.execute(
            update(WebSession).where(WebSession.id_hash == web.id_hash).values(last_seen_at=now)
        )
    principal = Principal(
        actor=f"{user.username}/web", role=user.role, tenant_id=user.tenant_id, user_id=user.id
    )
    return WebUser(principal, user.username, web.csrf_token, web.id_hash)


async def close(session: AsyncSession, session_hash: str) -> None:
    await session.execute(delete(WebSession).where(WebSession.id_hash == session_hash))


def check_csrf(user: WebUser, token: str | None) -> None:
    if not token or not hmac.compare_digest(token, user.csrf):
        raise Forbidden("the form's CSRF token is missing or wrong: reload the page and retry")
