"""The fleet query parser: what each construct parses to, and where each mistake is reported."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetkeeper.errors import QuerySyntaxError
from fleetkeeper.query import FIELDS, MAX_DEPTH, MAX_QUERY_LENGTH, group_names, parse, unparse
from fleetkeeper.query.ast import (
    And,
    Comparison,
    Everything,
    InGroup,
    Membership,
    Not,
    Or,
    Query,
    Tag,
    Value,
)


def word(text: str) -> Value:
    return Value(text, quoted=False)


def eq(field: str, value: str) -> Comparison:
    return Comparison(field, "=", word(value))


def syntax_error(text: str) -> QuerySyntaxError:
    with pytest.raises(QuerySyntaxError) as caught:
        parse(text)
    return caught.value


# -- Constructs -------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "   ", "\n\t "])
def test_blank_query_is_everything(text: str) -> None:
    assert parse(text) == Everything()


@pytest.mark.parametrize("op", ["=", "!=", "<", ">", "<=", ">="])
def test_every_comparison_operator(op: str) -> None:
    assert parse(f"serial {op} SN-1") == Comparison("serial", op, word("SN-1"))  # type: ignore[arg-type]


def test_operators_need_no_spaces() -> None:
    assert parse("serial>=SN-1") == Comparison("serial", ">=", word("SN-1"))


@pytest.mark.parametrize("value", ["acme", "sensor-v2", "2.10.0", "-1h", "2026-01-31T12:00:00Z"])
def test_bare_words_are_values(value: str) -> None:
    assert parse(f"name = {value}") == eq("name", value)


def test_double_quoted_string_with_escapes() -> None:
    assert parse(r'name = "say \"hi\"\n"') == Comparison("name", "=", Value('say "hi"\n', True))


def test_single_quoted_string_with_escapes() -> None:
    assert parse(r"name = 'it\'s'") == Comparison("name", "=", Value("it's", True))


def test_keywords_are_case_insensitive() -> None:
    assert parse("name = a and name = b Or not name = c") == parse(
        "name = a AND name = b OR NOT name = c"
    )


def test_keyword_in_value_position_is_a_word() -> None:
    assert parse("name = and") == eq("name", "and")


def test_word_that_starts_with_a_keyword_is_a_word() -> None:
    assert parse("name = notes OR name = order") == Or((eq("name", "notes"), eq("name", "order")))


def test_in_list() -> None:
    expected = Membership("state", (word("active"), Value("retired", True)))
    assert parse("state IN (active, 'retired')") == expected


def test_not_in_list() -> None:
    assert parse("state not in (active)") == Membership("state", (word("active"),), negated=True)


def test_tag_selector() -> None:
    assert parse("tag:prod") == Tag(word("prod"))


def test_group_selector_with_quoted_name() -> None:
    assert parse('group:"berlin sensors"') == InGroup("berlin sensors")


def test_attribute_path_is_a_field() -> None:
    assert parse("attributes.rack.row = r1") == eq("attributes.rack.row", "r1")


def test_not_binds_tighter_than_and_tighter_than_or() -> None:
    a, b, c = eq("name", "a"), eq("name", "b"), eq("name", "c")
    assert parse("name = a OR name = b AND NOT name = c") == Or((a, And((b, Not(c)))))


def test_parentheses_override_precedence() -> None:
    a, b, c = eq("name", "a"), eq("name", "b"), eq("name", "c")
    assert parse("(name = a OR name = b) AND name = c") == And((Or((a, b)), c))


def test_chained_and_is_flat() -> None:
    assert parse("name = a AND name = b AND name = c") == And(
        (eq("name", "a"), eq("name", "b"), eq("name", "c"))
    )


def test_positions_are_character_offsets() -> None:
    query = parse("  serial = x")
    assert isinstance(query, Comparison)
    assert (query.position, query.value.position) == (2, 11)


def test_group_names_lists_groups_used() -> None:
    assert group_names(parse("group:a OR NOT (group:b AND tag:c)")) == {"a", "b"}


def test_public_interface_is_pinned() -> None:
    import fleetkeeper.query

    assert sorted(fleetkeeper.query.__all__) == [
        "CompileContext",
        "FIELDS",
        "GroupRef",
        "MAX_DEPTH",
        "MAX_QUERY_LENGTH",
        "Query",
        "compile_query",
        "field_expression",
        "group_names",
        "online_expression",
        "parse",
        "unparse",
    ]


def test_fields_are_named_as_in_device_json() -> None:
    assert "firmware_version" in FIELDS and "attributes" not in FIELDS


# -- Values -----------------------------------------------------------------------------------


def test_unescaped_star_is_a_wildcard() -> None:
    assert word("sensor-*").is_wildcard


def test_escaped_star_is_literal() -> None:
    value = parse(r"name = a\*b").value  # type: ignore[union-attr]
    assert (value.is_wildcard, value.text) == (False, "a*b")


def test_like_pattern_escapes_sql_wildcards() -> None:
    assert word(r"50%_*?\*").like_pattern() == r"50\%\_%_*"


def test_literal_value_round_trips_through_text() -> None:
    assert Value.of(r"a*b\c?").text == r"a*b\c?"


# -- Errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "column", "message"),
    [
        ("serial = )", 10, "unexpected ')' at line 1 column 10: expected a value"),
        ("serial = a b", 12, "expected AND, OR or the end of the query"),
        ("(serial = a", 12, "unexpected end of query at line 1 column 12: expected ')'"),
        ("serial = a AND", 15, "expected a field, tag:NAME or group:NAME, NOT or '('"),
        ("serial ! a", 8, "unexpected character '!'"),
        ('serial = "abc', 10, "unterminated string"),
        ("state IN (a,", 13, "expected a value or ')'"),
        ("colour = red", 1, "unknown field 'colour'"),
        ("serial", 7, "expected an operator after 'serial'"),
        ("tags:prod", 1, "unknown selector 'tags:'"),
        ("tag:", 1, "tag: needs a name"),
        ("firmware_version < banana", 20, "'banana' is not a version"),
        ("last_seen < yesterday", 13, "'yesterday' is not a time"),
        ("last_seen < -99999w", 13, "reaches back too far"),
        ("last_seen > null", 13, "null cannot be compared with >"),
        ("online > true", 10, "> on a true/false field"),
        ("online = maybe", 10, "'maybe' is not true or false"),
        ("attributes.x > true", 16, "true and false compare only with ="),
        ("attributes.9 = 1", 1, "invalid attribute key '9'"),
        ("name > a*", 8, "unexpected wildcard"),
    ],
)
def test_error_message_and_column(text: str, column: int, message: str) -> None:
    error = syntax_error(text)
    assert message in error.detail
    assert error.extra["column"] == column


def test_unknown_field_error_lists_the_known_fields() -> None:
    assert "known fields are id, serial, name" in syntax_error("colour = red").detail


def test_error_reports_line_and_column_on_later_lines() -> None:
    error = syntax_error("serial = a\n  AND )")
    assert (error.position, error.extra["line"], error.extra["column"]) == (17, 2, 7)


def test_error_carries_the_query() -> None:
    assert syntax_error("serial =").extra["query"] == "serial ="


def test_query_at_the_length_limit_parses() -> None:
    text = "serial = " + "x" * (MAX_QUERY_LENGTH - len("serial = "))
    assert parse(text) == eq("serial", "x" * (MAX_QUERY_LENGTH - 9))


def test_query_over_the_length_limit_is_refused() -> None:
    error = syntax_error("serial = " + "x" * MAX_QUERY_LENGTH)
    assert "query too long" in error.detail and error.position == MAX_QUERY_LENGTH


def test_nesting_at_the_depth_limit_parses() -> None:
    assert parse("(" * MAX_DEPTH + "serial = x" + ")" * MAX_DEPTH) == eq("serial", "x")


def test_parentheses_beyond_the_depth_limit_are_refused() -> None:
    error = syntax_error("(" * (MAX_DEPTH + 1) + "serial = x" + ")" * (MAX_DEPTH + 1))
    assert "nested too deeply" in error.detail and error.position == MAX_DEPTH


def test_not_chain_beyond_the_depth_limit_is_refused() -> None:
    assert "nested too deeply" in syntax_error("NOT " * 900 + "serial = x").detail


# -- The documentation ------------------------------------------------------------------------

DOC = (Path(__file__).parent.parent / "docs" / "query-language.md").read_text()
_EXAMPLES = [
    line for block in re.findall(r"```text\n(.*?)```", DOC, re.S) for line in block.splitlines()
]
_DOC_PAIRS = re.findall(r"^\| `([^`]+)` +\| `([^`]+)` +\|$", DOC, re.M)
_DOC_ERRORS = [(text, said) for text, said in _DOC_PAIRS if " at line " in said]
_DOC_SAME = [(text, said) for text, said in _DOC_PAIRS if " at line " not in said]


def test_every_field_is_documented() -> None:
    assert [f for f in FIELDS if f"| `{f}`" not in DOC] == []


@pytest.mark.parametrize("example", _EXAMPLES)
def test_documented_example_parses(example: str) -> None:
    parse(example)


@pytest.mark.parametrize(("text", "message"), _DOC_ERRORS)
def test_documented_error_is_the_real_one(text: str, message: str) -> None:
    assert message in syntax_error(text).detail


@pytest.mark.parametrize(("text", "meaning"), _DOC_SAME)
def test_documented_precedence_is_the_real_one(text: str, meaning: str) -> None:
    assert parse(text) == parse(meaning)


def test_documentation_has_examples_errors_and_precedence() -> None:
    assert (len(_EXAMPLES) > 10, len(_DOC_ERRORS), len(_DOC_SAME)) == (True, 3, 3)


# -- Properties -------------------------------------------------------------------------------

_PIECES = st.sampled_from(
    [
        "serial",
        "attributes.a",
        "tag:x",
        "group:g",
        "=",
        "!=",
        "<=",
        "(",
        ")",
        ",",
        "'",
        '"',
        "\\",
        "*",
        "AND",
        "or",
        "NOT",
        "in",
        "-1h",
        "2.10.0",
        "null",
        "true",
        " ",
        "\n",
        ":",
    ]
)
_NOISE = st.one_of(
    st.lists(_PIECES, max_size=12).map("".join),
    st.lists(_PIECES, max_size=12).map(" ".join),
    st.text(max_size=30),
)


@settings(max_examples=200, deadline=None)
@given(_NOISE)
def test_any_text_parses_or_raises_query_syntax_error(text: str) -> None:
    try:
        parse(text)
    except QuerySyntaxError as error:
        assert 0 <= error.position <= len(text)


_RESERVED = {"and", "or", "not", "in", "null", "true", "false"}
_BARE = st.from_regex(r"[a-z][a-z0-9.-]{0,6}", fullmatch=True).filter(lambda w: w not in _RESERVED)
_TEXT = st.text(st.characters(exclude_characters="\x00", exclude_categories=["Cs"]), max_size=8)
_VALUES = st.one_of(_BARE.map(word), _TEXT.map(Value.of))
_EQ_VALUES = st.one_of(_VALUES, st.sampled_from(["sensor-*", "a?c", r"x\*y", "null"]).map(word))
_FIELD = st.sampled_from(["serial", "name", "state", "attributes.site", "attributes.a.b"])
_LEAVES = st.one_of(
    st.builds(Comparison, _FIELD, st.sampled_from(["=", "!="]), _EQ_VALUES),
    st.builds(Comparison, _FIELD, st.sampled_from(["<", ">", "<=", ">="]), _VALUES),
    st.builds(
        Membership, _FIELD, st.lists(_EQ_VALUES, min_size=1, max_size=3).map(tuple), st.booleans()
    ),
    st.builds(Tag, st.one_of(_BARE.map(word), _TEXT.filter(bool).map(Value.of))),
    st.builds(InGroup, _TEXT.filter(bool)),
)
_QUERIES: st.SearchStrategy[Query] = st.recursive(
    _LEAVES,
    lambda inner: st.one_of(
        st.builds(Not, inner),
        st.lists(inner, min_size=2, max_size=3).map(lambda qs: And(tuple(qs))),
        st.lists(inner, min_size=2, max_size=3).map(lambda qs: Or(tuple(qs))),
    ),
    max_leaves=8,
)


@settings(max_examples=200, deadline=None)
@given(_QUERIES)
def test_unparse_then_parse_gives_the_same_query(query: Query) -> None:
    assert parse(unparse(query)) == query
