"""Alerting as operators configure it: alert rules, channels, silences and inhibit rules.

Every row belongs to a tenant and every read filters by the caller's (`tenant_filter`), so a
tenant's users neither see nor touch another tenant's alerting; every change is audited in the
same transaction. Reading needs `alerts:read`; silences `alerts:write`; rules, channels and
inhibit rules `alerts:configure`. What operators read and act on (alerts, incidents, the
notification log, remediation actions) is in `operations.py`, which pages and fetches rows with
the helpers here (`fetch_page`, `fetch_one`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar

from pydantic import ValidationError
from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from fleetkeeper.errors import BadRequest, Conflict, FleetkeeperError, Invalid, NotFound
from fleetkeeper.ids import uuid7
from fleetkeeper.services import audit
from fleetkeeper.services.alerting.channels import validate_channel
from fleetkeeper.services.alerting.inhibit import InhibitRule
from fleetkeeper.services.alerting.model import Matcher
from fleetkeeper.services.alerting.rules import AlertRule, ConditionError
from fleetkeeper.services.alerting.silences import Silence
from fleetkeeper.services.context import Change, Principal
from fleetkeeper.services.devices import resolve_tenant
from fleetkeeper.services.selection import QueryScope, compile_for, decode_cursor, encode_cursor
from fleetkeeper.store.models import (
    AlertChannel,
    AlertInhibitRule,
    AlertRecord,
    AlertRuleRecord,
    AlertSilence,
)

READ = "alerts:read"
WRITE = "alerts:write"
CONFIGURE = "alerts:configure"

SILENCE_STATES = ("active", "pending", "expired")
MAX_MATCHERS = 20


# --- paging and look-ups (operations.py uses them too) -------------------------------------------


class _Row(Protocol):
    @property
    def id(self) -> str: ...


R = TypeVar("R", bound=_Row)


async def fetch_page(
    session: AsyncSession,
    stmt: Select[R],
    column: InstrumentedAttribute[str],
    *,
    limit: int,
    cursor: str | None,
    newest_first: bool = False,
) -> tuple[list[R], str | None]:
    """One page by id (ids are UUIDv7: creation order), and the cursor when more follow."""
    if cursor:
        after = decode_cursor(cursor)
        stmt = stmt.where(column < after if newest_first else column > after)
    stmt = stmt.order_by(column.desc() if newest_first else column).limit(limit + 1)
    rows = list((await session.scalars(stmt)).all())
    page = rows[:limit]
    return page, encode_cursor(page[-1].id) if len(rows) > limit and page else None


async def fetch_one(
    session: AsyncSession, principal: Principal, model: Any, id: str, noun: str
) -> Any:
    """The row of `model` with this id in the principal's tenants, or NotFound."""
    principal.require(READ)
    row = await session.scalar(
        select(model).where(model.id == id, principal.tenant_filter(model.tenant_id))
    )
    if row is None:
        raise NotFound(f"no {noun} {id!r}")
    return row


def iso(at: datetime) -> str:
    return at.isoformat()


# --- rules ---------------------------------------------------------------------------------------


def validation_problem(exc: ValidationError) -> Invalid:
    """A pydantic error as the API's 422: each error naming its field (`condition`, `labels.x`),
    a condition's mistake with its `position` and `column`."""
    errors: list[dict[str, Any]] = []
    for e in exc.errors():
        message = str(e["msg"]).removeprefix("Value error, ")
        where = ".".join(str(p) for p in e["loc"])
        if not where:  # a check across fields: its message starts with the field to change
            word = message.split(" ", 1)[0].rstrip(":")
            where = word if word in AlertRule.model_fields else "body"
        error: dict[str, Any] = {"field": where, "message": message}
        cause = (e.get("ctx") or {}).get("error")
        if isinstance(cause, ConditionError):
            error.update(position=cause.position, column=cause.position + 1)
        errors.append(error)
    first = errors[0]
    field, message = first["field"], first["message"]
    detail = message if message.startswith(f"{field}:") else f"{field}: {message}"
    if len(errors) > 1:
        detail += f" (and {len(errors) - 1} more)"
    extra = {k: v for k, v in first.items() if k in {"position", "column"}}
    return Invalid(detail, field=field, errors=errors, **extra)


def parse_rule(data: Mapping[str, Any]) -> AlertRule:
    try:
        return AlertRule.model_validate(dict(data))
    except ValidationError as exc:
        raise validation_problem(exc) from None


