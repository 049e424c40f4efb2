"""`fleetkeeper agent` as a person runs it: exit codes and messages."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from fleetkeeper.cli import agent as agent_cli
from fleetkeeper.cli import app as cli
from test_protocol_client import FakeServer, problem


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> FakeServer:
    fake = FakeServer()
    monkeypatch.setattr(agent_cli, "open_transport", lambda url: fake.transport())
    return fake


def run(*args: str) -> Result:
    return CliRunner().invoke(
        cli,
        ["agent", "--server", "http://fleet.test", *args],
        env={"COLUMNS": "200", "NO_COLOR": "1"},
    )


def test_a_broken_config_file_is_a_usage_error(tmp_path: Path) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('[commands.reboot]\nrun = "systemctl reboot"\n')
    result = run("--state-dir", str(tmp_path / "state"), "--config", str(config))
    assert result.exit_code == 2
    assert "non-empty list of strings" in result.output


def test_a_refused_enrolment_exits_1_with_the_reason(tmp_path: Path, server: FakeServer) -> None:
    server.script("/enroll", problem(403, "provisioning_refused", "the token has expired"))
    result = run(
        "--state-dir",
        str(tmp_path),
        "--serial",
        "SN-1",
        "--model",
        "thermo-v2",
        "--provisioning-token",
        "fkp_old",
    )
    assert result.exit_code == 1
    assert "the token has expired" in result.output
    assert json.loads(server.requests[0].content)["provisioning_token"] == "fkp_old"


def test_a_retired_device_exits_0_after_deleting_its_credentials(
    tmp_path: Path, server: FakeServer
) -> None:
    server.wipe = True
    result = run("--state-dir", str(tmp_path), "--serial", "SN-1", "--model", "thermo-v2")
    assert result.exit_code == 0, result.output
    assert "retired" in result.output
    assert not (tmp_path / "device.key").exists() and not (tmp_path / "identity.json").exists()


def test_revoked_credentials_exit_1(tmp_path: Path, server: FakeServer) -> None:
    server.script("/auth/token", problem(403, "credentials_revoked", "revoked"))
    result = run("--state-dir", str(tmp_path), "--serial", "SN-1", "--model", "thermo-v2")
    assert result.exit_code == 1
    assert "revoked" in result.output


def test_a_key_file_others_can_read_exits_1(tmp_path: Path) -> None:
    key = tmp_path / "device.key"
    key.write_text("secret")
    key.chmod(0o644)
    result = run("--state-dir", str(tmp_path))
    assert result.exit_code == 1
    assert "chmod 600" in result.output


def test_the_server_defaults_to_the_root_option(
    tmp_path: Path, server: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[str] = []
    monkeypatch.setattr(
        agent_cli, "open_transport", lambda url: asked.append(url) or server.transport()
    )
    server.wipe = True
    result = CliRunner().invoke(
        cli,
        [
            "--server",
            "http://root.test",
            "agent",
            "--state-dir",
            str(tmp_path),
            "--serial",
            "SN-1",
            "--model",
            "m",
        ],
    )
    assert result.exit_code == 0, result.output
    assert asked == ["http://root.test"]
