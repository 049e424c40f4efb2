"""The `fleetkeeper` command against the real app, in-process.

Each test gets a started app on a clean database (SQLite, and PostgreSQL when reachable). The
app runs on the event loop of a blocking portal (its lifespan too, so its database connections
belong to that loop), and the CLI's HTTP client factory is replaced by one whose transport
hands each request to the app on that loop.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio.from_thread
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from typer.testing import CliRunner, Result

from conftest import ADMIN_TOKEN
from fleetkeeper.cli import app as cli
from fleetkeeper.cli import client
from fleetkeeper.clock import FakeClock
from fleetkeeper.settings import Settings
from fleetkeeper.store.db import Database

ENV = {
    "FLEETKEEPER_TOKEN": ADMIN_TOKEN,
    "FLEETKEEPER_SERVER": None,
    "FLEETKEEPER_DATABASE_URL": None,
    "FLEETKEEPER_DATA_DIR": None,
    "COLUMNS": "200",
    "NO_COLOR": "1",
}


def run(*args: str, token: str | None = ADMIN_TOKEN) -> Result:
    return CliRunner().invoke(cli, list(args), env={**ENV, "FLEETKEEPER_TOKEN": token})


def ok(*args: str, token: str | None = ADMIN_TOKEN) -> Any:
    """Run a command with --json; assert it succeeded and return its parsed stdout."""
    result = run(*args, "--json", token=token)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


class PortalTransport(httpx.BaseTransport):
    """A synchronous transport into an ASGI app that runs on a blocking portal's loop."""

    def __init__(self, application: FastAPI, portal: anyio.from_thread.BlockingPortal) -> None:
        self._asgi = httpx.ASGITransport(app=application)
        self._portal = portal

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self._portal.call(self._send, request)

    async def _send(self, request: httpx.Request) -> httpx.Response:
        response = await self._asgi.handle_async_request(request)
        body = await response.aread()
        return httpx.Response(
            response.status_code, headers=response.headers, content=body, request=request
        )


@pytest.fixture
def servers(
    settings: Settings, clock: FakeClock, db: Database, monkeypatch: pytest.MonkeyPatch
) -> Iterator[list[str]]:
    """A started app the CLI talks to; yields the server URLs the CLI asked for."""
    from fleetkeeper.api.app import create_app

    application: FastAPI = create_app(settings, clock=clock)
    asked: list[str] = []

    def open_http(server: str) -> httpx.Client:
        asked.append(server)
        return httpx.Client(
            transport=PortalTransport(application, portal), base_url="http://fleetkeeper.test"
        )

    with (
        anyio.from_thread.start_blocking_portal() as portal,
        portal.wrap_async_context_manager(application.router.lifespan_context(application)),
    ):
        monkeypatch.setattr(client, "open_http", open_http)
        yield asked


@pytest.fixture
def thermo(servers: list[str]) -> dict[str, Any]:
    """The server, with the device model `thermo-v2`."""
    created: dict[str, Any] = ok("models", "create", "thermo-v2", "--manufacturer", "Acme")
    return created


def new_device(serial: str, *options: str) -> dict[str, Any]:
    device: dict[str, Any] = ok(
        "devices", "create", "--serial", serial, "--model", "thermo-v2", *options
    )
    return device


def serials(page: dict[str, Any]) -> list[str]:
    return sorted(d["serial"] for d in page["items"])


# Devices


def test_created_device_is_shown_by_id(thermo: dict[str, Any]) -> None:
    created = new_device(
        "SN-1",
        "--name",
        "Hall",
        "--firmware",
        "1.4.2",
        "--tag",
        "pilot",
        "--lat",
        "52.5",
        "--lon",
        "13.4",
    )
    shown = ok("devices", "show", created["id"])
    assert shown == created
    assert (shown["name"], shown["firmware_version"], shown["tags"]) == ("Hall", "1.4.2", ["pilot"])
    assert (shown["location"]["lat"], shown["location"]["lon"]) == (52.5, 13.4)


