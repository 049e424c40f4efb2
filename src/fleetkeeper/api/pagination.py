"""Keyset pagination shared by the list routes: `limit` + 1 rows fetched, a cursor handed back."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, TypeVar

from fastapi import Depends, Query

from fleetkeeper.errors import BadRequest

T = TypeVar("T")

Limit = Annotated[int, Query(ge=1, le=1000, description="Page size.")]


def _id_cursor(
    cursor: Annotated[
        str | None, Query(max_length=20, description="`next_cursor` of the page before.")
    ] = None,
) -> int | None:
    if cursor is None:
        return None
    if not cursor.isdigit():
        raise BadRequest(
            "invalid cursor: pass back the next_cursor of a previous page", field="cursor"
        )
    return int(cursor)


IdCursor = Annotated[int | None, Depends(_id_cursor)]


def id_page(rows: Sequence[T], limit: int, key: Callable[[T], int]) -> tuple[list[T], str | None]:
    """The first `limit` of `limit + 1` fetched rows, and the cursor when there were more."""
    page = list(rows[:limit])
    return page, str(key(page[-1])) if len(rows) > limit and page else None
