"""What a server makes sure of at start: the default tenant and a way in for the admin."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from fleetkeeper.ids import uuid7
from fleetkeeper.services import audit
from fleetkeeper.services.auth import create_token, hash_password, hash_token, password_matches
from fleetkeeper.services.context import SYSTEM, Change, Principal
from fleetkeeper.services.tenants import ensure_tenant
from fleetkeeper.store.models import ApiToken, User

DEFAULT_TENANT = "default"
ADMIN = "admin"


@dataclass(frozen=True)
class BootstrapResult:
    new_admin_token: str | None  # printed once on a first start without FLEETKEEPER_ADMIN_TOKEN


async def bootstrap(
    session: AsyncSession,
    change: Change,
    *,
    admin_token: str | None,
    admin_password: str | None,
) -> BootstrapResult:
    await ensure_tenant(session, change, DEFAULT_TENANT, "Default tenant")
    admin = await session.scalar(select(User).where(User.username == ADMIN))
    first_start = admin is None
    if admin is None:
        admin = User(
            id=uuid7(change.now()),
            username=ADMIN,
            role="admin",
            tenant_id=None,
            disabled=False,
            created_at=change.now(),
        )
        session.add(admin)
        await session.flush()
        await audit.append(
            session,
            change,
            action="user.create",
            target=f"user:{ADMIN}",
            tenant_id=None,
            after={"role": "admin", "tenant": None},
        )
    if admin_password is not None and not password_matches(admin.password_hash, admin_password):
        admin.password_hash = hash_password(admin_password)
        await audit.append(
            session,
            change,
            action="user.update",
            target=f"user:{ADMIN}",
            tenant_id=None,
            after={"password_changed": True, "source": "FLEETKEEPER_ADMIN_PASSWORD"},
        )
    as_admin = Change(
        principal=Principal(actor=SYSTEM.actor, role="admin", tenant_id=None, user_id=admin.id),
        reason=change.reason,
        request_id=change.request_id,
        clock=change.clock,
    )
    if admin_token is not None:
        await _ensure_env_token(session, as_admin, admin_token)
        return BootstrapResult(None)
    if first_start:
        _, secret = await create_token(session, as_admin, name="bootstrap", source="bootstrap")
        return BootstrapResult(secret)
    return BootstrapResult(None)


async def _ensure_env_token(session: AsyncSession, change: Change, value: str) -> None:
    wanted = hash_token(value)
    env_tokens = (await session.scalars(select(ApiToken).where(ApiToken.source == "env"))).all()
    for token in env_tokens:
        if token.token_hash != wanted and token.revoked_at is None:
            token.revoked_at = change.now()
            await audit.append(
                session,
                change,
                action="token.revoke",
                target=f"token:{token.id}",
                tenant_id=None,
                after={"name": token.name, "why": "FLEETKEEPER_ADMIN_TOKEN changed"},
            )
    existing = await session.scalar(select(ApiToken).where(ApiToken.token_hash == wanted))
    if existing is None:
        await create_token(session, change, name="env", source="env", value=value)
    elif existing.revoked_at is not None or existing.role != "admin":
        existing.revoked_at = None
        existing.role = "admin"
        existing.expires_at = None
        await audit.append(
            session,
            change,
            action="token.restore",
            target=f"token:{existing.id}",
            tenant_id=None,
            after={"name": existing.name, "source": "FLEETKEEPER_ADMIN_TOKEN"},
        )
