"""The dashboard's update pages: artifacts, the deployment form, live progress and actions."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from fleet import device, model
from fleetkeeper.clock import FakeClock
from fleetkeeper.web.pages import deployments as pages
from fleetkeeper.web.pages.deployments import progress_events
from otakit import FAST, artifact, deploy, fleet, show
from webkit import PASSWORD, csrf_of, login, web_user


async def page(browser: httpx.AsyncClient, url: str) -> str:
    r = await browser.get(url)
    assert r.status_code == 200, r.text
    return r.text


async def audit(client: httpx.AsyncClient, target: str) -> list[dict[str, Any]]:
    r = await client.get("/api/v1/audit", params={"target": target})
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


async def active_devices(
    client: httpx.AsyncClient, *serials: str, tenant: str | None = None
) -> None:
    await client.post("/api/v1/models", json={"name": "thermo-v2"})  # 409 when there already
    for serial in serials:
        await device(client, serial, state="active", tenant=tenant)


async def command_deployment(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    return await deploy(client, command={"name": "reboot", "args": {}}, **body)


def count_of(text: str, state: str) -> int:
    """The number a deployment's page shows for executions in `state`."""
    found = re.search(rf'data-count="{state}">(\d+)<', text)
    assert found, f"no count for {state}"
    return int(found.group(1))


def events_of(body: str) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in body.splitlines() if line.startswith("data: ")]


FORM = {  # the create form as a browser sends it, the defaults left as they are shown
    "name": "",
    "kind": "update",
    "command_name": "",
    "command_args": "{}",
    "target": "model = thermo-v2",
    "mode": "snapshot",
    "phases": "10,50,100",
    "success_threshold": "90",
    "soak": "0",
    "error_threshold": "10",
    "min_executed": "1",
    "on_error": "pause",
    "base_per_minute": "10",
    "increment_factor": "2",
    "max_per_minute": "1000",
    "max_in_progress": "100",
    "expected_duration": "900",
    "window_cron": "",
    "window_duration": "",
    "window_timezone": "UTC",
    "start_at": "",
    "end_at": "",
    "end_behaviour": "stop",
    "policy_json": "",
    "reason": "",
}


# --- artifacts ------------------------------------------------------------------------------


async def test_the_artifacts_page_lists_artifacts_and_offers_the_upload_form(
    client: httpx.AsyncClient,
) -> None:
    await model(client)
    art = await artifact(client, version="2.1.0", release_notes="faster boot")
    await web_user(client, "alice")
    browser = await login(client, "alice")
    text = await page(browser, "/artifacts")
    assert f'href="/artifacts/{art["id"]}"' in text and "2.1.0" in text
    assert 'action="/artifacts/upload"' in text
    text = await page(browser, f"/artifacts/{art['id']}")
    assert art["sha256"] in text and "faster boot" in text and "server" in text
    r = await browser.get(f"/artifacts/{art['id']}/download")
    assert r.status_code == 200 and r.content == b"firmware 2.1.0\n" * 64


async def test_an_artifact_uploaded_through_the_form_is_stored_signed_and_audited(
    client: httpx.AsyncClient,
) -> None:
    await model(client)
    await web_user(client, "rita", role="release_manager")
    browser = await login(client, "rita")
    csrf = csrf_of(await page(browser, "/artifacts"))
    r = await browser.post(
        "/artifacts/upload",
        data={  # the CSRF field first, as the form sends it
            "csrf": csrf,
            "version": "3.0.0",
            "models": "thermo-v2",
            "kind": "full",
            "hardware_revisions": "",
            "release_notes": "new radio stack",
            "reason": "spring release",
        },
        files={"file": ("thermo-fw.bin", b"\x7fELF" * 1000, "application/octet-stream")},
    )
    assert r.status_code == 303, r.text
    artifact_id = r.headers["location"].split("?")[0].rsplit("/", 1)[1]
    shown = (await client.get(f"/api/v1/artifacts/{artifact_id}")).json()
    assert (shown["name"], shown["version"], shown["size"]) == ("thermo-fw", "3.0.0", 4000)
    assert shown["signed_by"] == "server" and shown["release_notes"] == "new radio stack"
    [record] = await audit(client, f"artifact:{artifact_id}")
    assert (record["actor"], record["action"], record["reason"]) == (
        "rita/web",
        "artifact.create",
        "spring release",
    )
    assert "thermo-fw" in await page(browser, r.headers["location"])