async def _checked_rule(
    session: AsyncSession, scope: QueryScope, tenant_id: str, data: Mapping[str, Any]
) -> AlertRule:
    """The rule validated, its scope compiled in its tenant, its channels the tenant's own."""
    rule = parse_rule(data)
    try:
        await compile_for(session, scope, rule.scope, tenant_id=tenant_id)
    except FleetkeeperError as exc:
        extra = {k: v for k, v in exc.extra.items() if k != "field"}
        kind = BadRequest if exc.status == 400 else Invalid
        raise kind(f"scope: {exc.detail}", field="scope", **extra) from None
    if rule.channels:
        known = set(
            (
                await session.scalars(
                    select(AlertChannel.id).where(
                        AlertChannel.tenant_id == tenant_id, AlertChannel.id.in_(rule.channels)
                    )
                )
            ).all()
        )
        unknown = [c for c in rule.channels if c not in known]
        if unknown:
            raise Invalid(
                f"no channel {', '.join(map(repr, unknown))} in tenant {tenant_id!r}",
                field="channels",
            )
    return rule


async def _rule_name_free(session: AsyncSession, tenant_id: str, name: str) -> None:
    taken = await session.scalar(
        select(AlertRuleRecord.id).where(
            AlertRuleRecord.tenant_id == tenant_id, AlertRuleRecord.name == name
        )
    )
    if taken:
        raise Conflict(f"alert rule {name!r} exists already", field="name")


def _rule_summary(record: AlertRuleRecord) -> dict[str, Any]:
    """What the audit trail keeps of a rule (an update: the fields that changed)."""
    return {**record.definition, "enabled": record.enabled, "version": record.version}


async def create_rule(
    session: AsyncSession,
    change: Change,
    scope: QueryScope,
    data: Mapping[str, Any],
    *,
    enabled: bool = True,
    tenant: str | None = None,
) -> AlertRuleRecord:
    """A rule from `data` (the fields of `AlertRule`), stored as validated (`definition`)."""
    change.principal.require(CONFIGURE)
    tenant_id = await resolve_tenant(session, change.principal, tenant)
    rule = await _checked_rule(session, scope, tenant_id, data)
    await _rule_name_free(session, tenant_id, rule.name)
    now = change.now()
    record = AlertRuleRecord(
        id=uuid7(now),
        tenant_id=tenant_id,
        name=rule.name,
        definition=rule.model_dump(mode="json"),
        enabled=enabled,
        version=1,
        created_by=change.principal.actor,
        created_at=now,
        updated_at=now,
    )
    session.add(record)
    await session.flush()
    await audit.append(
        session,
        change,
        action="alert.rule.create",
        target=f"alert_rule:{record.id}",
        tenant_id=tenant_id,
        after=_rule_summary(record),
    )
    return record


async def update_rule(
    session: AsyncSession,
    change: Change,
    scope: QueryScope,
    record: AlertRuleRecord,
    data: Mapping[str, Any] | None,
    *,
    merge: bool,
    enabled: bool | None = None,
) -> AlertRuleRecord:
    """Replace the definition (PUT) or merge top-level fields into it (`merge`, PATCH), and/or
    enable or disable the rule; a change bumps `version` and `updated_at`."""
    change.principal.require(CONFIGURE)
    before = _rule_summary(record)
    if data is not None:
        given = {**record.definition, **data} if merge else dict(data)
        rule = await _checked_rule(session, scope, record.tenant_id, given)
        if rule.name != record.name:
            await _rule_name_free(session, record.tenant_id, rule.name)
        record.name = rule.name
        record.definition = rule.model_dump(mode="json")
    if enabled is not None:
        record.enabled = enabled
    if _rule_summary(record) == before:
        return record
    record.version += 1  # what the engine watches to take the change in
    record.updated_at = change.now()
    await session.flush()
    await audit.append_changes(
        session,
        change,
        action="alert.rule.update",
        target=f"alert_rule:{record.id}",
        tenant_id=record.tenant_id,
        before=before,
        after=_rule_summary(record),
    )
    return record


async def delete_rule(session: AsyncSession, change: Change, record: AlertRuleRecord) -> None:
    """Delete a rule; its alerts and remediation actions go with it (foreign keys cascade), and
    the audit record counts them. Incidents and notifications stay, as history."""
    change.principal.require(CONFIGURE)
    counts = (
        await session.execute(
            select(
                func.count(AlertRecord.id),
                func.count(AlertRecord.open_fingerprint),
            ).where(AlertRecord.rule_id == record.id)
        )
    ).one()
    before = {**_rule_summary(record), "alerts": counts[0], "open_alerts": counts[1]}
    await session.delete(record)
    await session.flush()
    await audit.append(
        session,
        change,
        action="alert.rule.delete",
        target=f"alert_rule:{record.id}",
        tenant_id=record.tenant_id,
        before=before,
    )


