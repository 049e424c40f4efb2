"""Version-aware ordering of firmware versions, as a string key the database can index.

`version_key("2.9.3") < version_key("2.10.0")` compares like the versions themselves:
numeric parts compare as numbers, a pre-release (`1.0.0-rc1`) sorts before its release, and a
longer version sorts after its prefix (`1.0.0.1 > 1.0.0`). Missing parts count as zero up to
three (`1.2` == `1.2.0`). The key uses only ASCII so byte order (SQLite, PostgreSQL COLLATE "C")
is version order.
"""

from __future__ import annotations

import re

_PART = re.compile(r"^v?(\d+(?:\.\d+)*)(?:[-~]([0-9A-Za-z.-]+))?(?:\+[0-9A-Za-z.-]+)?$")
_PRE, _END, _NEXT = "!", "#", "."  # "!" < "#" < "." in ASCII: pre-release < release < longer
_WIDTH = 10


class InvalidVersion(ValueError):
    pass


def is_version(text: str) -> bool:
    return bool(_PART.match(text.strip()))


def _pre_part(piece: str) -> str:
    # Numeric identifiers sort numerically and before alphanumeric ones (semver rule 11).
    return f"0{int(piece):0{_WIDTH}d}" if piece.isdigit() else f"1{piece}"


def version_key(text: str) -> str:
    """The sortable key of a version string; raises InvalidVersion for text that is not one."""
    match = _PART.match(text.strip())
    if not match:
        raise InvalidVersion(f"not a version: {text!r} (expected e.g. 1.2.3 or 1.2.3-rc1)")
    numbers = [int(p) for p in match.group(1).split(".")]
    if any(n >= 10**_WIDTH for n in numbers):
        raise InvalidVersion(f"version part too large in {text!r}")
    while len(numbers) < 3:
        numbers.append(0)
    while len(numbers) > 3 and numbers[-1] == 0:
        numbers.pop()
    key = _NEXT.join(f"{n:0{_WIDTH}d}" for n in numbers)
    pre = match.group(2)
    if pre:
        return key + _PRE + _NEXT.join(_pre_part(p) for p in pre.split("."))
    return key + _END


def firmware_key(text: str | None) -> str | None:
    """Key for a device's reported firmware; free-form strings that are no version sort last."""
    if text is None:
        return None
    try:
        return version_key(text)
    except InvalidVersion:
        return "~" + text
