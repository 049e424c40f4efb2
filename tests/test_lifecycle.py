"""Every lifecycle transition, valid and refused: the table itself and the API that uses it."""

from __future__ import annotations

import itertools

import httpx
import pytest

from fleet import device, model
from fleetkeeper.errors import Conflict, Invalid
from fleetkeeper.services.lifecycle import STATES, TRANSITIONS, check_initial, check_transition

ALLOWED = {
    ("registered", "pending"),
    ("registered", "active"),
    ("registered", "retired"),
    ("pending", "active"),
    ("pending", "retired"),
    ("active", "maintenance"),
    ("active", "quarantined"),
    ("active", "retired"),
    ("maintenance", "active"),
    ("maintenance", "quarantined"),
    ("maintenance", "retired"),
    ("quarantined", "active"),
    ("quarantined", "maintenance"),
    ("quarantined", "retired"),
}


def test_the_table_is_exactly_the_documented_one() -> None:
    assert {(a, b) for a, targets in TRANSITIONS.items() for b in targets} == ALLOWED


@pytest.mark.parametrize(("current", "new"), list(itertools.product(STATES, STATES)))
def test_each_pair_is_allowed_or_refused_with_the_options(current: str, new: str) -> None:
    if current == new or (current, new) in ALLOWED:
        check_transition(current, new)
        return
    with pytest.raises(Conflict) as refused:
        check_transition(current, new)
    assert current in refused.value.detail and new in refused.value.detail


def test_unknown_state_is_invalid() -> None:
    with pytest.raises(Invalid):
        check_transition("active", "sleeping")


@pytest.mark.parametrize("state", ["maintenance", "quarantined", "retired"])
def test_a_new_device_cannot_start_late_in_life(state: str) -> None:
    with pytest.raises(Invalid):
        check_initial(state)


async def test_the_api_walks_a_whole_life_and_refuses_a_step_back(
    client: httpx.AsyncClient,
) -> None:
    await model(client)
    d = await device(client, "LIFE-1")
    path = ["pending", "active", "maintenance", "quarantined", "active", "retired"]
    for state in path:
        r = await client.patch(f"/api/v1/devices/{d['id']}", json={"state": state})
        assert r.status_code == 200, (state, r.text)
        assert r.json()["state"] == state
    r = await client.patch(f"/api/v1/devices/{d['id']}", json={"state": "active"})
    assert r.status_code == 409 and "final state" in r.json()["detail"]
    actions = (await client.get("/api/v1/audit", params={"target": f"device:{d['id']}"})).json()
    assert sum(1 for i in actions["items"] if i["action"] == "device.update") == len(path)
