"""The operator's side of a simulation, through the management API with an admin token.

- `prepare`: on a fresh server, create the device models the fleet needs (one that exists
  already is fine) and an auto-accepting provisioning token for it;
- `Rollout`: a firmware release sent as `update` commands in phases, halted when too many of
  a phase fail. Deployments on the server will do this properly; until then this is how the
  simulator and the demo exercise the devices' A/B update.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from fleetkeeper.sim.catalogue import MODELS_BY_NAME, image_sha256
from fleetkeeper.sim.scenario import RolloutSpec, Scenario

REASON = "fleet simulator"
CAPABILITIES = {
    "thermo-v2": ["telemetry", "ab_update"],
    "tracker-m3": ["telemetry", "ab_update", "gps"],
    "meter-e5": ["telemetry", "ab_update", "metering"],
    "gateway-x1": ["telemetry", "ab_update", "lte", "ssh"],
}


class AdminError(Exception):
    """The management API refused or did not answer."""


def admin_client(
    server: str, token: str, transport: httpx.AsyncBaseTransport | None = None
) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=server.rstrip("/"),
        transport=transport,
        headers={"Authorization": f"Bearer {token}", "X-Change-Reason": REASON},
        timeout=httpx.Timeout(30.0, connect=10.0),
    )


async def call(http: httpx.AsyncClient, method: str, path: str, **kwargs: Any) -> Any:
    try:
        response = await http.request(method, path, **kwargs)
    except httpx.TransportError as exc:
        raise AdminError(f"cannot reach {http.base_url}: {exc or type(exc).__name__}") from None
    if response.is_error:
        try:
            detail = response.json().get("detail") or response.reason_phrase
        except ValueError:
            detail = response.text[:200]
        raise AdminError(f"{method} {path}: {response.status_code} {detail}")
    return response.json() if response.content else None


def models_needed(scenario: Scenario) -> list[str]:
    names = {name for name, share in scenario.mix.items() if share > 0}
    if scenario.rollout:
        names.add(scenario.rollout.model)
    return sorted(names)


async def prepare(http: httpx.AsyncClient, scenario: Scenario) -> str:
    """Create the fleet's models and an auto-accepting provisioning token; returns its secret."""
    for name in models_needed(scenario):
        spec = MODELS_BY_NAME[name]
        body = {
            "name": name,
            "manufacturer": spec.manufacturer,
            "description": spec.description,
            "capabilities": CAPABILITIES.get(name, ["telemetry"]),
        }
        try:
            await call(http, "POST", "/api/v1/models", json=body)
        except AdminError as exc:
            if " 409 " not in str(exc):
                raise
    token = await call(
        http,
        "POST",
        "/api/v1/provisioning-tokens",
        json={"name": f"simulator {scenario.prefix}", "auto_accept": True},
    )
    return str(token["token"])


@dataclass
class Phase:
    size: int
    targeted: list[str] = field(default_factory=list)  # serials
    outcomes: dict[str, int] = field(default_factory=dict)  # command state → count
    rolled_back: int = 0

    def view(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "targeted": sorted(self.targeted),
            "outcomes": dict(sorted(self.outcomes.items())),
            "rolled_back": self.rolled_back,
        }


@dataclass
class Rollout:
    """Send `update` to the devices of a model in phases; stop when a phase fails too often."""

    spec: RolloutSpec
    prefix: str
    server: str
    phases: list[Phase] = field(default_factory=list)
    state: str = "waiting"  # waiting, running, done, halted, failed
    detail: str | None = None

    def view(self) -> dict[str, Any]:
        return {
            "model": self.spec.model,
            "version": self.spec.version,
            "state": self.state,
            "detail": self.detail,
            "phases": [p.view() for p in self.phases],
        }

    async def run(
        self,
        http: httpx.AsyncClient,
        elapsed: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        note: Callable[[str], None] = lambda _: None,
    ) -> None:
        spec = self.spec
        await sleep(max(0.0, spec.start - elapsed()))
        self.state = "running"
        taken: set[str] = set()
        try:
            for number, size in enumerate(spec.phases, 1):
                phase = Phase(size)
                self.phases.append(phase)
                targets = await self._candidates(http, size, taken)
                if not targets:
                    break
                commands = [await self._send(http, d, number) for d in targets]
                phase.targeted = [d["serial"] for d in targets]
                taken.update(d["id"] for d in targets)
                note(f"rollout {spec.model} {spec.version}: phase {number}, {len(targets)} devices")
                await sleep(spec.pause)
                await self._tally(http, phase, commands)
                finished = sum(phase.outcomes.get(s, 0) for s in ("succeeded", "failed"))
                failed = phase.outcomes.get("failed", 0)
                note(f"rollout phase {number}: {_outcomes(phase)}")
                if finished and failed / finished > spec.max_failure_rate:
                    self.state = "halted"
                    self.detail = f"phase {number}: {failed} of {finished} updates failed"
                    note(f"rollout halted: {self.detail}")
                    return
            self.state = "done"
        except AdminError as exc:
            self.state, self.detail = "failed", str(exc)
            note(f"rollout failed: {exc}")

    async def _candidates(
        self, http: httpx.AsyncClient, size: int, taken: set[str]
    ) -> list[dict[str, Any]]:
        spec = self.spec
        query = (
            f'model = "{spec.model}" AND serial = "{self.prefix}-*" AND state = active '
            f'AND online = true AND firmware_version != "{spec.version}"'
        )
        found: list[dict[str, Any]] = []
        params: dict[str, Any] = {"q": query, "limit": 500}
        while len(found) < size:
            page = await call(http, "GET", "/api/v1/devices", params=params)
            found += [d for d in page["items"] if d["id"] not in taken]
            if not page.get("next_cursor"):
                break
            params["cursor"] = page["next_cursor"]
        return sorted(found, key=lambda d: str(d["serial"]))[:size]

    async def _send(self, http: httpx.AsyncClient, device: dict[str, Any], number: int) -> Any:
        spec = self.spec
        body = {
            "name": "update",
            "args": {
                "version": spec.version,
                "url": f"{self.server}/artifacts/{spec.model}/{spec.version}.bin",
                "sha256": image_sha256(spec.model, spec.version),
            },
            "timeout": int(max(60.0, 3 * spec.pause)),
            "reason": f"rollout {spec.model} {spec.version}, phase {number}",
        }
        command = await call(http, "POST", f"/api/v1/devices/{device['id']}/commands", json=body)
        return device["id"], command["id"]

    async def _tally(
        self, http: httpx.AsyncClient, phase: Phase, commands: list[tuple[str, str]]
    ) -> None:
        for device_id, command_id in commands:
            path = f"/api/v1/devices/{device_id}/commands/{command_id}"
            command = await call(http, "GET", path)
            state = str(command["state"])
            phase.outcomes[state] = phase.outcomes.get(state, 0) + 1
            result = command.get("result")
            if isinstance(result, dict) and result.get("rolled_back") is True:
                phase.rolled_back += 1


def _outcomes(phase: Phase) -> str:
    parts = [f"{n} {state}" for state, n in sorted(phase.outcomes.items())]
    if phase.rolled_back:
        parts.append(f"{phase.rolled_back} rolled back")
    return ", ".join(parts) or "no answers"