async def get_rule(session: AsyncSession, principal: Principal, rule_id: str) -> AlertRuleRecord:
    row: AlertRuleRecord = await fetch_one(
        session, principal, AlertRuleRecord, rule_id, "alert rule"
    )
    return row


async def list_rules(
    session: AsyncSession,
    principal: Principal,
    *,
    enabled: bool | None = None,
    limit: int,
    cursor: str | None,
) -> tuple[list[AlertRuleRecord], str | None]:
    principal.require(READ)
    stmt = select(AlertRuleRecord).where(principal.tenant_filter(AlertRuleRecord.tenant_id))
    if enabled is not None:
        stmt = stmt.where(AlertRuleRecord.enabled == enabled)
    return await fetch_page(session, stmt, AlertRuleRecord.id, limit=limit, cursor=cursor)


# --- channels ------------------------------------------------------------------------------------


def _channel_summary(channel: AlertChannel) -> dict[str, Any]:
    """What the audit trail keeps of a channel: never its secret, only whether it has one."""
    return {
        "name": channel.name,
        "kind": channel.kind,
        "url": channel.url,
        "has_secret": channel.secret is not None,
        "settings": channel.settings,
        "enabled": channel.enabled,
    }


async def _channel_name_free(session: AsyncSession, tenant_id: str, name: str) -> None:
    taken = await session.scalar(
        select(AlertChannel.id).where(
            AlertChannel.tenant_id == tenant_id, AlertChannel.name == name
        )
    )
    if taken:
        raise Conflict(f"channel {name!r} exists already", field="name")


async def create_channel(
    session: AsyncSession,
    change: Change,
    *,
    name: str,
    kind: str,
    url: str,
    secret: str | None = None,
    settings: Mapping[str, Any] | None = None,
    enabled: bool = True,
    tenant: str | None = None,
) -> AlertChannel:
    change.principal.require(CONFIGURE)
    checked = validate_channel(kind, url, secret, dict(settings or {}))
    tenant_id = await resolve_tenant(session, change.principal, tenant)
    await _channel_name_free(session, tenant_id, name)
    now = change.now()
    channel = AlertChannel(
        id=uuid7(now),
        tenant_id=tenant_id,
        name=name,
        kind=kind,
        url=url,
        secret=secret or None,
        settings=checked,
        enabled=enabled,
        created_by=change.principal.actor,
        created_at=now,
        updated_at=now,
    )
    session.add(channel)
    await session.flush()
    await audit.append(
        session,
        change,
        action="alert.channel.create",
        target=f"alert_channel:{channel.id}",
        tenant_id=tenant_id,
        after=_channel_summary(channel),
    )
    return channel


@dataclass(frozen=True)
class ChannelChanges:
    """The fields a PATCH sets; None leaves one as it is (`secret_set` tells a cleared secret)."""

    name: str | None = None
    kind: str | None = None
    url: str | None = None
    secret: str | None = None
    secret_set: bool = False
    settings: Mapping[str, Any] | None = None
    enabled: bool | None = None


async def update_channel(
    session: AsyncSession, change: Change, channel: AlertChannel, changes: ChannelChanges
) -> AlertChannel:
    change.principal.require(CONFIGURE)
    before = _channel_summary(channel)
    secret = (changes.secret or None) if changes.secret_set else channel.secret
    kind = changes.kind or channel.kind
    url = changes.url or channel.url
    settings = dict(changes.settings) if changes.settings is not None else channel.settings
    checked = validate_channel(kind, url, secret, settings)
    if changes.name is not None and changes.name != channel.name:
        await _channel_name_free(session, channel.tenant_id, changes.name)
        channel.name = changes.name
    secret_changed = secret != channel.secret
    channel.kind, channel.url, channel.secret, channel.settings = kind, url, secret, checked
    if changes.enabled is not None:
        channel.enabled = changes.enabled
    after = _channel_summary(channel)
    if secret_changed and before["has_secret"] and after["has_secret"]:
        after["secret_replaced"] = True  # noted, never the value
    if after == before:
        return channel
    channel.updated_at = change.now()
    await session.flush()
    await audit.append_changes(
        session,
        change,
        action="alert.channel.update",
        target=f"alert_channel:{channel.id}",
        tenant_id=channel.tenant_id,
        before=before,
        after=after,
    )
    return channel


