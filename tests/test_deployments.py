"""Rolling deployments end to end through the APIs, in simulated time, on both databases."""

from __future__ import annotations

from typing import Any

import httpx
from fastapi import FastAPI

from fleet import as_token_client, user_token
from fleetkeeper.clock import FakeClock
from otakit import FAST, Fleet, artifact, deploy, fleet, show


async def install(f: Fleet, serial: str, job: dict[str, Any], outcome: str, **fields: Any) -> None:
    for step in ("downloading", "downloaded", "installing"):
        r = await f.report(serial, job["id"], step)
        assert r.status_code == 200, r.text
    r = await f.report(serial, job["id"], outcome, **fields)
    assert r.status_code == 200, r.text


async def settle(f: Fleet, ticks: int = 3) -> None:
    for _ in range(ticks):
        await f.tick(1)


async def test_a_failing_canary_pauses_the_rollout_before_the_next_phase(
    client: httpx.AsyncClient, app: FastAPI, clock: FakeClock
) -> None:
    f = await fleet(client, app, clock, 20)
    art = await artifact(client)
    dep = await deploy(client, artifact_id=art["id"], rollout={**FAST, "phases": [10, 50, 100]})
    await settle(f)
    jobs = await f.jobs()
    assert len(jobs) == 2  # the canary: 10 % of 20
    for serial, handed in jobs.items():
        await install(f, serial, handed[0], "failed", reason="update_failed", version="1.0.0")
    await settle(f)
    d = await show(client, dep["id"])
    assert d["state"] == "paused"
    assert d["counts"]["failed"] == 2
    assert d["counts"]["queued"] == 18
    assert d["failure_reasons"] == {"update_failed": 2}
    assert await f.jobs() == {}  # nobody of the next phase hears of it


async def test_a_failing_canary_aborts_and_rolls_back_when_asked(
    client: httpx.AsyncClient, app: FastAPI, clock: FakeClock
) -> None:
    f = await fleet(client, app, clock, 20)
    art = await artifact(client)
    policy = {**FAST, "phases": [10, 100], "on_error": "abort", "rollback_on_abort": True}
    dep = await deploy(client, artifact_id=art["id"], rollout=policy)
    await settle(f)
    jobs = await f.jobs()
    (good, good_jobs), (bad, bad_jobs) = sorted(jobs.items())
    await install(f, good, good_jobs[0], "succeeded", version="2.0.0")
    await install(f, bad, bad_jobs[0], "failed", reason="update_failed", version="1.0.0")
    await settle(f)
    d = await show(client, dep["id"])
    assert d["state"] == "aborted"
    assert d["counts"]["canceled"] == 18
    assert d["counts"]["rolling_back"] == 1
    rollback = await f.jobs()
    assert list(rollback) == [good]
    job = rollback[good][0]
    assert job["kind"] == "rollback" and job["rollback_to"] == "1.0.0"
    r = await f.report(good, job["id"], "rolled_back", reason="update_failed", version="1.0.0")
    assert r.status_code == 200, r.text
    d = await show(client, dep["id"])
    assert d["counts"]["rolled_back"] == 1
    r = await client.get("/api/v1/devices", params={"q": f"serial = {good}"})
    assert r.json()["items"][0]["firmware_version"] == "1.0.0"


async def test_phases_advance_when_the_success_threshold_holds_for_the_soak_time(
    client: httpx.AsyncClient, app: FastAPI, clock: FakeClock
) -> None:
    f = await fleet(client, app, clock, 10)
    art = await artifact(client)
    dep = await deploy(
        client, artifact_id=art["id"], rollout={**FAST, "phases": [20, 100], "soak": 600}
    )
    await settle(f)
    canary = await f.jobs()
    assert len(canary) == 2
    await f.succeed(canary, "2.0.0")
    await settle(f)
    assert await f.jobs() == {}  # soaking
    await f.tick(600)
    await settle(f)
    rest = await f.jobs()
    assert len(rest) == 8 and not set(rest) & set(canary)
    await f.succeed(rest, "2.0.0")
    await settle(f)
    d = await show(client, dep["id"])
    assert d["state"] == "finished"
    assert d["counts"]["succeeded"] == 10
    kinds = [
        e["kind"]
        for e in (await client.get(f"/api/v1/deployments/{dep['id']}/events")).json()["items"]
    ]
    assert kinds.count("phase_started") >= 1 and kinds[-1] == "finished"


