"""Built-in roles as data: each role is the set of permissions it grants."""

from __future__ import annotations

from fleetkeeper.errors import Invalid

READ = frozenset(
    {
        "devices:read",
        "models:read",
        "groups:read",
        "artifacts:read",
        "deployments:read",
        "alerts:read",
    }
)
OPERATE = frozenset(
    {
        "devices:write",
        "models:write",
        "groups:write",
        "tokens:own",
        "provisioning:write",
        "commands:write",
        "deployments:write",
        "geofences:write",
        "alerts:write",  # acknowledge and resolve alerts, silences, replay notifications
        "alerts:configure",  # alert rules, channels, inhibit rules
    }
)
# Who may put new firmware into the fleet's reach (restricted change management). Operators
# may send bulk commands and pause, stop or abort any deployment, but not deploy an update.
RELEASE = frozenset({"artifacts:write", "updates:deploy", "deployments:write"})

ROLES: dict[str, frozenset[str]] = {
    "viewer": READ,
    "auditor": READ | {"audit:read"},
    "operator": READ | OPERATE,
    "release_manager": READ | RELEASE | {"tokens:own"},
    "admin": READ
    | OPERATE
    | RELEASE
    | {"audit:read", "tokens:manage", "users:manage", "tenants:manage", "release_keys:manage"},
    # A device acting for itself: it changes nothing through the management API.
    "device": frozenset(),
}
# Roles a person can be given (the device role is the server's own).
USER_ROLES = ("admin", "operator", "release_manager", "viewer", "auditor")

PERMISSIONS = frozenset().union(*ROLES.values())


def permissions_of(role: str) -> frozenset[str]:
    try:
        return ROLES[role]
    except KeyError:
        raise Invalid(f"unknown role {role!r}; roles are {', '.join(USER_ROLES)}") from None


def check_user_role(role: str) -> str:
    if role not in USER_ROLES:
        raise Invalid(f"unknown role {role!r}; roles are {', '.join(USER_ROLES)}", field="role")
    return role


def role_within(role: str, limit: str) -> bool:
    """True when `role` grants nothing that `limit` does not (tokens never exceed their user)."""
    return permissions_of(role) <= permissions_of(limit)
