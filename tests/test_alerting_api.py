"""Alerting over the API: channels, rules, alerts (acknowledge, resolve), silences, inhibit rules,
incidents, the notification log and remediation actions. On SQLite and PostgreSQL.

The engine does not run here (`alert_interval_seconds=0`): the alerts, incidents,
notifications and remediation actions it would write are put into the tables directly.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select

from fleet import as_token_client, fleet, user_token
from fleetkeeper.clock import FakeClock
from fleetkeeper.ids import uuid7
from fleetkeeper.services.alerting.delivery import Deliverer
from fleetkeeper.services.alerting.model import fingerprint
from fleetkeeper.store.models import (
    AlertIncident,
    AlertNotification,
    AlertRecord,
    RemediationAction,
)

WEBHOOK = "https://hooks.example.com/fleetkeeper"


async def add_channel(client: httpx.AsyncClient, name: str = "ops", **fields: Any) -> Any:
    body = {"name": name, "kind": "webhook", "url": WEBHOOK, **fields}
    r = await client.post("/api/v1/channels", json=body)
    assert r.status_code == 201, r.text
    return r.json()


async def add_rule(client: httpx.AsyncClient, name: str = "low-battery", **fields: Any) -> Any:
    body = {"name": name, "condition": "battery < 15 for 10m", **fields}
    r = await client.post("/api/v1/alert-rules", json=body)
    assert r.status_code == 201, r.text
    return r.json()


async def audit_of(client: httpx.AsyncClient, target: str) -> list[tuple[str, Any, Any]]:
    r = await client.get("/api/v1/audit", params={"target": target})
    assert r.status_code == 200, r.text
    return [(i["action"], i["before"], i["after"]) for i in r.json()["items"]]


async def put_alert(
    app: FastAPI,
    rule: dict[str, Any],
    *,
    state: str = "firing",
    device: str | None = None,
    labels: dict[str, str] | None = None,
    severity: str = "warning",
    incident: str | None = None,
) -> Any:
    """An alert as the engine writes it."""
    clock: FakeClock = app.state.fleetkeeper.clock
    now = clock.advance(seconds=1)
    labels = {"device": device or "", **(labels or {})}
    fp = fingerprint(rule["name"], labels)
    alert = AlertRecord(
        id=uuid7(now),
        tenant_id=rule["tenant"],
        rule_id=rule["id"],
        rule=rule["name"],
        fingerprint=fp,
        open_fingerprint=None if state == "resolved" else fp,
        device_id=device,
        state=state,
        severity=severity,
        labels=labels,
        annotations={"summary": "battery low"},
        value=12.0,
        active_since=now - timedelta(minutes=10),
        fired_at=now if state != "pending" else None,
        resolved_at=now if state == "resolved" else None,
        flapping=False,
        flips=[],
        incident_id=incident,
        muted_by={},
        updated_at=now,
    )
    async with app.state.fleetkeeper.db.write() as session:
        session.add(alert)
    return await alert_row(app, alert.id)


async def alert_row(app: FastAPI, alert_id: str) -> AlertRecord:
    async with app.state.fleetkeeper.db.read() as session:
        row: AlertRecord = await session.get_one(AlertRecord, alert_id)
        return row


async def put_notification(
    app: FastAPI, channel: dict[str, Any], *, state: str = "dead", group: str = "g"
) -> str:
    now = app.state.fleetkeeper.clock.advance(seconds=1)
    row = AlertNotification(
        id=uuid7(now),
        tenant_id=channel["tenant"],
        channel_id=channel["id"],
        group_key=group,
        kind="group",
        title="3 devices with a low battery",
        payload={"version": 1, "id": "x", "kind": "group", "title": "t"},
        notified=[],
        state=state,
        attempts=8 if state == "dead" else 1,
        next_attempt_at=None,
        last_error="HTTP 500" if state == "dead" else None,
        created_at=now,
    )
    async with app.state.fleetkeeper.db.write() as session:
        session.add(row)
    return row.id


# --- rules ---------------------------------------------------------------------------------------


async def test_a_rule_is_stored_as_validated_with_durations_in_seconds(
    client: httpx.AsyncClient,
) -> None:
    ops = await add_channel(client)
    rule = await add_rule(
        client,
        scope="model = thermo-v2",
        clear="battery > 20",
        severity="critical",
        labels={"team": "field"},
        group_by=["rule", "site"],
        group_wait="30s",
        group_interval="5m",
        repeat_interval="4h",
        channels=[ops["id"]],
        reason="batteries die in winter",
    )
    assert (rule["name"], rule["tenant"], rule["enabled"], rule["version"]) == (
        "low-battery",
        "default",
        True,
        1,
    )
    assert (rule["condition"], rule["clear"]) == ("battery < 15 for 10m", "battery > 20")
    assert (rule["group_wait"], rule["group_interval"], rule["repeat_interval"]) == (30, 300, 14400)
    assert rule["group_by"] == ["rule", "site"] and rule["channels"] == [ops["id"]]
    assert rule["incident"] == {"min_devices": 50, "min_fraction": None, "window": 300.0}
    assert rule["remediation"] is None and rule["flap_flips"] == 4
    assert (await client.get(f"/api/v1/alert-rules/{rule['id']}")).json() == rule
    listed = (await client.get("/api/v1/alert-rules")).json()
    assert [r["id"] for r in listed["items"]] == [rule["id"]]
    ((action, _, after),) = await audit_of(client, f"alert_rule:{rule['id']}")
    assert action == "alert.rule.create" and after["condition"] == rule["condition"]


async def test_patch_merges_fields_put_replaces_and_each_change_bumps_the_version(
    client: httpx.AsyncClient, clock: FakeClock
) -> None:
    rule = await add_rule(client, severity="critical", group_wait="1m")
    clock.advance(minutes=1)
    path = f"/api/v1/alert-rules/{rule['id']}"
    r = await client.patch(path, json={"condition": "battery < 10", "reason": "fewer pages"})
    assert r.status_code == 200, r.text
    patched = r.json()
    assert (patched["condition"], patched["severity"], patched["group_wait"]) == (
        "battery < 10",
        "critical",
        60,
    )
    assert patched["version"] == 2 and patched["updated_at"] > rule["updated_at"]
    assert (await client.patch(path, json={"severity": "critical"})).json()["version"] == 2
    r = await client.patch(path, json={"enabled": False})
    assert (r.json()["enabled"], r.json()["version"]) == (False, 3)
    assert (await client.get("/api/v1/alert-rules", params={"enabled": True})).json()["items"] == []

    r = await client.put(path, json={"name": "flat-battery", "condition": "battery < 5"})
    assert r.status_code == 200, r.text
    put = r.json()
    assert (put["name"], put["severity"], put["group_wait"], put["enabled"]) == (
        "flat-battery",
        "warning",
        30,
        False,
    )
    assert put["version"] == 4
    actions = await audit_of(client, f"alert_rule:{rule['id']}")
    assert [a for a, _, _ in actions] == ["alert.rule.update"] * 3 + ["alert.rule.create"]
    assert actions[1][1:] == ({"enabled": True, "version": 2}, {"enabled": False, "version": 3})
    assert actions[2][1:] == (
        {"condition": "battery < 15 for 10m", "version": 1},
        {"condition": "battery < 10", "version": 2},
    )


async def test_a_bad_condition_is_422_naming_the_field_and_the_column(
    client: httpx.AsyncClient,
) -> None:
    r = await client.post("/api/v1/alert-rules", json={"name": "x", "condition": "battery <"})
    assert r.status_code == 422
    problem = r.json()
    assert problem["errors"][0]["field"] == "condition"
    assert "column 10" in problem["detail"] and "expected a number" in problem["detail"]

    rule = await add_rule(client)
    r = await client.patch(f"/api/v1/alert-rules/{rule['id']}", json={"clear": "battery >"})
    assert r.status_code == 422
    assert (r.json()["field"], r.json()["column"], r.json()["position"]) == ("clear", 10, 9)
    assert r.json()["detail"].startswith("clear: expected a number")
    r = await client.patch(f"/api/v1/alert-rules/{rule['id']}", json={"group_wait": "soon"})
    assert (r.status_code, r.json()["field"]) == (422, "group_wait")
    r = await client.patch(f"/api/v1/alert-rules/{rule['id']}", json={"colour": "red"})
    assert (r.status_code, r.json()["field"]) == (422, "colour")
    r = await client.patch(f"/api/v1/alert-rules/{rule['id']}", json={"clear": "battery < 20"})
    assert (r.status_code, r.json()["field"]) == (422, "clear")  # would fire and clear at once


@pytest.mark.parametrize(
    ("scope", "status"), [("attributes.site =", 400), ("no_such_field = 3", 400)]
)
async def test_a_bad_scope_is_refused_naming_scope(
    client: httpx.AsyncClient, scope: str, status: int
) -> None:
    r = await client.post(
        "/api/v1/alert-rules", json={"name": "x", "condition": "offline for 30m", "scope": scope}
    )
    assert r.status_code == status, r.text
    assert r.json()["field"] == "scope"


async def test_a_rule_sends_only_to_channels_of_its_own_tenant(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/v1/tenants", json={"id": "acme", "name": "Acme"})
    assert r.status_code == 201, r.text
    theirs = await add_channel(client, tenant="acme")
    for channels in (["no-such-channel"], [theirs["id"]]):
        r = await client.post(
            "/api/v1/alert-rules",
            json={"name": "x", "condition": "offline for 30m", "channels": channels},
        )
        assert (r.status_code, r.json()["field"]) == (422, "channels"), r.text


async def test_rule_names_are_unique_in_a_tenant(client: httpx.AsyncClient) -> None:
    await add_rule(client)
    r = await client.post(
        "/api/v1/alert-rules", json={"name": "low-battery", "condition": "battery < 5"}
    )
    assert (r.status_code, r.json()["field"]) == (409, "name")
    other = await add_rule(client, "other")
    r = await client.patch(f"/api/v1/alert-rules/{other['id']}", json={"name": "low-battery"})
    assert r.status_code == 409


async def test_deleting_a_rule_takes_its_alerts_and_the_audit_counts_them(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    rule = await add_rule(client)
    await put_alert(app, rule, device="d1")
    await put_alert(app, rule, device="d2", state="resolved")
    r = await client.delete(f"/api/v1/alert-rules/{rule['id']}", params={"reason": "obsolete"})
    assert r.status_code == 204
    assert (await client.get(f"/api/v1/alert-rules/{rule['id']}")).status_code == 404
    assert (await client.get("/api/v1/alerts")).json()["items"] == []
    action, before, _ = (await audit_of(client, f"alert_rule:{rule['id']}"))[0]
    assert action == "alert.rule.delete"
    assert (before["alerts"], before["open_alerts"]) == (2, 1)


# --- channels ------------------------------------------------------------------------------------


async def test_a_channel_never_shows_its_secret(client: httpx.AsyncClient) -> None:
    ops = await add_channel(
        client, secret="s3cret-hmac-key", settings={"rate_limit": {"max": 10, "period": "1h"}}
    )
    assert ops["has_secret"] is True and "secret" not in ops
    assert ops["settings"] == {"rate_limit": {"max": 10, "period": 3600.0}}
    path = f"/api/v1/channels/{ops['id']}"
    assert (await client.get(path)).json() == ops
    assert (await client.get("/api/v1/channels")).json()["items"] == [ops]
    r = await client.patch(path, json={"secret": "another-key"})
    assert r.status_code == 200 and r.json()["has_secret"] is True
    r = await client.patch(path, json={"secret": None, "url": "https://hooks.example.com/v2"})
    assert (r.json()["has_secret"], r.json()["url"]) == (False, "https://hooks.example.com/v2")
    trail = await audit_of(client, f"alert_channel:{ops['id']}")
    assert [a for a, _, _ in trail] == ["alert.channel.update"] * 2 + ["alert.channel.create"]
    assert trail[1][2] == {"secret_replaced": True}
    assert "s3cret" not in str(trail) and "another-key" not in str(trail)


async def test_a_channel_the_server_refuses_names_the_field(client: httpx.AsyncClient) -> None:
    cases = [
        ({"url": "ftp://example.com"}, "url"),
        ({"kind": "pager"}, "kind"),
        ({"kind": "email", "url": "smtp://mail.example.com"}, "settings.to"),
        ({"settings": {"colour": "red"}}, "settings.colour"),
    ]
    for fields, field in cases:
        body = {"name": "x", "kind": "webhook", "url": WEBHOOK, **fields}
        r = await client.post("/api/v1/channels", json=body)
        assert r.status_code == 422, r.text
        problem = r.json()
        assert problem.get("field", problem.get("errors", [{}])[0].get("field")) == field


async def test_a_channel_a_rule_sends_to_cannot_be_deleted(client: httpx.AsyncClient) -> None:
    ops = await add_channel(client)
    rule = await add_rule(client, channels=[ops["id"]])
    r = await client.delete(f"/api/v1/channels/{ops['id']}")
    assert (r.status_code, r.json()["code"], r.json()["rules"]) == (
        409,
        "channel_in_use",
        ["low-battery"],
    )
    await client.patch(f"/api/v1/alert-rules/{rule['id']}", json={"channels": []})
    assert (await client.delete(f"/api/v1/channels/{ops['id']}")).status_code == 204
    assert (await client.get(f"/api/v1/channels/{ops['id']}")).status_code == 404


async def test_a_test_send_reaches_the_receiver_and_lands_in_the_log(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    seen: list[httpx.Request] = []

    def receiver(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204 if len(seen) == 1 else 410)

    state = app.state.fleetkeeper
    http = httpx.AsyncClient(transport=httpx.MockTransport(receiver))
    state.deliverer = Deliverer(state.db, state.clock, http=http)
    ops = await add_channel(client, secret="k")
    r = await client.post(f"/api/v1/channels/{ops['id']}/test")
    assert r.status_code == 200, r.text
    assert (r.json()["delivered"], r.json()["status"]) == (True, 204)
    assert "X-Fleetkeeper-Signature" in seen[0].headers
    state.clock.advance(seconds=1)
    r = await client.post(f"/api/v1/channels/{ops['id']}/test")
    assert (r.json()["delivered"], r.json()["state"], r.json()["status"]) == (False, "dead", 410)
    log = (await client.get("/api/v1/notifications", params={"channel": ops["id"]})).json()
    assert [(n["kind"], n["state"]) for n in log["items"]] == [
        ("test", "dead"),
        ("test", "delivered"),
    ]
    await http.aclose()


# --- permissions and tenants ---------------------------------------------------------------------


async def test_a_viewer_reads_alerting_but_changes_nothing(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    ops = await add_channel(client)
    rule = await add_rule(client)
    alert = await put_alert(app, rule, device="d1")
    async with as_token_client(client, await user_token(client, "vic", "viewer")) as vic:
        for path in (
            "/api/v1/channels",
            "/api/v1/alert-rules",
            f"/api/v1/alert-rules/{rule['id']}",
            "/api/v1/alerts",
            f"/api/v1/alerts/{alert.id}",
            "/api/v1/silences",
            "/api/v1/inhibit-rules",
            "/api/v1/incidents",
            "/api/v1/notifications",
            "/api/v1/remediations",
        ):
            assert (await vic.get(path)).status_code == 200, path
        refused = [
            await vic.post(
                "/api/v1/channels", json={"name": "x", "kind": "webhook", "url": WEBHOOK}
            ),
            await vic.post("/api/v1/alert-rules", json={"name": "x", "condition": "battery < 1"}),
            await vic.patch(f"/api/v1/alert-rules/{rule['id']}", json={"enabled": False}),
            await vic.delete(f"/api/v1/alert-rules/{rule['id']}"),
            await vic.delete(f"/api/v1/channels/{ops['id']}"),
            await vic.post(f"/api/v1/channels/{ops['id']}/test"),
            await vic.post(f"/api/v1/alerts/{alert.id}/ack", json={"note": "mine"}),
            await vic.post(f"/api/v1/alerts/{alert.id}/resolve"),
            await vic.post(
                "/api/v1/silences", json={"matchers": ["a=b"], "comment": "c", "duration": "1h"}
            ),
            await vic.post(
                "/api/v1/inhibit-rules", json={"name": "x", "source": ["a=b"], "target": ["c=d"]}
            ),
            await vic.post("/api/v1/notifications/replay", json={"channel": ops["id"]}),
        ]
        assert [r.status_code for r in refused] == [403] * len(refused)
    async with as_token_client(client, await user_token(client, "olga", "operator")) as olga:
        r = await olga.post(f"/api/v1/alerts/{alert.id}/ack", json={"note": "on it"})
        assert r.status_code == 200 and r.json()["acknowledged_by"] == "olga/token:olga-token"
        assert (
            await olga.post("/api/v1/alert-rules", json={"name": "y", "condition": "battery < 1"})
        ).status_code == 201


async def test_a_tenant_sees_and_touches_only_its_own_alerting(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    r = await client.post("/api/v1/tenants", json={"id": "acme", "name": "Acme"})
    assert r.status_code == 201, r.text
    their_channel = await add_channel(client, "theirs")
    their_rule = await add_rule(client, "theirs", channels=[their_channel["id"]])
    their_alert = await put_alert(app, their_rule, device="d1")
    r = await client.post(
        "/api/v1/silences", json={"matchers": ["site=x"], "comment": "c", "duration": "1h"}
    )
    their_silence = r.json()
    async with as_token_client(client, await user_token(client, "ann", "operator", "acme")) as ann:
        mine = (
            await ann.post(
                "/api/v1/channels", json={"name": "ops", "kind": "webhook", "url": WEBHOOK}
            )
        ).json()
        assert mine["tenant"] == "acme"
        r = await ann.post(
            "/api/v1/alert-rules",
            json={"name": "low", "condition": "battery < 15", "channels": [mine["id"]]},
        )
        assert r.status_code == 201 and r.json()["tenant"] == "acme"
        my_rule = r.json()
        my_alert = await put_alert(app, my_rule, device="d2")
        r = await ann.post(
            "/api/v1/silences", json={"matchers": ["site=y"], "comment": "c", "duration": "1h"}
        )
        assert r.json()["tenant"] == "acme"

        def ids(r: httpx.Response) -> list[str]:
            return [i["id"] for i in r.json()["items"]]

        assert ids(await ann.get("/api/v1/channels")) == [mine["id"]]
        assert ids(await ann.get("/api/v1/alert-rules")) == [my_rule["id"]]
        assert ids(await ann.get("/api/v1/alerts")) == [my_alert.id]
        assert [s["tenant"] for s in (await ann.get("/api/v1/silences")).json()["items"]] == [
            "acme"
        ]
        for path in (
            f"/api/v1/channels/{their_channel['id']}",
            f"/api/v1/alert-rules/{their_rule['id']}",
            f"/api/v1/alerts/{their_alert.id}",
            f"/api/v1/alerts/{their_alert.fingerprint}",
            f"/api/v1/silences/{their_silence['id']}",
        ):
            assert (await ann.get(path)).status_code == 404, path
        touched = [
            await ann.patch(f"/api/v1/alert-rules/{their_rule['id']}", json={"enabled": False}),
            await ann.delete(f"/api/v1/alert-rules/{their_rule['id']}"),
            await ann.delete(f"/api/v1/channels/{their_channel['id']}"),
            await ann.post(f"/api/v1/alerts/{their_alert.id}/ack"),
            await ann.post(f"/api/v1/alerts/{their_alert.id}/resolve"),
            await ann.delete(f"/api/v1/silences/{their_silence['id']}"),
        ]
        assert [r.status_code for r in touched] == [404] * len(touched)
        r = await ann.post(
            "/api/v1/alert-rules",
            json={"name": "x", "condition": "battery < 1", "channels": [their_channel["id"]]},
        )
        assert (r.status_code, r.json()["field"]) == (422, "channels")
        r = await ann.post(
            "/api/v1/alert-rules",
            json={"name": "x", "condition": "battery < 1", "tenant": "default"},
        )
        assert r.status_code == 403
    assert len((await client.get("/api/v1/alerts")).json()["items"]) == 2  # platform users: all


# --- alerts --------------------------------------------------------------------------------------


async def test_alerts_list_newest_first_and_filter(client: httpx.AsyncClient, app: FastAPI) -> None:
    a, b = await fleet(
        client,
        {"serial": "A", "attributes": {"site": "oslo-3"}},
        {"serial": "B", "attributes": {"site": "bergen-1"}},
    )
    low = await add_rule(client)
    offline = await add_rule(client, "offline", condition="offline for 30m")
    first = await put_alert(app, low, device=a["id"])
    second = await put_alert(app, low, device=b["id"], severity="critical")
    pending = await put_alert(app, offline, device=a["id"], state="pending")
    gone = await put_alert(app, offline, device=b["id"], state="resolved")
    await client.post(f"/api/v1/alerts/{second.id}/ack")

    async def ids(**params: Any) -> list[str]:
        r = await client.get("/api/v1/alerts", params=params)
        assert r.status_code == 200, r.text
        return [i["id"] for i in r.json()["items"]]

    assert await ids() == [gone.id, pending.id, second.id, first.id]
    assert await ids(state="firing") == [second.id, first.id]
    assert await ids(state="acknowledged") == [second.id]
    assert await ids(state="pending") == [pending.id]
    assert await ids(state="resolved") == [gone.id]
    assert await ids(rule="offline") == [gone.id, pending.id]
    assert await ids(rule=low["id"]) == [second.id, first.id]
    assert await ids(severity="critical") == [second.id]
    assert await ids(device=a["id"]) == [pending.id, first.id]
    assert await ids(q="attributes.site = oslo-3", state="firing") == [first.id]
    page = (await client.get("/api/v1/alerts", params={"limit": 3})).json()
    assert len(page["items"]) == 3 and page["next_cursor"]
    rest = await ids(limit=3, cursor=page["next_cursor"])
    assert rest == [first.id]
    assert (await client.get("/api/v1/alerts", params={"state": "loud"})).status_code == 422
    assert (await client.get("/api/v1/alerts", params={"q": "site ="})).status_code == 400

    shown = (await client.get(f"/api/v1/alerts/{first.id}")).json()
    assert (shown["rule"], shown["rule_id"], shown["state"], shown["device"]) == (
        "low-battery",
        low["id"],
        "firing",
        a["id"],
    )
    assert (shown["acknowledged"], shown["value"], shown["incident"]) == (False, 12.0, None)
    assert shown["muted_by"] == {} and shown["annotations"] == {"summary": "battery low"}


async def test_acknowledging_a_firing_alert_leaves_the_action_for_the_engine(
    client: httpx.AsyncClient, app: FastAPI, clock: FakeClock
) -> None:
    rule = await add_rule(client)
    alert = await put_alert(app, rule, device="d1")
    r = await client.post(
        f"/api/v1/alerts/{alert.fingerprint}/ack",
        json={"note": "truck on its way"},
        headers={"X-Change-Reason": "field visit"},
    )
    assert r.status_code == 200, r.text
    shown = r.json()
    assert (shown["id"], shown["state"], shown["acknowledged"]) == (alert.id, "firing", True)
    assert (shown["acknowledged_by"], shown["acknowledged_note"]) == (
        "admin/token:env",
        "truck on its way",
    )
    row = await alert_row(app, alert.id)
    assert row.operator_action == {
        "action": "ack",
        "by": "admin/token:env",
        "at": clock.now().isoformat(),
        "note": "truck on its way",
    }
    assert row.updated_at == clock.now()
    r = await client.post(f"/api/v1/alerts/{alert.id}/ack")
    assert (r.status_code, r.json()["code"]) == (409, "acknowledged")
    pending = await put_alert(app, rule, device="d2", state="pending")
    r = await client.post(f"/api/v1/alerts/{pending.id}/ack")
    assert (r.status_code, r.json()["code"], r.json()["state"]) == (409, "alert_state", "pending")
    ((action, _, after),) = await audit_of(client, f"alert:{alert.id}")
    assert action == "alert.acknowledge" and after["note"] == "truck on its way"


async def test_resolving_an_open_alert_closes_its_fingerprint_for_a_new_episode(
    client: httpx.AsyncClient, app: FastAPI, clock: FakeClock
) -> None:
    rule = await add_rule(client)
    firing = await put_alert(app, rule, device="d1")
    pending = await put_alert(app, rule, device="d2", state="pending")
    for alert in (firing, pending):
        r = await client.post(f"/api/v1/alerts/{alert.id}/resolve", json={"note": "replaced"})
        assert r.status_code == 200, r.text
        shown = r.json()
        assert (shown["state"], shown["resolved_by"]) == ("resolved", "admin/token:env")
        assert shown["annotations"]["resolution"] == "replaced"
        row = await alert_row(app, alert.id)
        assert (row.open_fingerprint, row.resolved_at) == (None, clock.now())
        assert row.operator_action is not None and row.operator_action["action"] == "resolve"
        (action, before, after), *_ = await audit_of(client, f"alert:{alert.id}")
        assert (action, before["state"], after["state"]) == (
            "alert.resolve",
            alert.state,
            "resolved",
        )
    r = await client.post(f"/api/v1/alerts/{firing.id}/resolve")
    assert (r.status_code, r.json()["state"]) == (409, "resolved")
    r = await client.post(f"/api/v1/alerts/{firing.id}/ack")
    assert r.status_code == 409
    again = await put_alert(app, rule, device="d1")  # the same condition opens anew
    assert again.fingerprint == firing.fingerprint and again.id != firing.id
    assert (await client.get(f"/api/v1/alerts/{firing.fingerprint}")).json()["id"] == again.id


# --- silences and inhibit rules ------------------------------------------------------------------


async def test_silences_run_from_start_to_end_and_expire_on_request(
    client: httpx.AsyncClient, clock: FakeClock
) -> None:
    r = await client.post(
        "/api/v1/silences",
        json={
            "matchers": ["site=oslo-3", 'rule=~"offline|low-battery"'],
            "duration": "2h",
            "comment": "power works at oslo-3",
        },
    )
    assert r.status_code == 201, r.text
    now_on = r.json()
    assert (now_on["state"], now_on["author"], now_on["comment"]) == (
        "active",
        "admin/token:env",
        "power works at oslo-3",
    )
    assert datetime.fromisoformat(now_on["ends_at"]) == clock.now() + timedelta(hours=2)
    later = clock.now() + timedelta(days=1)
    r = await client.post(
        "/api/v1/silences",
        json={
            "matchers": ["site=bergen-1"],
            "starts_at": later.isoformat(),
            "ends_at": (later + timedelta(hours=1)).isoformat(),
            "comment": "planned",
        },
    )
    assert r.status_code == 201 and r.json()["state"] == "pending"
    soon = r.json()

    async def ids(state: str) -> list[str]:
        page = (await client.get("/api/v1/silences", params={"state": state})).json()
        return [s["id"] for s in page["items"]]

    assert await ids("active") == [now_on["id"]] and await ids("pending") == [soon["id"]]
    clock.advance(minutes=30)
    assert (await client.delete(f"/api/v1/silences/{now_on['id']}")).status_code == 204
    shown = (await client.get(f"/api/v1/silences/{now_on['id']}")).json()
    assert shown["state"] == "expired"
    assert datetime.fromisoformat(shown["ends_at"]) == clock.now()
    assert await ids("expired") == [now_on["id"]] and await ids("active") == []
    r = await client.delete(f"/api/v1/silences/{now_on['id']}")
    assert (r.status_code, r.json()["code"]) == (409, "expired")
    trail = await audit_of(client, f"alert_silence:{now_on['id']}")
    assert [a for a, _, _ in trail] == ["alert.silence.expire", "alert.silence.create"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"matchers": [], "duration": "1h", "comment": "c"}, "matchers"),
        ({"matchers": ["site"], "duration": "1h", "comment": "c"}, "matchers.0"),
        ({"matchers": ["site=~("], "duration": "1h", "comment": "c"}, "matchers.0"),
        ({"matchers": ["site=a"], "duration": "1h"}, "comment"),
        ({"matchers": ["site=a"], "comment": "c"}, "ends_at"),
        ({"matchers": ["site=a"], "duration": "0s", "comment": "c"}, "ends_at"),
        ({"matchers": ["site=a"], "ends_at": "2030-01-01T00:00:00", "comment": "c"}, "ends_at"),
        ({"matchers": ["site=a"], "ends_at": "2025-01-01T00:00:00Z", "comment": "c"}, "ends_at"),
    ],
)
async def test_a_silence_given_wrongly_is_422_naming_the_field(
    client: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    r = await client.post("/api/v1/silences", json=body)
    assert r.status_code == 422, r.text
    problem = r.json()
    assert problem.get("field", problem.get("errors", [{}])[0].get("field")) == field


async def test_inhibit_rules_are_created_listed_and_deleted(client: httpx.AsyncClient) -> None:
    body = {
        "name": "gateway-down",
        "source": ["rule=gateway-offline"],
        "target": ["rule=offline"],
        "equal": ["gateway"],
    }
    r = await client.post("/api/v1/inhibit-rules", json=body)
    assert r.status_code == 201, r.text
    rule = r.json()
    assert (rule["source"], rule["target"], rule["equal"]) == (
        ["rule=gateway-offline"],
        ["rule=offline"],
        ["gateway"],
    )
    assert (await client.post("/api/v1/inhibit-rules", json=body)).status_code == 409
    bad = {**body, "name": "x", "source": ["rule"]}
    assert (await client.post("/api/v1/inhibit-rules", json=bad)).json()["field"] == "source.0"
    bad = {**body, "name": "x", "equal": ["9lives"]}
    assert (await client.post("/api/v1/inhibit-rules", json=bad)).json()["field"] == "equal"
    listed = (await client.get("/api/v1/inhibit-rules")).json()["items"]
    assert [r["name"] for r in listed] == ["gateway-down"]
    assert (await client.delete(f"/api/v1/inhibit-rules/{rule['id']}")).status_code == 204
    assert (await client.get("/api/v1/inhibit-rules")).json()["items"] == []
    trail = await audit_of(client, f"alert_inhibit_rule:{rule['id']}")
    assert [a for a, _, _ in trail] == ["alert.inhibit_rule.delete", "alert.inhibit_rule.create"]


# --- what the engine wrote -----------------------------------------------------------------------


async def test_an_incident_shows_with_its_alerts(
    client: httpx.AsyncClient, app: FastAPI, clock: FakeClock
) -> None:
    rule = await add_rule(client, "offline", condition="offline for 30m")
    state = app.state.fleetkeeper
    ids = []
    for closed in (True, False):
        now = clock.advance(minutes=1)
        incident = AlertIncident(
            id=uuid7(now),
            tenant_id="default",
            rule="offline",
            group_key="offline|site=oslo-3",
            labels={"site": "oslo-3"},
            opened_at=now,
            closed_at=now if closed else None,
            firing=0 if closed else 2,
            peak=2,
            alerts=2,
            scope=10,
            updated_at=now,
        )
        async with state.db.write() as session:
            session.add(incident)
        ids.append(incident.id)
    members = [await put_alert(app, rule, device=d, incident=ids[1]) for d in ("d1", "d2")]
    listed = (await client.get("/api/v1/incidents")).json()["items"]
    assert [(i["id"], i["state"]) for i in listed] == [(ids[1], "open"), (ids[0], "closed")]
    open_only = (await client.get("/api/v1/incidents", params={"state": "open"})).json()
    assert [i["id"] for i in open_only["items"]] == [ids[1]]
    shown = (await client.get(f"/api/v1/incidents/{ids[1]}")).json()
    assert (shown["firing"], shown["peak"], shown["scope"], shown["members_truncated"]) == (
        2,
        2,
        10,
        False,
    )
    assert [a["id"] for a in shown["members"]] == [members[1].id, members[0].id]
    r = await client.get("/api/v1/alerts", params={"incident": ids[1]})
    assert len(r.json()["items"]) == 2


async def test_dead_notifications_are_listed_and_replayed(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    ops = await add_channel(client)
    other = await add_channel(client, "other")
    dead = [await put_notification(app, ops) for _ in range(2)]
    delivered = await put_notification(app, ops, state="delivered")
    elsewhere = await put_notification(app, other)

    async def log(**params: Any) -> list[str]:
        r = await client.get("/api/v1/notifications", params=params)
        assert r.status_code == 200, r.text
        return [n["id"] for n in r.json()["items"]]

    assert await log() == [elsewhere, delivered, dead[1], dead[0]]
    assert await log(state="dead", channel=ops["id"]) == [dead[1], dead[0]]
    r = await client.post("/api/v1/notifications/replay", json={"ids": [dead[0]]})
    assert (r.status_code, r.json()) == (200, {"replayed": 1})
    r = await client.post(
        "/api/v1/notifications/replay", json={"channel": ops["id"], "reason": "receiver fixed"}
    )
    assert r.json() == {"replayed": 1}
    assert await log(state="dead") == [elsewhere]
    shown = (await client.get("/api/v1/notifications", params={"state": "pending"})).json()
    assert {n["id"]: n["attempts"] for n in shown["items"]} == {dead[0]: 0, dead[1]: 0}
    r = await client.post("/api/v1/notifications/replay", json={"ids": ["nope"]})
    assert (r.status_code, r.json()["field"]) == (404, "ids")
    assert (await client.post("/api/v1/notifications/replay", json={})).status_code == 422
    audit = (
        await client.get("/api/v1/audit", params={"action": "alert.notification.replay"})
    ).json()
    assert len(audit["items"]) == 2 and audit["items"][0]["reason"] == "receiver fixed"


async def test_remediation_actions_are_listed_newest_first(
    client: httpx.AsyncClient, app: FastAPI, clock: FakeClock
) -> None:
    rule = await add_rule(client)
    alert = await put_alert(app, rule, device="d1")
    async with app.state.fleetkeeper.db.write() as session:
        for step, (device, action) in enumerate([("d1", "restart_service"), ("d2", "reboot")]):
            now = clock.advance(seconds=1)
            session.add(
                RemediationAction(
                    id=uuid7(now),
                    tenant_id="default",
                    rule_id=rule["id"],
                    alert_id=alert.id,
                    device_id=device,
                    step=step,
                    action=action,
                    args={},
                    state="sent",
                    detail={},
                    at=now,
                )
            )
    listed = (await client.get("/api/v1/remediations")).json()["items"]
    assert [a["action"] for a in listed] == ["reboot", "restart_service"]
    one = (await client.get("/api/v1/remediations", params={"device": "d1"})).json()["items"]
    assert [(a["action"], a["rule_id"], a["alert_id"]) for a in one] == [
        ("restart_service", rule["id"], alert.id)
    ]
    assert (await client.get("/api/v1/remediations", params={"rule": "x"})).json()["items"] == []
    async with app.state.fleetkeeper.db.read() as session:
        assert await session.scalar(select(func.count(RemediationAction.id))) == 2


async def test_the_openapi_document_describes_alerting(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    for path in (
        "/api/v1/channels",
        "/api/v1/channels/{channel_id}/test",
        "/api/v1/alert-rules",
        "/api/v1/alert-rules/{rule_id}",
        "/api/v1/alerts",
        "/api/v1/alerts/{alert_id}/ack",
        "/api/v1/silences",
        "/api/v1/inhibit-rules",
        "/api/v1/incidents/{incident_id}",
        "/api/v1/notifications/replay",
        "/api/v1/remediations",
    ):
        assert path in paths, path
