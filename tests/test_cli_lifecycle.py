"""CLI commands for provisioning, the device lifecycle, commands and security events."""

from __future__ import annotations

import pytest

from test_cli import new_device, ok, run, servers, thermo  # noqa: F401 - fixtures used below

pytestmark = pytest.mark.usefixtures("thermo")


def test_provisioning_token_is_created_listed_and_revoked() -> None:
    created = ok(
        "provisioning",
        "create",
        "factory-a",
        "--model",
        "thermo-v2",
        "--max-uses",
        "5",
        "--auto-accept",
        "--expires-at",
        "2099-01-02",  # no zone: taken as UTC
    )
    assert created["token"].startswith("fkp_") and created["max_uses"] == 5
    assert created["expires_at"].startswith("2099-01-02T00:00:00")
    listed = ok("provisioning", "list")
    assert [t["name"] for t in listed["items"]] == ["factory-a"]
    assert "token" not in listed["items"][0]
    revoked = ok("provisioning", "revoke", created["id"], "--reason", "line closed")
    assert revoked["revoked_at"] is not None


def test_retire_and_replace() -> None:
    old = new_device("OLD", "--tag", "roof")
    new = new_device("NEW")
    moved = ok("devices", "replace", old["id"], new["id"], "--reason", "cracked case")
    assert moved["id"] == new["id"] and moved["tags"] == ["roof"]
    assert ok("devices", "show", old["id"])["state"] == "retired"
    other = new_device("OTHER")
    assert ok("devices", "retire", other["id"], "--reason", "eol")["state"] == "retired"


def test_command_is_queued_and_listed() -> None:
    device = new_device("SN-1", "--state", "active")
    cmd = ok("devices", "command", device["id"], "restart_service", "--args", '{"service": "ntp"}')
    assert cmd["state"] == "pending" and cmd["args"] == {"service": "ntp"}
    listed = ok("devices", "commands", device["id"])
    assert [c["id"] for c in listed["items"]] == [cmd["id"]]


def test_command_args_must_be_a_json_object() -> None:
    device = new_device("SN-1", "--state", "active")
    assert run("devices", "command", device["id"], "ping", "--args", "[1]").exit_code == 2


def test_accepting_a_device_that_is_not_pending_fails() -> None:
    device = new_device("SN-1")
    result = run("devices", "accept", device["id"])
    assert result.exit_code == 1 and "not pending" in result.output


def test_security_events_list() -> None:
    assert ok("security", "events")["items"] == []
