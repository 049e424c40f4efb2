"""The agent's TOML config: what it declares, and clear refusals of what it gets wrong."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fleetkeeper.agent import AgentConfig, ConfigError, load_config
from fleetkeeper.agent.config import parse_config, substitute, template_names

EXAMPLE = """
telemetry_interval = 15
checkin_wait = 20
allow_shell = true
firmware_version = "1.4.2"

[attributes]
site = "berlin-1"

[commands.reboot]
run = ["systemctl", "reboot"]

[commands.restart_service]
run = ["systemctl", "restart", "{service}"]
timeout = 120
args = { service = "^[A-Za-z0-9@._-]+$" }
"""


def test_without_a_file_the_defaults_apply() -> None:
    assert load_config(None) == AgentConfig()
    assert AgentConfig().commands == {} and not AgentConfig().allow_shell


def test_a_config_file_is_read(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(EXAMPLE)
    config = load_config(path)
    assert (config.telemetry_interval, config.checkin_wait, config.allow_shell) == (15, 20, True)
    assert config.firmware_version == "1.4.2" and config.attributes == {"site": "berlin-1"}
    assert config.commands["reboot"].run == ("systemctl", "reboot")
    assert config.commands["reboot"].timeout == 60
    restart = config.commands["restart_service"]
    assert restart.timeout == 120 and restart.placeholders() == ["service"]
    assert restart.args["service"].fullmatch("nginx.service")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"telemetry_intervall": 5}, "unknown key"),
        ({"checkin_wait": 61}, "checkin_wait must be from 0 to 60"),
        ({"telemetry_interval": "often"}, "must be a number"),
        ({"allow_shell": "yes"}, "allow_shell must be true or false"),
        ({"commands": {"x": {"run": "reboot"}}}, "non-empty list of strings"),
        ({"commands": {"x": {"run": []}}}, "non-empty list of strings"),
        ({"commands": {"x": {"run": ["{prog}", "a"]}}}, "program itself"),
        ({"commands": {"x": {"run": ["echo", "{oops"]}}}, "stray"),
        ({"commands": {"ping": {"run": ["true"]}}}, "built in"),
        ({"commands": {"shell": {"run": ["sh"]}}}, "built in"),
        ({"commands": {"x": {"run": ["echo"], "args": {"y": ".*"}}}}, "has no {y}"),
        ({"commands": {"x": {"run": ["echo", "{y}"], "args": {"y": "("}}}}, "regular expression"),
        ({"commands": {"x": {"run": ["echo"], "shell": True}}}, "unknown key"),
        ({"commands": {"x": {"run": ["echo"], "timeout": 0}}}, "timeout must be"),
        ({"commands": {"bad name": {"run": ["echo"]}}}, "not a valid command name"),
    ],
)
def test_mistakes_are_refused_naming_the_key(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(data)


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.toml")


def test_invalid_toml_is_refused_with_the_file_name(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text("[commands.reboot\n")
    with pytest.raises(ConfigError, match=r"agent\.toml is not valid TOML"):
        load_config(path)


def test_placeholders_and_escaped_braces() -> None:
    assert template_names("--unit={service}.{{literal}}") == ["service"]
    assert substitute("--unit={service}.{{literal}}", {"service": "nginx"}) == (
        "--unit=nginx.{literal}"
    )
