"""`Query` → a SQLAlchemy WHERE clause over `Device`, for SQLite and PostgreSQL alike.

Every leaf compiles to a two-valued predicate (never SQL NULL): nullable columns are guarded
and JSON look-ups end in `ELSE false`. That is what makes `NOT q` match exactly the devices
`q` does not, and `!=` / `NOT IN` exactly the negation of `=` / `IN`.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    Boolean,
    ColumnElement,
    Numeric,
    SQLColumnExpression,
    String,
    and_,
    case,
    cast,
    exists,
    false,
    func,
    literal,
    literal_column,
    not_,
    or_,
    select,
    true,
    type_coerce,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import aliased

from fleetkeeper.errors import BadRequest, Invalid
from fleetkeeper.query.ast import (
    ATTRIBUTES_PREFIX,
    FIELD_KINDS,
    And,
    Comparison,
    Everything,
    InGroup,
    Membership,
    Not,
    OperandError,
    Or,
    Query,
    Tag,
    Value,
    attribute_path,
    bool_operand,
    flag_operand,
    is_number,
    json_operand,
    known_fields,
    metric_name,
    metric_operand,
    text_operand,
    time_operand,
    version_operand,
)
from fleetkeeper.query.parser import parse
from fleetkeeper.store.models import (
    Device,
    DeviceHealth,
    DeviceModel,
    DeviceTag,
    GroupMember,
    TelemetryLatest,
)
from fleetkeeper.store.types import UTCDateTime

MAX_GROUP_NESTING = 8
# Under their own names, so a statement that also selects from these tables (the fleet
# overview joins telemetry_latest to devices) does not correlate the subquery away.
_Reading = aliased(TelemetryLatest, name="reading")
_Flag = aliased(DeviceHealth, name="health_flag")

_TEXT_COLUMNS: dict[str, ColumnElement[Any]] = {
    "id": Device.id.expression,
    "serial": Device.serial.expression,
    "name": Device.name.expression,
    "tenant": Device.tenant_id.expression,
    "state": Device.state.expression,
    "hardware_revision": Device.hardware_revision.expression,
}
_TIME_COLUMNS: dict[str, ColumnElement[Any]] = {
    "last_seen": Device.last_seen.expression,
    "created_at": Device.created_at.expression,
    "updated_at": Device.updated_at.expression,
}
_NULLABLE = frozenset({"hardware_revision", "firmware_version", "last_seen"})
_ORDER: dict[str, Callable[[Any, Any], ColumnElement[bool]]] = {
    "=": operator.eq,
    "<": operator.lt,
    ">": operator.gt,
    "<=": operator.le,
    ">=": operator.ge,
}
# JSON type names as each database reports them (json_type / jsonb_typeof).
_JSON_KINDS = {
    "sqlite": {"number": ("integer", "real"), "string": ("text",), "null": "null"},
    "postgresql": {"number": ("number",), "string": ("string",), "null": "null"},
}


@dataclass(frozen=True)
class GroupRef:
    """A group as the compiler needs it. `query` None: a static group (explicit members).

    `tenant_id`, when set, confines a dynamic group to its tenant's devices.
    """

    id: int
    query: str | None
    tenant_id: str | None = None


@dataclass(frozen=True)
class CompileContext:
    dialect: str  # "sqlite" | "postgresql"
    now: datetime  # aware UTC
    online_window: timedelta
    groups: Mapping[str, GroupRef]  # the groups visible to the caller, by name
    # Device models with their own grace (DeviceModel.offline_after_seconds), by model id:
    # their devices are online when seen within it instead of the online window.
    offline_after: Mapping[int, timedelta] = field(default_factory=dict)


def compile_query(query: Query, ctx: CompileContext) -> ColumnElement[bool]:
    """A WHERE clause over `Device` selecting the devices `query` matches.

    Raises BadRequest for an unknown group, a cycle of dynamic groups, or a value that does
    not fit its field (the parser already refuses those, so only hand-built queries hit it).
    """
    if ctx.dialect not in _JSON_KINDS:
        raise ValueError(f"unsupported dialect {ctx.dialect!r}")
    return _Compiler(ctx, ()).compile(query)


def field_expression(
    name: str,
    dialect: str,
    *,
    now: datetime | None = None,
    online_window: timedelta | None = None,
    offline_after: Mapping[int, timedelta] | None = None,
) -> ColumnElement[Any]:
    """The SQL expression to group devices by: a plain field, `attributes.KEY` or a metric.

    Raises Invalid for an unknown field (it names no query, so it is no syntax error).
    Needs no join: `model` and metrics are correlated subqueries. `attributes.KEY` is the
    value as text (strings bare, numbers and booleans as JSON, missing or null as NULL); a
    metric is the latest value (NULL without a reading). `online` needs `now` and
    `online_window`, and honours the models' own grace given in `offline_after`.
    """
    if name == "model":
        return _model_name()
    if name in _TEXT_COLUMNS:
        return _TEXT_COLUMNS[name]
    if name in _TIME_COLUMNS:
        return _TIME_COLUMNS[name]
    if name == "firmware_version":
        return Device.firmware_version.expression
    if name == "online":
        if now is None or online_window is None:
            raise Invalid("grouping by online needs the current time and the online window")
        return online_expression(now, online_window, offline_after or {})
    if name == "health":
        raise Invalid(
            "devices cannot be grouped by health: a device may carry several flags "
            "(the fleet overview counts devices by flag)"
        )
    if name.startswith(ATTRIBUTES_PREFIX):
        keys = _path(name, Invalid)
        if dialect == "postgresql":
            return func.jsonb_extract_path_text(Device.attributes, *keys)
        return _sqlite_attribute_text(keys)
    try:
        metric = metric_name(name)
    except OperandError as exc:
        raise Invalid(str(exc)) from None
    if metric is not None:
        return (
            select(_Reading.value)
            .where(_Reading.device_id == Device.id, _Reading.metric == metric)
            .scalar_subquery()
        )
    raise Invalid(f"unknown field {name!r}; known fields are {known_fields()}")


def online_expression(
    now: datetime, online_window: timedelta, offline_after: Mapping[int, timedelta]
) -> ColumnElement[bool]:
    """Seen within the device's grace: its model's `offline_after`, else the online window.

    Never NULL. The plain bound on `last_seen` comes first so ix_devices_last_seen can serve
    it; the per-model CASE only refines what that range admits.
    """
    default = now - online_window
    seen = Device.last_seen.is_not(None)
    if not offline_after:
        return and_(seen, Device.last_seen >= default)
    by_grace: dict[timedelta, list[int]] = {}
    for model_id, grace in sorted(offline_after.items()):
        by_grace.setdefault(grace, []).append(model_id)
    earliest = min(default, now - max(by_grace))
    cutoff = case(
        *(
            (Device.model_id.in_(ids), literal(now - grace, UTCDateTime()))
            for grace, ids in by_grace.items()
        ),
        else_=literal(default, UTCDateTime()),
    )
    return and_(seen, Device.last_seen >= earliest, Device.last_seen >= cutoff)


def _model_name() -> ColumnElement[Any]:
    return select(DeviceModel.name).where(DeviceModel.id == Device.model_id).scalar_subquery()


def _sqlite_attribute_text(keys: tuple[str, ...]) -> ColumnElement[Any]:
    path = _sqlite_path(keys)
    kind = func.json_type(Device.attributes, path)
    value = func.json_extract(Device.attributes, path)
    return case(
        (kind.in_(("true", "false")), kind),
        (kind == "null", None),
        else_=cast(value, String),
    )


def _path(name: str, error: type[BadRequest | Invalid] = BadRequest) -> tuple[str, ...]:
    try:
        return attribute_path(name)
    except OperandError as exc:
        raise error(str(exc), field=name) from None


def _sqlite_path(keys: tuple[str, ...]) -> ColumnElement[str]:
    """The JSON path as an SQL literal, not a parameter: SQLite matches an expression index
    (`store.indexes.attribute_index`) only when the query spells the same literal path.
    Keys hold only letters, digits, `_` and `-` (the parser checks), so quoting is safe."""
    return literal_column("'$" + "".join(f'."{key}"' for key in keys) + "'", String)


def _equals(column: SQLColumnExpression[Any], value: Value, text: str) -> ColumnElement[bool]:
    """Exact equality, or a case-insensitive LIKE when the value has wildcards."""
    if value.is_wildcard:
        return column.ilike(value.like_pattern(), escape="\\")
    return column == text


def _bool_case(condition: ColumnElement[bool], then: ColumnElement[Any]) -> ColumnElement[bool]:
    """`then` where `condition` holds, false elsewhere (CASE fixes the evaluation order)."""
    return type_coerce(case((condition, then), else_=false()), Boolean)


class _Compiler:
    def __init__(self, ctx: CompileContext, groups_open: tuple[str, ...]) -> None:
        self.ctx = ctx
        self.pg = ctx.dialect == "postgresql"
        self.groups_open = groups_open  # the dynamic groups being expanded, outermost first

    def compile(self, query: Query) -> ColumnElement[bool]:
        match query:
            case Everything():
                return true()
            case And(operands=operands):
                return and_(*(self.compile(o) for o in operands))
            case Or(operands=operands):
                return or_(*(self.compile(o) for o in operands))
            case Not(operand=operand):
                return not_(self.compile(operand))
            case Comparison(field=name, op="!=", value=value):
                return not_(self.comparison(name, "=", value))
            case Comparison(field=name, op=op, value=value):
                return self.comparison(name, op, value)
            case Membership(field=name, values=values, negated=negated):
                matched = or_(*(self.comparison(name, "=", v) for v in values))
                return not_(matched) if negated else matched
            case Tag(name=value):
                tag = _equals(DeviceTag.tag, value, value.text)
                return exists().where(DeviceTag.device_id == Device.id, tag)
            case InGroup(name=name):
                return self.group(name)
        raise TypeError(f"not a query node: {query!r}")

    def comparison(self, name: str, op: str, value: Value) -> ColumnElement[bool]:
        try:
            if name.startswith(ATTRIBUTES_PREFIX):
                return self.attribute(_path(name), op, value)
            metric = metric_name(name)
            if metric is not None:
                return self.metric(metric, op, value)
            kind = FIELD_KINDS.get(name)
            if kind == "text":
                return self.text(name, op, value)
            if kind == "version":
                return self.firmware(op, value)
            if kind == "time":
                return self.time(name, op, value)
            if kind == "bool":
                ctx = self.ctx
                matched = online_expression(ctx.now, ctx.online_window, ctx.offline_after)
                return matched if bool_operand(op, value) else not_(matched)
            if kind == "flag":
                return self.health(op, value)
        except OperandError as exc:
            raise BadRequest(str(exc), field=name, position=value.position) from None
        raise BadRequest(f"unknown field {name!r}", field=name)

    def metric(self, metric: str, op: str, value: Value) -> ColumnElement[bool]:
        # EXISTS keeps a device without the reading two-valued: it matches no comparison, so
        # `NOT battery < 20` includes it. PostgreSQL plans it as a (anti-)semi-join that can
        # use ix_telemetry_latest_metric_value; SQLite probes the primary key per device.
        operand = metric_operand(op, value)
        reading = and_(_Reading.device_id == Device.id, _Reading.metric == metric)
        if operand is None:
            return not_(exists().where(reading))
        return exists().where(reading, _ORDER[op](_Reading.value, operand))

    def health(self, op: str, value: Value) -> ColumnElement[bool]:
        operand = flag_operand(op, value)
        carries = _Flag.device_id == Device.id
        if operand is None:
            return not_(exists().where(carries))
        if value.pattern == "*":  # any flag
            return exists().where(carries)
        return exists().where(carries, _equals(_Flag.flag, value, operand))

    def text(self, name: str, op: str, value: Value) -> ColumnElement[bool]:
        operand = text_operand(op, value)
        # model: model_id IN (SELECT id FROM device_models WHERE name ...), a small lookup.
        column = DeviceModel.name if name == "model" else _TEXT_COLUMNS[name]
        if operand is None:
            matched: ColumnElement[bool] = column.is_(None)
        elif op == "=":
            matched = _equals(column, value, operand)
        else:
            matched = _ORDER[op](column.collate("C") if self.pg else column, operand)
        if operand is not None and name in _NULLABLE:
            matched = and_(column.is_not(None), matched)
        if name == "model":
            return Device.model_id.in_(select(DeviceModel.id).where(matched))
        return matched

    def firmware(self, op: str, value: Value) -> ColumnElement[bool]:
        operand = version_operand(op, value)
        if operand is None:
            return Device.firmware_version.is_(None)
        if value.is_wildcard:
            pattern = _equals(Device.firmware_version, value, operand)
            return and_(Device.firmware_version.is_not(None), pattern)
        key = Device.firmware_key
        if op == "=":
            return and_(key.is_not(None), key == operand)
        # Free-form firmware (key "~text", see versions.firmware_key) is no version: no order.
        return and_(key.is_not(None), key < "~", _ORDER[op](key, operand))

    def time(self, name: str, op: str, value: Value) -> ColumnElement[bool]:
        operand = time_operand(op, value)
        column = _TIME_COLUMNS[name]
        if operand is None:
            return column.is_(None)
        when = self.ctx.now - operand if isinstance(operand, timedelta) else operand
        matched = _ORDER[op](column, when)
        if name == "last_seen" and op in {"<", "<="}:
            return or_(column.is_(None), matched)  # never seen counts as long ago
        if name in _NULLABLE:
            return and_(column.is_not(None), matched)
        return matched

    def attribute(self, keys: tuple[str, ...], op: str, value: Value) -> ColumnElement[bool]:
        operand = json_operand(op, value)
        kinds = _JSON_KINDS[self.ctx.dialect]
        if self.pg:
            kind = func.jsonb_typeof(func.jsonb_extract_path(Device.attributes, *keys))
            as_text = func.jsonb_extract_path_text(Device.attributes, *keys)
        else:
            path = _sqlite_path(keys)
            kind = func.json_type(Device.attributes, path)
            as_text = func.json_extract(Device.attributes, path)
        if operand is None:
            return func.coalesce(kind, "null") == "null"  # missing or JSON null
        if isinstance(operand, str) and value.is_wildcard:
            pattern = _equals(as_text, value, operand)
            return _bool_case(kind.in_(kinds["string"]), pattern)
        if op == "=" and self.pg:
            # Containment is what the GIN index ix_devices_attributes (jsonb_path_ops) serves.
            contains = Device.attributes.op("@>", is_comparison=True)
            return contains(cast(literal(_containing(keys, value)), JSONB))
        if op == "=" and isinstance(operand, str):
            # Equality first, so an expression index on the attribute can serve it; `IS`
            # keeps the whole never NULL (missing key: false), as NOT needs.
            return and_(as_text == operand, kind.is_(literal("text")))
        if isinstance(operand, bool):
            return func.coalesce(kind, "") == ("true" if operand else "false")
        if isinstance(operand, str):
            compared = as_text.collate("C") if self.pg else as_text
            return _bool_case(kind.in_(kinds["string"]), _ORDER[op](compared, operand))
        stored: Any = as_text
        number: Any = operand
        if self.pg:
            stored = cast(as_text, Numeric)
            number = literal(Decimal(value.pattern), Numeric)
        return _bool_case(kind.in_(kinds["number"]), _ORDER[op](stored, number))

    def group(self, name: str) -> ColumnElement[bool]:
        ref = self.ctx.groups.get(name)
        if ref is None:
            raise BadRequest(f"unknown group {name!r}", group=name)
        if ref.query is None:
            member = and_(GroupMember.device_id == Device.id, GroupMember.group_id == ref.id)
            return exists().where(member)
        if name in self.groups_open:
            chain = " → ".join((*self.groups_open[self.groups_open.index(name) :], name))
            raise BadRequest(f"group {name!r} refers to itself: {chain}", group=name)
        if len(self.groups_open) >= MAX_GROUP_NESTING:
            raise BadRequest(
                f"groups nested too deeply at {name!r}: at most {MAX_GROUP_NESTING} levels",
                group=name,
            )
        try:
            query = parse(ref.query)
        except BadRequest as exc:
            raise BadRequest(f"group {name!r} has an invalid query: {exc.detail}") from None
        matched = _Compiler(self.ctx, (*self.groups_open, name)).compile(query)
        if ref.tenant_id is not None:
            matched = and_(Device.tenant_id == ref.tenant_id, matched)
        return matched


def _containing(keys: tuple[str, ...], value: Value) -> str:
    """The JSON object `{"a": {"b": value}}` for `attributes.a.b = value`."""
    scalar = json_operand("=", value)
    # Numbers keep their written form (JSON's grammar), so no float rounding sneaks in.
    text = value.pattern if is_number(value) else json.dumps(scalar)
    for key in reversed(keys):
        text = f"{{{json.dumps(key)}: {text}}}"
    return text
