"""Alert evaluation beside telemetry ingestion at full rate: detection lag, round time, and
what evaluation costs ingestion (issue 7).

Fleet. N devices written straight into the database (as bench/population.py does), over 100
sites (`attributes.site`) and 3 models: each device's latest reading of 10 metrics
(`telemetry_latest`), an hour of one-minute roll-ups of `storage_used` (what the rate rule
reads; at the full ingestion rate every device fills every minute), and its `last_seen`. A few
devices trip rules by their typical values (OUTLIERS, FILLING), 1 % are silent since 11
minutes to 3 days (OFFLINE), 0.3 % carry the health flag `faulty_sensor`, and a fifth have a
finished update, 3 % of those failed. 20 rules (RULES) of every kind, scoped by model and
site queries, grouped by site.

Ingestion, in a separate process as the server would ingest in its own: device requests of
100 points (one device's 10 metrics at 10 times in the last 5 s), 800 in flight, through the
server's own `Ingestor` (group commit: up to 20,000 points a transaction; on PostgreSQL three
side by side) over `TimeSeries.write`, as fast as it goes; each sender is noted as seen
(`Presence`, flushed every 2 s) as device authentication does.

Engine, in this process: `AlertEngine` on the system clock with `every` 5 s (the server's
default `alert_evaluation_seconds`), driven as `fleetkeeper serve` drives it: sleep 1 s, tick
under `db.exclusive("alerting")`, then the notification deliverer.

Probes. Every second a probe device (reserved: the writer never sends its readings) gets a
battery reading of 5 through `TimeSeries.write`; rule `battery-critical` (`battery < 15`, no
`for`) must fire on it. Detection lag = its alert's `fired_at` (the engine's clock at the
round that fired it) - the wall time the reading committed; beside it, when a poll (4 a
second) first saw the alert row firing.

Windows. After a warm-up (the writer running, the engine's first two rounds, which open the
fleet's standing alerts), rounds alternate a window of ingestion alone (the engine paused)
and a window with the engine and the probes, which runs on until every probe is seen
firing. Ingestion is reported in points/s committed inside each kind of window.

SQLite: the writer and the engine are two processes on one file, so each waits for the
file's write lock through SQLite's busy handler, where inside one `fleetkeeper serve` (SQLite
supports one server process per file) they queue on one in-process lock.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psutil
import uvloop
from sqlalchemy import insert, select

from bench.databases import RawConnection, fresh_database
from bench.harness import Result, Stats
from bench.loadgen import SPAWN
from fleetkeeper.clock import SystemClock
from fleetkeeper.ids import uuid7
from fleetkeeper.services.alerting.delivery import Deliverer
from fleetkeeper.services.alerting.engine import AlertEngine
from fleetkeeper.services.alerting.rules import AlertRule
from fleetkeeper.services.ingest import Ingestor
from fleetkeeper.services.presence import Presence
from fleetkeeper.store.db import Database
from fleetkeeper.store.migrate import upgrade
from fleetkeeper.store.models import (
    AlertRecord,
    AlertRuleRecord,
    Deployment,
    DeviceHealth,
    DeviceModel,
    Execution,
    Tenant,
)
from fleetkeeper.store.timeseries import Point, TimeSeries, sqlite_time

log = logging.getLogger("bench.alerting")

MODELS = ("thermo-v2", "meter-v1", "tracker-v3")
SITES = 100
# (name, low, high, noise): a device's typical value is drawn in [low, high) once.
METRICS = (
    ("battery", 25.0, 100.0, 0.3),
    ("temperature", 15.0, 30.0, 0.2),
    ("rssi", -90.0, -60.0, 1.0),
    ("storage_used", 20.0, 80.0, 0.05),
    ("humidity", 30.0, 60.0, 0.5),
    ("pressure", 1000.0, 1025.0, 0.3),
    ("cpu", 5.0, 60.0, 3.0),
    ("memory", 30.0, 70.0, 1.0),
    ("voltage", 3.5, 3.9, 0.01),
    ("current", 0.2, 0.6, 0.02),
)
TIMES = 10  # a request: 10 metrics at 10 times
BATCH = len(METRICS) * TIMES
# (share of the fleet, metric, low, high): devices whose typical value trips a rule.
OUTLIERS = (
    (0.005, "battery", 3.0, 12.0),
    (0.002, "temperature", 46.0, 55.0),
    (0.005, "rssi", -110.0, -101.0),
    (0.003, "storage_used", 91.0, 99.0),
)
FILLING, FILLING_PER_HOUR = 0.002, 8.0  # storage_used rising: the rate rule's
OFFLINE = 0.01
FAULTY = 0.003
UPDATED, FAILED = 0.2, 0.03
PROBE_VALUE = 5.0
PROBE_RULE = "battery-critical"
ONLINE = timedelta(seconds=300)  # the server's default online window
SENDERS = 800  # requests in flight: enough to fill 20,000-point transactions, 3 at a time
_INDEX = {name: i for i, (name, *_) in enumerate(METRICS)}
HEALTHY = tuple((low + high) / 2 for _, low, high, _ in METRICS)  # a probe's values


def _sites(first: int, last: int) -> str:
    return "attributes.site IN (" + ", ".join(_site(s) for s in range(first, last + 1)) + ")"


def _site(number: int) -> str:
    return f"site-{number:03d}"


# (name, condition, scope): every rule is grouped by site.
RULES = (
    (PROBE_RULE, "battery < 15", ""),
    ("battery-low-thermo", "battery < 20 for 10m", "model = thermo-v2"),
    ("battery-empty-meter", "battery < 10 for 5m", "model = meter-v1"),
    ("battery-low-north", "battery < 25 for 15m", _sites(0, 9)),
    (
        "battery-low-site-42",
        "battery < 15 for 1m",
        "model = thermo-v2 AND attributes.site = site-042",
    ),
    ("overheat", "temperature > 45", ""),
    ("warm-tracker", "temperature > 40 for 2m", "model = tracker-v3"),
    ("frost", "temperature < -5 for 5m", "model IN (thermo-v2, meter-v1)"),
    ("signal-lost", "rssi < -100", ""),
    ("signal-weak-meter", "rssi < -95 for 5m", "model = meter-v1"),
    ("signal-weak-sites", "rssi < -98 for 10m", _sites(10, 29)),
    ("storage-full", "storage_used > 90", ""),
    ("storage-critical", "storage_used > 95 for 10m", "model != thermo-v2"),
    ("storage-filling", "rate(storage_used) > 5 per 1h", "model = thermo-v2"),
    ("offline", "offline for 10m", ""),
    ("offline-tracker", "offline for 30m", "model = tracker-v3"),
    ("offline-south", "offline for 1h", _sites(50, 59)),
    ("faulty-sensor", "health = faulty_sensor", ""),
    ("faulty-sensor-meter", "health = faulty_sensor for 10m", "model = meter-v1"),
    ("update-failed", "update failed", ""),
)


# --- the fleet (pure) ------------------------------------------------------------------------


@dataclass(frozen=True)
class Profile:
    """One device as the bench makes it: deterministic for its index and the seed."""

    model: int
    site: int
    offline: bool
    faulty: bool
    update: str | None  # the state of its finished update, if it has one
    typical: tuple[float, ...]  # by METRICS
    filling: float  # storage_used per hour


def profile(index: int, seed: int = 7) -> Profile:
    rng = random.Random(seed * 1_000_003 + index)
    typical = [rng.uniform(low, high) for _, low, high, _ in METRICS]
    for share, metric, low, high in OUTLIERS:
        if rng.random() < share:
            typical[_INDEX[metric]] = rng.uniform(low, high)
    update = None
    if rng.random() < UPDATED:
        update = "failed" if rng.random() < FAILED else "succeeded"
    return Profile(
        model=rng.randrange(len(MODELS)),
        site=rng.randrange(SITES),
        offline=rng.random() < OFFLINE,
        faulty=rng.random() < FAULTY,
        update=update,
        typical=tuple(typical),
        filling=FILLING_PER_HOUR if rng.random() < FILLING else 0.0,
    )


def value(p: Profile, metric: int, at: float, t0: float, rng: random.Random) -> float:
    """The metric's reading at `at` (Unix seconds); storage fills from t0 on."""
    drift = p.filling * (at - t0) / 3600 if METRICS[metric][0] == "storage_used" else 0.0
    return p.typical[metric] + drift + rng.gauss(0.0, METRICS[metric][3])


