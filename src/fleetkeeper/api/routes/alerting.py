"""Alerting as operators configure it: channels (with their test sends), alert rules, silences
and inhibit rules (docs/alerting.md). The alerts themselves, incidents, the notification log and
remediation actions are in `alerts.py`.

Rules are answered as stored: the `AlertRule` fields with durations in seconds and conditions
as their canonical text (`battery < 15 for 10m`), beside `id`, `tenant`, `enabled`, `version`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Query, Response
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from fleetkeeper.api.deps import (
    PrincipalDep,
    ReasonHeader,
    ReasonQuery,
    ScopeDep,
    StateDep,
    make_change,
)
from fleetkeeper.api.pagination import Limit
from fleetkeeper.api.routes.devices import Cursor
from fleetkeeper.errors import Invalid
from fleetkeeper.schemas.common import Input, Name, Page, Reason
from fleetkeeper.services.alerting import config
from fleetkeeper.services.alerting.rules import AlertRule
from fleetkeeper.services.rollout.policy import Seconds
from fleetkeeper.store.models import (
    AlertChannel,
    AlertInhibitRule,
    AlertRuleRecord,
    AlertSilence,
)

router = APIRouter(tags=["alerting"])

TenantField = Annotated[
    Name | None, Field(default=None, description="Platform users: the tenant it belongs to.")
]
Matchers = Annotated[
    list[Annotated[str, Field(min_length=1, max_length=500)]],
    Field(
        min_length=1,
        max_length=config.MAX_MATCHERS,
        description="Label matchers: `name=value`, `name!=value`, `name=~regex`, `name!~regex`.",
        examples=[["site=oslo-3", "rule=~device_offline|battery_low"]],
    ),
]


# --- channels ------------------------------------------------------------------------------------


class ChannelIn(Input):
    name: Name
    kind: Literal["webhook", "email", "chat"]
    url: str = Field(
        max_length=2000,
        description="http(s):// for webhook and chat, smtp(s)://host:port for email",
    )
    secret: str | None = Field(
        default=None,
        max_length=200,
        description="webhook/chat: the HMAC-SHA256 signing key; email: the SMTP password. "
        "Never returned.",
    )
    settings: dict[str, Any] = Field(
        default_factory=dict,
        description="webhook/chat: `headers`, `rate_limit` ({max, period}); email: `to`, `from`, "
        "`username`, `starttls`, `rate_limit`.",
    )
    enabled: bool = True
    tenant: TenantField = None
    reason: Reason = None


class ChannelPatch(Input):
    name: Name | None = None
    kind: Literal["webhook", "email", "chat"] | None = None
    url: str | None = Field(default=None, max_length=2000)
    secret: str | None = Field(default=None, max_length=200, description="null removes it.")
    settings: dict[str, Any] | None = Field(default=None, description="Replaces the settings.")
    enabled: bool | None = None
    reason: Reason = None


class ChannelOut(BaseModel):
    id: str
    tenant: str
    name: str
    kind: str
    url: str
    has_secret: bool = Field(description="Whether a secret is set (it is never shown).")
    settings: dict[str, Any]
    enabled: bool
    created_by: str
    created_at: datetime
    updated_at: datetime


def _channel_out(c: AlertChannel) -> ChannelOut:
    return ChannelOut(
        id=c.id,
        tenant=c.tenant_id,
        name=c.name,
        kind=c.kind,
        url=c.url,
        has_secret=c.secret is not None,
        settings=c.settings,
        enabled=c.enabled,
        created_by=c.created_by,
        created_at=c.created_at,
        updated_at=c.updated_at,
    )


@router.post(
    "/api/v1/channels", status_code=201, response_model=ChannelOut, summary="Add a channel"
)
async def create_channel(
    state: StateDep, principal: PrincipalDep, body: ChannelIn, x_change_reason: ReasonHeader = None
) -> ChannelOut:
    change = make_change(state, principal, body.reason, x_change_reason)
    async with state.db.write() as session:
        channel = await config.create_channel(
            session,
            change,
            name=body.name,
            kind=body.kind,
            url=body.url,
            secret=body.secret,
            settings=body.settings,
            enabled=body.enabled,
            tenant=body.tenant,
        )
        return _channel_out(channel)


@router.get("/api/v1/channels", response_model=Page[ChannelOut], summary="List channels")
async def list_channels(
    state: StateDep,
    principal: PrincipalDep,
    kind: Annotated[str | None, Query(max_length=16)] = None,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> Page[ChannelOut]:
    async with state.db.read() as session:
        rows, next_cursor = await config.list_channels(
            session, principal, kind=kind, limit=limit, cursor=cursor
        )
    return Page(items=[_channel_out(c) for c in rows], next_cursor=next_cursor)


@router.get("/api/v1/channels/{channel_id}", response_model=ChannelOut, summary="A channel")
async def get_channel(state: StateDep, principal: PrincipalDep, channel_id: str) -> ChannelOut:
    async with state.db.read() as session:
        return _channel_out(await config.get_channel(session, principal, channel_id))


@router.patch(
    "/api/v1/channels/{channel_id}", response_model=ChannelOut, summary="Change a channel"
)
async def update_channel(
    state: StateDep,
    principal: PrincipalDep,
    channel_id: str,
    body: ChannelPatch,
    x_change_reason: ReasonHeader = None,
) -> ChannelOut:
    fields = body.model_fields_set
    for name in ("name", "kind", "url", "settings", "enabled"):
        if name in fields and getattr(body, name) is None:
            raise Invalid(f"a channel keeps its {name}", field=name)
    changes = config.ChannelChanges(
        name=body.name,
        kind=body.kind,
        url=body.url,
        secret=body.secret,
        secret_set="secret" in fields,
        settings=body.settings,
        enabled=body.enabled,
    )
    change = make_change(state, principal, body.reason, x_change_reason, reason_required=True)
    async with state.db.write() as session:
        channel = await config.get_channel(session, principal, channel_id)
        return _channel_out(await config.update_channel(session, change, channel, changes))


@router.delete(
    "/api/v1/channels/{channel_id}",
    status_code=204,
    summary="Delete a channel no rule sends to (409 channel_in_use otherwise)",
)
async def delete_channel(
    state: StateDep,
    principal: PrincipalDep,
    channel_id: str,
    reason: ReasonQuery = None,
    x_change_reason: ReasonHeader = None,
) -> Response:
    change = make_change(state, principal, reason, x_change_reason, reason_required=True)
    async with state.db.write() as session:
        channel = await config.get_channel(session, principal, channel_id)
        await config.delete_channel(session, change, channel)
    return Response(status_code=204)


class TestOut(BaseModel):
    notification_id: str = Field(description="Its entry in the notification log.")
    delivered: bool
    state: str = Field(description="delivered, or dead (a test is not retried)")
    status: int | None = Field(description="The receiver's HTTP status or SMTP reply code.")
    error: str | None


@router.post(
    "/api/v1/channels/{channel_id}/test",
    response_model=TestOut,
    summary="Send a test notification to a channel now (once, enabled or not): how it went",
)
async def test_channel(state: StateDep, principal: PrincipalDep, channel_id: str) -> TestOut:
    principal.require(config.CONFIGURE)
    async with state.db.read() as session:
        channel = await config.get_channel(session, principal, channel_id)
    result = await state.deliverer.send_test(channel, by=principal.actor)
    return TestOut(
        notification_id=result.notification_id,
        delivered=result.delivered,
        state=result.state,
        status=result.status,
        error=result.error,
    )


# --- rules ---------------------------------------------------------------------------------------


class RuleIn(AlertRule):
    """An alert rule (see docs/alerting.md); durations as seconds or `30s`, `5m`, `4h`, `1d`."""

    enabled: bool = True
    tenant: TenantField = None
    reason: Reason = None


_RULE_EXTRA = {"enabled", "tenant", "reason"}


class RuleOut(BaseModel):
    """A rule as stored: durations in seconds, conditions as their canonical text."""

    model_config = ConfigDict(extra="allow")

    id: str
    tenant: str
    name: str
    enabled: bool
    version: int = Field(description="Goes up by one with every change.")
    scope: str
    condition: str
    clear: str | None
    severity: str
    labels: dict[str, str]
    group_by: list[str]
    group_wait: float
    group_interval: float
    repeat_interval: float
    channels: list[str]
    incident: dict[str, Any] | None
    remediation: dict[str, Any] | None
    created_by: str
    created_at: datetime
    updated_at: datetime


def _rule_out(r: AlertRuleRecord) -> RuleOut:
    return RuleOut(
        **{
            **r.definition,
            "id": r.id,
            "tenant": r.tenant_id,
            "name": r.name,
            "enabled": r.enabled,
            "version": r.version,
            "created_by": r.created_by,
            "created_at": r.created_at,
            "updated_at": r.updated_at,
        }
    )


def _definition(body: RuleIn) -> dict[str, Any]:
    return body.model_dump(mode="json", exclude=_RULE_EXTRA)


@router.post(
    "/api/v1/alert-rules", status_code=201, response_model=RuleOut, summary="Create an alert rule"
)
async def create_rule(
    state: StateDep, scope: ScopeDep, body: RuleIn, x_change_reason: ReasonHeader = None
) -> RuleOut:
    change = make_change(state, scope.principal, body.reason, x_change_reason)
    async with state.db.write() as session:
        record = await config.create_rule(
            session, change, scope, _definition(body), enabled=body.enabled, tenant=body.tenant
        )
        return _rule_out(record)


@router.get("/api/v1/alert-rules", response_model=Page[RuleOut], summary="List alert rules")
async def list_rules(
    state: StateDep,
    principal: PrincipalDep,
    enabled: bool | None = None,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> Page[RuleOut]:
    async with state.db.read() as session:
        rows, next_cursor = await config.list_rules(
            session, principal, enabled=enabled, limit=limit, cursor=cursor
        )
    return Page(items=[_rule_out(r) for r in rows], next_cursor=next_cursor)


@router.get("/api/v1/alert-rules/{rule_id}", response_model=RuleOut, summary="An alert rule")
async def get_rule(state: StateDep, principal: PrincipalDep, rule_id: str) -> RuleOut:
    async with state.db.read() as session:
        return _rule_out(await config.get_rule(session, principal, rule_id))


@router.put(
    "/api/v1/alert-rules/{rule_id}",
    response_model=RuleOut,
    summary="Replace an alert rule's definition (fields left out take their defaults)",
)
async def replace_rule(
    state: StateDep,
    scope: ScopeDep,
    rule_id: str,
    body: RuleIn,
    x_change_reason: ReasonHeader = None,
) -> RuleOut:
    if body.tenant is not None:
        raise Invalid("a rule stays in its tenant", field="tenant")
    change = make_change(state, scope.principal, body.reason, x_change_reason, reason_required=True)
    enabled = body.enabled if "enabled" in body.model_fields_set else None
    async with state.db.write() as session:
        record = await config.get_rule(session, scope.principal, rule_id)
        updated = await config.update_rule(
            session, change, scope, record, _definition(body), merge=False, enabled=enabled
        )
        return _rule_out(updated)


@router.patch(
    "/api/v1/alert-rules/{rule_id}",
    response_model=RuleOut,
    summary="Change some of an alert rule's fields (top-level fields replace the stored ones); "
    "`enabled` enables or disables it",
)
async def update_rule(
    state: StateDep,
    scope: ScopeDep,
    rule_id: str,
    body: Annotated[
        dict[str, Any],
        Body(examples=[{"condition": "battery < 10 for 15m", "reason": "fewer pages"}]),
    ],
    x_change_reason: ReasonHeader = None,
) -> RuleOut:
    fields = dict(body)
    reason, enabled = fields.pop("reason", None), fields.pop("enabled", None)
    if reason is not None and not isinstance(reason, str):
        raise Invalid("reason is a string", field="reason")
    if enabled is not None and not isinstance(enabled, bool):
        raise Invalid("enabled is true or false", field="enabled")
    change = make_change(state, scope.principal, reason, x_change_reason, reason_required=True)
    async with state.db.write() as session:
        record = await config.get_rule(session, scope.principal, rule_id)
        updated = await config.update_rule(
            session, change, scope, record, fields or None, merge=True, enabled=enabled
        )
        return _rule_out(updated)


@router.delete(
    "/api/v1/alert-rules/{rule_id}",
    status_code=204,
    summary="Delete an alert rule with its alerts and remediation actions",
)
async def delete_rule(
    state: StateDep,
    principal: PrincipalDep,
    rule_id: str,
    reason: ReasonQuery = None,
    x_change_reason: ReasonHeader = None,
) -> Response:
    change = make_change(state, principal, reason, x_change_reason, reason_required=True)
    async with state.db.write() as session:
        record = await config.get_rule(session, principal, rule_id)
        await config.delete_rule(session, change, record)
    return Response(status_code=204)


# --- silences ------------------------------------------------------------------------------------


class SilenceIn(Input):
    matchers: Matchers
    comment: str = Field(min_length=1, max_length=2000, description="Why (required).")
    starts_at: AwareDatetime | None = Field(default=None, description="Default: now.")
    ends_at: AwareDatetime | None = Field(default=None, description="Or give `duration`.")
    duration: Seconds | None = Field(default=None, description="e.g. `2h`; or give `ends_at`.")
    tenant: TenantField = None
    reason: Reason = None


class SilenceOut(BaseModel):
    id: str
    tenant: str
    matchers: list[str]
    starts_at: datetime
    ends_at: datetime
    state: str = Field(description="pending, active or expired")
    author: str
    comment: str
    created_at: datetime
    updated_at: datetime


def _silence_out(s: AlertSilence, now: datetime) -> SilenceOut:
    return SilenceOut(
        id=s.id,
        tenant=s.tenant_id,
        matchers=s.matchers,
        starts_at=s.starts_at,
        ends_at=s.ends_at,
        state=config.silence_state(s, now),
        author=s.author,
        comment=s.comment,
        created_at=s.created_at,
        updated_at=s.updated_at,
    )


@router.post(
    "/api/v1/silences", status_code=201, response_model=SilenceOut, summary="Silence alerts"
)
async def create_silence(
    state: StateDep, principal: PrincipalDep, body: SilenceIn, x_change_reason: ReasonHeader = None
) -> SilenceOut:
    change = make_change(state, principal, body.reason, x_change_reason)
    async with state.db.write() as session:
        silence = await config.create_silence(
            session,
            change,
            matchers=body.matchers,
            comment=body.comment,
            starts_at=body.starts_at,
            ends_at=body.ends_at,
            duration=body.duration,
            tenant=body.tenant,
        )
        return _silence_out(silence, change.now())


@router.get("/api/v1/silences", response_model=Page[SilenceOut], summary="Silences, newest first")
async def list_silences(
    state: StateDep,
    principal: PrincipalDep,
    silence_state: Annotated[
        str | None, Query(alias="state", max_length=20, description="active, pending or expired")
    ] = None,
    limit: Limit = 100,
    cursor: Cursor = None,
) -> Page[SilenceOut]:
    now = state.clock.now()
    async with state.db.read() as session:
        rows, next_cursor = await config.list_silences(
            session, principal, state=silence_state, now=now, limit=limit, cursor=cursor
        )
    return Page(items=[_silence_out(s, now) for s in rows], next_cursor=next_cursor)


@router.get("/api/v1/silences/{silence_id}", response_model=SilenceOut, summary="A silence")
async def get_silence(state: StateDep, principal: PrincipalDep, silence_id: str) -> SilenceOut:
    async with state.db.read() as session:
        silence = await config.get_silence(session, principal, silence_id)
    return _silence_out(silence, state.clock.now())


@router.delete(
    "/api/v1/silences/{silence_id}",
    status_code=204,
    summary="Expire a silence now (it stays, expired, for the record)",
)
async def expire_silence(
    state: StateDep,
    principal: PrincipalDep,
    silence_id: str,
    reason: ReasonQuery = None,
    x_change_reason: ReasonHeader = None,
) -> Response:
    change = make_change(state, principal, reason, x_change_reason)
    async with state.db.write() as session:
        silence = await config.get_silence(session, principal, silence_id)
        await config.expire_silence(session, change, silence)
    return Response(status_code=204)


# --- inhibit rules -------------------------------------------------------------------------------


class InhibitIn(Input):
    name: Name
    source: Matchers
    target: Matchers
    equal: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        default_factory=list, max_length=20, description="Labels source and target must share."
    )
    tenant: TenantField = None
    reason: Reason = None


class InhibitOut(BaseModel):
    id: str
    tenant: str
    name: str
    source: list[str]
    target: list[str]
    equal: list[str]
    created_by: str
    created_at: datetime


def _inhibit_out(r: AlertInhibitRule) -> InhibitOut:
    return InhibitOut(
        id=r.id,
        tenant=r.tenant_id,
        name=r.name,
        source=r.source,
        target=r.target,
        equal=r.equal,
        created_by=r.created_by,
        created_at=r.created_at,
    )


@router.post(
    "/api/v1/inhibit-rules",
    status_code=201,
    response_model=InhibitOut,
    summary="While a source alert fires, mute the target alerts sharing the equal labels",
)
async def create_inhibit_rule(
    state: StateDep, principal: PrincipalDep, body: InhibitIn, x_change_reason: ReasonHeader = None
) -> InhibitOut:
    change = make_change(state, principal, body.reason, x_change_reason)
    async with state.db.write() as session:
        rule = await config.create_inhibit_rule(
            session,
            change,
            name=body.name,
            source=body.source,
            target=body.target,
            equal=body.equal,
            tenant=body.tenant,
        )
        return _inhibit_out(rule)


@router.get("/api/v1/inhibit-rules", response_model=Page[InhibitOut], summary="Inhibit rules")
async def list_inhibit_rules(
    state: StateDep, principal: PrincipalDep, limit: Limit = 100, cursor: Cursor = None
) -> Page[InhibitOut]:
    async with state.db.read() as session:
        rows, next_cursor = await config.list_inhibit_rules(
            session, principal, limit=limit, cursor=cursor
        )
    return Page(items=[_inhibit_out(r) for r in rows], next_cursor=next_cursor)


@router.get("/api/v1/inhibit-rules/{rule_id}", response_model=InhibitOut, summary="An inhibit rule")
async def get_inhibit_rule(state: StateDep, principal: PrincipalDep, rule_id: str) -> InhibitOut:
    async with state.db.read() as session:
        return _inhibit_out(await config.get_inhibit_rule(session, principal, rule_id))


@router.delete("/api/v1/inhibit-rules/{rule_id}", status_code=204, summary="Delete an inhibit rule")
async def delete_inhibit_rule(
    state: StateDep,
    principal: PrincipalDep,
    rule_id: str,
    reason: ReasonQuery = None,
    x_change_reason: ReasonHeader = None,
) -> Response:
    change = make_change(state, principal, reason, x_change_reason, reason_required=True)
    async with state.db.write() as session:
        rule = await config.get_inhibit_rule(session, principal, rule_id)
        await config.delete_inhibit_rule(session, change, rule)
    return Response(status_code=204)
