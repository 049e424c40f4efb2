"""Scenarios: the fleet to simulate, its timing, its faults and an optional rollout.

A scenario is a TOML (`.toml`) or JSON file; every key is optional (docs/simulator.md has a
full example). Anything the file says that is not described here is refused with the key's
name, never ignored. Command-line options override the file (`with_overrides`).
"""

from __future__ import annotations

import itertools
import json
import math
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from fleetkeeper.sim.catalogue import MODELS, MODELS_BY_NAME, SITES

FAULT_KINDS: tuple[str, ...] = (
    "update_download_corrupt",
    "update_install_fail",
    "update_health_fail",
    "disappear",
    "flaky",
    "sensor_stuck",
    "sensor_out_of_range",
    "sensor_noisy",
    "flood",
    "compromised",
    "site_outage",
    "crash_loop",
)
UPDATE_FAULTS = frozenset({"update_download_corrupt", "update_install_fail", "update_health_fail"})
SENSOR_FAULTS = frozenset({"sensor_stuck", "sensor_out_of_range", "sensor_noisy"})
# Faults a command can cure (`sim.remedies`): the summary lists the devices healed of each.
HEALABLE_FAULTS = frozenset({"crash_loop", "sensor_stuck", "sensor_noisy"})
# The escalation ladder of a crash loop, lowest rung first.
Rung = Literal["restart_service", "reboot", "safe_mode"]
RUNGS: tuple[Rung, ...] = ("restart_service", "reboot", "safe_mode")


