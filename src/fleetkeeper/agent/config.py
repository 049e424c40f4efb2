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

    [update]                         # A/B updates (docs/agent.md, "Updates"); absent: none
    handler = "script"               # or "directory", with slots_dir = "/var/lib/.../slots"
    health_check = ["/usr/local/bin/healthy", "{version}"]
    health_timeout = 60
    trusted_keys = ["<base64 Ed25519 public key>"]   # empty: pin the server's on first use

    [update.script]                  # the device's own tools, for handler = "script"
    active = ["fw-slot", "active"]
    install = ["fw-slot", "install", "{slot}", "{path}", "{version}"]
    switch = ["fw-slot", "switch", "{slot}", "{trial}"]
    commit = ["fw-slot", "commit", "{slot}"]
    rollback = ["fw-slot", "rollback", "{slot}"]
    reboot = ["systemctl", "reboot"]

A `{name}` in `run` is replaced by the command's argument `name`, inside that one argv element
(never through a shell); `{{` and `}}` stand for literal braces. Anything the file does not
describe is refused with a message that names the key, not ignored.
"""

from __future__ import annotations

import base64
import binascii
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BUILT_IN = frozenset({"ping", "shell"})
HANDLERS = ("directory", "script")
# What each [update.script] program may refer to; `active` prints the running slot, `version`
# prints the version a slot holds.
SCRIPT_PLACEHOLDERS: dict[str, frozenset[str]] = {
    "active": frozenset(),
    "version": frozenset({"slot"}),
    "install": frozenset({"slot", "path", "version"}),
    "switch": frozenset({"slot", "trial"}),
    "commit": frozenset({"slot"}),
    "rollback": frozenset({"slot"}),
    "reboot": frozenset({"slot"}),
}
REQUIRED_SCRIPTS = ("active", "install", "switch", "commit", "rollback")
HEALTH_PLACEHOLDERS = frozenset({"slot", "version"})
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
class ScriptSettings:
    """`[update.script]`: argv lists for a device's own slot tooling (empty: not configured)."""

    active: tuple[str, ...]
    install: tuple[str, ...]
    switch: tuple[str, ...]
    commit: tuple[str, ...]
    rollback: tuple[str, ...]
    reboot: tuple[str, ...] = ()  # empty: a switch takes effect without a reboot
    version: tuple[str, ...] = ()  # empty: the agent remembers what it installed where
    slots: tuple[str, str] = ("a", "b")
    timeout: float = 600.0


@dataclass(frozen=True)
class UpdateSettings:
    """`[update]`: how this device installs updates (docs/agent.md, "Updates")."""

    handler: str = "directory"
    slots_dir: Path | None = None  # directory handler; default <state-dir>/slots
    script: ScriptSettings | None = None
    health_check: tuple[str, ...] = ()
    health_timeout: float = 60.0
    trusted_keys: tuple[str, ...] = ()  # base64 raw Ed25519 public keys


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
    update: UpdateSettings | None = None


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


def _argv(value: Any, where: str, allowed: frozenset[str]) -> tuple[str, ...]:
    if not (isinstance(value, list) and value and all(isinstance(a, str) for a in value)):
        raise ConfigError(f"{where} must be a non-empty list of strings (the argv)")
    try:
        names = {n for element in value for n in template_names(element)}
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    if template_names(value[0]):
        raise ConfigError(f"{where}: the program itself cannot be a placeholder")
    unknown = names - allowed
    if unknown:
        offered = ", ".join(f"{{{n}}}" for n in sorted(allowed)) or "none"
        raise ConfigError(f"{where}: unknown placeholder(s) {sorted(unknown)} (offered: {offered})")
    return tuple(value)


def _script(table: Any) -> ScriptSettings:
    if not isinstance(table, dict):
        raise ConfigError("update.script must be a table of argv lists")
    table = dict(table)
    argvs: dict[str, tuple[str, ...]] = {}
    for name, allowed in SCRIPT_PLACEHOLDERS.items():
        value = table.pop(name, None)
        if value is None:
            if name in REQUIRED_SCRIPTS:
                raise ConfigError(f'update.script.{name} is required with handler = "script"')
            continue
        argvs[name] = _argv(value, f"update.script.{name}", allowed)
    slots = table.pop("slots", ["a", "b"])
    if not (
        isinstance(slots, list)
        and len(slots) == 2
        and all(isinstance(s, str) and _COMMAND_NAME.match(s) for s in slots)
        and slots[0] != slots[1]
    ):
        raise ConfigError("update.script.slots must be two different slot names")
    timeout = _number(table, "timeout", 600.0, "update.script.", minimum=1.0)
    if table:
        raise ConfigError(f"update.script: unknown key(s) {', '.join(sorted(table))}")
    return ScriptSettings(
        active=argvs["active"],
        install=argvs["install"],
        switch=argvs["switch"],
        commit=argvs["commit"],
        rollback=argvs["rollback"],
        reboot=argvs.get("reboot", ()),
        version=argvs.get("version", ()),
        slots=(slots[0], slots[1]),
        timeout=timeout,
    )


def _public_key(text: Any, index: int) -> str:
    where = f"update.trusted_keys[{index}]"
    if not isinstance(text, str):
        raise ConfigError(f"{where} must be a base64 Ed25519 public key, not {text!r}")
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except binascii.Error:
        raise ConfigError(f"{where} is not base64") from None
    if len(raw) != 32:
        raise ConfigError(f"{where} is {len(raw)} bytes; an Ed25519 public key is 32")
    return text.strip()


def _update(table: Any) -> UpdateSettings:
    if not isinstance(table, dict):
        raise ConfigError("update must be a table")
    table = dict(table)
    handler = table.pop("handler", "directory")
    if handler not in HANDLERS:
        raise ConfigError(f"update.handler must be one of {', '.join(HANDLERS)}, not {handler!r}")
    slots_dir = table.pop("slots_dir", None)
    if slots_dir is not None and not (isinstance(slots_dir, str) and slots_dir):
        raise ConfigError(f"update.slots_dir must be a path, not {slots_dir!r}")
    script = table.pop("script", None)
    if handler == "script" and script is None:
        raise ConfigError('update.handler = "script" needs an [update.script] table')
    if handler != "script" and script is not None:
        raise ConfigError('[update.script] is only used with update.handler = "script"')
    if handler == "script" and slots_dir is not None:
        raise ConfigError('update.slots_dir is only used with update.handler = "directory"')
    health = table.pop("health_check", None)
    health_check = (
        () if health is None else _argv(health, "update.health_check", HEALTH_PLACEHOLDERS)
    )
    health_timeout = _number(table, "health_timeout", 60.0, "update.", minimum=1.0)
    keys = table.pop("trusted_keys", [])
    if not isinstance(keys, list):
        raise ConfigError("update.trusted_keys must be a list of base64 Ed25519 public keys")
    if table:
        raise ConfigError(f"update: unknown key(s) {', '.join(sorted(table))}")
    return UpdateSettings(
        handler=handler,
        slots_dir=Path(slots_dir) if slots_dir else None,
        script=_script(script) if script is not None else None,
        health_check=health_check,
        health_timeout=health_timeout,
        trusted_keys=tuple(_public_key(k, i) for i, k in enumerate(keys)),
    )


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
    update = table.pop("update", None)
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
        update=_update(update) if update is not None else None,
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
