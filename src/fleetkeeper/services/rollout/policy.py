"""The rollout policy: how a deployment reaches its devices. Every part is optional.

The defaults are the safe ones: three phases (10 %, 50 %, all), pause when more than 10 % of
a phase fails, ten devices a minute doubling after every ten successes, at most 100 devices
busy at once, a minute of start jitter, the health watch on, and per-step timeouts.

The policy arrives as JSON (`POST /api/v1/deployments`, `rollout`), is validated here once,
and is stored normalised (`RolloutPolicy.model_dump(mode="json")`) with the deployment.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")


def parse_duration(value: object) -> object:
    """`90`, `"90s"`, `"15m"`, `"2h"`, `"1d"` → seconds; anything else is left to pydantic."""
    if isinstance(value, bool):  # pydantic would take true for 1 s
        raise ValueError(f"{value!r} is not a duration (e.g. 90, 90s, 15m, 2h, 1d)")
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match is None:
            raise ValueError(f"{value!r} is not a duration (e.g. 90, 90s, 15m, 2h, 1d)")
        return float(match.group(1)) * _UNITS[match.group(2) or "s"]
    return value


Seconds = Annotated[float, BeforeValidator(parse_duration), Field(ge=0, le=366 * 86400)]
Percent = Annotated[float, Field(ge=0, le=100)]


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PhaseSpec(_Part):
    """One phase: the share of the target reached when it ends (cumulative)."""

    percent: Percent | None = None
    count: int | None = Field(default=None, ge=1)
    success_threshold: Percent | None = Field(
        default=None, description="overrides the policy's success_threshold for this phase"
    )
    soak: Seconds | None = Field(default=None, description="overrides the policy's soak")

    @model_validator(mode="after")
    def _one_size(self) -> PhaseSpec:
        if (self.percent is None) == (self.count is None):
            raise ValueError("a phase is either a percent or a count of devices")
        return self


def _phase(value: object) -> object:
    # The contract's short form: a bare number is a percentage.
    if isinstance(value, int | float) and not isinstance(value, bool):
        return {"percent": value}
    return value


class Rate(_Part):
    """Exponential pacing (AWS IoT Jobs' rollout config is the model)."""

    base_per_minute: float = Field(default=10, gt=0, le=100_000)
    increment_factor: float = Field(default=2.0, ge=1, le=5)
    increase_after_notified: int | None = Field(default=None, ge=1)
    increase_after_succeeded: int | None = Field(default=10, ge=1)
    max_per_minute: float = Field(default=1000, gt=0, le=100_000)
    max_in_progress: int = Field(default=100, ge=1, le=1_000_000)

    @model_validator(mode="after")
    def _bounded(self) -> Rate:
        if self.max_per_minute < self.base_per_minute:
            raise ValueError("max_per_minute is below base_per_minute")
        return self


class Timeouts(_Part):
    """Seconds a device may spend in each step before its execution times out."""

    notified: Seconds = 86_400  # the device has not picked the job up
    download: Seconds = 1800
    install: Seconds = 1800
    reboot: Seconds = 600
    verify: Seconds = 600


FailureKind = Literal["download_failed", "timed_out", "failed", "precondition", "all"]


class Retry(_Part):
    on: FailureKind
    limit: int = Field(ge=0, le=100)
    backoff: Seconds = 60
    backoff_factor: float = Field(default=2.0, ge=1, le=10)


def _default_retries() -> list[Retry]:
    return [
        Retry(on="download_failed", limit=3),
        Retry(on="timed_out", limit=1),
        Retry(on="precondition", limit=12, backoff=600, backoff_factor=1),
    ]


class AbortCriterion(_Part):
    """Act when more than `threshold` % of the executed devices of a phase failed this way."""

    failure: str = Field(default="any", description="any, a failure kind, or a reason code")
    threshold: Percent = 10
    min_executed: int = Field(default=1, ge=1)


class Window(_Part):
    """A maintenance window: opens at each cron time and stays open for `duration`."""

    cron: str = Field(min_length=1, max_length=100, examples=["0 2 * * *"])
    duration: Seconds
    timezone: str = Field(default="UTC", max_length=64)


class Schedule(_Part):
    start_at: datetime | None = None
    end_at: datetime | None = None
    end_behaviour: Literal["stop", "cancel"] = Field(
        default="stop",
        description="stop: no new devices, running ones finish; cancel: cancel the rest too",
    )
    windows: list[Window] = Field(default_factory=list, max_length=20)
    window_attribute: str | None = Field(
        default=None,
        max_length=100,
        description="device attribute holding the device's own window ({cron, duration, "
        "timezone}); a device must be inside it as well",
    )

    @field_validator("start_at", "end_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        # A time without an offset is UTC; naive and aware times cannot even be compared.
        if value is not None and value.utcoffset() is None:
            return value.replace(tzinfo=UTC)
        return value

    @model_validator(mode="after")
    def _ordered(self) -> Schedule:
        if self.start_at and self.end_at and self.end_at <= self.start_at:
            raise ValueError("schedule.end_at is not after start_at")
        return self


class HealthWatch(_Part):
    """Compare the updated devices with the not-yet-updated ones of the same target."""

    enabled: bool = True
    offline: bool = True
    reboots: bool = True
    metrics: list[str] = Field(default_factory=list, max_length=20)
    min_devices: int = Field(default=20, ge=2, description="per cohort before judging")
    confidence: float = Field(default=0.99, ge=0.5, lt=1)
    min_difference: float = Field(
        default=0.05, ge=0, description="smallest difference in rates worth pausing for"
    )


class Preconditions(_Part):
    """Checked by the device before it installs; it reports `precondition_failed` otherwise."""

    min_battery: Percent | None = 20
    or_on_power: bool = True
    min_free_storage: int | None = Field(default=None, ge=0, description="bytes")
    not_busy: bool = True


class RolloutPolicy(_Part):
    phases: list[Annotated[PhaseSpec, BeforeValidator(_phase)]] = Field(
        default_factory=lambda: [PhaseSpec(percent=p) for p in (10, 50, 100)],
        min_length=1,
        max_length=20,
    )
    success_threshold: Percent = Field(
        default=90, description="% of a phase that must succeed before the next one starts"
    )
    soak: Seconds = Field(default=0, description="how long a met threshold must hold")
    error_threshold: Percent = Field(
        default=10, description="% of a phase's executed devices failing that triggers on_error"
    )
    min_executed: int = Field(default=1, ge=1)
    abort_criteria: list[AbortCriterion] = Field(default_factory=list, max_length=20)
    on_error: Literal["pause", "abort"] = "pause"
    rollback_on_abort: bool = False
    rate: Rate = Field(default_factory=Rate)
    timeouts: Timeouts = Field(default_factory=Timeouts)
    retries: list[Retry] = Field(default_factory=_default_retries, max_length=10)
    schedule: Schedule = Field(default_factory=Schedule)
    jitter: Seconds = Field(default=60, description="spread of start times within a wave")
    expected_duration: Seconds = Field(
        default=900, gt=0, description="time one device needs; no device starts later in a window"
    )
    health_watch: HealthWatch = Field(default_factory=HealthWatch)
    preconditions: Preconditions = Field(default_factory=Preconditions)

    @model_validator(mode="after")
    def _consistent(self) -> RolloutPolicy:
        last_percent = last_count = 0.0
        for phase in self.phases:
            if phase.percent is not None:
                if phase.percent <= last_percent or phase.percent == 0:
                    raise ValueError("phase percentages must increase")
                last_percent = phase.percent
            if phase.count is not None:
                if phase.count <= last_count:
                    raise ValueError("phase counts must increase")
                last_count = phase.count
        for window in self.schedule.windows:
            if window.duration < self.expected_duration:
                raise ValueError(
                    f"window {window.cron!r} lasts {window.duration:g} s, shorter than one "
                    f"device's expected_duration ({self.expected_duration:g} s): "
                    "the rollout could never finish"
                )
        return self

    def criteria(self) -> list[AbortCriterion]:
        """The error threshold as the first abort criterion, then the explicit ones."""
        general = AbortCriterion(threshold=self.error_threshold, min_executed=self.min_executed)
        return [general, *self.abort_criteria]
