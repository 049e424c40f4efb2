"""Device models and groups."""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, Field, Strict

from fleetkeeper.schemas.common import Input, Name, Reason
from fleetkeeper.services.rollout.policy import Window

_METRIC = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MAX_METRIC_RANGES = 100
MAX_OFFLINE_AFTER = 366 * 86400


def _check_ranges(ranges: dict[str, list[float]]) -> dict[str, list[float]]:
    if len(ranges) > MAX_METRIC_RANGES:
        raise ValueError(f"at most {MAX_METRIC_RANGES} metrics")
    checked: dict[str, list[float]] = {}
    for metric, (low, high) in ranges.items():  # two items each: the type says so
        if not _METRIC.fullmatch(metric):
            raise ValueError(
                f"metric name {metric!r} must have 1 to 64 letters, digits, _, . and -"
            )
        if not (math.isfinite(low) and math.isfinite(high)):
            raise ValueError(f"{metric}: the range must be finite numbers")
        if not low < high:
            raise ValueError(f"{metric}: the low end {low:g} must be below the high end {high:g}")
        checked[metric] = [low, high]
    return checked


Bound = Annotated[float, Strict()]  # a number: no "1.5" strings, no booleans
MetricRanges = Annotated[
    dict[str, Annotated[list[Bound], Field(min_length=2, max_length=2)]],
    AfterValidator(_check_ranges),
    Field(
        description="The physical range of each sensor, {metric: [low, high]}: readings "
        "outside it are impossible (the health watch flags the sensor).",
        examples=[{"temperature": [-40, 85], "battery": [0, 100]}],
    ),
]
OfflineAfter = Annotated[
    int,
    Strict(),
    Field(
        gt=0,
        le=MAX_OFFLINE_AFTER,
        description="Seconds without a check-in after which a device of this model counts as "
        "offline; null: the server's online window.",
    ),
]


class ModelCreate(Input):
    name: Name
    manufacturer: str | None = Field(default=None, max_length=200)
    hardware_revision: str | None = Field(default=None, max_length=100)
    description: str | None = Field(default=None, max_length=4000)
    capabilities: list[str] = Field(default_factory=list, max_length=100)
    config_schema: dict[str, Any] | None = Field(
        default=None, description="JSON Schema (draft 2020-12) for this model's configuration."
    )
    offline_after_seconds: OfflineAfter | None = None
    metric_ranges: MetricRanges | None = None
    reason: Reason = None


class ModelPatch(Input):
    manufacturer: str | None = Field(default=None, max_length=200)
    hardware_revision: str | None = Field(default=None, max_length=100)
    description: str | None = Field(default=None, max_length=4000)
    capabilities: list[str] | None = Field(default=None, max_length=100)
    config_schema: dict[str, Any] | None = None
    offline_after_seconds: OfflineAfter | None = None
    metric_ranges: MetricRanges | None = None
    reason: Reason = None


class ModelOut(BaseModel):
    id: int
    name: str
    manufacturer: str | None
    hardware_revision: str | None
    description: str | None
    capabilities: list[str]
    config_schema: dict[str, Any] | None
    offline_after_seconds: int | None = None
    metric_ranges: dict[str, list[float]] | None = None
    created_at: datetime
    updated_at: datetime


WindowsField = Field(
    default=None,
    max_length=20,
    description="The members' maintenance windows ({cron, duration, timezone}): deployments "
    "start a member only inside one of them (docs/ota.md).",
)


class GroupCreate(Input):
    name: Name
    query: str | None = Field(
        default=None,
        max_length=4000,
        description="A fleet query: the group is dynamic and its membership always current.",
    )
    description: str | None = Field(default=None, max_length=4000)
    maintenance_windows: list[Window] | None = WindowsField
    tenant: Name | None = None
    reason: Reason = None


class GroupPatch(Input):
    query: str | None = Field(default=None, max_length=4000)
    description: str | None = Field(default=None, max_length=4000)
    maintenance_windows: list[Window] | None = WindowsField
    reason: Reason = None


class Members(Input):
    devices: list[str] = Field(min_length=1, max_length=10_000, description="Device ids.")
    reason: Reason = None


class GroupOut(BaseModel):
    id: int
    name: str
    tenant: str
    kind: str = Field(description="`static` (members added by hand) or `dynamic` (by query).")
    query: str | None
    description: str | None
    member_count: int | None = None
    maintenance_windows: list[dict[str, Any]] | None = None
    created_at: datetime
    updated_at: datetime
