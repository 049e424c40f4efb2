"""Options shared by many commands, and option groups.

An option group is a dataclass whose fields are annotated options. A command parameter typed
with such a dataclass becomes one option per field (see `expand`), so commands that take the
same set of options (create and update, every paged list) declare it once.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, get_type_hints

import typer

Json = Annotated[bool, typer.Option("--json", help="Print the server's JSON only, for scripts.")]
Reason = Annotated[str | None, typer.Option("--reason", help="Why: lands in the audit record.")]
Query = Annotated[
    str | None,
    typer.Option("--query", "-q", help="Fleet query, e.g. 'model = thermo-v2 AND tag:pilot'."),
]
Tenant = Annotated[
    str | None,
    typer.Option("--tenant", help="Tenant id (platform users; default: your own tenant)."),
]
HardwareRevision = Annotated[str | None, typer.Option(help="Hardware revision.")]
DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="Data folder (default: $FLEETKEEPER_DATA_DIR or ./data).",
        file_okay=False,
    ),
]
DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help="SQLAlchemy URL (default: $FLEETKEEPER_DATABASE_URL, else SQLite in the data dir).",
    ),
]


WINDOW_HELP = "Maintenance window 'CRON;DURATION[;TZ]' (repeatable), e.g. '0 2 * * *;2h'."


def window_option(text: str) -> dict[str, Any]:
    """A maintenance window from its option form `CRON;DURATION[;TZ]`."""
    parts = [p.strip() for p in text.split(";")]
    if len(parts) not in (2, 3) or not all(parts):
        raise typer.BadParameter("CRON;DURATION[;TZ], e.g. '0 2 * * *;2h'", param_hint="--window")
    window = {"cron": parts[0], "duration": parts[1]}
    if len(parts) == 3:
        window["timezone"] = parts[2]
    return window


def reason_header(reason: str | None) -> dict[str, str]:
    """The X-Change-Reason header, for calls whose body has no `reason` field."""
    if reason is None:
        return {}
    if not reason.isascii():
        raise typer.BadParameter(
            "this command sends the reason in an HTTP header, which takes ASCII characters only",
            param_hint="--reason",
        )
    return {"X-Change-Reason": reason}


def require_change(body: dict[str, Any]) -> dict[str, Any]:
    """`body` of an update, refused when it would change nothing."""
    if not body.keys() - {"reason"}:
        raise typer.BadParameter(
            "nothing to change: give at least one option to set", param_hint="options"
        )
    return body


@dataclasses.dataclass(frozen=True)
class Paging:
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000, help="Items per page.")] = 50
    cursor: Annotated[
        str | None, typer.Option("--cursor", help="Start at this next_cursor of an earlier page.")
    ] = None
    all_pages: Annotated[
        bool, typer.Option("--all", help="Follow next_cursor and show every page.")
    ] = False

    def params(self) -> dict[str, Any]:
        return {"limit": self.limit, "cursor": self.cursor}


Regroup = Callable[[dict[str, Any]], dict[str, Any]]


def expand(func: Callable[..., Any]) -> tuple[list[inspect.Parameter], Regroup]:
    """`func`'s parameters with option groups spread into options, and the way back.

    The parameters are keyword-only with their annotations evaluated, ready for a
    `__signature__` Typer reads; `regroup` turns the options Typer passes back into the
    keyword arguments `func` takes.
    """
    hints = get_type_hints(func, include_extras=True)
    params: list[inspect.Parameter] = []
    groups: dict[str, tuple[type[Any], list[str]]] = {}
    for param in inspect.signature(func).parameters.values():
        annotation = hints.get(param.name, param.annotation)
        if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
            field_hints = get_type_hints(annotation, include_extras=True)
            names = [f.name for f in dataclasses.fields(annotation)]
            groups[param.name] = (annotation, names)
            params += [
                inspect.Parameter(
                    f.name,
                    inspect.Parameter.KEYWORD_ONLY,
                    default=f.default,
                    annotation=field_hints[f.name],
                )
                for f in dataclasses.fields(annotation)
            ]
        else:
            params.append(param.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=annotation))
    taken = [p.name for p in params]
    clashes = {n for n in taken if taken.count(n) > 1}
    if clashes:
        raise TypeError(f"{func.__qualname__}: option names used twice: {sorted(clashes)}")

    def regroup(kwargs: dict[str, Any]) -> dict[str, Any]:
        out = dict(kwargs)
        for name, (cls, fields) in groups.items():
            out[name] = cls(**{f: out.pop(f) for f in fields})
        return out

    return params, regroup


def set_signature(wrapper: Callable[..., Any], params: list[inspect.Parameter]) -> None:
    """Give `wrapper` the parameters Typer should turn into arguments and options."""
    wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