def test_attribute_values_read_as_json_where_they_parse(thermo: dict[str, Any]) -> None:
    device = new_device(
        "SN-1",
        "--attr",
        "floor=3",
        "--attr",
        "indoor=true",
        "--attr",
        "site=berlin-1",
        "--attr",
        "code=007",
    )
    assert device["attributes"] == {"floor": 3, "indoor": True, "site": "berlin-1", "code": "007"}


def test_list_filters_by_fleet_query(thermo: dict[str, Any]) -> None:
    new_device("SN-1", "--firmware", "1.4.2")
    new_device("SN-2", "--firmware", "2.1.0")
    page = ok("devices", "list", "-q", "firmware_version < 2.0.0")
    assert serials(page) == ["SN-1"]


def test_list_all_follows_every_page(thermo: dict[str, Any]) -> None:
    for n in range(3):
        new_device(f"SN-{n}")
    page = ok("devices", "list", "--limit", "1", "--all")
    assert serials(page) == ["SN-0", "SN-1", "SN-2"]
    assert page["next_cursor"] is None


def test_list_of_one_page_hints_at_the_next_on_stderr(thermo: dict[str, Any]) -> None:
    new_device("SN-1")
    new_device("SN-2")
    result = run("devices", "list", "--limit", "1", "--json")
    assert result.exit_code == 0
    page = json.loads(result.stdout)
    assert len(page["items"]) == 1
    assert f"--cursor {page['next_cursor']}" not in result.stderr  # --json: stdout is the page
    human = run("devices", "list", "--limit", "1")
    assert "--cursor" in human.stderr


def test_update_merges_attributes_and_replaces_tags(thermo: dict[str, Any]) -> None:
    device = new_device("SN-1", "--attr", "site=berlin-1", "--attr", "floor=3", "--tag", "a")
    updated = ok(
        "devices",
        "update",
        device["id"],
        "--attr",
        "floor=4",
        "--remove-attr",
        "site",
        "--tag",
        "b",
        "--tag",
        "c",
        "--reason",
        "moved",
    )
    assert updated["attributes"] == {"floor": 4}
    assert updated["tags"] == ["b", "c"]
    records = ok("audit", "list", "--action", "device.update")["items"]
    assert records[0]["reason"] == "moved"


def test_update_with_nothing_to_change_is_a_usage_error(thermo: dict[str, Any]) -> None:
    device = new_device("SN-1")
    assert run("devices", "update", device["id"]).exit_code == 2


def test_delete_removes_the_device_with_its_reason(thermo: dict[str, Any]) -> None:
    device = new_device("SN-1")
    result = run("devices", "delete", device["id"], "--reason", "scrapped")
    assert result.exit_code == 0, result.output
    missing = run("devices", "show", device["id"])
    assert missing.exit_code == 1
    assert "Not found" in missing.stderr
    assert ok("audit", "list", "--action", "device.delete")["items"][0]["reason"] == "scrapped"