async def delete_channel(session: AsyncSession, change: Change, channel: AlertChannel) -> None:
    """Delete a channel no rule sends to (its notifications stay in the log, without it)."""
    change.principal.require(CONFIGURE)
    rules = await session.scalars(
        select(AlertRuleRecord).where(AlertRuleRecord.tenant_id == channel.tenant_id)
    )
    users = sorted(r.name for r in rules if channel.id in r.definition.get("channels", ()))
    if users:
        raise Conflict(
            f"channel {channel.name!r} is used by the rules {', '.join(map(repr, users))}: "
            "take it out of them first",
            code="channel_in_use",
            rules=users,
        )
    before = _channel_summary(channel)
    await session.delete(channel)
    await session.flush()
    await audit.append(
        session,
        change,
        action="alert.channel.delete",
        target=f"alert_channel:{channel.id}",
        tenant_id=channel.tenant_id,
        before=before,
    )


async def get_channel(session: AsyncSession, principal: Principal, channel_id: str) -> AlertChannel:
    row: AlertChannel = await fetch_one(session, principal, AlertChannel, channel_id, "channel")
    return row


async def list_channels(
    session: AsyncSession,
    principal: Principal,
    *,
    kind: str | None = None,
    limit: int,
    cursor: str | None,
) -> tuple[list[AlertChannel], str | None]:
    principal.require(READ)
    stmt = select(AlertChannel).where(principal.tenant_filter(AlertChannel.tenant_id))
    if kind is not None:
        stmt = stmt.where(AlertChannel.kind == kind)
    return await fetch_page(session, stmt, AlertChannel.id, limit=limit, cursor=cursor)


# --- silences ------------------------------------------------------------------------------------


def parse_matchers(texts: Sequence[str], field: str) -> tuple[Matcher, ...]:
    if not texts:
        raise Invalid("give at least one matcher, e.g. site=oslo-3", field=field)
    if len(texts) > MAX_MATCHERS:
        raise Invalid(f"at most {MAX_MATCHERS} matchers", field=field)
    parsed = []
    for i, text in enumerate(texts):
        try:
            parsed.append(Matcher.parse(text))
        except ValueError as exc:
            raise Invalid(str(exc), field=f"{field}.{i}") from None
    return tuple(parsed)


def silence_state(silence: AlertSilence, now: datetime) -> str:
    if silence.ends_at <= now:
        return "expired"
    return "pending" if silence.starts_at > now else "active"


async def create_silence(
    session: AsyncSession,
    change: Change,
    *,
    matchers: Sequence[str],
    comment: str,
    starts_at: datetime | None = None,
    ends_at: datetime | None = None,
    duration: float | None = None,
    tenant: str | None = None,
) -> AlertSilence:
    """Mute the tenant's alerts that match every matcher, from `starts_at` (default now) to
    `ends_at` or for `duration` seconds. Like Alertmanager's, a silence needs a comment."""
    change.principal.require(WRITE)
    parsed = parse_matchers(matchers, "matchers")
    if not comment.strip():
        raise Invalid("say why: a silence needs a comment", field="comment")
    now = change.now()
    start = starts_at or now
    if (ends_at is None) == (duration is None):
        raise Invalid("give either ends_at or duration", field="ends_at")
    end = ends_at if ends_at is not None else start + timedelta(seconds=duration or 0)
    if end <= start:
        raise Invalid("the silence must end after it starts", field="ends_at")
    if end <= now:
        raise Invalid("the silence would have ended already", field="ends_at")
    tenant_id = await resolve_tenant(session, change.principal, tenant)
    silence = AlertSilence(
        id=uuid7(now),
        tenant_id=tenant_id,
        matchers=[t.strip() for t in matchers],
        starts_at=start,
        ends_at=end,
        author=change.principal.actor,
        comment=comment.strip(),
        created_at=now,
        updated_at=now,
    )
    Silence(silence.id, parsed, start, end, silence.author, silence.comment)  # the core's checks
    session.add(silence)
    await session.flush()
    await audit.append(
        session,
        change,
        action="alert.silence.create",
        target=f"alert_silence:{silence.id}",
        tenant_id=tenant_id,
        after={
            "matchers": silence.matchers,
            "starts_at": iso(start),
            "ends_at": iso(end),
            "comment": silence.comment,
        },
    )
    return silence


