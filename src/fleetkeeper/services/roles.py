"""Built-in roles as data: each role is the set of permissions it grants."""

from __future__ import annotations

from fleetkeeper.errors import Invalid

READ = frozenset({"devices:read", "models:read", "groups:read"})

ROLES: dict[str, frozenset[str]] = {
    "viewer": READ,
    "auditor": READ | {"audit:read"},
    "operator": READ | {"devices:write", "models:write", "groups:write", "tokens:own"},
    "admin": READ
    | {
        "devices:write",
        "models:write",
        "groups:write",
        "tokens:own",
        "audit:read",
        "tokens:manage",
        "users:manage",
        "tenants:manage",
    },
}

PERMISSIONS = frozenset().union(*ROLES.values())


def permissions_of(role: str) -> frozenset[str]:
    try:
        return ROLES[role]
    except KeyError:
        raise Invalid(f"unknown role {role!r}; roles are {', '.join(sorted(ROLES))}") from None


def role_within(role: str, limit: str) -> bool:
    """True when `role` grants nothing that `limit` does not (tokens never exceed their user)."""
    return permissions_of(role) <= permissions_of(limit)