def test_import_csv_registers_every_row(thermo: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "fleet.csv"
    path.write_text(
        "serial,model,firmware_version,tags,attributes.site\n"
        "SN-1,thermo-v2,1.4.2,pilot;north,berlin-1\n"
        "SN-2,thermo-v2,1.5.0,,hamburg\n"
    )
    assert ok("devices", "import", str(path), "--reason", "first batch") == {"created": 2}
    page = ok("devices", "list", "-q", "attributes.site = berlin-1")
    assert serials(page) == ["SN-1"]
    assert page["items"][0]["tags"] == ["north", "pilot"]


def test_import_json_by_extension(thermo: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "fleet.json"
    path.write_text(json.dumps([{"serial": "SN-1", "model": "thermo-v2"}]))
    assert ok("devices", "import", str(path)) == {"created": 1}


def test_import_with_a_bad_row_exits_1_and_names_the_row(
    thermo: dict[str, Any], tmp_path: Path
) -> None:
    path = tmp_path / "fleet.csv"
    path.write_text("serial,model\nSN-1,thermo-v2\nSN-2,no-such-model\n")
    result = run("devices", "import", str(path))
    assert result.exit_code == 1
    assert "Invalid input" in result.stderr
    cells = next(
        line.split("│")
        for line in result.stderr.splitlines()
        if "│" in line and "no-such-model" in line
    )
    assert [c.strip() for c in cells[1:3]] == ["2", "model"]
    assert ok("devices", "list")["items"] == []  # all or nothing


def test_import_of_an_unknown_extension_asks_for_format(servers: list[str], tmp_path: Path) -> None:
    path = tmp_path / "fleet.txt"
    path.write_text("serial,model\n")
    result = run("devices", "import", str(path))
    assert result.exit_code == 2
    assert "--format" in result.output


def test_aggregate_counts_devices_by_field(thermo: dict[str, Any]) -> None:
    new_device("SN-1", "--firmware", "1.4.2")
    new_device("SN-2", "--firmware", "1.4.2")
    new_device("SN-3", "--firmware", "2.0.0")
    result = ok("devices", "aggregate", "--by", "firmware_version")
    assert result["total"] == 3
    assert {b["value"]: b["count"] for b in result["buckets"]} == {"1.4.2": 2, "2.0.0": 1}


# Groups, models


def test_static_group_members_are_added_and_removed(thermo: dict[str, Any]) -> None:
    one, two = new_device("SN-1"), new_device("SN-2")
    group = ok("groups", "create", "pilots", "--description", "first wave")
    assert group["kind"] == "static"
    changed = ok("groups", "add", "pilots", one["id"], two["id"], "--reason", "wave 1")
    assert changed == {"changed": 2, "member_count": 2}
    ok("groups", "remove", "pilots", two["id"])
    assert serials(ok("groups", "devices", "pilots")) == ["SN-1"]
    assert ok("groups", "show", "pilots")["member_count"] == 1
    assert ok("devices", "show", one["id"])["groups"] == ["pilots"]


def test_dynamic_group_follows_its_query(thermo: dict[str, Any]) -> None:
    new_device("SN-1", "--firmware", "1.4.2")
    new_device("SN-2", "--firmware", "2.0.0")
    group = ok("groups", "create", "old", "--query", "firmware_version < 2.0.0")
    assert group["kind"] == "dynamic"
    assert serials(ok("groups", "devices", "old")) == ["SN-1"]
    ok("groups", "update", "old", "--query", "firmware_version >= 2.0.0", "--reason", "flip")
    assert serials(ok("groups", "devices", "old")) == ["SN-2"]
    assert [g["name"] for g in ok("groups", "list")["items"]] == ["old"]
    assert run("groups", "delete", "old", "--reason", "done").exit_code == 0
    assert ok("groups", "list")["items"] == []


def test_a_group_gets_maintenance_windows_and_loses_them(thermo: dict[str, Any]) -> None:
    group = ok("groups", "create", "night", "--window", "0 2 * * *;2h;Europe/Berlin")
    assert group["maintenance_windows"] == [
        {"cron": "0 2 * * *", "duration": 7200.0, "timezone": "Europe/Berlin"}
    ]
    assert ok("groups", "update", "night", "--clear-windows")["maintenance_windows"] is None
    assert run("groups", "create", "bad", "--window", "0 2 * * *").exit_code == 2


def test_model_takes_a_config_schema_file_and_updates(servers: list[str], tmp_path: Path) -> None:
    schema = {"type": "object", "properties": {"interval": {"type": "integer"}}}
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(schema))
    created = ok(
        "models",
        "create",
        "gw-1",
        "--config-schema",
        str(path),
        "--capability",
        "ota",
        "--capability",
        "mqtt",
    )
    assert (created["config_schema"], created["capabilities"]) == (schema, ["ota", "mqtt"])
    ok("models", "update", "gw-1", "--description", "gateway", "--reason", "docs")
    assert ok("models", "show", "gw-1")["description"] == "gateway"
    assert [m["name"] for m in ok("models", "list")["items"]] == ["gw-1"]
    assert run("models", "delete", "gw-1", "--reason", "unused").exit_code == 0
    assert ok("models", "list")["items"] == []


# Tokens, users, tenants


def test_token_secret_is_printed_once_and_revoking_stops_it(thermo: dict[str, Any]) -> None:
    created = run("tokens", "create", "ci", "--role", "viewer", "--expires-in-days", "7")
    assert created.exit_code == 0, created.output
    secret = created.stdout.split("shown this once")[1].split("\n", 1)[1].strip()
    assert secret.startswith("fkt_") and created.stdout.count(secret) == 1
    assert ok("models", "list", token=secret)["items"]
    token_id = next(t["id"] for t in ok("tokens", "list")["items"] if t["name"] == "ci")
    revoked = ok("tokens", "revoke", token_id, "--reason", "leaked")
    assert revoked["revoked_at"] is not None
    refused = run("models", "list", token=secret)
    assert refused.exit_code == 1
    assert "Unauthenticated" in refused.stderr and "--token" in refused.stderr


def test_role_without_permission_is_reported_as_forbidden(thermo: dict[str, Any]) -> None:
    ok("users", "create", "vera", "--role", "viewer")
    secret = ok("tokens", "create", "vera-cli", "--user", "vera")["token"]
    result = run("devices", "create", "--serial", "SN-1", "--model", "thermo-v2", token=secret)
    assert result.exit_code == 1
    assert "Forbidden" in result.stderr and "role" in result.stderr


def test_users_and_tenants_are_created_and_listed(servers: list[str]) -> None:
    ok("tenants", "create", "acme", "--name", "Acme Corp")
    assert "acme" in [t["id"] for t in ok("tenants", "list")["items"]]
    user = ok(
        "users",
        "create",
        "olga",
        "--role",
        "operator",
        "--tenant",
        "acme",
        "--password",
        "correct horse battery",
    )
    assert (user["role"], user["tenant"]) == ("operator", "acme")
    changed = ok("users", "update", "olga", "--disable", "--reason", "left")
    assert changed["disabled"] is True
    assert "olga" in [u["username"] for u in ok("users", "list")["items"]]


# Audit


def test_audit_list_filters_by_action(thermo: dict[str, Any]) -> None:
    new_device("SN-1")
    records = ok("audit", "list", "--action", "device.create")["items"]
    assert [r["action"] for r in records] == ["device.create"]
    assert {"actor", "action", "target", "reason", "at"} <= records[0].keys()


def test_audit_verify_through_the_server(thermo: dict[str, Any]) -> None:
    result = ok("audit", "verify")
    assert result["ok"] is True and result["checked"] >= 1


def test_audit_verify_straight_in_the_database(thermo: dict[str, Any], settings: Settings) -> None:
    url = settings.resolved_database_url()
    through_server = ok("audit", "verify")
    assert ok("audit", "verify", "--database-url", url) == through_server


def test_audit_verify_names_the_first_broken_record(
    thermo: dict[str, Any], settings: Settings
) -> None:
    new_device("SN-1")
    record_id = ok("audit", "list", "--action", "device.create")["items"][0]["id"]
    asyncio.run(
        _execute(
            settings.resolved_database_url(),
            "UPDATE audit_log SET reason = 'forged' WHERE id = :id",
            id=record_id,
        )
    )
    for args in (
        ["audit", "verify"],
        ["audit", "verify", "--database-url", settings.resolved_database_url()],
    ):
        result = run(*args)
        assert result.exit_code == 1
        assert f"broken at record {record_id}" in result.stderr


async def _execute(url: str, sql: str, **params: Any) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text(sql), params)
    finally:
        await engine.dispose()