async def test_incompatible_devices_are_skipped_with_the_reason(
    client: httpx.AsyncClient, app: FastAPI, clock: FakeClock
) -> None:
    f = await fleet(client, app, clock, 3)
    await fleet(client, app, clock, 2, model="gateway-x", prefix="GW")
    await fleet(client, app, clock, 1, firmware="2.0.0", prefix="NEW")
    art = await artifact(client)
    dep = await deploy(
        client,
        artifact_id=art["id"],
        target="model = thermo-v2 or model = gateway-x",
        rollout=FAST,
    )
    d = await show(client, dep["id"])
    assert d["total"] == 3
    assert d["skipped"] == {"incompatible_model": 2, "already_installed": 1}
    r = await client.get(f"/api/v1/deployments/{dep['id']}/executions", params={"state": "skipped"})
    assert sorted(e["reason"] for e in r.json()["items"]) == [
        "already_installed",
        "incompatible_model",
        "incompatible_model",
    ]
    assert f.devices


async def test_a_target_with_no_reachable_device_is_refused(
    client: httpx.AsyncClient, app: FastAPI, clock: FakeClock
) -> None:
    await fleet(client, app, clock, 2, model="gateway-x", prefix="GW")
    await client.post("/api/v1/models", json={"name": "thermo-v2"})
    art = await artifact(client)
    r = await client.post(
        "/api/v1/deployments", json={"target": "model = gateway-x", "artifact_id": art["id"]}
    )
    assert r.status_code == 422
    assert "incompatible_model" in r.json()["detail"]


async def test_a_policy_whose_window_is_shorter_than_one_device_is_refused(
    client: httpx.AsyncClient, app: FastAPI, clock: FakeClock
) -> None:
    await fleet(client, app, clock, 1)
    art = await artifact(client)
    rollout = {"schedule": {"windows": [{"cron": "0 2 * * *", "duration": "10m"}]}}
    r = await client.post(
        "/api/v1/deployments",
        json={"target": "model = thermo-v2", "artifact_id": art["id"], "rollout": rollout},
    )
    assert r.status_code == 422
    assert "never finish" in r.json()["detail"]
    r = await client.post(
        "/api/v1/deployments",
        json={
            "target": "model = thermo-v2",
            "artifact_id": art["id"],
            "rollout": {"schedule": {"windows": [{"cron": "61 * * * *", "duration": "2h"}]}},
        },
    )
    assert r.status_code == 422


async def test_retries_follow_the_policy_for_download_failures(
    client: httpx.AsyncClient, app: FastAPI, clock: FakeClock
) -> None:
    f = await fleet(client, app, clock, 1)
    art = await artifact(client)
    retries = [{"on": "download_failed", "limit": 1, "backoff": 60, "backoff_factor": 1}]
    dep = await deploy(client, artifact_id=art["id"], rollout={**FAST, "retries": retries})
    await settle(f)
    ((serial, [job]),) = (await f.jobs()).items()
    assert job["attempt"] == 1
    await f.report(serial, job["id"], "downloading")
    r = await f.report(serial, job["id"], "failed", reason="connection_lost")
    assert r.json()["state"] == "queued"  # a second try is coming
    await settle(f)
    assert await f.jobs() == {}  # not before the backoff
    await f.tick(70)
    await settle(f)
    ((_, [again]),) = (await f.jobs()).items()
    assert again["id"] == job["id"] and again["attempt"] == 2
    await f.report(serial, again["id"], "downloading")
    r = await f.report(serial, again["id"], "failed", reason="connection_lost")
    assert r.json()["state"] == "failed"  # the limit is reached
    d = await show(client, dep["id"])
    assert d["counts"]["failed"] == 1


async def test_a_silent_device_times_out(
    client: httpx.AsyncClient, app: FastAPI, clock: FakeClock
) -> None:
    f = await fleet(client, app, clock, 1)
    art = await artifact(client)
    policy = {**FAST, "retries": [], "timeouts": {"notified": 300, "download": 600}}
    dep = await deploy(client, artifact_id=art["id"], rollout=policy)
    await settle(f)
    ((serial, [job]),) = (await f.jobs()).items()
    await f.report(serial, job["id"], "downloading")
    await f.tick(599)
    assert (await show(client, dep["id"]))["counts"]["downloading"] == 1
    await f.tick(2)
    d = await show(client, dep["id"])
    assert d["counts"]["timed_out"] == 1
    r = await f.report(serial, job["id"], "downloaded")
    assert r.status_code == 409 and r.json()["code"] == "job_closed"


