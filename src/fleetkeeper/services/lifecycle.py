"""The device lifecycle as an explicit transition table (a pure function, no I/O).

registered ──► pending ──► active ◄──► maintenance
    │             │          ▲  │          │
    │             │          │  ▼          │
    │             │       quarantined ◄────┘
    └─────────────┴──────────┴──► retired (final)
"""

from __future__ import annotations

from fleetkeeper.errors import Conflict, Invalid

STATES = ("registered", "pending", "active", "maintenance", "quarantined", "retired")
INITIAL_STATES = ("registered", "pending", "active")

TRANSITIONS: dict[str, frozenset[str]] = {
    "registered": frozenset({"pending", "active", "retired"}),
    "pending": frozenset({"active", "retired"}),
    "active": frozenset({"maintenance", "quarantined", "retired"}),
    "maintenance": frozenset({"active", "quarantined", "retired"}),
    "quarantined": frozenset({"active", "maintenance", "retired"}),
    "retired": frozenset(),
}


def check_state(state: str) -> str:
    if state not in TRANSITIONS:
        raise Invalid(f"unknown state {state!r}; states are {', '.join(STATES)}", field="state")
    return state


def check_initial(state: str) -> str:
    if check_state(state) not in INITIAL_STATES:
        raise Invalid(
            f"a new device cannot start in state {state!r}; use one of {', '.join(INITIAL_STATES)}",
            field="state",
        )
    return state


def check_transition(current: str, new: str) -> None:
    check_state(new)
    if new == current:
        return
    allowed = TRANSITIONS[current]
    if new not in allowed:
        options = ", ".join(sorted(allowed)) or "none (final state)"
        raise Conflict(
            f"a device cannot go from {current!r} to {new!r}; from {current!r} it can go to: "
            f"{options}",
            field="state",
        )