# Output, connection, exit codes


def test_json_output_is_nothing_but_json(thermo: dict[str, Any]) -> None:
    new_device("SN-1")
    for command in (
        ["devices", "list"],
        ["models", "list"],
        ["groups", "list"],
        ["tokens", "list"],
        ["users", "list"],
        ["tenants", "list"],
        ["audit", "list"],
        ["models", "show", "thermo-v2"],
    ):
        result = run(*command, "--json")
        assert result.exit_code == 0, (command, result.output)
        assert isinstance(json.loads(result.stdout), dict), command


def test_people_get_a_table(thermo: dict[str, Any]) -> None:
    new_device("SN-1", "--firmware", "1.4.2")
    result = run("devices", "list")
    assert result.exit_code == 0
    assert "Serial" in result.stdout and "SN-1" in result.stdout and "1.4.2" in result.stdout
    with pytest.raises(json.JSONDecodeError):
        json.loads(result.stdout)


def test_command_server_option_wins_over_the_root_one(servers: list[str]) -> None:
    run("--server", "http://root.example", "models", "list")
    run("--server", "http://root.example", "models", "list", "--server", "http://cmd.example")
    assert servers == ["http://root.example", "http://cmd.example"]


def test_server_comes_from_the_environment(servers: list[str]) -> None:
    CliRunner().invoke(
        cli, ["models", "list"], env={**ENV, "FLEETKEEPER_SERVER": "http://env.example"}
    )
    assert servers == ["http://env.example"]