async def test_an_impossible_report_is_refused_and_audited(
    client: httpx.AsyncClient, app: FastAPI, clock: FakeClock
) -> None:
    f = await fleet(client, app, clock, 1)
    art = await artifact(client)
    await deploy(client, artifact_id=art["id"], rollout=FAST)
    await settle(f)
    ((serial, [job]),) = (await f.jobs()).items()
    await f.report(serial, job["id"], "installing")
    r = await f.report(serial, job["id"], "downloading")
    assert r.status_code == 409 and r.json()["code"] == "invalid_transition"
    r = await f.report(serial, job["id"], "failed")
    assert r.status_code == 422  # a failure needs a reason
    r = await f.report(serial, job["id"], "failed", reason="gremlins")
    assert r.status_code == 422
    audit = (
        await client.get("/api/v1/audit", params={"action": "execution.invalid_report"})
    ).json()
    assert len(audit["items"]) == 1
    events = (await client.get("/api/v1/security-events")).json()["items"]
    assert any(e["kind"] == "invalid_transition" for e in events)


async def test_a_failed_update_keeps_the_version_the_device_really_runs(
    client: httpx.AsyncClient, app: FastAPI, clock: FakeClock
) -> None:
    f = await fleet(client, app, clock, 1)
    art = await artifact(client)
    await deploy(client, artifact_id=art["id"], rollout={**FAST, "retries": []})
    await settle(f)
    ((serial, [job]),) = (await f.jobs()).items()
    await install(f, serial, job, "rolled_back", reason="health_check_failed", version="1.0.0")
    r = await client.get("/api/v1/devices", params={"q": f"serial = {serial}"})
    assert r.json()["items"][0]["firmware_version"] == "1.0.0"


async def test_overlapping_deployments_queue_per_device(
    client: httpx.AsyncClient, app: FastAPI, clock: FakeClock
) -> None:
    f = await fleet(client, app, clock, 1)
    first = await artifact(client, "2.0.0")
    second = await artifact(client, "2.1.0")
    await deploy(client, artifact_id=first["id"], rollout=FAST)
    await settle(f)
    ((serial, [job]),) = (await f.jobs()).items()
    await f.report(serial, job["id"], "downloading")
    later = await deploy(client, artifact_id=second["id"], rollout=FAST)
    await settle(f)
    assert (await show(client, later["id"]))["counts"]["queued"] == 1  # waits its turn
    await f.report(serial, job["id"], "installing")
    await f.report(serial, job["id"], "succeeded", version="2.0.0")
    await settle(f)
    jobs = await f.jobs()
    assert jobs[serial][0]["artifact"]["version"] == "2.1.0"


async def test_supersede_cancels_older_executions_that_have_not_started_installing(
    client: httpx.AsyncClient, app: FastAPI, clock: FakeClock
) -> None:
    f = await fleet(client, app, clock, 2)
    first = await artifact(client, "2.0.0")
    second = await artifact(client, "2.1.0")
    old = await deploy(
        client,
        artifact_id=first["id"],
        rollout={**FAST, "phases": [50, 100], "success_threshold": 100, "soak": 3600},
    )
    await settle(f)
    await deploy(client, artifact_id=second["id"], rollout=FAST, supersede=True)
    d = await show(client, old["id"])
    assert d["counts"]["canceled"] == 1  # the queued one
    jobs = await f.jobs()
    notified = [j for handed in jobs.values() for j in handed if j["deployment_id"] == old["id"]]
    assert len(notified) == 1 and notified[0]["cancel"] is True
    serial = next(s for s, handed in jobs.items() if handed[0]["deployment_id"] == old["id"])
    r = await f.report(serial, notified[0]["id"], "canceled")
    assert r.status_code == 200


async def test_pause_resume_stop_are_distinct_and_audited(
    client: httpx.AsyncClient, app: FastAPI, clock: FakeClock
) -> None:
    f = await fleet(client, app, clock, 4)
    art = await artifact(client)
    rollout = {"rate": {"base_per_minute": 60}, "jitter": 0, "phases": [100]}
    dep = await deploy(client, artifact_id=art["id"], rollout=rollout)
    await settle(f, 1)
    r = await client.post(f"/api/v1/deployments/{dep['id']}/pause", json={"reason": "lunch"})
    assert r.status_code == 200 and r.json()["state"] == "paused"
    before = (await show(client, dep["id"]))["counts"]["queued"]
    await settle(f, 5)
    assert (await show(client, dep["id"]))["counts"]["queued"] == before
    r = await client.post(f"/api/v1/deployments/{dep['id']}/pause")
    assert r.status_code == 409
    r = await client.post(f"/api/v1/deployments/{dep['id']}/resume")
    assert r.json()["state"] == "running"
    await settle(f, 2)
    assert (await show(client, dep["id"]))["counts"]["queued"] < before
    notified = (await show(client, dep["id"]))["counts"]["notified"]
    r = await client.post(f"/api/v1/deployments/{dep['id']}/stop", json={"reason": "enough"})
    assert r.json()["state"] == "stopped"
    # No new device ever; the ones already notified carry on.
    assert r.json()["counts"]["queued"] == 0
    assert r.json()["counts"]["notified"] == notified > 0
    assert all(not job["cancel"] for handed in (await f.jobs()).values() for job in handed)
    audit = (await client.get("/api/v1/audit", params={"target": f"deployment:{dep['id']}"})).json()
    actions = [a["action"] for a in audit["items"]]
    for action in ("deployment.create", "deployment.pause", "deployment.resume", "deployment.stop"):
        assert action in actions
    assert any(a["reason"] == "lunch" for a in audit["items"])
    assert f.devices


