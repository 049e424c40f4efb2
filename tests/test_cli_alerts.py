"""`fleetkeeper alerts ...` against the real app, in-process.

Like test_cli_geo.py: the app stays reachable through the blocking portal, so the rows the
engine would write (alerts, incidents, notifications, remediation actions) are put in directly.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio.from_thread
import httpx
import pytest
from fastapi import FastAPI

from fleetkeeper.cli import client
from fleetkeeper.clock import FakeClock
from fleetkeeper.ids import uuid7
from fleetkeeper.services.alerting.delivery import Deliverer
from fleetkeeper.services.alerting.model import fingerprint
from fleetkeeper.settings import Settings
from fleetkeeper.store.db import Database
from fleetkeeper.store.models import (
    AlertIncident,
    AlertNotification,
    AlertRecord,
    RemediationAction,
)
from test_cli import PortalTransport, ok, run

WEBHOOK = "https://hooks.example.com/fleetkeeper"


@dataclass
class Server:
    app: FastAPI
    portal: anyio.from_thread.BlockingPortal
    clock: FakeClock

    def add(self, row: Any) -> None:
        """Write a row as the engine would."""
        self.portal.call(self._add, row)

    async def _add(self, row: Any) -> None:
        async with self.app.state.fleetkeeper.db.write() as session:
            session.add(row)

    def alert(self, rule: dict[str, Any], serial: str, state: str = "firing", **extra: Any) -> str:
        now = self.clock.advance(seconds=1)
        labels = {"device": serial, "serial": serial, "site": "oslo-3"}
        fp = fingerprint(rule["name"], labels)
        alert_id = uuid7(now)
        self.add(
            AlertRecord(
                id=alert_id,
                tenant_id=rule["tenant"],
                rule_id=rule["id"],
                rule=rule["name"],
                fingerprint=fp,
                open_fingerprint=None if state == "resolved" else fp,
                device_id=None,
                state=state,
                severity="warning",
                labels=labels,
                annotations={},
                value=11.5,
                active_since=now - timedelta(minutes=10),
                fired_at=now,
                flapping=False,
                flips=[],
                muted_by={"silences": ["s1"]} if extra.get("muted") else {},
                incident_id=extra.get("incident"),
                updated_at=now,
            )
        )
        return alert_id

    def notification(self, channel: dict[str, Any], state: str = "dead") -> str:
        now = self.clock.advance(seconds=1)
        notification_id = uuid7(now)
        self.add(
            AlertNotification(
                id=notification_id,
                tenant_id=channel["tenant"],
                channel_id=channel["id"],
                group_key="low-battery|site=oslo-3",
                kind="group",
                title="2 devices with a low battery at oslo-3",
                payload={"version": 1, "id": notification_id},
                notified=[],
                state=state,
                attempts=8,
                last_error="HTTP 500: oops",
                created_at=now,
            )
        )
        return notification_id


@pytest.fixture
def server(
    settings: Settings, clock: FakeClock, db: Database, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Server]:
    from fleetkeeper.api.app import create_app

    application: FastAPI = create_app(settings, clock=clock)
    with (
        anyio.from_thread.start_blocking_portal() as portal,
        portal.wrap_async_context_manager(application.router.lifespan_context(application)),
    ):

        def open_http(_: str) -> httpx.Client:
            return httpx.Client(
                transport=PortalTransport(application, portal), base_url="http://fleetkeeper.test"
            )

        monkeypatch.setattr(client, "open_http", open_http)
        yield Server(application, portal, clock)


def new_rule(*options: str) -> dict[str, Any]:
    rule: dict[str, Any] = ok(
        "alerts", "rules", "create", "--name", "low-battery", "--condition", "battery < 15",
        *options,
    )  # fmt: skip
    return rule


def test_rules_are_created_from_options_or_a_file_and_changed(
    server: Server, tmp_path: Path
) -> None:
    ops = ok("alerts", "channels", "add", "--name", "ops", "--kind", "webhook", "--url", WEBHOOK)
    rule = new_rule(
        "--clear", "battery > 20", "--scope", "model = thermo-v2", "--severity", "critical",
        "--group-by", "rule", "--group-by", "site", "--group-wait", "1m", "--label", "team=field",
        "--channel", ops["id"],
    )  # fmt: skip
    assert (rule["condition"], rule["clear"], rule["group_wait"]) == (
        "battery < 15",
        "battery > 20",
        60,
    )
    assert (rule["group_by"], rule["labels"], rule["channels"]) == (
        ["rule", "site"],
        {"team": "field"},
        [ops["id"]],
    )
    spec = tmp_path / "rule.json"
    spec.write_text(json.dumps({"name": "offline", "condition": "offline for 30m", "scope": "x"}))
    from_file = ok("alerts", "rules", "create", "--file", str(spec), "--scope", "", "--disabled")
    assert (from_file["name"], from_file["scope"], from_file["enabled"]) == ("offline", "", False)

    listed = run("alerts", "rules", "list")
    assert listed.exit_code == 0, listed.output
    assert "low-battery" in listed.stdout and "offline for 30m" in listed.stdout
    assert "battery < 15" in run("alerts", "rules", "show", rule["id"]).stdout

    changed = ok("alerts", "rules", "update", rule["id"], "--condition", "battery < 10")
    assert (changed["condition"], changed["severity"], changed["version"]) == (
        "battery < 10",
        "critical",
        2,
    )
    assert ok("alerts", "rules", "disable", rule["id"])["enabled"] is False
    assert ok("alerts", "rules", "enable", rule["id"], "--reason", "fixed")["version"] == 4
    assert run("alerts", "rules", "update", rule["id"]).exit_code == 2  # nothing to change
    gone = run("alerts", "rules", "delete", from_file["id"], "--reason", "noisy")
    assert gone.exit_code == 0, gone.output
    assert run("alerts", "rules", "show", from_file["id"]).exit_code == 1


def test_a_rule_the_server_refuses_names_the_field(server: Server) -> None:
    refused = run("alerts", "rules", "create", "--name", "x", "--condition", "battery <")
    assert refused.exit_code == 1
    assert "condition" in refused.stderr and "column 10" in refused.stderr
    assert run("alerts", "rules", "create", "--name", "x").exit_code == 2
    assert run("alerts", "rules", "create", "--condition", "x", "--label", "nope").exit_code == 2


def test_channels_are_added_tested_and_deleted_without_showing_secrets(server: Server) -> None:
    answers = iter([httpx.Response(200), httpx.Response(500, text="receiver down")])
    state = server.app.state.fleetkeeper
    http = httpx.AsyncClient(transport=httpx.MockTransport(lambda _: next(answers)))
    state.deliverer = Deliverer(state.db, state.clock, http=http)
    ops = ok(
        "alerts", "channels", "add", "--name", "ops", "--kind", "webhook", "--url", WEBHOOK,
        "--secret", "hmac-key-1", "--settings", '{"rate_limit": {"max": 5, "period": "1h"}}',
    )  # fmt: skip
    assert ops["has_secret"] is True and "secret" not in ops
    assert ops["settings"]["rate_limit"] == {"max": 5, "period": 3600.0}
    mail = ok(
        "alerts", "channels", "add", "--name", "mail", "--kind", "email",
        "--url", "smtp://mail.example.com", "--to", "ops@example.com",
    )  # fmt: skip
    assert mail["settings"] == {"to": ["ops@example.com"]}
    listed = run("alerts", "channels", "list")
    assert listed.exit_code == 0 and "hmac-key-1" not in listed.stdout and "ops" in listed.stdout

    sent = run("alerts", "channels", "test", ops["id"])
    assert sent.exit_code == 0, sent.output
    server.clock.advance(seconds=1)
    failed = run("alerts", "channels", "test", ops["id"], "--json")
    assert failed.exit_code == 1
    assert json.loads(failed.stdout)["error"] == "HTTP 500: receiver down"
    assert run("alerts", "channels", "delete", mail["id"]).exit_code == 0
    assert [c["name"] for c in ok("alerts", "channels", "list")["items"]] == ["ops"]
    server.portal.call(http.aclose)


def test_alerts_are_listed_acknowledged_and_resolved(server: Server) -> None:
    rule = new_rule()
    first = server.alert(rule, "SN-1")
    second = server.alert(rule, "SN-2", muted=True)
    server.alert(rule, "SN-3", state="resolved")
    firing = ok("alerts", "list", "--state", "firing")
    assert [a["id"] for a in firing["items"]] == [second, first]
    table = run("alerts", "list", "--state", "firing")
    assert table.exit_code == 0, table.output
    assert "SN-1" in table.stdout and "oslo-3" in table.stdout and "silenced" in table.stdout
    assert "SN-3" not in table.stdout

    acked = ok("alerts", "ack", first, "--note", "truck on its way")
    assert (acked["acknowledged"], acked["acknowledged_note"]) == (True, "truck on its way")
    assert "firing (acked)" in run("alerts", "list").stdout
    again = run("alerts", "ack", first)
    assert again.exit_code == 1 and "acknowledged already" in again.stderr
    resolved = ok("alerts", "resolve", second, "--note", "replaced the battery")
    assert (resolved["state"], resolved["annotations"]["resolution"]) == (
        "resolved",
        "replaced the battery",
    )
    shown = run("alerts", "show", first)
    assert shown.exit_code == 0 and "truck on its way" in shown.stdout
    assert run("alerts", "show", "no-such-alert").exit_code == 1


def test_silences_are_added_listed_and_expired(server: Server) -> None:
    silence = ok(
        "alerts", "silences", "add", "--matcher", "site=oslo-3", "--matcher", "rule=low-battery",
        "--duration", "2h", "--comment", "battery swap at oslo-3",
    )  # fmt: skip
    assert (silence["state"], silence["matchers"]) == (
        "active",
        ["site=oslo-3", "rule=low-battery"],
    )
    listed = run("alerts", "silences", "list", "--state", "active")
    assert listed.exit_code == 0 and "battery swap" in listed.stdout
    expired = run("alerts", "silences", "expire", silence["id"])
    assert expired.exit_code == 0 and "expired" in expired.stdout
    assert ok("alerts", "silences", "list", "--state", "expired")["items"][0]["id"] == silence["id"]
    assert run("alerts", "silences", "expire", silence["id"]).exit_code == 1
    no_end = ["alerts", "silences", "add", "--matcher", "a=b", "--comment", "c"]
    assert run(*no_end).exit_code == 2
    assert run("alerts", "silences", "add", "--matcher", "a=b", "--duration", "1h").exit_code == 2


def test_inhibit_rules_are_added_listed_and_deleted(server: Server) -> None:
    rule = ok(
        "alerts", "inhibit", "add", "--name", "gateway-down", "--source", "rule=gateway-offline",
        "--target", "rule=offline", "--equal", "gateway",
    )  # fmt: skip
    assert (rule["source"], rule["equal"]) == (["rule=gateway-offline"], ["gateway"])
    assert "gateway-down" in run("alerts", "inhibit", "list").stdout
    assert run("alerts", "inhibit", "delete", rule["id"]).exit_code == 0
    assert ok("alerts", "inhibit", "list")["items"] == []


def test_incidents_notifications_and_remediations_are_shown(server: Server) -> None:
    rule = new_rule()
    now = server.clock.now()
    incident_id = uuid7(now)
    server.add(
        AlertIncident(
            id=incident_id,
            tenant_id="default",
            rule="low-battery",
            group_key="low-battery|site=oslo-3",
            labels={"site": "oslo-3"},
            opened_at=now,
            firing=1,
            peak=1,
            alerts=1,
            updated_at=now,
        )
    )
    alert = server.alert(rule, "SN-1", incident=incident_id)
    listed = run("alerts", "incidents")
    assert listed.exit_code == 0, listed.output
    assert incident_id in listed.stdout and "1 incidents" in listed.stdout
    assert ok("alerts", "incidents", "list", "--state", "open")["items"][0]["id"] == incident_id
    shown = run("alerts", "incidents", "show", incident_id)
    assert shown.exit_code == 0 and "SN-1" in shown.stdout and "peak 1" in shown.stdout

    ops = ok("alerts", "channels", "add", "--name", "ops", "--kind", "webhook", "--url", WEBHOOK)
    dead = server.notification(ops)
    server.notification(ops, state="delivered")
    letters = ok("alerts", "notifications", "--dead")
    assert [n["id"] for n in letters["items"]] == [dead]
    assert "HTTP 500: oops" in run("alerts", "notifications").stdout
    replayed = run("alerts", "notifications", "replay", "--id", dead)
    assert replayed.exit_code == 0 and "Queued 1" in replayed.stdout
    assert ok("alerts", "notifications", "--dead")["items"] == []
    assert run("alerts", "notifications", "replay").exit_code == 2

    server.add(
        RemediationAction(
            id=uuid7(server.clock.advance(seconds=1)),
            tenant_id="default",
            rule_id=rule["id"],
            alert_id=alert,
            device_id="SN-1",
            step=0,
            action="restart_service",
            args={},
            state="sent",
            detail={},
            at=server.clock.now(),
        )
    )
    actions = run("alerts", "remediations", "--rule", rule["id"])
    assert actions.exit_code == 0 and "restart_service" in actions.stdout
    assert ok("alerts", "remediations", "--alert", "other")["items"] == []
