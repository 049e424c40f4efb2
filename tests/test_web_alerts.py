"""The dashboard's alert pages: alerts from the real engine listed, acknowledged, resolved and
silenced through the forms, incidents, silences, the live feed, roles, CSRF and tenants."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import select

from alertfleet import Fleet
from fleetkeeper.clock import FakeClock
from fleetkeeper.ids import uuid7
from fleetkeeper.store.models import AlertRecord, AlertSilence, AuditRecord, RemediationAction
from fleetkeeper.web.pages import alerts as alert_pages
from webkit import PASSWORD, csrf_of, login, web_user

pytestmark = pytest.mark.asyncio


@pytest.fixture
async def fleet(app: FastAPI, clock: FakeClock) -> Fleet:
    return await Fleet(app.state.fleetkeeper.db, clock).setup()


async def tick(app: FastAPI, times: int = 1) -> None:
    """Let the server's own engine judge, in FakeClock time."""
    state = app.state.fleetkeeper
    for _ in range(times):
        state.clock.advance(5)
        await state.alert_engine.tick()


async def low_batteries(
    app: FastAPI,
    fleet: Fleet,
    serials: Sequence[str] = ("SN-1", "SN-2", "SN-3"),
    *,
    site: str = "oslo-3",
    tenant: str = "default",
    **rule: Any,
) -> list[AlertRecord]:
    """Devices whose battery reads 9 %, and a rule that fires on them (firing at the return)."""
    await fleet.add(serials, attributes={"site": site}, tenant=tenant)
    for serial in serials:
        await fleet.reading(serial, "battery", 9)
    rule = {"name": "battery_low", "severity": "critical", "group_by": ["rule", "site"], **rule}
    await fleet.rule(condition="battery < 15", tenant=tenant, **rule)
    await tick(app, 2)
    return [a for a in await fleet.alerts("firing") if a.labels.get("serial") in serials]


async def row(app: FastAPI, alert_id: str) -> AlertRecord:
    async with app.state.fleetkeeper.db.read() as session:
        found: AlertRecord = await session.get_one(AlertRecord, alert_id)
        return found


async def audit_actions(app: FastAPI, target: str) -> list[tuple[str, str]]:
    async with app.state.fleetkeeper.db.read() as session:
        rows = await session.execute(
            select(AuditRecord.action, AuditRecord.actor)
            .where(AuditRecord.target == target)
            .order_by(AuditRecord.id)
        )
        return [(action, actor) for action, actor in rows]


async def operator(client: httpx.AsyncClient, name: str = "olga") -> httpx.AsyncClient:
    await web_user(client, name, role="operator")
    return await login(client, name)


# --- the list ------------------------------------------------------------------------------------


async def test_the_alerts_page_lists_firing_alerts_with_device_labels_and_counts(
    app: FastAPI, client: httpx.AsyncClient, fleet: Fleet
) -> None:
    found = await low_batteries(app, fleet)
    assert len(found) == 3
    browser = await operator(client)
    page = (await browser.get("/alerts")).text
    for alert in found:
        assert f'href="/alerts/{alert.id}"' in page
        assert f'<a href="/devices/{alert.device_id}">{alert.labels["serial"]}</a>' in page
    assert "battery_low" in page and "site=oslo-3" in page
    assert 'data-count="firing">3<' in page and 'data-severity="critical">3<' in page
    assert 'data-count="pending">0<' in page
    assert 'action="/alerts/bulk"' in page and 'name="ids"' in page
    pending = (await browser.get("/alerts?state=pending")).text
    assert "No alerts here." in pending


async def test_a_bad_fleet_query_is_explained_on_the_page(
    app: FastAPI, client: httpx.AsyncClient, fleet: Fleet
) -> None:
    await low_batteries(app, fleet)
    browser = await operator(client)
    r = await browser.get("/alerts", params={"q": "attributes.site ="})
    assert r.status_code == 200 and 'class="flash error"' in r.text
    r = await browser.get("/alerts", params={"q": "attributes.site = bergen-1"})
    assert "No alerts here." in r.text
    r = await browser.get("/alerts", params={"q": "attributes.site = oslo-3", "severity": "info"})
    assert "No alerts here." in r.text