async def expire_silence(session: AsyncSession, change: Change, silence: AlertSilence) -> None:
    """End a silence now; it stays, expired, for the record."""
    change.principal.require(WRITE)
    now = change.now()
    if silence_state(silence, now) == "expired":
        raise Conflict(f"silence {silence.id} has expired already", code="expired")
    before = {"starts_at": iso(silence.starts_at), "ends_at": iso(silence.ends_at)}
    silence.starts_at = min(silence.starts_at, now)
    silence.ends_at = now
    silence.updated_at = now
    await session.flush()
    await audit.append(
        session,
        change,
        action="alert.silence.expire",
        target=f"alert_silence:{silence.id}",
        tenant_id=silence.tenant_id,
        before=before,
        after={"starts_at": iso(silence.starts_at), "ends_at": iso(now)},
    )


async def get_silence(session: AsyncSession, principal: Principal, silence_id: str) -> AlertSilence:
    row: AlertSilence = await fetch_one(session, principal, AlertSilence, silence_id, "silence")
    return row


async def list_silences(
    session: AsyncSession,
    principal: Principal,
    *,
    state: str | None,
    now: datetime,
    limit: int,
    cursor: str | None,
) -> tuple[list[AlertSilence], str | None]:
    """Silences, newest first; `state` is active, pending or expired at `now`."""
    principal.require(READ)
    stmt = select(AlertSilence).where(principal.tenant_filter(AlertSilence.tenant_id))
    if state == "expired":
        stmt = stmt.where(AlertSilence.ends_at <= now)
    elif state == "pending":
        stmt = stmt.where(AlertSilence.starts_at > now, AlertSilence.ends_at > now)
    elif state == "active":
        stmt = stmt.where(AlertSilence.starts_at <= now, AlertSilence.ends_at > now)
    elif state is not None:
        raise Invalid(f"state: one of {', '.join(SILENCE_STATES)}", field="state")
    return await fetch_page(
        session, stmt, AlertSilence.id, limit=limit, cursor=cursor, newest_first=True
    )


# --- inhibit rules -------------------------------------------------------------------------------


async def create_inhibit_rule(
    session: AsyncSession,
    change: Change,
    *,
    name: str,
    source: Sequence[str],
    target: Sequence[str],
    equal: Sequence[str] = (),
    tenant: str | None = None,
) -> AlertInhibitRule:
    """While an alert matching `source` fires, alerts matching `target` with the same values of
    the `equal` labels are muted (a gateway offline mutes its devices' offline alerts)."""
    change.principal.require(CONFIGURE)
    parse_matchers(source, "source")
    parse_matchers(target, "target")
    try:
        InhibitRule.parse(source, target, equal, name)
    except ValueError as exc:
        raise Invalid(str(exc), field="equal") from None
    tenant_id = await resolve_tenant(session, change.principal, tenant)
    taken = await session.scalar(
        select(AlertInhibitRule.id).where(
            AlertInhibitRule.tenant_id == tenant_id, AlertInhibitRule.name == name
        )
    )
    if taken:
        raise Conflict(f"inhibit rule {name!r} exists already", field="name")
    now = change.now()
    rule = AlertInhibitRule(
        id=uuid7(now),
        tenant_id=tenant_id,
        name=name,
        source=[t.strip() for t in source],
        target=[t.strip() for t in target],
        equal=list(equal),
        created_by=change.principal.actor,
        created_at=now,
        updated_at=now,
    )
    session.add(rule)
    await session.flush()
    await audit.append(
        session,
        change,
        action="alert.inhibit_rule.create",
        target=f"alert_inhibit_rule:{rule.id}",
        tenant_id=tenant_id,
        after={"name": name, "source": rule.source, "target": rule.target, "equal": rule.equal},
    )
    return rule


async def delete_inhibit_rule(
    session: AsyncSession, change: Change, rule: AlertInhibitRule
) -> None:
    change.principal.require(CONFIGURE)
    before = {"name": rule.name, "source": rule.source, "target": rule.target, "equal": rule.equal}
    await session.delete(rule)
    await session.flush()
    await audit.append(
        session,
        change,
        action="alert.inhibit_rule.delete",
        target=f"alert_inhibit_rule:{rule.id}",
        tenant_id=rule.tenant_id,
        before=before,
    )


async def get_inhibit_rule(
    session: AsyncSession, principal: Principal, rule_id: str
) -> AlertInhibitRule:
    row: AlertInhibitRule = await fetch_one(
        session, principal, AlertInhibitRule, rule_id, "inhibit rule"
    )
    return row


async def list_inhibit_rules(
    session: AsyncSession, principal: Principal, *, limit: int, cursor: str | None
) -> tuple[list[AlertInhibitRule], str | None]:
    principal.require(READ)
    stmt = select(AlertInhibitRule).where(principal.tenant_filter(AlertInhibitRule.tenant_id))
    return await fetch_page(session, stmt, AlertInhibitRule.id, limit=limit, cursor=cursor)
