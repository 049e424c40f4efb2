"""The fleet query language: `parse` text into a `Query`, `compile_query` it into a WHERE clause.

    >>> where = compile_query(parse("model = sensor-v2 AND firmware_version < 2.10.0"), ctx)
    >>> select(Device).where(where)

The language is described in docs/query-language.md.
"""

from fleetkeeper.query.ast import FIELDS, Query, group_names, unparse
from fleetkeeper.query.compiler import (
    CompileContext,
    GroupRef,
    compile_query,
    field_expression,
    online_expression,
)
from fleetkeeper.query.parser import MAX_DEPTH, MAX_QUERY_LENGTH, parse

__all__ = [
    "FIELDS",
    "MAX_DEPTH",
    "MAX_QUERY_LENGTH",
    "CompileContext",
    "GroupRef",
    "Query",
    "compile_query",
    "field_expression",
    "group_names",
    "online_expression",
    "parse",
    "unparse",
]
