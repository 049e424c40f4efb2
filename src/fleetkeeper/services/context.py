"""Who is acting, for whom, and why: passed to every service that reads or changes state."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, SQLColumnExpression, true

from fleetkeeper.clock import Clock, SystemClock
from fleetkeeper.errors import Forbidden
from fleetkeeper.services.roles import permissions_of


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: a user through a token or a session."""

    actor: str  # what the audit trail shows, e.g. "admin" or "admin/token:ci"
    role: str
    tenant_id: str | None  # None: a platform user who sees every tenant
    user_id: str | None = None
    token_id: str | None = None

    def can(self, permission: str) -> bool:
        return permission in permissions_of(self.role)

    def require(self, permission: str) -> None:
        if not self.can(permission):
            raise Forbidden(f"role {self.role!r} lacks the permission {permission!r}")

    def tenant_filter(self, column: SQLColumnExpression[Any]) -> ColumnElement[bool]:
        """The WHERE clause that keeps a tenant's users inside their tenant."""
        return true() if self.tenant_id is None else column == self.tenant_id

    def check_tenant(self, tenant_id: str) -> None:
        if self.tenant_id is not None and tenant_id != self.tenant_id:
            raise Forbidden(f"tenant {tenant_id!r} is outside your tenant {self.tenant_id!r}")


SYSTEM = Principal(actor="system", role="admin", tenant_id=None)


@dataclass(frozen=True)
class Change:
    """The context of one operation: who, why, which request, and the clock to stamp it with."""

    principal: Principal
    reason: str | None = None
    request_id: str | None = None
    clock: Clock = field(default_factory=SystemClock)

    def now(self) -> datetime:
        return self.clock.now()
