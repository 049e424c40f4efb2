"""`fleetkeeper deploy ...` against the real app, in-process (see test_cli.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fleetkeeper.cli import deploy
from test_cli import new_device, ok, run, servers, thermo  # noqa: F401 - fixtures used below

pytestmark = pytest.mark.usefixtures("thermo")


@pytest.fixture
def artifact(tmp_path: Path) -> dict[str, Any]:
    for n in range(4):
        new_device(f"SN-{n}", "--firmware", "1.0.0", "--state", "active")
    path = tmp_path / "fw.bin"
    path.write_bytes(b"firmware 2.0.0\n" * 100)
    made: dict[str, Any] = ok(
        "artifacts", "upload", str(path), "--version", "2.0.0", "--models", "thermo-v2"
    )
    return made


def test_create_takes_the_policy_as_options(artifact: dict[str, Any]) -> None:
    created = ok(
        "deploy",
        "create",
        "--target",
        "model = thermo-v2",
        "--artifact",
        artifact["id"],
        "--phases",
        "25,100",
        "--error-threshold",
        "5",
        "--on-error",
        "abort",
        "--rollback-on-abort",
        "--rate",
        "30",
        "--window",
        "0 2 * * *;2h;Europe/Berlin",
        "--reason",
        "release 2.0.0",
    )
    rollout = created["rollout"]
    assert [p["percent"] for p in rollout["phases"]] == [25, 100]
    assert (rollout["error_threshold"], rollout["on_error"]) == (5, "abort")
    assert rollout["rollback_on_abort"] is True
    assert rollout["rate"]["base_per_minute"] == 30
    assert rollout["schedule"]["windows"] == [
        {"cron": "0 2 * * *", "duration": 7200.0, "timezone": "Europe/Berlin"}
    ]
    assert created["total"] == 4 and created["counts"]["queued"] == 4
    assert ok("deploy", "show", created["id"]) == ok("deploy", "show", created["id"])
    assert [d["id"] for d in ok("deploy", "list")["items"]] == [created["id"]]


def test_a_policy_file_and_a_bulk_command(tmp_path: Path, artifact: dict[str, Any]) -> None:
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"phases": [{"count": 1}, 100], "jitter": 0}))
    created = ok(
        "deploy",
        "create",
        "-q",
        "model = thermo-v2",
        "--command",
        "reboot",
        "--arg",
        "delay=5",
        "--policy",
        str(policy),
    )
    assert created["kind"] == "command"
    assert created["command"] == {"name": "reboot", "args": {"delay": 5}}
    assert created["rollout"]["phases"][0]["count"] == 1


def test_pause_resume_and_cancel_then_follow_ends_with_failure(artifact: dict[str, Any]) -> None:
    created = ok("deploy", "create", "-q", "model = thermo-v2", "--artifact", artifact["id"])
    assert ok("deploy", "pause", created["id"], "--reason", "lunch")["state"] == "paused"
    assert ok("deploy", "resume", created["id"])["state"] == "running"
    assert ok("deploy", "cancel", created["id"])["state"] == "canceled"
    followed = run("deploy", "show", created["id"], "--follow", "--json")
    assert followed.exit_code == 1  # it ended, and not well
    assert json.loads(followed.stdout)["state"] == "canceled"
    events = ok("deploy", "events", created["id"])["items"]
    assert [e["kind"] for e in events] == ["created", "pause", "resume", "cancel"]
    executions = ok("deploy", "executions", created["id"], "--state", "canceled")["items"]
    assert len(executions) == 4


def test_usage_errors_exit_with_two(artifact: dict[str, Any]) -> None:
    assert run("deploy", "create", "-q", "model = thermo-v2").exit_code == 2
    both = run("deploy", "create", "-q", "x", "--artifact", artifact["id"], "--command", "reboot")
    assert both.exit_code == 2
    bad = run("deploy", "create", "-q", "x", "--command", "reboot", "--on-error", "panic")
    assert bad.exit_code == 2


def test_the_live_view_draws_phases_counts_and_failures() -> None:
    shown = {
        "id": "d-1",
        "name": "thermo 2.0.0",
        "state": "paused",
        "reason": "error threshold",
        "target": "model = thermo-v2",
        "total": 10,
        "eta": None,
        "phases": [
            {
                "index": 0,
                "percent": 10.0,
                "count": None,
                "size": 1,
                "state": "done",
                "counts": {"failed": 1},
            },
            {
                "index": 1,
                "percent": 100.0,
                "count": None,
                "size": 9,
                "state": "waiting",
                "counts": {"queued": 9},
            },
        ],
        "counts": {"failed": 1, "queued": 9},
        "failure_reasons": {"update_failed": 1},
        "skipped": {"incompatible_model": 2},
    }
    from rich.console import Console

    console = Console(width=120, record=True)
    console.print(deploy.render(shown))
    text = console.export_text()
    for part in (
        "thermo 2.0.0",
        "paused",
        "phase 1 (10%)",
        "update_failed 1",
        "incompatible_model 2",
        "queued 9",
    ):
        assert part in text