async def test_an_upload_with_a_bad_version_shows_the_field_error_and_keeps_nothing(
    client: httpx.AsyncClient,
) -> None:
    await model(client)
    await web_user(client, "alice")
    browser = await login(client, "alice")
    csrf = csrf_of(await page(browser, "/artifacts"))
    r = await browser.post(
        "/artifacts/upload",
        data={"csrf": csrf, "version": "two", "models": "thermo-v2"},
        files={"file": ("fw.bin", b"data", "application/octet-stream")},
    )
    assert r.status_code == 422
    assert 'id="e-version"' in r.text and "not a semantic version" in r.text
    assert 'value="thermo-v2"' in r.text  # what was typed stays in the form
    assert (await client.get("/api/v1/artifacts")).json()["items"] == []


async def test_an_upload_needs_the_csrf_field_before_the_file(client: httpx.AsyncClient) -> None:
    await model(client)
    await web_user(client, "alice")
    browser = await login(client, "alice")
    csrf = csrf_of(await page(browser, "/artifacts"))
    for data in ({"version": "3.0.0", "models": "thermo-v2"}, {"csrf": "forged"}):
        r = await browser.post(
            "/artifacts/upload",
            data=data,
            files={"file": ("fw.bin", b"data", "application/octet-stream")},
        )
        assert r.status_code == 403
    r = await browser.post(  # the file before the token: refused before it is read
        "/artifacts/upload",
        files=[("file", ("fw.bin", b"data", "x/y")), ("csrf", (None, csrf.encode(), None))],
    )
    assert r.status_code == 403
    assert (await client.get("/api/v1/artifacts")).json()["items"] == []


async def test_a_viewer_is_offered_no_upload_and_is_refused_one(
    client: httpx.AsyncClient,
) -> None:
    await model(client)
    await web_user(client, "vera", role="viewer")
    browser = await login(client, "vera")
    text = await page(browser, "/artifacts")
    assert 'action="/artifacts/upload"' not in text
    r = await browser.post(
        "/artifacts/upload",
        data={"csrf": csrf_of(text), "version": "3.0.0", "models": "thermo-v2"},
        files={"file": ("fw.bin", b"data", "application/octet-stream")},
    )
    assert r.status_code == 403


# --- creating a deployment ------------------------------------------------------------------


async def test_a_deployment_created_through_the_form_carries_the_policy_it_describes(
    client: httpx.AsyncClient, app: FastAPI, clock: FakeClock
) -> None:
    await fleet(client, app, clock, 4)
    art = await artifact(client)
    await web_user(client, "rita", role="release_manager")
    browser = await login(client, "rita")
    text = await page(browser, f"/deployments/new?target=model+%3D+thermo-v2&artifact={art['id']}")
    assert 'value="model = thermo-v2"' in text and f'<option value="{art["id"]}" selected' in text
    form = {
        **FORM,
        "csrf": csrf_of(text),
        "artifact_id": art["id"],
        "name": "thermo 2.0",
        "phases": "1, 10, 50%, 100",
        "soak": "15m",
        "on_error": "abort",
        "rollback_on_abort": "1",
        "increment_factor": "1.5",
        "window_cron": "0 2 * * *",
        "window_duration": "2h",
        "window_timezone": "Europe/Berlin",
        "policy_json": '{"jitter": 0, "timeouts": {"install": 3600}}',
        "reason": "CHG-42",
    }
    r = await browser.post("/deployments", data=form)
    assert r.status_code == 303, r.text
    deployment_id = r.headers["location"].split("?")[0].rsplit("/", 1)[1]
    d = await show(client, deployment_id)
    assert (d["name"], d["artifact_id"], d["total"]) == ("thermo 2.0", art["id"], 4)
    policy = d["rollout"]
    assert [p["percent"] for p in policy["phases"]] == [1, 10, 50, 100]
    assert policy["soak"] == 900 and policy["on_error"] == "abort" and policy["rollback_on_abort"]
    assert policy["rate"]["increment_factor"] == 1.5
    assert policy["schedule"]["windows"] == [
        {"cron": "0 2 * * *", "duration": 7200, "timezone": "Europe/Berlin"}
    ]
    assert policy["jitter"] == 0 and policy["timeouts"]["install"] == 3600
    [record] = await audit(client, f"deployment:{deployment_id}")
    assert (record["actor"], record["reason"]) == ("rita/web", "CHG-42")