class ScenarioError(ValueError):
    """A scenario file or option that cannot be used; the message says what and where."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FaultSpec(_Strict):
    """One kind of fault: which share of the fleet it hits, when, and its own knobs."""

    rate: float = Field(ge=0, le=1, description="Share of the devices hit (site_outage: of a site)")
    at: float = Field(default=0.0, ge=0, description="Seconds after the start when it begins")
    spread: float = Field(default=0.0, ge=0, description="Each device begins up to this later")
    duration: float | None = Field(default=None, gt=0, description="Seconds; unset: for good")
    site: str | None = Field(default=None, description="site_outage: the site (default: picked)")
    loss: float = Field(default=0.5, ge=0, le=1, description="flaky: share of messages lost")
    messages_per_second: float = Field(default=50.0, gt=0, le=1000, description="flood")
    burst: int = Field(default=5, ge=1, le=100, description="compromised: failed logins a burst")
    every: float = Field(
        default=30.0,
        gt=0,
        description="compromised: seconds between bursts; crash_loop: seconds between crashes",
    )
    heals_with: Rung = Field(
        default="restart_service",
        description="crash_loop: the lowest command that cures it "
        "(restart_service < reboot < safe_mode)",
    )


class SiteSpec(_Strict):
    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    climate: float = Field(default=12.0, ge=-60, le=60, description="Mean temperature, °C")
    swing: float = Field(default=8.0, ge=0, le=30, description="Day/night half-difference, °C")


DEFAULT_PHASES = (5, 20, 50)  # devices per phase, when a rollout names no phases


class RolloutSpec(_Strict):
    """A firmware release rolled out through a deployment (needs an admin token).

    Phases are cumulative percentages of the simulator's devices of the model (`percent`,
    as a deployment's rollout phases), or, the older form, devices per phase (`phases`), which
    become percentages of the model's devices in this fleet. Either way the last phase takes
    every device that is left, as in any deployment.
    """

    model: str
    version: str = Field(min_length=1, max_length=100)
    percent: tuple[float, ...] | None = Field(
        default=None, min_length=1, max_length=20, description="Cumulative % at each phase's end"
    )
    phases: tuple[int, ...] | None = Field(
        default=None, min_length=1, max_length=20, description="Devices per phase (older form)"
    )
    start: float = Field(default=30.0, ge=0, description="Seconds after the start")
    soak: float = Field(
        default=60.0,
        ge=0,
        validation_alias=AliasChoices("soak", "pause"),  # `pause`: the older name
        description="Seconds a phase's success must hold before the next phase starts",
    )
    max_failure_rate: float = Field(
        default=0.5, ge=0, le=1, description="Share of a phase failing that pauses it"
    )

    @field_validator("phases")
    @classmethod
    def _positive(cls, phases: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if phases is not None and any(n < 1 for n in phases):
            raise ValueError("every phase needs at least one device")
        return phases

    @field_validator("percent")
    @classmethod
    def _increasing(cls, percent: tuple[float, ...] | None) -> tuple[float, ...] | None:
        if percent is not None:
            if any(not 0 < p <= 100 for p in percent):
                raise ValueError("every phase is a percentage above 0, at most 100")
            if any(b <= a for a, b in itertools.pairwise(percent)):
                raise ValueError("phases are cumulative: each percentage above the one before")
        return percent

    @model_validator(mode="after")
    def _one_form(self) -> RolloutSpec:
        if self.percent is not None and self.phases is not None:
            raise ValueError("give phases as percent or as device counts (phases), not both")
        return self

    def percentages(self, devices: int) -> list[float]:
        """The phases as cumulative percentages, for a fleet with `devices` of the model."""
        if self.percent is not None:
            return list(self.percent)
        out: list[float] = []
        reached = 0
        for size in (self.phases or DEFAULT_PHASES)[:-1]:
            reached += size
            share = max(0.01, round(100.0 * reached / max(1, devices), 2))
            if share >= 100.0:
                break
            if not out or share > out[-1]:
                out.append(share)
        return [*out, 100.0]


class Scenario(_Strict):
    name: str = "default"
    seed: int = 1
    devices: int = Field(default=100, ge=1, le=1_000_000)
    serial_prefix: str | None = Field(
        default=None, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$"
    )
    mix: dict[str, float] = Field(default_factory=lambda: {m.name: m.share for m in MODELS})
    sites: tuple[SiteSpec, ...] = Field(
        default=tuple(SiteSpec(**vars(s)) for s in SITES), min_length=1
    )
    checkin_interval: float = Field(default=30.0, gt=0, le=86400)
    telemetry_interval: float = Field(default=10.0, gt=0, le=86400)
    inventory_interval: float = Field(default=300.0, gt=0, le=86400)
    time_scale: float = Field(default=1.0, gt=0, le=100_000, description="Fleet s per real s")
    update_step: float = Field(default=2.0, gt=0, le=3600, description="Seconds per update phase")
    reboot_seconds: float = Field(default=5.0, ge=0, le=3600)
    enroll_rate: float = Field(default=50.0, gt=0, description="Enrolments started per second")
    concurrency: int = Field(default=64, ge=1, le=10_000, description="Requests in flight")
    faults: dict[str, FaultSpec] = Field(default_factory=dict)
    rollout: RolloutSpec | None = None

    @field_validator("mix")
    @classmethod
    def _known_models(cls, mix: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(mix) - set(MODELS_BY_NAME))
        if unknown:
            raise ValueError(f"unknown model(s) {unknown}: known are {sorted(MODELS_BY_NAME)}")
        if any(w < 0 or not math.isfinite(w) for w in mix.values()) or sum(mix.values()) <= 0:
            raise ValueError("model shares are numbers >= 0, at least one above 0")
        return mix

    @field_validator("faults", mode="before")
    @classmethod
    def _fault_shorthand(cls, faults: Any) -> Any:
        if not isinstance(faults, Mapping):
            return faults
        unknown = sorted(set(faults) - set(FAULT_KINDS))
        if unknown:
            raise ValueError(f"unknown fault kind(s) {unknown}: known are {list(FAULT_KINDS)}")
        # `flaky = 0.05` is short for `[faults.flaky] rate = 0.05`.
        return {
            k: {"rate": v} if isinstance(v, int | float) and not isinstance(v, bool) else v
            for k, v in faults.items()
        }

    @property
    def prefix(self) -> str:
        return self.serial_prefix or f"sim{self.seed}"

    def rate(self, kind: str) -> float:
        spec = self.faults.get(kind)
        return spec.rate if spec else 0.0


def parse(data: Mapping[str, Any], source: str = "scenario") -> Scenario:
    try:
        scenario = Scenario.model_validate(dict(data))
    except ValidationError as exc:
        raise ScenarioError(f"{source}: {_describe(exc)}") from None
    site_names = [s.name for s in scenario.sites]
    if len(set(site_names)) != len(site_names):
        raise ScenarioError(f"{source}: sites: every site needs its own name")
    outage = scenario.faults.get("site_outage")
    if outage and outage.site and outage.site not in site_names:
        raise ScenarioError(f"{source}: faults.site_outage.site: no site {outage.site!r}")
    if scenario.rollout and scenario.rollout.model not in MODELS_BY_NAME:
        raise ScenarioError(f"{source}: rollout.model: unknown model {scenario.rollout.model!r}")
    return scenario


def load(path: Path) -> Scenario:
    """A scenario from a .toml or .json file."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ScenarioError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        if Path(path).suffix.lower() == ".json":
            data = json.loads(raw)
        else:
            data = tomllib.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ScenarioError(f"{path} is not valid {_kind(path)}: {exc}") from None
    if not isinstance(data, dict):
        raise ScenarioError(f"{path}: a scenario is an object (a table) at the top")
    return parse(data, str(path))


def parse_fault_option(text: str) -> tuple[str, float]:
    """`KIND=RATE` as given to `--fault`."""
    kind, sep, rate_text = text.partition("=")
    kind = kind.strip()
    if not sep or kind not in FAULT_KINDS:
        raise ScenarioError(
            f"--fault takes KIND=RATE with KIND one of {', '.join(FAULT_KINDS)}; not {text!r}"
        )
    try:
        rate = float(rate_text)
    except ValueError:
        raise ScenarioError(
            f"--fault {kind}: the rate must be a number, not {rate_text!r}"
        ) from None
    if not 0.0 <= rate <= 1.0:
        raise ScenarioError(f"--fault {kind}: the rate is between 0 and 1, not {rate}")
    return kind, rate


def with_overrides(
    scenario: Scenario, *, fault_rates: Mapping[str, float] | None = None, **values: Any
) -> Scenario:
    """`scenario` with the options given on the command line (None: not given) on top."""
    data = scenario.model_dump()
    data.update({k: v for k, v in values.items() if v is not None})
    faults = data["faults"]
    for kind, rate in (fault_rates or {}).items():
        faults[kind] = {**faults.get(kind, {}), "rate": rate}
    return parse(data, "options")


def _kind(path: Path) -> str:
    return "JSON" if Path(path).suffix.lower() == ".json" else "TOML"


def _describe(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "scenario"
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "not a scenario setting"
        parts.append(f"{where}: {message}")
    return "; ".join(parts)