async def test_the_list_pages_through_alerts_newest_first(
    app: FastAPI, client: httpx.AsyncClient, fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    found = await low_batteries(app, fleet, [f"SN-{i}" for i in range(5)])
    monkeypatch.setattr(alert_pages, "PAGE", 2)
    browser = await operator(client)
    newest = sorted((a.id for a in found), reverse=True)
    seen: list[str] = []
    url: str | None = "/alerts?state=firing"
    while url:
        page = (await browser.get(url)).text
        seen += [i for i in newest if f'id="alert-{i}"' in page]
        found_next = re.search(r'<a href="([^"]+)" rel="next"', page)
        url = html.unescape(found_next.group(1)) if found_next else None
    assert seen == newest


# --- acting on alerts ----------------------------------------------------------------------------


async def test_acknowledging_through_the_page_is_audited_and_taken_in_by_the_engine(
    app: FastAPI, client: httpx.AsyncClient, fleet: Fleet, clock: FakeClock
) -> None:
    alert, *_ = await low_batteries(app, fleet)
    browser = await operator(client)
    csrf = csrf_of((await browser.get("/alerts")).text)
    r = await browser.post(
        f"/alerts/{alert.id}/ack",
        data={"csrf": csrf, "note": "crew on the way", "next": "/alerts?state=firing"},
    )
    assert r.status_code == 303 and r.headers["location"].startswith("/alerts?state=firing&ok=")
    shown = await row(app, alert.id)
    assert (shown.acknowledged_by, shown.acknowledged_note) == ("olga/web", "crew on the way")
    assert shown.operator_action == {
        "action": "ack",
        "by": "olga/web",
        "at": clock.now().isoformat(),
        "note": "crew on the way",
    }
    assert await audit_actions(app, f"alert:{alert.id}") == [("alert.acknowledge", "olga/web")]
    await tick(app)  # the engine takes the acknowledgement in and clears the column
    shown = await row(app, alert.id)
    assert shown.operator_action is None and shown.state == "firing"
    assert shown.acknowledged_at is not None
    page = (await browser.get("/alerts?state=acknowledged")).text
    assert f'id="alert-{alert.id}"' in page and "acknowledged by olga/web" in page
    assert 'data-count="acknowledged">1<' in page
    r = await browser.post(f"/alerts/{alert.id}/ack", data={"csrf": csrf})
    assert r.status_code == 303 and "error=" in r.headers["location"]  # twice is refused


async def test_resolving_through_the_page_records_who_and_why_in_the_history(
    app: FastAPI, client: httpx.AsyncClient, fleet: Fleet
) -> None:
    alert, *_ = await low_batteries(app, fleet)
    browser = await operator(client)
    csrf = csrf_of((await browser.get(f"/alerts/{alert.id}")).text)
    r = await browser.post(
        f"/alerts/{alert.id}/resolve", data={"csrf": csrf, "note": "replaced the battery"}
    )
    assert r.status_code == 303 and r.headers["location"].startswith(f"/alerts/{alert.id}?ok=")
    shown = await row(app, alert.id)
    assert (shown.state, shown.resolved_by) == ("resolved", "olga/web")
    assert shown.operator_action is not None and shown.operator_action["action"] == "resolve"
    assert shown.annotations["resolution"] == "replaced the battery"
    assert await audit_actions(app, f"alert:{alert.id}") == [("alert.resolve", "olga/web")]
    await tick(app)
    assert (await row(app, alert.id)).operator_action is None
    page = (await browser.get(f"/alerts/{alert.id}")).text
    assert "Resolved by hand by <strong>olga/web</strong>: <q>replaced the battery</q>" in page
    assert 'action="/alerts/' + alert.id + '/resolve"' not in page  # nothing left to do
    assert f'id="alert-{alert.id}"' in (await browser.get("/alerts?state=resolved")).text


async def test_bulk_acknowledge_acts_on_the_selection_and_names_what_it_skipped(
    app: FastAPI, client: httpx.AsyncClient, fleet: Fleet
) -> None:
    first, second, third = await low_batteries(app, fleet)
    browser = await operator(client)
    csrf = csrf_of((await browser.get("/alerts")).text)
    await browser.post(f"/alerts/{third.id}/ack", data={"csrf": csrf})
    r = await browser.post(
        "/alerts/bulk",
        data={
            "csrf": csrf,
            "action": "ack",
            "note": "one storm",
            "ids": [first.id, second.id, third.id],
            "next": "/alerts",
        },
    )
    assert r.status_code == 303
    location = httpx.URL(r.headers["location"])
    assert location.params["ok"].startswith("Acknowledged 2 alerts; skipped 1")
    for alert in (first, second):
        shown = await row(app, alert.id)
        assert (shown.acknowledged_by, shown.acknowledged_note) == ("olga/web", "one storm")
        assert await audit_actions(app, f"alert:{alert.id}") == [("alert.acknowledge", "olga/web")]
    r = await browser.post(
        "/alerts/bulk", data={"csrf": csrf, "action": "resolve", "ids": [first.id]}
    )
    assert (await row(app, first.id)).state == "resolved"
    r = await browser.post("/alerts/bulk", data={"csrf": csrf, "action": "ack"})
    assert "error=" in r.headers["location"]  # nothing selected


async def test_silence_like_this_mutes_alerts_of_the_same_rule_and_site(
    app: FastAPI, client: httpx.AsyncClient, fleet: Fleet, clock: FakeClock
) -> None:
    alert, *_ = await low_batteries(app, fleet)
    browser = await operator(client)
    page = (await browser.get(f"/alerts/{alert.id}")).text
    assert (
        'name="match" value="site" checked' in page and 'name="match" value="rule" checked' in page
    )
    r = await browser.post(
        f"/alerts/{alert.id}/silence",
        data={
            "csrf": csrf_of(page),
            "match": ["rule", "site"],
            "duration": "2h",
            "comment": "power works",
        },
    )
    assert r.status_code == 303 and "ok=" in r.headers["location"]
    async with app.state.fleetkeeper.db.read() as session:
        [silence] = (await session.scalars(select(AlertSilence))).all()
    assert silence.matchers == ['rule="battery_low"', 'site="oslo-3"']
    assert (silence.author, silence.comment) == ("olga/web", "power works")
    assert silence.ends_at == clock.now() + timedelta(hours=2)
    assert await audit_actions(app, f"alert_silence:{silence.id}") == [
        ("alert.silence.create", "olga/web")
    ]
    await tick(app, 3)  # the engine refreshes its mutes
    assert (await row(app, alert.id)).muted_by["silences"] == [silence.id]
    listed = (await browser.get("/alerts")).text
    assert f'href="/silences?id={silence.id}"' in listed
    shown = (await browser.get(f"/silences?id={silence.id}")).text
    assert "power works" in shown and "rule=&#34;battery_low&#34;" in shown
    r = await browser.post(
        f"/alerts/{alert.id}/silence",
        data={"csrf": csrf_of(page), "match": ["site"], "duration": "2h", "comment": ""},
    )
    assert "error=" in r.headers["location"]  # a silence needs a comment
    form = (await browser.get(f"/silences?alert={alert.id}")).text
    assert 'rule="battery_low"\nsite="oslo-3"</textarea>' in html.unescape(form)


async def test_the_silences_page_creates_and_expires_silences(
    app: FastAPI, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    browser = await operator(client)
    page = (await browser.get("/silences")).text
    r = await browser.post(
        "/silences",
        data={
            "csrf": csrf_of(page),
            "matchers": "site=oslo-3\nrule=~battery.*\n",
            "duration": "90m",
            "comment": "planned",
        },
    )
    assert r.status_code == 303 and "ok=" in r.headers["location"]
    async with app.state.fleetkeeper.db.read() as session:
        [silence] = (await session.scalars(select(AlertSilence))).all()
    assert silence.matchers == ["site=oslo-3", "rule=~battery.*"]
    assert silence.ends_at == clock.now() + timedelta(minutes=90)
    page = (await browser.get("/silences")).text
    assert f'action="/silences/{silence.id}/expire"' in page
    r = await browser.post(f"/silences/{silence.id}/expire", data={"csrf": csrf_of(page)})
    assert r.status_code == 303
    assert f'id="silence-{silence.id}"' not in (await browser.get("/silences")).text
    assert f'id="silence-{silence.id}"' in (await browser.get("/silences?state=expired")).text
    r = await browser.post(
        "/silences",
        data={"csrf": csrf_of(page), "matchers": "no matcher", "duration": "1h", "comment": "x"},
    )
    assert "error=" in r.headers["location"]


# --- one alert, incidents ------------------------------------------------------------------------


async def test_the_alert_page_shows_notifications_of_its_group_and_remediation(
    app: FastAPI, client: httpx.AsyncClient, fleet: Fleet, clock: FakeClock
) -> None:
    alert, *_ = await low_batteries(app, fleet)
    await tick(app, 12)  # past the group wait: the group is notified (logged: no channel)
    now = clock.now()
    async with app.state.fleetkeeper.db.write() as session:
        session.add(
            RemediationAction(
                id=uuid7(now),
                tenant_id="default",
                rule_id=alert.rule_id,
                alert_id=alert.id,
                device_id=alert.device_id,
                step=0,
                action="restart_service",
                args={},
                state="failed",
                detail={"reason": "still firing"},
                at=now,
            )
        )
    browser = await operator(client)
    page = (await browser.get(f"/alerts/{alert.id}")).text
    assert "Notifications of its group" in page and "[3 firing]" in page
    assert "restart_service" in page and "Remediation step 1: restart_service (failed)" in page
    assert f'href="/devices/{alert.device_id}"' in page
    by_fingerprint = await browser.get(f"/alerts/{alert.fingerprint}")
    assert by_fingerprint.headers["location"] == f"/alerts/{alert.id}"


async def test_incidents_are_listed_with_their_alerts_page_by_page(
    app: FastAPI,
    client: httpx.AsyncClient,
    fleet: Fleet,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await low_batteries(app, fleet, incident={"min_devices": 2})
    await tick(app, 12)
    [alert, *_] = await fleet.alerts("firing")
    assert alert.incident_id is not None
    browser = await operator(client)
    page = (await browser.get("/incidents")).text
    assert f'href="/incidents/{alert.incident_id}"' in page and "battery_low" in page
    monkeypatch.setattr(alert_pages, "PAGE", 2)
    page = (await browser.get(f"/incidents/{alert.incident_id}")).text
    assert page.count('<tr id="alert-') == 2 and 'rel="next"' in page
    assert 'action="/alerts/bulk"' in page
    listed = (await browser.get("/alerts")).text
    assert f'href="/incidents/{alert.incident_id}"' in listed
    assert "No incidents here." in (await browser.get("/incidents?state=closed")).text


# --- live updates --------------------------------------------------------------------------------


async def test_the_live_feed_in_once_mode_sends_the_counts_and_closes(
    app: FastAPI, client: httpx.AsyncClient, fleet: Fleet
) -> None:
    found = await low_batteries(app, fleet)
    browser = await operator(client)
    r = await browser.get("/ui/events/alerts", params={"once": 1})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    [line] = [x for x in r.text.splitlines() if x.startswith("data: ")]
    data = json.loads(line.removeprefix("data: "))
    assert data["counts"]["firing"] == 3 and data["counts"]["severity"]["critical"] == 3
    assert sorted(a["id"] for a in data["newest"]) == sorted(a.id for a in found)
    page = (await browser.get("/alerts")).text
    assert f'data-version="{data["version"]}"' in page  # the page knows what it shows


async def test_the_live_stream_tells_changes_beats_when_quiet_and_stops_on_disconnect() -> None:
    looks = iter([{"n": 1}, {"n": 1}, {"n": 1}, {"n": 2}, {"n": 2}])
    slept: list[float] = []
    gone = iter([False, False, False, False, False, True])

    async def look() -> dict[str, Any]:
        return next(looks)

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    async def disconnected() -> bool:
        return next(gone)

    live = alert_pages.Live(interval=7.0, heartbeat=2, looks=100)
    out = [
        chunk
        async for chunk in alert_pages.alert_stream(
            look, disconnected=disconnected, live=live, sleep=sleep
        )
    ]
    assert out == [
        alert_pages.sse({"n": 1}),
        ": heartbeat\n\n",
        alert_pages.sse({"n": 2}),
    ]
    assert slept == [7.0] * 5


async def test_the_live_stream_ends_after_its_looks_for_the_browser_to_reconnect() -> None:
    async def look() -> dict[str, Any]:
        return {"same": True}

    async def never() -> bool:
        return False

    async def sleep(seconds: float) -> None:
        return None

    live = alert_pages.Live(interval=1.0, heartbeat=100, looks=3)
    out = [
        c async for c in alert_pages.alert_stream(look, disconnected=never, live=live, sleep=sleep)
    ]
    assert out == [alert_pages.sse({"same": True})]


# --- who may -------------------------------------------------------------------------------------


async def test_a_viewer_sees_no_action_and_is_refused_when_posting_anyway(
    app: FastAPI, client: httpx.AsyncClient, fleet: Fleet
) -> None:
    alert, *_ = await low_batteries(app, fleet)
    await web_user(client, "vera", role="viewer")
    browser = await login(client, "vera")
    page = (await browser.get("/alerts")).text
    assert f'id="alert-{alert.id}"' in page
    for action in ('action="/alerts/bulk"', "/ack", "/resolve", 'name="ids"'):
        assert action not in page
    detail = (await browser.get(f"/alerts/{alert.id}")).text
    assert "/silence" not in detail.split("<main", 1)[1].replace('href="/silences"', "")
    csrf = csrf_of(page)
    for url, data in (
        (f"/alerts/{alert.id}/ack", {}),
        (f"/alerts/{alert.id}/resolve", {}),
        ("/alerts/bulk", {"action": "ack", "ids": [alert.id]}),
        (f"/alerts/{alert.id}/silence", {"match": ["site"], "duration": "1h", "comment": "x"}),
        ("/silences", {"matchers": "site=x", "duration": "1h", "comment": "x"}),
    ):
        r = await browser.post(url, data={"csrf": csrf, **data})
        assert r.status_code == 403, url
    shown = await row(app, alert.id)
    assert shown.acknowledged_at is None and shown.state == "firing"
    assert await audit_actions(app, f"alert:{alert.id}") == []


async def test_acting_on_an_alert_needs_the_csrf_token(
    app: FastAPI, client: httpx.AsyncClient, fleet: Fleet
) -> None:
    alert, *_ = await low_batteries(app, fleet)
    browser = await operator(client)
    for data in ({}, {"csrf": "forged"}):
        r = await browser.post(f"/alerts/{alert.id}/ack", data=data)
        assert r.status_code == 403
        r = await browser.post("/alerts/bulk", data={**data, "action": "ack", "ids": [alert.id]})
        assert r.status_code == 403
    assert (await row(app, alert.id)).acknowledged_at is None


async def test_a_tenant_sees_and_touches_only_its_own_alerts(
    app: FastAPI, client: httpx.AsyncClient, fleet: Fleet
) -> None:
    ours = await low_batteries(app, fleet)
    r = await client.post("/api/v1/tenants", json={"id": "acme", "name": "Acme"})
    assert r.status_code == 201, r.text
    theirs = await low_batteries(app, fleet, ["AC-1"], site="acme-1", tenant="acme")
    assert len(theirs) == 1
    r = await client.post(
        "/api/v1/users",
        json={"username": "ann", "role": "operator", "password": PASSWORD, "tenant": "acme"},
    )
    assert r.status_code == 201, r.text
    browser = await login(client, "ann")
    page = (await browser.get("/alerts")).text
    assert f'id="alert-{theirs[0].id}"' in page
    assert not any(f'id="alert-{a.id}"' in page for a in ours)
    assert 'data-count="firing">1<' in page
    assert (await browser.get(f"/alerts/{ours[0].id}")).status_code == 404
    csrf = csrf_of(page)
    r = await browser.post(f"/alerts/{ours[0].id}/ack", data={"csrf": csrf})
    assert r.status_code == 404
    r = await browser.post(
        "/alerts/bulk", data={"csrf": csrf, "action": "ack", "ids": [ours[0].id]}
    )
    assert "error=" in r.headers["location"]
    assert (await row(app, ours[0].id)).acknowledged_at is None
    r = await browser.get("/ui/events/alerts", params={"once": 1})
    data = json.loads(r.text.split("data: ", 1)[1].split("\n", 1)[0])
    assert data["counts"]["firing"] == 1 and [a["id"] for a in data["newest"]] == [theirs[0].id]


async def test_a_page_without_a_session_sends_the_browser_to_log_in(
    client: httpx.AsyncClient,
) -> None:
    browser = httpx.AsyncClient(transport=client._transport, base_url=client.base_url)
    for url in ("/alerts", "/incidents", "/silences", "/ui/events/alerts?once=1"):
        r = await browser.get(url)
        assert r.status_code == 303 and r.headers["location"].startswith("/login?next=")