async def test_only_release_managers_and_admins_deploy_updates(
    client: httpx.AsyncClient, app: FastAPI, clock: FakeClock
) -> None:
    await fleet(client, app, clock, 1)
    art = await artifact(client)
    body = {"target": "model = thermo-v2", "artifact_id": art["id"]}
    async with as_token_client(client, await user_token(client, "op", "operator")) as operator:
        assert (await operator.post("/api/v1/deployments", json=body)).status_code == 403
        reboot = {"target": "model = thermo-v2", "command": {"name": "reboot"}}
        assert (await operator.post("/api/v1/deployments", json=reboot)).status_code == 201
    async with as_token_client(client, await user_token(client, "rm", "release_manager")) as rm:
        assert (await rm.post("/api/v1/deployments", json=body)).status_code == 201
    async with as_token_client(client, await user_token(client, "vi", "viewer")) as viewer:
        assert (await viewer.get("/api/v1/deployments")).status_code == 200
        assert (await viewer.post("/api/v1/deployments", json=body)).status_code == 403


async def test_a_bulk_reboot_is_a_command_job(
    client: httpx.AsyncClient, app: FastAPI, clock: FakeClock
) -> None:
    f = await fleet(client, app, clock, 2)
    rollout = {**FAST, "phases": [100]}
    dep = await deploy(client, command={"name": "reboot", "args": {}}, rollout=rollout)
    await settle(f)
    jobs = await f.jobs()
    assert len(jobs) == 2
    for serial, [job] in jobs.items():
        assert job["kind"] == "command" and job["command"]["name"] == "reboot"
        assert job["artifact"] is None
        r = await f.report(serial, job["id"], "succeeded")
        assert r.status_code == 200, r.text
    await settle(f)
    assert (await show(client, dep["id"]))["state"] == "finished"


async def test_a_continuous_deployment_takes_devices_that_match_later(
    client: httpx.AsyncClient, app: FastAPI, clock: FakeClock
) -> None:
    f = await fleet(client, app, clock, 1)
    art = await artifact(client)
    dep = await deploy(
        client, artifact_id=art["id"], rollout={**FAST, "phases": [100]}, continuous=True
    )
    await settle(f)
    await f.succeed(await f.jobs(), "2.0.0")
    late = await fleet(client, app, clock, 1, prefix="LATE")
    f.devices += late.devices
    await f.tick(31)
    await settle(f)
    jobs = await f.jobs()
    assert list(jobs) == ["LATE-0000"]
    assert (await show(client, dep["id"]))["state"] == "running"


async def test_a_restarted_scheduler_resumes_without_starting_a_device_twice(
    client: httpx.AsyncClient, app: FastAPI, clock: FakeClock
) -> None:
    from fleetkeeper.services.scheduler import Scheduler

    f = await fleet(client, app, clock, 6)
    art = await artifact(client)
    rollout = {"rate": {"base_per_minute": 6}, "jitter": 0, "phases": [100]}
    dep = await deploy(client, artifact_id=art["id"], rollout=rollout)
    await settle(f, 12)
    first = await f.jobs()
    state = app.state.fleetkeeper
    # A new process on the same database: nothing but what was written survives.
    fresh = Scheduler(state.db, clock)
    for _ in range(120):
        clock.advance(1)
        await fresh.tick()
    second = await f.jobs()
    r = await client.get(f"/api/v1/deployments/{dep['id']}/executions")
    executions = r.json()["items"]
    assert all(e["attempt"] == 1 for e in executions)
    assert len({e["device_id"] for e in executions}) == 6
    for serial, handed in first.items():
        assert serial not in second or second[serial][0]["id"] == handed[0]["id"]