async def test_a_bad_policy_is_shown_at_the_field_that_is_wrong(
    client: httpx.AsyncClient, app: FastAPI, clock: FakeClock
) -> None:
    await fleet(client, app, clock, 2)
    art = await artifact(client)
    await web_user(client, "alice")
    browser = await login(client, "alice")
    csrf = csrf_of(await page(browser, "/deployments/new"))
    cases = {
        "phases": ({"phases": "50,10"}, "phase percentages must increase"),
        "success_threshold": ({"success_threshold": "lots"}, "valid number"),
        "max_per_minute": ({"base_per_minute": "50", "max_per_minute": "5"}, "below base"),
        "window_duration": (
            {"window_cron": "0 2 * * *", "window_duration": "10m"},
            "shorter than one device",
        ),
        "policy_json": ({"policy_json": "[1]"}, "JSON object"),
        "target": ({"target": "model = = x"}, ""),
    }
    for field, (changes, message) in cases.items():
        form = {**FORM, "csrf": csrf, "artifact_id": art["id"], **changes}
        r = await browser.post("/deployments", data=form)
        assert r.status_code == 422, field
        assert f'id="e-{field}"' in r.text and message in r.text, field
        assert f'href="#f-{field}"' in r.text  # the summary at the top links to the field
    assert (await client.get("/api/v1/deployments")).json()["items"] == []


async def test_the_target_count_answers_as_the_query_is_typed(client: httpx.AsyncClient) -> None:
    await active_devices(client, "A-1", "A-2", "B-1")
    await web_user(client, "alice")
    browser = await login(client, "alice")
    r = await browser.get("/ui/data/deployments/target-count", params={"target": "serial = A-*"})
    assert r.status_code == 200 and r.json() == {"count": 2}
    r = await browser.get("/ui/data/deployments/target-count", params={"target": "serial = = ("})
    assert r.status_code == 400 and r.json()["error"]


async def test_an_operator_is_offered_bulk_commands_but_not_updates(
    client: httpx.AsyncClient,
) -> None:
    await active_devices(client, "A-1", "A-2")
    art = await artifact(client)
    await web_user(client, "olga", role="operator")
    browser = await login(client, "olga")
    text = await page(browser, "/deployments/new")
    assert 'name="artifact_id"' not in text and 'name="command_name"' in text
    base = {**FORM, "csrf": csrf_of(text), "target": "serial = A-*"}
    r = await browser.post(
        "/deployments", data={**base, "kind": "update", "artifact_id": art["id"]}
    )
    assert r.status_code == 403
    r = await browser.post(
        "/deployments",
        data={**base, "kind": "command", "command_name": "reboot", "command_args": '{"delay": 5}'},
    )
    assert r.status_code == 303, r.text
    d = await show(client, r.headers["location"].split("?")[0].rsplit("/", 1)[1])
    assert d["command"] == {"name": "reboot", "args": {"delay": 5}} and d["total"] == 2


# --- progress -------------------------------------------------------------------------------


async def test_the_progress_page_follows_the_scheduler(
    client: httpx.AsyncClient, app: FastAPI, clock: FakeClock
) -> None:
    f = await fleet(client, app, clock, 4)
    art = await artifact(client)
    dep = await deploy(client, artifact_id=art["id"], rollout={**FAST, "phases": [50, 100]})
    await web_user(client, "alice")
    browser = await login(client, "alice")
    url = f"/deployments/{dep['id']}"
    text = await page(browser, url)
    assert count_of(text, "queued") == 4 and count_of(text, "succeeded") == 0
    assert f'data-live="/ui/events/deployments/{dep["id"]}"' in text
    assert (await browser.get("/static/app/deployments.js")).status_code == 200
    await f.tick(1)
    text = await page(browser, url)
    assert count_of(text, "notified") == 2 and count_of(text, "queued") == 2
    await f.succeed(await f.jobs(), "2.0.0")
    await f.tick(1)
    text = await page(browser, url)
    assert count_of(text, "succeeded") == 2
    assert "phase_started" in text  # the timeline
    text = await page(browser, f"{url}?state=succeeded")
    assert text.count('<span class="pill succeeded">') == 2  # the executions table, filtered


async def test_the_event_stream_sends_the_progress_document(
    client: httpx.AsyncClient, app: FastAPI, clock: FakeClock
) -> None:
    f = await fleet(client, app, clock, 4)
    art = await artifact(client)
    dep = await deploy(client, artifact_id=art["id"], rollout={**FAST, "phases": [50, 100]})
    await f.tick(1)
    await web_user(client, "alice")
    browser = await login(client, "alice")
    r = await browser.get(f"/ui/events/deployments/{dep['id']}", params={"once": 1})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    [doc] = events_of(r.text)
    api = await show(client, dep["id"])
    assert doc["counts"] == api["counts"] and doc["counts"]["notified"] == 2
    assert doc["phases"] == api["phases"] and doc["state"] == "running"
    assert [e["kind"] for e in doc["timeline"]][-1] == "created"  # newest first