def points(device_id: str, p: Profile, now: float, t0: float, rng: random.Random) -> list[Point]:
    """One request: the device's 10 metrics at 10 times 0.5 s apart, the last at `now`."""
    out = []
    for j in range(TIMES):
        at = now - 0.5 * (TIMES - 1 - j)
        ts = datetime.fromtimestamp(at, UTC)
        out.extend(
            (device_id, name, ts, value(p, m, at, t0, rng)) for m, (name, *_) in enumerate(METRICS)
        )
    return out


def probe_indices(size: int, count: int) -> list[int]:
    """`count` devices spread evenly over the fleet."""
    step = max(1, size // count)
    return list(range(step // 2, size, step))[:count]


def points_between(samples: Sequence[tuple[float, int]], start: float, end: float) -> float:
    """Points committed between two times, from (time, total points) samples in time order,
    interpolated linearly between samples."""
    return _at(samples, end) - _at(samples, start)


def _at(samples: Sequence[tuple[float, int]], t: float) -> float:
    times = [s[0] for s in samples]
    i = bisect.bisect_left(times, t)
    if i == 0:
        return float(samples[0][1])
    if i == len(samples):
        return float(samples[-1][1])
    (t0, p0), (t1, p1) = samples[i - 1], samples[i]
    return p0 + (p1 - p0) * (t - t0) / (t1 - t0) if t1 > t0 else float(p1)


def quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --- seeding ----------------------------------------------------------------------------------


@dataclass
class Fleet:
    ids: list[str]
    profiles: list[Profile]
    probes: list[int]  # indices
    t0: float  # Unix time the readings were seeded at
    rows: dict[str, int] = field(default_factory=dict)

    @property
    def sending(self) -> list[int]:
        reserved = set(self.probes)
        return [i for i, p in enumerate(self.profiles) if not p.offline and i not in reserved]


def seed(url: str, size: int, probes: int, seed_: int = 7) -> Fleet:
    t0 = time.time()
    profiles = [profile(i, seed_) for i in range(size)]
    reserved = set(probe_indices(size, probes))
    # Probes are healthy, in service devices until their reading is pushed.
    for i in reserved:
        profiles[i] = Profile(profiles[i].model, profiles[i].site, False, False, None, HEALTHY, 0.0)
    start = datetime.fromtimestamp(t0, UTC)
    ids = [uuid7(start - timedelta(days=400) + timedelta(seconds=10 * i)) for i in range(size)]
    fleet = Fleet(ids, profiles, sorted(reserved), t0)
    model_ids = asyncio.run(_seed_first(url, start))
    raw = RawConnection(url)
    try:
        if raw.kind == "sqlite":
            raw.fetch("PRAGMA synchronous=OFF")
        fleet.rows["devices"] = _bulk(raw, "devices", _DEVICE_COLUMNS, _devices(fleet, model_ids))
        fleet.rows["telemetry_latest"] = _bulk(
            raw,
            "telemetry_latest",
            ("device_id", "metric", "ts", "value"),
            _latest(fleet, raw.kind),
        )
        fleet.rows["telemetry_1m"] = _bulk(
            raw,
            "telemetry_1m",
            ("device_id", "metric", "bucket", "min_value", "max_value", "sum_value", "count"),
            _minutes(fleet, raw.kind),
        )
        if raw.kind == "sqlite":
            raw.run(lambda c: c.commit())
    finally:
        raw.close()
    fleet.rows |= asyncio.run(_seed_last(url, fleet, start))
    raw = RawConnection(url)
    try:
        raw.fetch("ANALYZE")
    finally:
        raw.close()
    return fleet


_DEVICE_COLUMNS = (
    "id",
    "serial",
    "name",
    "model_id",
    "tenant_id",
    "state",
    "firmware_version",
    "attributes",
    "last_seen",
    "created_at",
    "updated_at",
)


def _stamp(kind: str) -> Callable[[datetime], Any]:
    if kind == "sqlite":
        return sqlite_time
    return lambda t: t.astimezone(UTC).replace(tzinfo=None)


def _devices(fleet: Fleet, model_ids: list[int]) -> Iterator[tuple[Any, ...]]:
    rng = random.Random(3)
    start = datetime.fromtimestamp(fleet.t0, UTC)
    for i, (device_id, p) in enumerate(zip(fleet.ids, fleet.profiles, strict=True)):
        silent = rng.uniform(660, 3 * 86400) if p.offline else rng.uniform(0, 120)
        created = start - timedelta(days=400) + timedelta(seconds=10 * i)
        yield (
            device_id,
            f"AL-{i:08d}",
            f"AL-{i:08d}",
            model_ids[p.model],
            "default",
            "active",
            "1.0.0",
            f'{{"site": "{_site(p.site)}"}}',
            start - timedelta(seconds=silent),
            created,
            created,
        )


def _latest(fleet: Fleet, kind: str) -> Iterator[tuple[Any, ...]]:
    rng = random.Random(5)
    stamp = _stamp(kind)
    for device_id, p in zip(fleet.ids, fleet.profiles, strict=True):
        at = fleet.t0 - (rng.uniform(660, 86400) if p.offline else rng.uniform(0, 60))
        ts = stamp(datetime.fromtimestamp(at, UTC))
        for m, (name, *_) in enumerate(METRICS):
            yield device_id, name, ts, value(p, m, at, fleet.t0, rng)


def _minutes(fleet: Fleet, kind: str) -> Iterator[tuple[Any, ...]]:
    """An hour of one-minute roll-ups of storage_used, one reading a minute."""
    rng = random.Random(6)
    stamp = _stamp(kind)
    now = int(fleet.t0) // 60 * 60
    buckets = [(stamp(datetime.fromtimestamp(b, UTC)), b + 30) for b in range(now - 3600, now, 60)]
    storage = _INDEX["storage_used"]
    for device_id, p in zip(fleet.ids, fleet.profiles, strict=True):
        if p.offline:
            continue
        for bucket, middle in buckets:
            v = value(p, storage, middle, fleet.t0, rng)
            yield device_id, "storage_used", bucket, v, v, v, 1


def _bulk(raw: RawConnection, table: str, columns: Sequence[str], rows: Iterator[Any]) -> int:
    count = 0
    while True:
        chunk = [row for _, row in zip(range(50_000), rows, strict=False)]
        if not chunk:
            return count
        count += len(chunk)
        if raw.kind == "sqlite":
            marks = ", ".join("?" * len(columns))
            sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"
            raw.run(lambda c, sql=sql, chunk=chunk: c.executemany(sql, chunk))
        else:
            raw.run(
                lambda c, chunk=chunk: c.copy_records_to_table(
                    table, records=chunk, columns=list(columns)
                )
            )


async def _seed_first(url: str, now: datetime) -> list[int]:
    """The schema, the default tenant and the models; their ids in MODELS order."""
    await upgrade(url)
    db = Database(url)
    try:
        async with db.write() as session:
            await session.execute(
                insert(Tenant).values(id="default", name="Default tenant", created_at=now)
            )
            for name in MODELS:
                await session.execute(
                    insert(DeviceModel).values(
                        name=name, capabilities=[], created_at=now, updated_at=now
                    )
                )
        async with db.read() as session:
            ids = dict((await session.execute(select(DeviceModel.name, DeviceModel.id))).all())
        return [ids[name] for name in MODELS]
    finally:
        await db.dispose()


async def _seed_last(url: str, fleet: Fleet, now: datetime) -> dict[str, int]:
    """Health flags, a finished deployment's executions, and the rules."""
    db = Database(url)
    rng = random.Random(8)
    health, executions = [], []
    deployment = uuid7(now)
    for i, (device_id, p) in enumerate(zip(fleet.ids, fleet.profiles, strict=True)):
        if p.faulty:
            health.append(
                {
                    "device_id": device_id,
                    "flag": "faulty_sensor",
                    "metric": "temperature",
                    "detector": "bench",
                    "severity": "warning",
                    "evidence": {},
                    "since": now - timedelta(hours=1),
                    "checked_at": now,
                }
            )
        if p.update is not None:
            finished = now - timedelta(seconds=rng.uniform(3600, 10 * 86400))
            executions.append(
                {
                    "id": uuid7(finished),
                    "deployment_id": deployment,
                    "device_id": device_id,
                    "phase": 0,
                    "position": i,
                    "state": p.update,
                    "from_version": "0.9.0",
                    "to_version": "1.0.0",
                    "finished_at": finished,
                    "updated_at": finished,
                }
            )
    try:
        async with db.write() as session:
            await session.execute(
                insert(Deployment).values(
                    id=deployment,
                    name="bench update",
                    tenant_id="default",
                    kind="update",
                    target="",
                    policy={},
                    state="finished",
                    created_by="bench",
                    created_at=now,
                    updated_at=now,
                )
            )
            for table, rows in ((DeviceHealth, health), (Execution, executions)):
                for start in range(0, len(rows), 2000):
                    await session.execute(insert(table), rows[start : start + 2000])
            for name, condition, scope in RULES:
                rule = AlertRule(name=name, condition=condition, scope=scope, group_by=["site"])
                await session.execute(
                    insert(AlertRuleRecord).values(
                        id=uuid7(now),
                        tenant_id="default",
                        name=name,
                        definition=rule.model_dump(mode="json"),
                        enabled=True,
                        version=1,
                        created_by="bench",
                        created_at=now,
                        updated_at=now,
                    )
                )
    finally:
        await db.dispose()
    return {"device_health": len(health), "executions": len(executions)}


# --- the writer (in its own process) ----------------------------------------------------------


def ingest(
    url: str,
    sending: list[tuple[str, int]],
    probes: list[str],
    t0: float,
    seed_: int,
    ready: Any,
    stop: Any,
    pipe: Any,
) -> None:
    """Ingest at full rate until `stop` is set; send back (time, points committed) samples."""
    pipe.send(uvloop.run(_ingest(url, sending, probes, t0, seed_, ready, stop)))
    pipe.close()


async def _ingest(
    url: str,
    sending: list[tuple[str, int]],
    probes: list[str],
    t0: float,
    seed_: int,
    ready: Any,
    stop: Any,
) -> dict[str, Any]:
    db = Database(url)
    ingestor = Ingestor(db)
    presence = Presence()
    rng = random.Random(seed_)
    # A fleet already running: every device in service was seen within the last minute.
    now = time.time()
    for device_id, _ in sending:
        presence.seen(device_id, datetime.fromtimestamp(now - rng.uniform(0, 60), UTC))
    await presence.flush(db)
    profiles = {i: profile(i, seed_) for _, i in sending}
    cursor = iter(range(sys.maxsize))
    samples: list[tuple[float, int]] = []
    running = True

    async def sender() -> None:
        while running:
            device_id, index = sending[next(cursor) % len(sending)]
            batch = points(device_id, profiles[index], time.time(), t0, rng)
            received = datetime.now(UTC)
            await ingestor.write(batch, received)
            presence.seen(device_id, received)

    async def flusher() -> None:
        while running:
            await asyncio.sleep(2.0)
            seen = datetime.now(UTC)
            for device_id in probes:
                presence.seen(device_id, seen)
            await presence.flush(db)

    ready.set()
    tasks = [asyncio.create_task(sender()) for _ in range(SENDERS)]
    tasks.append(asyncio.create_task(flusher()))
    while not stop.is_set():
        samples.append((time.time(), ingestor.stats.points))
        await asyncio.sleep(0.25)
    running = False
    samples.append((time.time(), ingestor.stats.points))
    await asyncio.gather(*tasks, return_exceptions=True)
    await ingestor.close()
    await db.dispose()
    stats = ingestor.stats
    return {
        "samples": samples,
        "points": stats.points,
        "new": stats.new,
        "transactions": stats.transactions,
        "requests": stats.requests,
        "retried_alone": stats.retried_alone,
    }


# --- the engine, timed ------------------------------------------------------------------------


class TimedEngine(AlertEngine):
    """The engine, noting how long each rule's evaluation and each step of a tick took."""

    STEPS = ("_sync_rules", "_operator_actions", "_refresh_mutes", "_store", "_dispatch")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.spent: list[tuple[float, str, float]] = []  # (wall time, what, seconds)
        for name in self.STEPS:
            setattr(self, name, self._timed(name.strip("_"), getattr(self, name)))

    def _timed(self, what: str, step: Callable[..., Awaitable[Any]]) -> Callable[..., Any]:
        async def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return await step(*args, **kwargs)
            finally:
                self.spent.append((time.time(), what, time.perf_counter() - started))

        return timed

    async def _evaluate(self, rule: Any, now: datetime, work: Any) -> int:
        started = time.perf_counter()
        try:
            return await super()._evaluate(rule, now, work)
        finally:
            self.spent.append((time.time(), f"rule {rule.name}", time.perf_counter() - started))

    def open_alerts(self) -> int:
        return sum(len(rule.evaluator.alerts) for rule in self._rules.values())


# --- the run (this process) -------------------------------------------------------------------


@dataclass
class _Probe:
    written: float  # wall time the reading committed
    seen: float | None = None  # wall time a poll first saw its alert firing
    fired_at: float | None = None


class _Run:
    """The engine ticking as the server ticks it, paused and resumed; probes and their polls."""

    def __init__(self, url: str, fleet: Fleet, interval: float) -> None:
        self.db = Database(url)
        clock = SystemClock()
        self.engine = TimedEngine(self.db, clock, online_window=ONLINE, every=interval)
        self.deliverer = Deliverer(self.db, clock)
        self.series = TimeSeries(self.db)
        self.unused = iter([fleet.ids[i] for i in fleet.probes])
        self.probes: dict[str, _Probe] = {}
        self.ticks: list[tuple[float, Any]] = []  # (wall time it started, EngineReport)
        self.errors = 0
        self.active = False
        self.idle = asyncio.Event()
        self.idle.set()
        self.rule_id = ""

    async def loop(self) -> None:
        """`_alerting` of api/app.py: sleep 1 s, tick under the lock, deliver."""
        while True:
            await asyncio.sleep(1.0)
            if not self.active:
                continue
            self.idle.clear()
            try:
                started = time.time()
                async with self.db.exclusive("alerting") as mine:
                    if mine:
                        self.ticks.append((started, await self.engine.tick()))
                await self.deliverer.tick()
            except Exception:
                log.exception("alerting round failed")
                self.errors += 1
                self.engine.reset()
            finally:
                self.idle.set()

    async def pause(self) -> None:
        self.active = False
        await self.idle.wait()

    async def warm_up(self, rounds: int = 2) -> None:
        async with self.db.read() as session:
            self.rule_id = str(
                await session.scalar(
                    select(AlertRuleRecord.id).where(AlertRuleRecord.name == PROBE_RULE)
                )
            )
        self.active = True
        deadline = time.monotonic() + 600
        while sum(1 for _, r in self.ticks if r.evaluated) < rounds:
            if time.monotonic() > deadline:
                raise RuntimeError("the engine's first rounds did not finish in time")
            await asyncio.sleep(0.2)
        await self.pause()

    async def probe(self) -> None:
        device_id = next(self.unused)
        at = datetime.now(UTC)
        batch = [(device_id, "battery", at, PROBE_VALUE)]
        await self.series.prepare(batch)
        async with self.db.write() as session:
            await self.series.write(session, [(batch, at)])
        self.probes[device_id] = _Probe(time.time())

    async def watch(self) -> None:
        """Poll 4 times a second for the probes' alerts firing."""
        while True:
            await asyncio.sleep(0.25)
            waiting = [d for d, p in self.probes.items() if p.seen is None]
            if not waiting:
                continue
            async with self.db.read() as session:
                rows = await session.scalars(
                    select(AlertRecord.device_id).where(
                        AlertRecord.rule_id == self.rule_id,
                        AlertRecord.state == "firing",
                        AlertRecord.device_id.in_(waiting),
                    )
                )
                seen = time.time()
                for device_id in rows:
                    self.probes[str(device_id)].seen = seen

    async def engine_window(self, seconds: float) -> None:
        """The engine on, a probe a second for `seconds`, then until every probe fired."""
        self.active = True
        due = time.monotonic()
        end = due + seconds
        while due < end:
            await self.probe()
            due += 1.0
            await asyncio.sleep(max(0.0, due - time.monotonic()))
        deadline = time.monotonic() + 120
        while any(p.seen is None for p in self.probes.values()):
            if time.monotonic() > deadline:
                log.warning("probes not seen firing after 120 s")
                break
            await asyncio.sleep(0.25)
        await self.pause()

    async def fired(self) -> None:
        async with self.db.read() as session:
            rows = await session.execute(
                select(AlertRecord.device_id, AlertRecord.fired_at).where(
                    AlertRecord.rule_id == self.rule_id,
                    AlertRecord.device_id.in_(list(self.probes)),
                    AlertRecord.fired_at.is_not(None),
                )
            )
            for device_id, fired_at in rows:
                self.probes[str(device_id)].fired_at = fired_at.timestamp()


@dataclass
class _Window:
    kind: str  # "alone" or "engine"
    start: float
    end: float
    cpu: dict[str, float]  # seconds of CPU in the window: this process, the writer, machine


def _cpu(writer: psutil.Process) -> dict[str, float]:
    machine = psutil.cpu_times()
    return {
        "engine": sum(psutil.Process().cpu_times()[:2]),
        "writer": sum(writer.cpu_times()[:2]),
        "machine": sum(machine) - machine.idle - getattr(machine, "iowait", 0.0),
    }


async def _measure(
    url: str,
    fleet: Fleet,
    writer: psutil.Process,
    rounds: int,
    seconds: float,
    alone: float,
    interval: float,
) -> tuple[_Run, list[_Window]]:
    run = _Run(url, fleet, interval)
    tasks = [asyncio.create_task(run.loop()), asyncio.create_task(run.watch())]
    windows = []
    try:
        await run.warm_up()
        run.engine.spent.clear()
        for _ in range(rounds):
            for kind in ("alone", "engine"):
                start, before = time.time(), _cpu(writer)
                if kind == "alone":
                    await asyncio.sleep(alone)
                else:
                    await run.engine_window(seconds)
                after = _cpu(writer)
                cpu = {k: after[k] - before[k] for k in after}
                windows.append(_Window(kind, start, time.time(), cpu))
        await run.fired()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await run.db.dispose()
    return run, windows


def alerting(
    kind: str,
    size: int,
    pg_url: str,
    *,
    rounds: int,
    seconds: float,
    alone: float,
    interval: float = 5.0,
    seed_: int = 7,
) -> list[Result]:
    """Detection lag, engine round time and ingestion with and without the engine."""
    with fresh_database(kind, pg_url) as url:
        started = time.perf_counter()
        fleet = seed(url, size, probes=int(rounds * seconds) + 5, seed_=seed_)
        seeded = time.perf_counter() - started
        print(f"alerting {kind}: {size:,} devices seeded in {seeded:.0f} s", file=sys.stderr)
        parent, child = SPAWN.Pipe()
        ready, stop = SPAWN.Event(), SPAWN.Event()
        sending = [(fleet.ids[i], i) for i in fleet.sending]
        probe_ids = [fleet.ids[i] for i in fleet.probes]
        args = (url, sending, probe_ids, fleet.t0, seed_, ready, stop, child)
        proc = SPAWN.Process(target=ingest, args=args)
        proc.start()
        try:
            if not ready.wait(300):
                raise RuntimeError("the writer did not start")
            assert proc.pid is not None
            writer_proc = psutil.Process(proc.pid)
            run, windows = uvloop.run(
                _measure(url, fleet, writer_proc, rounds, seconds, alone, interval)
            )
        finally:
            stop.set()
            written = parent.recv() if parent.poll(120) else None
            proc.join(60)
            if proc.is_alive():
                proc.kill()
            parent.close()
            child.close()
    if written is None:
        raise RuntimeError("the writer sent no samples back")
    out = _results(kind, size, interval, fleet, run, windows, written)
    out[0].extra["seed_seconds"] = round(seeded, 1)
    return out


# --- results ----------------------------------------------------------------------------------


def _inside(t: float, windows: Sequence[_Window]) -> bool:
    return any(w.start <= t <= w.end for w in windows)


def _ms(values: Sequence[float]) -> dict[str, float]:
    return {
        "median_ms": round(1000 * statistics.median(values), 1),
        "max_ms": round(1000 * max(values), 1),
        "n": len(values),
    }


def _results(
    kind: str,
    size: int,
    interval: float,
    fleet: Fleet,
    run: _Run,
    windows: list[_Window],
    written: dict[str, Any],
) -> list[Result]:
    engine_windows = [w for w in windows if w.kind == "engine"]
    probes = list(run.probes.values())
    lags = [p.fired_at - p.written for p in probes if p.fired_at is not None]
    seen = [p.seen - p.written for p in probes if p.seen is not None]
    ticks = [(t, r) for t, r in run.ticks if _inside(t, engine_windows)]
    rounds = [r.took for _, r in ticks if r.evaluated]
    full = [r.took for _, r in ticks if r.evaluated == len(RULES)]
    spent: dict[str, list[float]] = {}
    for at, what, seconds in run.engine.spent:
        if _inside(at, engine_windows):
            spent.setdefault(what, []).append(seconds)
    rates: dict[str, list[float]] = {"alone": [], "engine": []}
    shares: dict[str, dict[str, list[float]]] = {"alone": {}, "engine": {}}
    for w in windows:
        span = w.end - w.start
        rates[w.kind].append(points_between(written["samples"], w.start, w.end) / span)
        for what, cpu in w.cpu.items():
            shares[w.kind].setdefault(what, []).append(cpu / span)
    with_engine, alone = statistics.median(rates["engine"]), statistics.median(rates["alone"])
    interval_stats = {"median_s": interval, "p10_s": interval, "p90_s": interval, "rounds": 1}
    common = {
        "rules": len(RULES),
        "evaluation_interval_s": interval,
        "devices": size,
        "sites": SITES,
        "models": len(MODELS),
        "rows_seeded": fleet.rows,
        "open_alerts_at_end": run.engine.open_alerts(),
        "engine_errors": run.errors,
        "windows": [{"kind": w.kind, "seconds": round(w.end - w.start, 1)} for w in windows],
    }
    lag = Result(
        scenario="alerting",
        metric=f"detection lag: a probe device's battery pushed under `{PROBE_RULE}` "
        "(battery < 15, no `for`) to its alert firing (alerts.fired_at - the reading's commit), "
        f"{len(RULES)} rules, telemetry ingested at full rate alongside",
        fleet_size=size,
        database=kind,
        ours=Stats(lags).summary(),
        limit_name=f"the evaluation interval ({interval:g} s; on time: lag <= interval + round)",
        limit=interval_stats,
        goal="a few seconds of lag at 100,000 devices and 20 rules at the full ingestion rate",
        notes="engine in this process on the system clock, ticked as the server ticks it (1 s "
        "sleep, tick, deliver); writer (Ingestor over TimeSeries.write) in its own process",
        extra=common
        | {
            "lag_s": [round(x, 3) for x in lags],
            "lag_p95_s": round(quantile(lags, 0.95), 3),
            "lag_max_s": round(max(lags), 3),
            "seen_lag_median_s": round(statistics.median(seen), 3),
            "seen_lag_p95_s": round(quantile(seen, 0.95), 3),
            "seen_lag_max_s": round(max(seen), 3),
            "probes": len(probes),
            "probes_fired": len(lags),
        },
    )
    rules = {w[5:]: _ms(v) for w, v in sorted(spent.items()) if w.startswith("rule ")}
    steps = {w: _ms(v) for w, v in sorted(spent.items()) if not w.startswith("rule ")}
    round_ = Result(
        scenario="alerting-round",
        metric=f"engine round time (EngineReport.took) of the ticks that judged rules, "
        f"{len(RULES)} rules, while ingesting at full rate",
        fleet_size=size,
        database=kind,
        ours=Stats(rounds).summary(),
        limit_name=f"the evaluation interval ({interval:g} s): the time a round may take",
        limit=interval_stats,
        goal="a round well inside the evaluation interval",
        extra=common
        | {
            "round_max_s": round(max(rounds), 3),
            "round_all_rules_median_s": round(statistics.median(full), 3) if full else None,
            "round_all_rules_max_s": round(max(full), 3) if full else None,
            "rounds_all_rules": len(full),
            "late_s_max": round(max((r.lag for _, r in ticks[1:] if r.evaluated), default=0.0), 3),
            "rules": rules,
            "steps": steps,
            "transitions": sum(r.transitions for _, r in ticks),
            "notifications": sum(r.notifications for _, r in ticks),
        },
    )
    ingest_ = Result(
        scenario="alerting-ingest",
        metric="telemetry ingested (Ingestor over TimeSeries.write, 100-point requests, up to "
        "20,000 points a transaction) while the engine runs, seconds per point (1/rate)",
        fleet_size=size,
        database=kind,
        ours=Stats([1 / r for r in rates["engine"]]).summary(),
        limit_name="the same writer with the engine paused (windows interleaved)",
        limit=Stats([1 / r for r in rates["alone"]]).summary(),
        goal="evaluation leaves ingestion near its full rate (ratio reported, no bound)",
        extra={
            "points_per_s_with_engine": round(with_engine),
            "points_per_s_alone": round(alone),
            "with_engine_to_alone": round(with_engine / alone, 3),
            "points_per_s_all": {k: [round(r) for r in v] for k, v in rates.items()},
            "cpu_cores": {
                k: {what: round(statistics.median(v), 2) for what, v in s.items()}
                for k, s in shares.items()
            },
            "writer": {k: v for k, v in written.items() if k != "samples"},
            "senders": SENDERS,
        },
    )
    print(
        f"alerting {kind} {size:,}: lag median {lag.ours['median_s']:.2f} s, p95 "
        f"{lag.extra['lag_p95_s']:.2f} s, max {lag.extra['lag_max_s']:.2f} s; round median "
        f"{round_.ours['median_s']:.2f} s, max {round_.extra['round_max_s']:.2f} s; ingest "
        f"{with_engine:,.0f} points/s with the engine, {alone:,.0f} alone "
        f"({with_engine / alone:.2f})",
        file=sys.stderr,
    )
    return [lag, round_, ingest_]
