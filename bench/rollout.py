"""A four-phase rollout to a fleet of emulated devices, against a real `fleetkeeper serve`.

The fleet is written straight into the database (bench/population.py) and each device gets an
access token signed with the server's key, so no time goes to enrolment. A separate process
emulates the devices: each checks in every `checkin` seconds (staggered), and on a job reports
downloading, installing, verifying (`step` seconds apart) and succeeded. The artifact's bytes
are not fetched: this measures the scheduler and the job path, not the network.

Reported:
- wall time from creating the deployment to its end, beside the time the policy itself
  allows: the same policy replayed through the pure planner (services/rollout/planner.py) in
  simulated time with a tick of 0.1 s and each device taking exactly the time it took in the
  run (check-in latency plus its update). The ratio is what the scheduler adds (goal: <= 5 %);
- server CPU seconds per updated device, in total and above the idle fleet's own load
  (check-ins and nothing else, measured just before).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import random
import statistics
import time
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

import httpx
import psutil

from bench.databases import fresh_database
from bench.harness import Result, Stats, server, server_pid
from bench.population import device_tokens, populate
from fleetkeeper.services.rollout import planner
from fleetkeeper.services.rollout.policy import RolloutPolicy
from fleetkeeper.sim.transport import LeanTransport

_SPAWN = multiprocessing.get_context("spawn")
POLICY: dict[str, Any] = {
    "phases": [1, 10, 50, 100],
    "success_threshold": 90,
    "error_threshold": 20,
    "jitter": 5,
    "rate": {
        "base_per_minute": 600,
        "increment_factor": 2,
        "increase_after_succeeded": 500,
        "max_per_minute": 6000,
        "max_in_progress": 5000,
    },
}
STEPS = ("downloading", "installing", "verifying")


# --- the emulated fleet (its own process) ---------------------------------------------------


def emulate(port: int, tokens: list[str], checkin: float, step: float, pipe: Any) -> None:
    import uvloop

    uvloop.run(_emulate(port, tokens, checkin, step, pipe))


async def _emulate(port: int, tokens: list[str], checkin: float, step: float, pipe: Any) -> None:
    stop = asyncio.Event()
    seen: set[tuple[str, int]] = set()
    stats: Counter[str] = Counter()
    jobs: set[asyncio.Task[None]] = set()
    async with httpx.AsyncClient(
        transport=LeanTransport(max_connections=48),
        base_url=f"http://127.0.0.1:{port}/device/v1",
        timeout=60,
    ) as http:

        async def call(token: str, path: str, body: dict[str, Any]) -> dict[str, Any] | None:
            for _ in range(5):
                try:
                    r = await http.post(
                        path, json=body, headers={"Authorization": f"Bearer {token}"}
                    )
                except httpx.HTTPError:
                    stats["errors"] += 1
                    await asyncio.sleep(1)
                    continue
                stats[f"http_{r.status_code}"] += 1
                if r.status_code == 429:
                    await asyncio.sleep(float(r.headers.get("Retry-After") or 1))
                    continue
                return r.json() if r.status_code == 200 else None
            return None

        async def run_job(token: str, job: dict[str, Any]) -> None:
            for state in STEPS:
                await call(token, f"/jobs/{job['id']}", {"state": state})
                await asyncio.sleep(step)
            version = (job.get("artifact") or {}).get("version")
            await call(token, f"/jobs/{job['id']}", {"state": "succeeded", "version": version})
            stats["updated"] += 1

        async def device(token: str, offset: float) -> None:
            await asyncio.sleep(offset)
            while not stop.is_set():
                answer = await call(token, "/checkin", {})
                for job in (answer or {}).get("jobs", []):
                    key = (job["id"], int(job.get("attempt", 1)))
                    if key not in seen:
                        seen.add(key)
                        task = asyncio.create_task(run_job(token, job))
                        jobs.add(task)
                        task.add_done_callback(jobs.discard)
                await asyncio.sleep(checkin)

        spacing = checkin / max(len(tokens), 1)
        loops = [asyncio.create_task(device(t, i * spacing)) for i, t in enumerate(tokens)]
        pipe.send("running")
        await asyncio.get_running_loop().run_in_executor(None, pipe.recv)
        stop.set()
        for task in loops:
            task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
    pipe.send(dict(stats))


# --- the run ----------------------------------------------------------------------------------


def rollout(
    kind: str, size: int, pg_url: str, *, checkin: float, step: float = 2.0
) -> list[Result]:
    with fresh_database(kind, pg_url) as url:
        populate(url, size)
        with server(url) as admin:
            port = admin.base_url.port
            assert port is not None
            proc = psutil.Process(server_pid(port))
            tokens = device_tokens(url)
            models = [m["name"] for m in admin.get("/api/v1/models").json()["items"]]
            uploaded = admin.post(
                "/api/v1/artifacts",
                files={
                    "file": ("bench.bin", b"bench firmware " * 4096, "application/octet-stream")
                },
                data={"version": "99.0.0", "models": ",".join(models)},
            )
            uploaded.raise_for_status()
            parent, child = _SPAWN.Pipe()
            fleet = _SPAWN.Process(target=emulate, args=(port, tokens, checkin, step, child))
            fleet.start()
            parent.recv()
            time.sleep(checkin + 5)  # every device has checked in once: the steady idle load
            idle = _cpu_rate(proc, 15.0)
            created = admin.post(
                "/api/v1/deployments",
                json={
                    "name": "bench rollout",
                    "target": "state = active",
                    "artifact_id": uploaded.json()["id"],
                    "rollout": POLICY,
                },
            )
            created.raise_for_status()
            deployment = created.json()
            cpu0, t0 = _cpu(proc), time.monotonic()
            while True:
                shown = admin.get(f"/api/v1/deployments/{deployment['id']}").json()
                if shown["state"] not in ("running", "scheduled"):
                    break
                if time.monotonic() - t0 > 3600:
                    raise RuntimeError(f"the rollout did not end in an hour: {shown['counts']}")
                time.sleep(1.0)
            wall, cpu = time.monotonic() - t0, _cpu(proc) - cpu0
            executions = _all(admin, f"/api/v1/deployments/{deployment['id']}/executions")
            parent.send("stop")
            fleet_stats = parent.recv()
            fleet.join(30)
    ideal = replay(POLICY, executions, _at(deployment["created_at"]))
    ended = max(_at(e["finished_at"]) for e in executions if e["finished_at"])
    took = (ended - _at(deployment["created_at"])).total_seconds()
    updated = shown["counts"]["succeeded"]
    per_device_ms = cpu / max(updated, 1) * 1000
    marginal_ms = max(0.0, cpu - idle * wall) / max(updated, 1) * 1000
    return [
        Result(
            scenario="rollout",
            metric="wall time of a four-phase rollout (s), from creation to the last device done",
            fleet_size=size,
            database=kind,
            ours=Stats([took]).summary(),
            limit_name="the policy's own pacing, replayed with the same device timings (s)",
            limit=Stats([ideal]).summary(),
            goal="the scheduler adds <= 5 % to what the policy allows",
            notes=f"phases 1/10/50/100 %, 600/min doubling every 500 successes; devices check in "
            f"every {checkin:g} s and take {len(STEPS)} x {step:g} s to update",
            extra={
                "unit": "s",
                "state": shown["state"],
                "updated": updated,
                "counts": {k: v for k, v in shown["counts"].items() if v},
                "server_cpu_s": round(cpu, 2),
                "server_cpu_ms_per_updated_device": round(per_device_ms, 2),
                "server_cpu_ms_per_updated_device_above_idle": round(marginal_ms, 2),
                "idle_cpu_share": round(idle, 3),
                "polled_wall_s": round(wall, 1),
                "fleet": fleet_stats,
            },
        )
    ]


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def _cpu_rate(proc: psutil.Process, seconds: float) -> float:
    before, started = _cpu(proc), time.monotonic()
    time.sleep(seconds)
    return (_cpu(proc) - before) / (time.monotonic() - started)


def _all(admin: httpx.Client, path: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 1000}
        if cursor:
            params["cursor"] = cursor
        page = admin.get(path, params=params).json()
        out += page["items"]
        cursor = page.get("next_cursor")
        if not cursor:
            return out


# --- the policy's own pace -------------------------------------------------------------------


def replay(
    policy_json: dict[str, Any],
    executions: list[dict[str, Any]],
    start: datetime,
    tick: float = 0.1,
) -> float:
    """Seconds the rollout takes under the pure planner, each device as long as it really took.

    A device's time runs from the moment it was due (its notification, after jitter) to its
    final report: its check-in latency plus its update. Devices are taken in the scheduler's
    order (phase, then the position the deployment shuffled them into)."""
    policy = RolloutPolicy.model_validate(policy_json)
    took = {
        e["id"]: (_at(e["finished_at"]) - _at(e["notified_at"])).total_seconds()
        for e in executions
        if e["notified_at"] and e["finished_at"]
    }
    median = statistics.median(took.values())
    phases = len(policy.phases)
    queue: list[list[float]] = [[] for _ in range(phases)]
    for e in sorted(executions, key=lambda e: e["phase"]):
        if e["phase"] >= 0:
            queue[e["phase"]].append(took.get(e["id"], median))
    sizes = [len(q) for q in queue]
    succeeded = [0] * phases
    running: list[tuple[float, int]] = []  # (finish time, phase)
    rng = random.Random(1)
    state = planner.RolloutState(phase_started_at=start)
    now, end = start, start
    while state.state not in planner.DEPLOYMENT_FINAL:
        while running and running[0][0] <= (now - start).total_seconds():
            _, phase = running.pop(0)
            succeeded[phase] += 1
        counts = [
            planner.PhaseCounts(
                size=sizes[i],
                states={
                    "queued": len(queue[i]),
                    "notified": sum(1 for _, p in running if p == i),
                    "succeeded": succeeded[i],
                },
                ready=len(queue[i]) if i <= state.phase else 0,
            )
            for i in range(phases)
        ]
        snap = planner.Snapshot(
            policy=policy,
            rollout=state,
            phases=counts,
            notified_total=sum(sizes) - sum(len(q) for q in queue),
            succeeded_total=sum(succeeded),
            in_progress=len(running),
        )
        plan = planner.plan(snap, now)
        state = plan.rollout
        if state.state == planner.PAUSED:
            raise RuntimeError(f"the replayed policy paused: {state.reason}")
        offsets = planner.jitter_offsets(plan.notify, policy.jitter, rng)
        left = plan.notify
        for i in range(state.phase + 1):
            while left and queue[i]:
                duration = queue[i].pop(0)
                offset = offsets[plan.notify - left]
                finish = (now - start).total_seconds() + offset + duration
                running.append((finish, i))
                left -= 1
        running.sort()
        if state.state == planner.FINISHED:
            end = now
        now += timedelta(seconds=tick)
        if (now - start).total_seconds() > 86400:
            raise RuntimeError("the replay did not finish in a simulated day")
    return (end - start).total_seconds()
