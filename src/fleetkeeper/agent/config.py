"""The agent's config file (TOML): timings, inventory extras, and the commands it will run.

    telemetry_interval = 60          # seconds between measurements
    checkin_wait = 30                # long-poll seconds (0: poll every next_checkin seconds)
    queue_max_points = 100000        # telemetry kept while offline; the oldest go first
    allow_shell = false              # true: the `shell` command runs args.command via /bin/sh
    firmware_version = "1.4.2"       # reported in the inventory (optional)
    hardware_revision = "B"          # (optional)

    [attributes]                     # reported in the inventory, beside what the agent finds
    site = "berlin-1"

    [commands.reboot]
    run = ["systemctl", "reboot"]

    [commands.restart_service]
    run = ["systemctl", "restart", "{service}"]
    timeout = 120                    # seconds (default 60); the command's own timeout caps it
    args = { service = "^[A-Za-z0-9@._-]+$" }   # optional: what each argument must match

A `{name}` in `run` is replaced by the command's argument `name`, inside that one argv element
(never through a shell); `{{` and `}}` stand for literal braces. Anything the file does not
describe is refused with a message that names the key, not ignored.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BUILT_IN = frozenset({"ping", "shell"})
_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}|[{}]")
_COMMAND_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,99}$")


class ConfigError(Exception):
    pass


@dataclass(frozen=True)
class Handler:
    """A command the operator may send: the program to run and how long it may take."""

    name: str
    run: tuple[str, ...]
    timeout: float = 60.0
    args: Mapping[str, re.Pattern[str]] = field(default_factory=dict)

    def placeholders(self) -> list[str]:
        return [name for element in self.run for name in template_names(element)]


@dataclass(frozen=True)
class AgentConfig:
    telemetry_interval: float = 60.0
    checkin_wait: float = 30.0
    queue_max_points: int = 100_000
    allow_shell: bool = False
    firmware_version: str | None = None
    hardware_revision: str | None = None
    attributes: Mapping[str, Any] = field(default_factory=dict)
    commands: Mapping[str, Handler] = field(default_factory=dict)


def template_names(element: str) -> list[str]:
    """The argument names a `run` element refers to; raises ValueError on a stray brace."""
    names = []
    for match in _PLACEHOLDER.finditer(element):
        token = match.group(0)
        if token in ("{{", "}}"):
            continue
        if match.group(1) is None:
            raise ValueError(f"stray {token!r} in {element!r} (write {token * 2} for a brace)")
        names.append(match.group(1))
    return names


def substitute(element: str, values: Mapping[str, str]) -> str:
    """`element` with each `{name}` replaced by `values[name]` (KeyError when missing)."""

    def replace(match: re.Match[str]) -> str:
        token = match.group(0)
        if token in ("{{", "}}"):
            return token[0]
        return values[match.group(1)]

    return _PLACEHOLDER.sub(replace, element)


def _number(
    table: dict[str, Any],
    key: str,
    default: float,
    where: str,
    *,
    minimum: float = 0.0,
    maximum: float | None = None,
) -> float:
    value = table.pop(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where}{key} must be a number, not {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"from {minimum:g} to {maximum:g}" if maximum is not None else f">= {minimum:g}"
        raise ConfigError(f"{where}{key} must be {bound}, not {value!r}")
    return float(value)


def _optional_text(table: dict[str, Any], key: str) -> str | None:
    value = table.pop(key, None)
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{key} must be a string, not {value!r}")
    return value


def _handler(name: str, table: Any) -> Handler:
    where = f"commands.{name}."
    if not _COMMAND_NAME.match(name):
        raise ConfigError(f"commands.{name}: not a valid command name")
    if name in BUILT_IN:
        raise ConfigError(f"commands.{name}: {name!r} is built in and cannot be redefined")
    if not isinstance(table, dict):
        raise ConfigError(f"commands.{name} must be a table with at least `run`")
    table = dict(table)
    run = table.pop("run", None)
    if not (isinstance(run, list) and run and all(isinstance(a, str) for a in run)):
        raise ConfigError(f"{where}run must be a non-empty list of strings (the argv)")
    try:
        names = [n for element in run for n in template_names(element)]
    except ValueError as exc:
        raise ConfigError(f"{where}run: {exc}") from None
    if template_names(run[0]):
        raise ConfigError(f"{where}run: the program itself cannot come from an argument")
    timeout = _number(table, "timeout", 60.0, where, minimum=1.0)
    raw_args = table.pop("args", {})
    if not isinstance(raw_args, dict):
        raise ConfigError(f"{where}args must be a table of argument = regular expression")
    patterns: dict[str, re.Pattern[str]] = {}
    for arg, pattern in raw_args.items():
        if arg not in names:
            raise ConfigError(f"{where}args.{arg}: `run` has no {{{arg}}}")
        try:
            patterns[arg] = re.compile(str(pattern))
        except re.error as exc:
            raise ConfigError(f"{where}args.{arg}: bad regular expression: {exc}") from None
    if table:
        raise ConfigError(f"{where[:-1]}: unknown key(s) {', '.join(sorted(table))}")
    return Handler(name=name, run=tuple(run), timeout=timeout, args=patterns)


def parse_config(data: Mapping[str, Any]) -> AgentConfig:
    table = dict(data)
    interval = _number(table, "telemetry_interval", 60.0, "", minimum=1.0)
    wait = _number(table, "checkin_wait", 30.0, "", maximum=60.0)
    queue_max = _number(table, "queue_max_points", 100_000, "", minimum=1)
    allow_shell = table.pop("allow_shell", False)
    if not isinstance(allow_shell, bool):
        raise ConfigError(f"allow_shell must be true or false, not {allow_shell!r}")
    firmware = _optional_text(table, "firmware_version")
    hardware = _optional_text(table, "hardware_revision")
    attributes = table.pop("attributes", {})
    if not isinstance(attributes, dict):
        raise ConfigError("attributes must be a table")
    commands = table.pop("commands", {})
    if not isinstance(commands, dict):
        raise ConfigError("commands must be a table of [commands.NAME] tables")
    if table:
        raise ConfigError(f"unknown key(s) {', '.join(sorted(table))}")
    return AgentConfig(
        telemetry_interval=interval,
        checkin_wait=wait,
        queue_max_points=int(queue_max),
        allow_shell=allow_shell,
        firmware_version=firmware,
        hardware_revision=hardware,
        attributes=attributes,
        commands={name: _handler(name, spec) for name, spec in commands.items()},
    )


def load_config(path: Path | None) -> AgentConfig:
    """The config in `path`, or the defaults (ping only, no shell) without a file."""
    if path is None:
        return AgentConfig()
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    try:
        return parse_config(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