async def test_the_event_stream_ends_by_itself_once_the_deployment_is_over(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Were it to go on, it would beat a few times (microseconds apart) rather than hang.
    monkeypatch.setattr(pages, "STREAM_INTERVAL", 1e-6)
    monkeypatch.setattr(pages, "STREAM_MAX_SECONDS", 3e-6)
    await active_devices(client, "A-1")
    dep = await command_deployment(client, target="serial = A-1")
    r = await client.post(f"/api/v1/deployments/{dep['id']}/stop", json={})
    assert r.status_code == 200, r.text
    await web_user(client, "alice")
    browser = await login(client, "alice")
    r = await browser.get(f"/ui/events/deployments/{dep['id']}")  # no `once`: it ends anyway
    [doc] = events_of(r.text)
    assert "heartbeat" not in r.text
    assert doc["state"] == "stopped"
    assert 'data-live="' not in await page(browser, f"/deployments/{dep['id']}")


async def test_the_stream_beats_while_nothing_changes_and_stops_when_the_client_goes() -> None:
    docs = [
        {"state": "running", "n": 1},
        {"state": "running", "n": 1},
        {"state": "running", "n": 2},
    ]
    looks = iter([False, False, False, True])
    slept: list[float] = []

    async def load() -> dict[str, Any]:
        return docs.pop(0)

    async def disconnected() -> bool:
        return next(looks)

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    sent = [
        chunk
        async for chunk in progress_events(
            load, disconnected, interval=1.0, max_seconds=60, sleep=sleep
        )
    ]
    assert sent == [
        'data: {"n":1,"state":"running"}\n\n',
        ": heartbeat\n\n",
        'data: {"n":2,"state":"running"}\n\n',
    ]
    assert slept == [1.0, 1.0, 1.0]


async def test_the_stream_ends_after_its_longest_duration_and_when_the_deployment_does() -> None:
    async def never() -> bool:
        return False

    async def no_sleep(seconds: float) -> None:
        return None

    async def running() -> dict[str, Any]:
        return {"state": "running"}

    async def collect(stream: AsyncIterator[str]) -> list[str]:
        return [chunk async for chunk in stream]

    sent = await collect(
        progress_events(running, never, interval=1.0, max_seconds=3, sleep=no_sleep)
    )
    assert len(sent) == 4 and sent[1:] == [": heartbeat\n\n"] * 3
    states = iter(["running", "finished", "running"])

    async def finishing() -> dict[str, Any]:
        return {"state": next(states)}

    sent = await collect(
        progress_events(finishing, never, interval=1.0, max_seconds=60, sleep=no_sleep)
    )
    assert len(sent) == 2 and '"finished"' in sent[-1]


# --- actions --------------------------------------------------------------------------------


async def test_pause_and_resume_through_the_page_are_audited(client: httpx.AsyncClient) -> None:
    await active_devices(client, "A-1", "A-2")
    dep = await command_deployment(client, target="serial = A-*")
    await web_user(client, "olga", role="operator")
    browser = await login(client, "olga")
    url = f"/deployments/{dep['id']}"
    text = await page(browser, url)
    assert f'formaction="{url}/pause"' in text
    r = await browser.post(f"{url}/pause", data={"csrf": csrf_of(text), "reason": "night shift"})
    assert r.status_code == 303 and r.headers["location"].startswith(url + "?ok=")
    assert (await show(client, dep["id"]))["state"] == "paused"
    text = await page(browser, r.headers["location"])
    assert "Deployment paused." in text
    r = await browser.post(f"{url}/pause", data={"csrf": csrf_of(text)})  # not twice
    assert r.status_code == 303 and "error=" in r.headers["location"]
    r = await browser.post(f"{url}/resume", data={"csrf": csrf_of(text), "reason": "morning"})
    assert r.status_code == 303
    assert (await show(client, dep["id"]))["state"] == "running"
    records = await audit(client, f"deployment:{dep['id']}")
    assert [(a["actor"], a["action"], a["reason"]) for a in records[:2]] == [
        ("olga/web", "deployment.resume", "morning"),
        ("olga/web", "deployment.pause", "night shift"),
    ]


async def test_abort_with_rollback_and_retry_failed_through_the_page(
    client: httpx.AsyncClient, app: FastAPI, clock: FakeClock
) -> None:
    f = await fleet(client, app, clock, 2)
    art = await artifact(client)
    rollout = {**FAST, "phases": [100], "retries": []}
    dep = await deploy(client, artifact_id=art["id"], rollout=rollout)
    await f.tick(1)
    jobs = await f.jobs()
    (good, good_jobs), (bad, bad_jobs) = sorted(jobs.items())
    await f.succeed({good: good_jobs}, "2.0.0")
    r = await f.report(bad, bad_jobs[0]["id"], "failed", reason="update_failed", version="1.0.0")
    assert r.status_code == 200, r.text
    await web_user(client, "alice")
    browser = await login(client, "alice")
    url = f"/deployments/{dep['id']}"
    csrf = csrf_of(await page(browser, url))
    r = await browser.post(f"{url}/retry-failed", data={"csrf": csrf})
    assert r.status_code == 303 and "1+execution" in r.headers["location"]
    assert (await show(client, dep["id"]))["counts"]["queued"] == 1
    r = await browser.post(f"{url}/abort", data={"csrf": csrf, "rollback": "1"})
    assert r.status_code == 303
    d = await show(client, dep["id"])
    assert d["state"] == "aborted" and d["counts"]["rolling_back"] == 1
    assert 'id="actions"' in (text := await page(browser, url)) and "formaction" in text
    assert '<section class="card" aria-labelledby="actions-title" id="actions" hidden>' in text


async def test_a_viewer_sees_no_actions_and_is_refused_when_posting_anyway(
    client: httpx.AsyncClient,
) -> None:
    await active_devices(client, "A-1")
    dep = await command_deployment(client, target="serial = A-1")
    await web_user(client, "vera", role="viewer")
    browser = await login(client, "vera")
    text = await page(browser, "/deployments")
    assert f'href="/deployments/{dep["id"]}"' in text and "New deployment" not in text
    url = f"/deployments/{dep['id']}"
    text = await page(browser, url)
    assert "formaction" not in text and 'id="actions"' not in text
    for action in ("pause", "stop", "abort", "retry-failed"):
        r = await browser.post(f"{url}/{action}", data={"csrf": csrf_of(text)})
        assert r.status_code == 403, action
    assert (await browser.get("/deployments/new")).status_code == 403
    r = await browser.post(
        "/deployments",
        data={
            **FORM,
            "csrf": csrf_of(text),
            "kind": "command",
            "command_name": "reboot",
            "target": "serial = A-1",
        },
    )
    assert r.status_code == 403
    assert (await show(client, dep["id"]))["state"] == "running"


async def test_actions_need_the_csrf_token(client: httpx.AsyncClient) -> None:
    await active_devices(client, "A-1")
    dep = await command_deployment(client, target="serial = A-1")
    await web_user(client, "alice")
    browser = await login(client, "alice")
    url = f"/deployments/{dep['id']}"
    for data in ({}, {"csrf": "forged"}):
        assert (await browser.post(f"{url}/pause", data=data)).status_code == 403
        assert (await browser.post("/deployments", data={**FORM, **data})).status_code == 403
    assert (await show(client, dep["id"]))["state"] == "running"


async def test_a_tenant_user_sees_only_the_tenant_deployments(client: httpx.AsyncClient) -> None:
    assert (await client.post("/api/v1/tenants", json={"id": "acme", "name": "Acme"})).is_success
    await active_devices(client, "ACME-1", tenant="acme")
    await active_devices(client, "OURS-1")
    theirs = await command_deployment(client, target="serial = OURS-1", name="platform reboot")
    r = await client.post(
        "/api/v1/users",
        json={"username": "ann", "role": "operator", "tenant": "acme", "password": PASSWORD},
    )
    assert r.status_code == 201, r.text
    browser = await login(client, "ann")
    text = await page(browser, "/deployments/new")
    r = await browser.post(
        "/deployments",
        data={
            **FORM,
            "csrf": csrf_of(text),
            "kind": "command",
            "command_name": "reboot",
            "target": "serial = *-1",  # matches both devices; ann's scope only hers
            "name": "acme reboot",
        },
    )
    assert r.status_code == 303, r.text
    mine = r.headers["location"].split("?")[0].rsplit("/", 1)[1]
    d = await show(client, mine)
    assert d["tenant"] == "acme" and d["total"] == 1
    text = await page(browser, "/deployments")
    assert "acme reboot" in text and "platform reboot" not in text
    url = f"/deployments/{theirs['id']}"
    assert (await browser.get(url)).status_code == 404
    assert (await browser.get(f"/ui/events/deployments/{theirs['id']}?once=1")).status_code == 404
    r = await browser.post(f"{url}/pause", data={"csrf": csrf_of(text)})
    assert r.status_code == 404
    r = await browser.get("/ui/data/deployments/target-count", params={"target": "serial = *-1"})
    assert r.json() == {"count": 1}
    assert (await show(client, theirs["id"]))["state"] == "running"
