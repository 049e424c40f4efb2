"""The fleet query as data: immutable nodes, the field catalogue, and what a value means.

A query is a tree of `Comparison`, `Membership`, `Tag` and `InGroup` leaves joined by `And`,
`Or` and `Not`; `Everything` is the empty query. Positions are 0-based character offsets into
the query text and take no part in equality, so `parse(unparse(q)) == q`.

Values keep the text the user wrote in *glob form*: an unescaped `*` or `?` is a wildcard and
a backslash escapes a literal `*`, `?` or `\\`. What a value means depends on the field it is
compared with, so the interpretation lives here as small functions the parser (to report
errors early, with a position) and the compiler (to build SQL) both use.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from fleetkeeper.versions import InvalidVersion, firmware_key, version_key

Kind = Literal["text", "version", "time", "bool", "metric", "flag"]
Op = Literal["=", "!=", "<", ">", "<=", ">="]

# The plain fields, named as the device JSON names them, and how their values are read.
FIELD_KINDS: dict[str, Kind] = {
    "id": "text",
    "serial": "text",
    "name": "text",
    "model": "text",
    "tenant": "text",
    "state": "text",
    "firmware_version": "version",
    "hardware_revision": "text",
    "online": "bool",
    "last_seen": "time",
    "created_at": "time",
    "updated_at": "time",
    "health": "flag",
    # Shorthands for the metrics every fleet has: `battery` is `metrics.battery`.
    "battery": "metric",
    "rssi": "metric",
    "storage_used": "metric",
    "temperature": "metric",
    "humidity": "metric",
}
FIELDS: tuple[str, ...] = tuple(FIELD_KINDS)
ATTRIBUTES_PREFIX = "attributes."
METRICS_PREFIX = "metrics."
ORDERING: frozenset[str] = frozenset({"<", ">", "<=", ">="})

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_METRIC = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # as the device API accepts metric names
# JSON's number grammar: `3`, `-2.5`, `1e3` are numbers; `007`, `+3`, `.5` stay strings.
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")
_RELATIVE = re.compile(r"-([0-9]{1,6})([smhdw])")
_MAX_AGO = timedelta(days=36600)
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_GLOB_SPECIALS = frozenset("*?\\")


def _position() -> Any:
    # Where a node starts in the text; left out of equality so parsed and built trees compare.
    return field(default=0, compare=False)


class OperandError(ValueError):
    """A field or value that does not fit: `what` went wrong, and `detail` on how to fix it."""

    def __init__(self, what: str, detail: str) -> None:
        super().__init__(f"{what}: {detail}")
        self.what = what
        self.detail = detail


@dataclass(frozen=True)
class Value:
    """A value as written: `pattern` in glob form, `quoted` when it was a string literal."""

    pattern: str
    quoted: bool = False
    position: int = _position()

    @classmethod
    def of(cls, text: str, *, quoted: bool = True) -> Value:
        """The value that stands for `text` literally (no wildcards)."""
        escaped = "".join("\\" + c if c in _GLOB_SPECIALS else c for c in text)
        return cls(escaped, quoted)

    def chars(self) -> Iterator[tuple[str, bool]]:
        """Each character with whether it is literal (False for an unescaped `*` or `?`)."""
        escaped = False
        for c in self.pattern:
            if escaped:
                yield c, True
                escaped = False
            elif c == "\\":
                escaped = True
            else:
                yield c, c not in "*?"
        if escaped:
            yield "\\", True

    @property
    def text(self) -> str:
        return "".join(c for c, _ in self.chars())

    @property
    def is_wildcard(self) -> bool:
        return any(not literal for _, literal in self.chars())

    @property
    def keyword(self) -> str | None:
        """`null`, `true` or `false` when written bare (in any case), else None."""
        word = self.pattern.lower()
        if not self.quoted and word in {"null", "true", "false"}:
            return word
        return None

    def like_pattern(self) -> str:
        """The SQL LIKE pattern (escape character backslash) for this wildcard value."""
        out = []
        for c, literal in self.chars():
            if not literal:
                out.append("%" if c == "*" else "_")
            elif c in "%_\\":
                out.append("\\" + c)
            else:
                out.append(c)
        return "".join(out)


@dataclass(frozen=True)
class Comparison:
    field: str
    op: Op
    value: Value
    position: int = _position()


@dataclass(frozen=True)
class Membership:
    """`field IN (values)`, or `field NOT IN (values)` when negated."""

    field: str
    values: tuple[Value, ...]
    negated: bool = False
    position: int = _position()


@dataclass(frozen=True)
class Tag:
    name: Value
    position: int = _position()


@dataclass(frozen=True)
class InGroup:
    name: str
    position: int = _position()


@dataclass(frozen=True)
class Not:
    operand: Query


@dataclass(frozen=True)
class And:
    operands: tuple[Query, ...]


@dataclass(frozen=True)
class Or:
    operands: tuple[Query, ...]


@dataclass(frozen=True)
class Everything:
    """The empty query: every device."""


Query = Comparison | Membership | Tag | InGroup | Not | And | Or | Everything
JSONScalar = str | int | float | bool | None


def group_names(query: Query) -> set[str]:
    """The names used in `group:NAME` (directly; a dynamic group's own query is not read)."""
    match query:
        case InGroup(name=name):
            return {name}
        case Not(operand=operand):
            return group_names(operand)
        case And(operands=operands) | Or(operands=operands):
            names: set[str] = set()
            for operand in operands:
                names |= group_names(operand)
            return names
        case _:
            return set()


# -- What values mean -------------------------------------------------------------------------
# Each function raises OperandError, with messages meant for the person who wrote the query.


def attribute_path(name: str) -> tuple[str, ...]:
    """`attributes.a.b` → ("a", "b")."""
    keys = tuple(name[len(ATTRIBUTES_PREFIX) :].split("."))
    for key in keys:
        if not _KEY.fullmatch(key):
            raise OperandError(
                f"invalid attribute key {key!r} in {name!r}",
                "a key starts with a letter or _ and has only letters, digits, _ and -",
            )
    return keys


def metric_name(name: str) -> str | None:
    """The metric field `name` reads (`metrics.battery` and `battery`: "battery"), else None."""
    if name.startswith(METRICS_PREFIX):
        metric = name[len(METRICS_PREFIX) :]
        if not _METRIC.fullmatch(metric):
            raise OperandError(
                f"invalid metric name {metric!r} in {name!r}",
                "a metric name has 1 to 64 letters, digits, _, . and -",
            )
        return metric
    return name if FIELD_KINDS.get(name) == "metric" else None


def known_fields() -> str:
    return f"{', '.join(FIELDS)}, attributes.KEY and metrics.NAME"


def check_field(name: str) -> None:
    if name in FIELD_KINDS:
        return
    if name.startswith(ATTRIBUTES_PREFIX):
        attribute_path(name)
        return
    if name.startswith(METRICS_PREFIX):
        metric_name(name)
        return
    raise OperandError(f"unknown field {name!r}", f"known fields are {known_fields()}")


def _refuse_wildcard(value: Value, why: str) -> None:
    if value.is_wildcard:
        raise OperandError(
            f"unexpected wildcard in {value.pattern!r}", f"{why}; write \\* for a literal star"
        )


def _refuse_null_ordering(op: str, value: Value) -> None:
    if value.keyword == "null" and op in ORDERING:
        raise OperandError(f"null cannot be compared with {op}", "use = null or != null")


def text_operand(op: str, value: Value) -> str | None:
    """A text field's operand; None for `null`."""
    _refuse_null_ordering(op, value)
    if value.keyword == "null":
        return None
    if op in ORDERING:
        _refuse_wildcard(value, "wildcards work only with =, != and IN")
    return value.text


def version_operand(op: str, value: Value) -> str | None:
    """The firmware key to compare with (the text for a wildcard); None for `null`."""
    text = text_operand(op, value)
    if text is None or value.is_wildcard:
        return text
    if op not in ORDERING:
        key = firmware_key(text)
        assert key is not None
        return key
    try:
        return version_key(text)
    except InvalidVersion:
        raise OperandError(
            f"{text!r} is not a version",
            f"firmware_version {op} needs a version such as 2.10.0 or 1.0.0-rc1",
        ) from None


def time_operand(op: str, value: Value) -> timedelta | datetime | None:
    """How long ago (relative time), an aware UTC instant, or None for `null`."""
    _refuse_null_ordering(op, value)
    if value.keyword == "null":
        return None
    _refuse_wildcard(value, "time fields take no wildcards")
    text = value.text
    relative = _RELATIVE.fullmatch(text)
    if relative:
        ago = timedelta(**{_UNITS[relative.group(2)]: int(relative.group(1))})
        if ago > _MAX_AGO:
            raise OperandError(f"{text!r} reaches back too far", "at most 100 years")
        return ago
    try:
        when = datetime.fromisoformat(text)
        return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    except (ValueError, OverflowError):
        raise OperandError(
            f"{text!r} is not a time",
            "expected a relative time such as -45s, -30m, -1h, -7d, -2w "
            "or an ISO-8601 timestamp such as 2026-01-31T12:00:00Z",
        ) from None


def bool_operand(op: str, value: Value) -> bool:
    if op in ORDERING:
        raise OperandError(f"{op} on a true/false field", "use = or !=")
    word = value.text.lower()
    if word not in {"true", "false"}:
        raise OperandError(f"{value.text!r} is not true or false", "expected true or false")
    return word == "true"


def metric_operand(op: str, value: Value) -> float | None:
    """A metric's operand: a number, or None for `null` (no reading)."""
    _refuse_null_ordering(op, value)
    if value.keyword == "null":
        return None
    if not is_number(value):
        hint = "metrics compare with numbers, e.g. battery < 20 or metrics.rssi >= -90"
        if value.quoted and _NUMBER.fullmatch(value.pattern):
            hint = "write the number without quotes"
        raise OperandError(f"{value.text!r} is not a number", hint)
    number = float(value.pattern)
    if not math.isfinite(number):
        raise OperandError(f"{value.text!r} is out of range", "write a smaller number")
    return number


def flag_operand(op: str, value: Value) -> str | None:
    """A health flag (or wildcard) to look for; None for `null` (no flag at all)."""
    if op in ORDERING:
        raise OperandError(f"{op} on health", "use = or !=, e.g. health = faulty_sensor")
    if value.keyword == "null":
        return None
    return value.text


def is_number(value: Value) -> bool:
    return not value.quoted and bool(_NUMBER.fullmatch(value.pattern))


def json_operand(op: str, value: Value) -> JSONScalar:
    """An attribute operand: bare numbers, true, false and null are JSON; the rest strings."""
    scalar: JSONScalar
    if value.keyword is not None:
        scalar = {"null": None, "true": True, "false": False}[value.keyword]
    elif is_number(value):
        number = float(value.pattern)
        integral = number.is_integer() and not any(c in value.pattern for c in ".eE")
        scalar = int(value.pattern) if integral else number
    else:
        scalar = value.text
    if op in ORDERING:
        _refuse_null_ordering(op, value)
        if isinstance(scalar, bool):
            raise OperandError(f"{op} with {value.text}", "true and false compare only with =")
        _refuse_wildcard(value, "wildcards work only with =, != and IN")
    return scalar


def check_operand(name: str, op: str, value: Value) -> None:
    """Raise OperandError when `value` cannot be compared with field `name` by `op`."""
    if name.startswith(ATTRIBUTES_PREFIX):
        json_operand(op, value)
        return
    if metric_name(name) is not None:
        metric_operand(op, value)
        return
    match FIELD_KINDS[name]:
        case "text":
            text_operand(op, value)
        case "version":
            version_operand(op, value)
        case "time":
            time_operand(op, value)
        case "bool":
            bool_operand(op, value)
        case "flag":
            flag_operand(op, value)


# -- Back to text -----------------------------------------------------------------------------

_BARE = re.compile(r"(?:[^\s()\"',=!<>\\]|\\[*?\\])+")
_KEYWORDS = frozenset({"and", "or", "not", "in"})


def _value_text(value: Value) -> str:
    bare = not value.quoted and _BARE.fullmatch(value.pattern)
    if bare and value.pattern.lower() not in _KEYWORDS:
        return value.pattern
    body = value.pattern.replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    return f'"{body}"'


def _operand_text(query: Query) -> str:
    text = unparse(query)
    return f"({text})" if isinstance(query, And | Or) else text


def unparse(query: Query) -> str:
    """Query text that parses back to `query`."""
    match query:
        case Everything():
            return ""
        case Comparison(field=name, op=op, value=value):
            return f"{name} {op} {_value_text(value)}"
        case Membership(field=name, values=values, negated=negated):
            keyword = "NOT IN" if negated else "IN"
            return f"{name} {keyword} ({', '.join(_value_text(v) for v in values)})"
        case Tag(name=value):
            return "tag:" + _value_text(value)
        case InGroup(name=name):
            return "group:" + _value_text(Value.of(name, quoted=False))
        case Not(operand=operand):
            return "NOT " + _operand_text(operand)
        case And(operands=operands):
            return " AND ".join(_operand_text(o) for o in operands)
        case Or(operands=operands):
            return " OR ".join(_operand_text(o) for o in operands)