def test_missing_token_is_reported_clearly(servers: list[str]) -> None:
    result = run("models", "list", token=None)
    assert result.exit_code == 1
    assert "Unauthenticated" in result.stderr and "FLEETKEEPER_TOKEN" in result.stderr


def test_server_problem_title_and_detail_go_to_stderr(servers: list[str]) -> None:
    result = run("devices", "show", "no-such-id", "--json")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "Not found" in result.stderr and "no-such-id" in result.stderr


def test_per_field_errors_are_listed(thermo: dict[str, Any]) -> None:
    result = run("devices", "create", "--serial", "bad serial!", "--model", "thermo-v2")
    assert result.exit_code == 1
    assert "serial" in result.stderr and "Invalid input" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["devices", "list", "--no-such-option"],
        ["devices", "create", "--serial", "SN-1"],
        ["devices", "create", "--serial", "SN-1", "--model", "m", "--attr", "novalue"],
        ["devices", "create", "--serial", "SN-1", "--model", "m", "--lat", "1"],
        ["devices", "list", "--limit", "0"],
        ["no-such-command"],
    ],
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    assert run(*args).exit_code == 2


def test_unreachable_server_is_one_clear_line() -> None:
    result = CliRunner().invoke(
        cli, ["--server", "http://127.0.0.1:9", "devices", "list"], env={**ENV, "COLUMNS": "40"}
    )
    assert result.exit_code == 1
    [line] = result.stderr.splitlines()
    assert "cannot reach the Fleetkeeper server at http://127.0.0.1:9" in line


def test_db_upgrade_prints_the_revision(tmp_path: Path) -> None:
    from fleetkeeper.store.migrate import head_revision

    result = run("db", "upgrade", "--data-dir", str(tmp_path / "data"), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["revision"] == head_revision()
    assert (tmp_path / "data" / "fleetkeeper.db").exists()


def test_verify_of_a_missing_database_file_fails_cleanly(tmp_path: Path) -> None:
    result = run("audit", "verify", "--data-dir", str(tmp_path / "none"))
    assert result.exit_code == 1
    assert "no database file" in result.stderr
    assert not (tmp_path / "none").exists()


def test_version() -> None:
    from fleetkeeper import __version__

    result = run("--version")
    assert (result.exit_code, result.stdout.strip()) == (0, f"fleetkeeper {__version__}")


# Commands that work on local files only and never reach a server.
LOCAL_COMMANDS = {("artifacts", "keygen"), ("artifacts", "sign")}


def test_every_management_command_takes_server_token_and_json() -> None:
    import typer.main

    def leaves(command: Any, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], Any]]:
        subcommands = getattr(command, "commands", None)
        if subcommands is None:
            yield path, command
            return
        for name, sub in subcommands.items():
            yield from leaves(sub, (*path, name))

    root = typer.main.get_command(cli)
    for group_name, group in getattr(root, "commands", {}).items():
        if group_name == "db" or not hasattr(group, "commands"):
            continue
        for path, command in leaves(group, (group_name,)):
            options = {opt for param in command.params for opt in param.opts}
            if path not in LOCAL_COMMANDS:
                assert {"--server", "--token"} <= options, " ".join(path)
            assert path[-1] == "delete" or "--json" in options, " ".join(path)
