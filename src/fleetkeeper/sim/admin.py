"""The operator's side of a simulation, through the management API with an admin token.

- `prepare`: on a fresh server, create the device models the fleet needs (one that exists
  already is fine) and an auto-accepting provisioning token for it;
- `Rollout`: a firmware release rolled out as an operator would: the release's image uploaded
  as an artifact, then a deployment to the simulator's devices of the model, followed to its
  end. The devices' side of it is `sim.jobs`.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from fleetkeeper.sim.catalogue import MODELS_BY_NAME, image
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


FINAL_STATES = frozenset({"stopped", "aborted", "canceled", "finished"})
BASE_PER_MINUTE = 600.0  # devices a minute to start with: a simulated fleet is quick


def artifact_name(model: str) -> str:
    return f"{model}-firmware"


async def upload_release(http: httpx.AsyncClient, model: str, version: str) -> dict[str, Any]:
    """The release's image as an artifact (the server signs it); the one there already, if any."""
    name = artifact_name(model)
    try:
        created: dict[str, Any] = await call(
            http,
            "POST",
            "/api/v1/artifacts",
            files={"file": (f"{name}-{version}.bin", image(model, version))},
            data={
                "name": name,
                "version": version,
                "models": model,
                "release_notes": "A simulated release (fleetkeeper simulate).",
            },
        )
        return created
    except AdminError as exc:
        if " 409 " not in str(exc):
            raise
    page = await call(http, "GET", "/api/v1/artifacts", params={"name": name, "version": version})
    if not page["items"]:
        raise AdminError(f"artifact {name} {version} exists, yet cannot be found")
    found: dict[str, Any] = page["items"][0]
    return found


def rollout_policy(scenario: Scenario, devices: int) -> dict[str, Any]:
    """The deployment's rollout policy for the scenario's `rollout` on `devices` of the model.

    A phase goes on once the share that may fail has not (success_threshold) and that has held
    for `soak` seconds; it pauses when more than `max_failure_rate` of it failed, judged once
    as many devices as the first phase holds are done. Rate and timeouts follow the fleet's
    pace rather than a real fleet's.
    """
    spec = scenario.rollout
    assert spec is not None
    phases = spec.percentages(devices)
    error = round(100.0 * spec.max_failure_rate, 2)
    pace = scenario.update_step + scenario.reboot_seconds + scenario.checkin_interval
    step_timeout = max(120.0, 20.0 * pace)
    return {
        "phases": phases,
        "success_threshold": round(100.0 - error, 2),
        "error_threshold": error,
        "min_executed": max(1, math.ceil(phases[0] * devices / 100.0)),
        "on_error": "pause",
        "soak": spec.soak,
        "jitter": min(5.0, scenario.checkin_interval),
        "rate": {"base_per_minute": BASE_PER_MINUTE, "max_per_minute": 10 * BASE_PER_MINUTE},
        "timeouts": {
            "notified": max(120.0, 20.0 * scenario.checkin_interval),
            "download": step_timeout,
            "install": step_timeout,
            "reboot": step_timeout,
            "verify": step_timeout,
        },
    }


@dataclass
class Rollout:
    """The scenario's release, rolled out through a deployment and followed to its end.

    At `start` seconds, once the fleet's devices of the model are through enrolment (a
    deployment takes the devices its target matches when it is created), it uploads the
    release's image as an artifact and creates a deployment to the simulator's devices of the
    model (`fleetkeeper deploy show ID --follow` watches it); then it looks at the deployment
    now and then, says when a phase or its state changes, and keeps what it saw last for the
    summary. `fleet` says how many devices of the model the fleet has, and how many of them
    are still enrolling.
    """

    scenario: Scenario
    fleet: Callable[[], tuple[int, int]]
    state: str = "waiting"  # waiting, then the deployment's state; failed: the API refused
    detail: str | None = None
    artifact_id: str | None = None
    deployment: dict[str, Any] | None = None  # the deployment as last seen

    @property
    def spec(self) -> RolloutSpec:
        assert self.scenario.rollout is not None
        return self.scenario.rollout

    def view(self) -> dict[str, Any]:
        d = self.deployment or {}
        return {
            "model": self.spec.model,
            "version": self.spec.version,
            "state": self.state,
            "detail": self.detail,
            "artifact_id": self.artifact_id,
            "deployment_id": d.get("id"),
            "phases": [
                {"percent": p.get("percent"), "size": p.get("size"), "state": p.get("state")}
                for p in d.get("phases", [])
            ],
            "counts": {k: v for k, v in sorted(d.get("counts", {}).items()) if v},
            "failure_reasons": d.get("failure_reasons", {}),
        }

    def request(self, artifact_id: str) -> dict[str, Any]:
        spec, s = self.spec, self.scenario
        return {
            "name": f"{spec.model} {spec.version} (simulator {s.prefix})",
            # Only this simulator's devices: a server may have real ones of the model too.
            "target": f'model = "{spec.model}" AND serial = "{s.prefix}-*"',
            "artifact_id": artifact_id,
            "rollout": rollout_policy(s, self.fleet()[0]),
            "seed": s.seed % 2**31,
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
        while self.fleet()[1] > 0:
            await sleep(0.2)
        try:
            artifact = await upload_release(http, spec.model, spec.version)
            self.artifact_id = str(artifact["id"])
            created = await call(
                http, "POST", "/api/v1/deployments", json=self.request(artifact["id"])
            )
        except AdminError as exc:
            self.state, self.detail = "failed", str(exc)
            note(f"rollout failed: {exc}")
            return
        note(
            f"rollout {spec.model} {spec.version}: deployment {created['id']} to "
            f"{created['total']} devices; follow it with: "
            f"fleetkeeper deploy show {created['id']} --follow"
        )
        self._saw(created, note)
        every = max(0.2, min(2.0, self.scenario.checkin_interval))
        while self.state not in FINAL_STATES:
            await sleep(every)
            try:
                self._saw(await call(http, "GET", f"/api/v1/deployments/{created['id']}"), note)
            except AdminError as exc:
                self.detail = str(exc)  # the server may be busy: look again later

    def _saw(self, deployment: dict[str, Any], note: Callable[[str], None]) -> None:
        before = self.deployment
        self.deployment = deployment
        self.state = str(deployment["state"])
        self.detail = deployment.get("reason")
        if before is None or (before["phase"], before["state"]) == (
            deployment["phase"],
            deployment["state"],
        ):
            return  # nothing new to say (on creation, `run` said it)
        counts = {k: v for k, v in deployment["counts"].items() if v}
        progress = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
        reason = f" ({self.detail})" if self.detail else ""
        note(
            f"rollout {self.spec.model} {self.spec.version}: {self.state}{reason}, phase "
            f"{deployment['phase'] + 1} of {len(deployment['phases'])}: {progress or 'starting'}"
        )
