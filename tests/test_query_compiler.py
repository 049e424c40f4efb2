"""The query compiler against real databases: each test asks which devices a query selects.

The fleet (built by the `fleet` fixture; times are relative to NOW):

    serial tenant model     firmware      hardware state       last seen  created  tags
    A      acme   sensor-v2 2.9.3         rev-a    active      1 min      30 d     prod, eu
    B      acme   sensor-v2 2.10.0        -        active      2 h        20 d     prod
    C      acme   gateway-x 1.0.0-rc1     rev-b    provisioned never      10 d
    D      globex gateway-x 1.0.0         rev-b    active      3 d        5 d      lab-1
    E      globex sensor-v2 -             -        retired     30 s       1 d
    F      globex sensor-v2 custom-build  -        active      10 d       1 h

Groups: `lab` (static: A, D), `new` (created_at > -7d), `new-sensors` (group:new AND model =
sensor-v2), `loop1` ⇄ `loop2` (a cycle), `broken` (a query that does not parse).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql.base import PGDialect

from fleetkeeper.errors import BadRequest, Invalid
from fleetkeeper.query import (
    FIELDS,
    CompileContext,
    GroupRef,
    compile_query,
    field_expression,
    parse,
)
from fleetkeeper.query.ast import Comparison, Value
from fleetkeeper.store.db import Database
from fleetkeeper.store.models import (
    Device,
    DeviceModel,
    DeviceTag,
    Group,
    GroupMember,
    Tenant,
)
from fleetkeeper.versions import firmware_key

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
WINDOW = timedelta(minutes=5)
ALL = ["A", "B", "C", "D", "E", "F"]


@dataclass(frozen=True)
class Spec:
    serial: str
    tenant: str = "acme"
    model: str = "sensor-v2"
    firmware: str | None = None
    hardware: str | None = None
    state: str = "active"
    seen: timedelta | None = None
    age: timedelta = timedelta(days=1)
    tags: tuple[str, ...] = ()
    attributes: dict[str, Any] = field(default_factory=dict)


FLEET = (
    Spec(
        "A",
        firmware="2.9.3",
        hardware="rev-a",
        seen=timedelta(minutes=1),
        age=timedelta(days=30),
        tags=("prod", "eu"),
        attributes={"site": "berlin", "floor": 3, "rack": {"row": "r1", "slot": 2}},
    ),
    Spec(
        "B",
        firmware="2.10.0",
        seen=timedelta(hours=2),
        age=timedelta(days=20),
        tags=("prod",),
        attributes={"site": "Berlin-Mitte", "floor": "3", "weight": 2.5},
    ),
    Spec(
        "C",
        model="gateway-x",
        firmware="1.0.0-rc1",
        hardware="rev-b",
        state="provisioned",
        age=timedelta(days=10),
        attributes={"site": "paris", "floor": 3.0, "enabled": True, "note": None},
    ),
    Spec(
        "D",
        tenant="globex",
        model="gateway-x",
        firmware="1.0.0",
        hardware="rev-b",
        seen=timedelta(days=3),
        age=timedelta(days=5),
        tags=("lab-1",),
        attributes={"site": "50%_off", "floor": 10, "enabled": False},
    ),
    Spec("E", tenant="globex", state="retired", seen=timedelta(seconds=30)),
    Spec(
        "F",
        tenant="globex",
        firmware="custom-build",
        seen=timedelta(days=10),
        age=timedelta(hours=1),
        attributes={"site": "a*b"},
    ),
)
GROUPS: dict[str, str | list[str]] = {
    "lab": ["A", "D"],
    "new": "created_at > -7d",
    "new-sensors": "group:new AND model = sensor-v2",
    "loop1": "group:loop2",
    "loop2": "state = active OR group:loop1",
    "broken": "serial = (",
}


class Fleet:
    def __init__(self, db: Database, groups: dict[str, GroupRef]) -> None:
        self.db = db
        self.ctx = CompileContext(dialect=db.dialect, now=NOW, online_window=WINDOW, groups=groups)

    async def match(self, text: str, ctx: CompileContext | None = None) -> list[str]:
        where = compile_query(parse(text), ctx or self.ctx)
        async with self.db.read() as session:
            return sorted((await session.scalars(select(Device.serial).where(where))).all())

    async def count_by(self, name: str) -> dict[Any, int]:
        expr = field_expression(name, self.db.dialect, now=NOW, online_window=WINDOW)
        stmt = select(expr, func.count()).select_from(Device).group_by(expr)
        async with self.db.read() as session:
            return {value: n for value, n in (await session.execute(stmt)).all()}


async def build_fleet(db: Database) -> Fleet:
    ids = {spec.serial: f"00000000-0000-0000-0000-00000000000{spec.serial}" for spec in FLEET}
    async with db.write() as session:
        session.add_all(Tenant(id=t, name=t.title(), created_at=NOW) for t in ("acme", "globex"))
        models = {
            name: DeviceModel(name=name, created_at=NOW, updated_at=NOW)
            for name in ("sensor-v2", "gateway-x")
        }
        session.add_all(models.values())
        await session.flush()
        for spec in FLEET:
            created = NOW - spec.age
            session.add(
                Device(
                    id=ids[spec.serial],
                    serial=spec.serial,
                    name=f"dev-{spec.serial.lower()}",
                    model_id=models[spec.model].id,
                    tenant_id=spec.tenant,
                    state=spec.state,
                    firmware_version=spec.firmware,
                    firmware_key=firmware_key(spec.firmware),
                    hardware_revision=spec.hardware,
                    attributes=spec.attributes,
                    last_seen=NOW - spec.seen if spec.seen else None,
                    created_at=created,
                    updated_at=created,
                )
            )
        await session.flush()
        session.add_all(DeviceTag(device_id=ids[s.serial], tag=t) for s in FLEET for t in s.tags)
        refs: dict[str, GroupRef] = {}
        for name, definition in GROUPS.items():
            query = definition if isinstance(definition, str) else None
            group = Group(tenant_id="acme", name=name, query=query, created_at=NOW, updated_at=NOW)
            session.add(group)
            await session.flush()
            refs[name] = GroupRef(id=group.id, query=query)
            if isinstance(definition, list):
                session.add_all(
                    GroupMember(group_id=group.id, device_id=ids[serial]) for serial in definition
                )
    return Fleet(db, refs)


@pytest.fixture
async def fleet(db: Database) -> Fleet:
    return await build_fleet(db)


# -- Plain fields -----------------------------------------------------------------------------


async def test_empty_query_matches_every_device(fleet: Fleet) -> None:
    assert await fleet.match("   ") == ALL


async def test_equality_on_a_text_field(fleet: Fleet) -> None:
    assert await fleet.match("state = provisioned") == ["C"]


async def test_text_ordering_is_byte_order(fleet: Fleet) -> None:
    assert await fleet.match("serial >= D") == ["D", "E", "F"]


async def test_model_compares_the_model_name(fleet: Fleet) -> None:
    assert await fleet.match("model = gateway-x") == ["C", "D"]


async def test_model_not_equal_is_every_other_model(fleet: Fleet) -> None:
    assert await fleet.match("model != gateway-x") == ["A", "B", "E", "F"]


async def test_tenant_compares_the_tenant_id(fleet: Fleet) -> None:
    assert await fleet.match("tenant = globex") == ["D", "E", "F"]


async def test_not_equal_includes_devices_without_the_field(fleet: Fleet) -> None:
    assert await fleet.match("hardware_revision != rev-a") == ["B", "C", "D", "E", "F"]


async def test_null_matches_a_missing_column_value(fleet: Fleet) -> None:
    assert await fleet.match("hardware_revision = null") == ["B", "E", "F"]


async def test_in_matches_any_listed_value(fleet: Fleet) -> None:
    assert await fleet.match("state IN (provisioned, retired)") == ["C", "E"]


async def test_not_in_includes_devices_without_the_field(fleet: Fleet) -> None:
    assert await fleet.match("hardware_revision NOT IN (rev-b)") == ["A", "B", "E", "F"]


async def test_in_list_mixes_models_by_name(fleet: Fleet) -> None:
    assert await fleet.match("model IN (gateway-x, nope)") == ["C", "D"]


# -- Firmware versions ------------------------------------------------------------------------


async def test_firmware_versions_compare_numerically(fleet: Fleet) -> None:
    assert await fleet.match("firmware_version < 2.10.0") == ["A", "C", "D"]


async def test_pre_release_sorts_before_its_release(fleet: Fleet) -> None:
    assert await fleet.match("firmware_version < 1.0.0") == ["C"]


async def test_firmware_equality_ignores_missing_zero_parts(fleet: Fleet) -> None:
    assert await fleet.match("firmware_version = 2.10") == ["B"]


async def test_free_form_firmware_matches_only_by_equality(fleet: Fleet) -> None:
    assert await fleet.match("firmware_version = custom-build") == ["F"]
    assert await fleet.match("firmware_version > 0.0.1") == ["A", "B", "C", "D"]


async def test_firmware_wildcard_matches_the_text(fleet: Fleet) -> None:
    assert await fleet.match("firmware_version = 2.*") == ["A", "B"]


async def test_firmware_not_equal_includes_devices_without_firmware(fleet: Fleet) -> None:
    assert await fleet.match("firmware_version != 2.9.3") == ["B", "C", "D", "E", "F"]


# -- Wildcards --------------------------------------------------------------------------------


async def test_wildcard_is_case_insensitive(fleet: Fleet) -> None:
    assert await fleet.match("attributes.site = BERLIN*") == ["A", "B"]


async def test_question_mark_matches_one_character(fleet: Fleet) -> None:
    assert await fleet.match("name = DEV-?") == ALL


async def test_escaped_star_is_a_literal_star(fleet: Fleet) -> None:
    assert await fleet.match(r"attributes.site = a\*b") == ["F"]
    assert await fleet.match(r'attributes.site = "a\*b"') == ["F"]


async def test_percent_and_underscore_are_literal_in_wildcards(fleet: Fleet) -> None:
    assert await fleet.match("attributes.site = *%_*") == ["D"]


async def test_wildcard_in_not_in_list(fleet: Fleet) -> None:
    assert await fleet.match("attributes.site NOT IN (berlin*, p*)") == ["D", "E", "F"]


# -- Time -------------------------------------------------------------------------------------


async def test_relative_time_counts_never_seen_as_long_ago(fleet: Fleet) -> None:
    assert await fleet.match("last_seen < -1h") == ["B", "C", "D", "F"]


async def test_relative_time_later_than(fleet: Fleet) -> None:
    assert await fleet.match("last_seen > -1h") == ["A", "E"]


async def test_never_seen_is_null(fleet: Fleet) -> None:
    assert await fleet.match("last_seen = null") == ["C"]


async def test_iso_timestamp_compares_instants(fleet: Fleet) -> None:
    assert await fleet.match("created_at > 2025-12-31T13:00:00+02:00") == ["E", "F"]


async def test_online_means_seen_within_the_window(fleet: Fleet) -> None:
    assert await fleet.match("online = true") == ["A", "E"]
    assert await fleet.match("online = false") == ["B", "C", "D", "F"]


# -- Tags and groups --------------------------------------------------------------------------


async def test_tag_matches_tagged_devices(fleet: Fleet) -> None:
    assert await fleet.match("tag:prod") == ["A", "B"]


async def test_tag_with_wildcard(fleet: Fleet) -> None:
    assert await fleet.match("tag:LAB-*") == ["D"]


async def test_static_group_matches_its_members(fleet: Fleet) -> None:
    assert await fleet.match("group:lab") == ["A", "D"]


async def test_dynamic_group_matches_its_query(fleet: Fleet) -> None:
    assert await fleet.match("group:new") == ["D", "E", "F"]


async def test_nested_dynamic_groups(fleet: Fleet) -> None:
    assert await fleet.match("group:new-sensors OR group:lab") == ["A", "D", "E", "F"]


async def test_dynamic_group_with_tenant_keeps_to_its_tenant(fleet: Fleet) -> None:
    new = fleet.ctx.groups["new"]
    groups = {"new": GroupRef(id=new.id, query=new.query, tenant_id="globex")}
    ctx = CompileContext(dialect=fleet.db.dialect, now=NOW, online_window=WINDOW, groups=groups)
    assert await fleet.match("group:new", ctx) == ["D", "E", "F"]
    groups["new"] = GroupRef(id=new.id, query=new.query, tenant_id="acme")
    assert await fleet.match("group:new", ctx) == []


async def test_group_cycle_is_refused(fleet: Fleet) -> None:
    with pytest.raises(BadRequest, match=r"refers to itself: loop1 → loop2 → loop1"):
        await fleet.match("group:loop1")


async def test_unknown_group_is_refused(fleet: Fleet) -> None:
    with pytest.raises(BadRequest, match="unknown group 'nope'"):
        await fleet.match("group:nope")


async def test_group_with_an_invalid_query_is_refused(fleet: Fleet) -> None:
    with pytest.raises(BadRequest, match="group 'broken' has an invalid query"):
        await fleet.match("group:broken")


# -- Attributes -------------------------------------------------------------------------------


async def test_string_value_does_not_match_a_number(fleet: Fleet) -> None:
    assert await fleet.match('attributes.floor = "3"') == ["B"]


async def test_number_value_matches_equal_numbers_only(fleet: Fleet) -> None:
    assert await fleet.match("attributes.floor = 3") == ["A", "C"]


async def test_number_ordering_skips_strings(fleet: Fleet) -> None:
    assert await fleet.match("attributes.floor > 2") == ["A", "C", "D"]


async def test_number_comparison_with_text_values_is_no_error(fleet: Fleet) -> None:
    assert await fleet.match("attributes.site > 1") == []


async def test_string_ordering_is_byte_order(fleet: Fleet) -> None:
    assert await fleet.match('attributes.site > "a"') == ["A", "C", "F"]


async def test_fractional_numbers_compare(fleet: Fleet) -> None:
    assert await fleet.match("attributes.weight < 2.75") == ["B"]


async def test_booleans_match_json_booleans(fleet: Fleet) -> None:
    assert await fleet.match("attributes.enabled = true") == ["C"]
    assert await fleet.match("attributes.enabled = false") == ["D"]


async def test_attribute_not_equal_includes_missing_keys(fleet: Fleet) -> None:
    assert await fleet.match("attributes.enabled != true") == ["A", "B", "D", "E", "F"]


async def test_attribute_null_is_missing_or_json_null(fleet: Fleet) -> None:
    assert await fleet.match("attributes.site = null") == ["E"]
    assert await fleet.match("attributes.note = null") == ALL


async def test_nested_attribute_path(fleet: Fleet) -> None:
    assert await fleet.match("attributes.rack.row = r1 AND attributes.rack.slot >= 2") == ["A"]


async def test_attribute_in_list_keeps_types(fleet: Fleet) -> None:
    assert await fleet.match('attributes.floor IN (10, "3")') == ["B", "D"]


async def test_not_complements_attribute_comparisons(fleet: Fleet) -> None:
    assert await fleet.match("NOT attributes.floor > 2") == ["B", "E", "F"]


def test_attribute_equality_uses_containment_on_postgresql() -> None:
    ctx = CompileContext(dialect="postgresql", now=NOW, online_window=WINDOW, groups={})
    sql = str(compile_query(parse("attributes.site = x"), ctx).compile(dialect=PGDialect()))
    assert "@>" in sql


# -- Logic ------------------------------------------------------------------------------------


async def test_and_binds_tighter_than_or(fleet: Fleet) -> None:
    assert await fleet.match("tenant = acme AND state = active OR serial = E") == ["A", "B", "E"]


async def test_parentheses_override_precedence(fleet: Fleet) -> None:
    assert await fleet.match("tenant = acme AND (state = active OR serial = E)") == ["A", "B"]


async def test_not_binds_tighter_than_and(fleet: Fleet) -> None:
    assert await fleet.match("NOT state = active AND tenant = acme") == ["C"]


async def test_not_complements_a_nullable_comparison(fleet: Fleet) -> None:
    assert await fleet.match("NOT (firmware_version > 2.0 OR tag:lab-1)") == ["C", "E", "F"]


async def test_hand_built_query_with_a_bad_value_is_a_bad_request(fleet: Fleet) -> None:
    query = Comparison("firmware_version", "<", Value.of("banana"))
    with pytest.raises(BadRequest, match="not a version"):
        compile_query(query, fleet.ctx)


# -- Grouping ---------------------------------------------------------------------------------


async def test_count_by_model(fleet: Fleet) -> None:
    assert await fleet.count_by("model") == {"sensor-v2": 4, "gateway-x": 2}


async def test_count_by_attribute_gives_the_same_text_on_both_databases(fleet: Fleet) -> None:
    assert await fleet.count_by("attributes.floor") == {"3": 2, "3.0": 1, "10": 1, None: 2}
    assert await fleet.count_by("attributes.enabled") == {"true": 1, "false": 1, None: 4}


async def test_count_by_online(fleet: Fleet) -> None:
    counts = await fleet.count_by("online")
    assert {bool(k): v for k, v in counts.items()} == {True: 2, False: 4}


def test_unknown_grouping_field_is_invalid() -> None:
    with pytest.raises(Invalid, match="unknown field 'colour'"):
        field_expression("colour", "sqlite")


# -- Every comparison, both ways --------------------------------------------------------------

_SWEEP_FIELDS = (
    *FIELDS,
    "attributes.site",
    "attributes.floor",
    "attributes.rack.slot",
    "attributes.enabled",
    "attributes.note",
)
_SWEEP_VALUES = (
    "berlin",
    '"3"',
    "3",
    "2.5",
    "true",
    "null",
    "b*",
    "1.0.0-rc1",
    "2.10",
    "-1h",
    "2025-12-31",
    "rev-b",
    "sensor-v2",
    "acme",
    '"a\\*b"',
)


async def test_every_comparison_runs_and_not_is_its_complement(fleet: Fleet) -> None:
    ran = 0
    for name in _SWEEP_FIELDS:
        for op in ("=", "!=", "<", ">", "<=", ">="):
            for value in _SWEEP_VALUES:
                text = f"{name} {op} {value}"
                try:
                    parse(text)
                except BadRequest:
                    continue
                matched, rest = await fleet.match(text), await fleet.match(f"NOT ({text})")
                assert sorted(matched + rest) == ALL, text
                ran += 1
    assert ran > 500
