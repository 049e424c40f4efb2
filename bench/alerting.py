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

Ingestion, in a separate process (as a replica taking the device traffic would): requests of
100 points (one device's 10 metrics at 10 times in the last 5 s), 800 in flight, through the
server's own `Ingestor` (group commit: up to 20,000 points a transaction; on PostgreSQL three
side by side) over `TimeSeries.write`, as fast as it goes; each sender is noted as seen
(`Presence`, flushed every 2 s) as device authentication does.

Engine, in this process: `AlertEngine` on the system clock with `every` 5 s (the server's
default `alert_evaluation_seconds`), driven as `fleetkeeper serve` drives it: sleep 1 s, tick
under `db.exclusive("alerting")`, then the notification deliverer.

Probes. Every second of the measured window the writer sends one more request: a probe
device's battery at 5 (probes are reserved devices whose readings nobody else sends). Rule
`battery-critical` (`battery < 15`, no `for`) must fire on it. Detection lag = its alert's
`fired_at` (the engine's clock at the round that fired it) - the wall time the request's
transaction committed; beside it, when a poll (4 a second) first saw the alert row firing.
The probes come from the writer's process so that a round holding this process's event loop
does not hold them back too (it would in `fleetkeeper serve`, where the API shares the loop:
`loop_held` says for how long).

Windows. After a warm-up (the writer running, the engine's first two rounds, which open the
fleet's standing alerts): ingestion alone (the engine paused), ingestion with the engine and
the probes (on until every probe is seen firing), ingestion alone again. Ingestion is
reported in points/s committed within pieces of 10 s of each kind of window.

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
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psutil
import uvloop
from sqlalchemy import select

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
    DeviceModel,
    Tenant,
)
from fleetkeeper.store.timeseries import Point, sqlite_time

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
RATE_RULE = "storage-filling"  # judged once a minute (the engine's `rate_every`)
ONLINE = timedelta(seconds=300)  # the server's default online window
PIECE = 10.0  # seconds: ingestion rates are taken over pieces of the windows this long
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
    ("battery-site-42", "battery < 15 for 1m", "model = thermo-v2 AND " + _sites(42, 42)),
    ("overheat", "temperature > 45", ""),
    ("warm-tracker", "temperature > 40 for 2m", "model = tracker-v3"),
    ("frost", "temperature < -5 for 5m", "model IN (thermo-v2, meter-v1)"),
    ("signal-lost", "rssi < -100", ""),
    ("signal-weak-meter", "rssi < -95 for 5m", "model = meter-v1"),
    ("signal-weak-sites", "rssi < -98 for 10m", _sites(10, 29)),
    ("storage-full", "storage_used > 90", ""),
    ("storage-critical", "storage_used > 95 for 10m", "model != thermo-v2"),
    (RATE_RULE, "rate(storage_used) > 5 per 1h", "model = thermo-v2"),
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


def pieces(start: float, end: float, length: float) -> list[tuple[float, float]]:
    """[start, end) cut into pieces of `length` (a last one shorter than half is dropped);
    a window shorter than `length` is one piece."""
    if end - start < length:
        return [(start, end)]
    out = []
    while end - start >= length / 2:
        out.append((start, min(end, start + length)))
        start += length
    return out


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
    """The fleet, its readings, health flags and updates, and the rules, straight in `url`."""
    t0 = time.time()
    profiles = [profile(i, seed_) for i in range(size)]
    reserved = probe_indices(size, probes)
    for i in reserved:  # healthy devices in service until their battery is pushed
        profiles[i] = Profile(profiles[i].model, profiles[i].site, False, False, None, HEALTHY, 0.0)
    start = datetime.fromtimestamp(t0, UTC)
    ids = [uuid7(start - timedelta(days=400, seconds=-10 * i)) for i in range(size)]
    fleet = Fleet(ids, profiles, reserved, t0)
    model_ids, deployment = asyncio.run(_seed_first(url, start))
    raw = RawConnection(url)
    try:
        stamp = _stamp(raw.kind)
        tables = {
            "devices": _devices(fleet, model_ids, stamp),
            "telemetry_latest": _latest(fleet, stamp),
            "telemetry_1m": _minutes(fleet, stamp),
            "device_health": _health(fleet, stamp),
            "executions": _executions(fleet, deployment, stamp),
        }
        for table, rows in tables.items():
            fleet.rows[table] = _bulk(raw, table, _COLUMNS[table].split(), rows)
        if raw.kind == "sqlite":
            raw.run(lambda c: c.commit())
    finally:
        raw.close()
    asyncio.run(_seed_rules(url, start))
    raw = RawConnection(url)
    try:
        raw.fetch("ANALYZE")
    finally:
        raw.close()
    return fleet


_COLUMNS = {
    "devices": "id serial name model_id tenant_id state firmware_version attributes last_seen "
    "created_at updated_at",
    "telemetry_latest": "device_id metric ts value",
    "telemetry_1m": "device_id metric bucket min_value max_value sum_value count",
    "device_health": "device_id flag metric detector severity evidence since checked_at",
    "executions": "id deployment_id device_id phase position state attempt deliver "
    "cancel_requested from_version to_version finished_at updated_at",
}
Stamp = Callable[[datetime], Any]  # a time as the database's driver takes it


def _stamp(kind: str) -> Stamp:
    if kind == "sqlite":
        return sqlite_time
    return lambda t: t.astimezone(UTC).replace(tzinfo=None)


def _devices(fleet: Fleet, model_ids: list[int], stamp: Stamp) -> Iterator[tuple[Any, ...]]:
    rng = random.Random(3)
    start = datetime.fromtimestamp(fleet.t0, UTC)
    for i, (device_id, p) in enumerate(zip(fleet.ids, fleet.profiles, strict=True)):
        silent = rng.uniform(660, 3 * 86400) if p.offline else rng.uniform(0, 120)
        seen = stamp(start - timedelta(seconds=silent))
        created = stamp(start - timedelta(days=400, seconds=-10 * i))
        serial, attributes = f"AL-{i:08d}", f'{{"site": "{_site(p.site)}"}}'
        state = (model_ids[p.model], "default", "active", "1.0.0", attributes)
        yield (device_id, serial, serial, *state, seen, created, created)


def _latest(fleet: Fleet, stamp: Stamp) -> Iterator[tuple[Any, ...]]:
    rng = random.Random(5)
    for device_id, p in zip(fleet.ids, fleet.profiles, strict=True):
        at = fleet.t0 - (rng.uniform(660, 86400) if p.offline else rng.uniform(0, 60))
        ts = stamp(datetime.fromtimestamp(at, UTC))
        for m, (name, *_) in enumerate(METRICS):
            yield device_id, name, ts, value(p, m, at, fleet.t0, rng)


def _minutes(fleet: Fleet, stamp: Stamp) -> Iterator[tuple[Any, ...]]:
    """An hour of one-minute roll-ups of storage_used, one reading a minute."""
    rng = random.Random(6)
    now = int(fleet.t0) // 60 * 60
    buckets = [(stamp(datetime.fromtimestamp(b, UTC)), b + 30) for b in range(now - 3600, now, 60)]
    storage = _INDEX["storage_used"]
    for device_id, p in zip(fleet.ids, fleet.profiles, strict=True):
        if not p.offline:
            for bucket, middle in buckets:
                v = value(p, storage, middle, fleet.t0, rng)
                yield device_id, "storage_used", bucket, v, v, v, 1


def _health(fleet: Fleet, stamp: Stamp) -> Iterator[tuple[Any, ...]]:
    now = datetime.fromtimestamp(fleet.t0, UTC)
    flag = ("faulty_sensor", "temperature", "bench", "warning", "{}")
    since, checked = stamp(now - timedelta(hours=1)), stamp(now)
    for device_id, p in zip(fleet.ids, fleet.profiles, strict=True):
        if p.faulty:
            yield (device_id, *flag, since, checked)


def _executions(fleet: Fleet, deployment: str, stamp: Stamp) -> Iterator[tuple[Any, ...]]:
    """One finished execution of one deployment for each device that was updated."""
    rng = random.Random(8)
    now = datetime.fromtimestamp(fleet.t0, UTC)
    rest = (1, False, False, "0.9", "1.0")  # attempt, deliver, cancel_requested, versions
    for i, (device_id, p) in enumerate(zip(fleet.ids, fleet.profiles, strict=True)):
        if p.update is not None:
            at = now - timedelta(seconds=rng.uniform(3600, 10 * 86400))
            yield (uuid7(at), deployment, device_id, 0, i, p.update, *rest, stamp(at), stamp(at))


def _bulk(raw: RawConnection, table: str, columns: Sequence[str], rows: Iterator[Any]) -> int:
    """Insert rows as the bare driver does fastest: executemany (SQLite), COPY (PostgreSQL)."""
    count = 0
    while chunk := [row for _, row in zip(range(50_000), rows, strict=False)]:
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
    return count


async def _seed_first(url: str, now: datetime) -> tuple[list[int], str]:
    """The schema, the default tenant, the models (their ids in MODELS order) and a finished
    deployment (its id)."""
    await upgrade(url)
    db = Database(url)
    deployment = uuid7(now)
    made = {"created_by": "bench", "created_at": now, "updated_at": now}
    try:
        async with db.write() as session:
            session.add(Tenant(id="default", name="Default tenant", created_at=now))
            for name in MODELS:
                session.add(DeviceModel(name=name, capabilities=[], created_at=now, updated_at=now))
            await session.flush()  # the tenant before what refers to it
            what = {"name": "bench update", "kind": "update", "target": "", "policy": {}}
            session.add(
                Deployment(id=deployment, tenant_id="default", state="finished", **what, **made)
            )
        async with db.read() as session:
            ids = dict((await session.execute(select(DeviceModel.name, DeviceModel.id))).all())
        return [ids[name] for name in MODELS], deployment
    finally:
        await db.dispose()


async def _seed_rules(url: str, now: datetime) -> None:
    db = Database(url)
    made = {"created_by": "bench", "created_at": now, "updated_at": now}
    try:
        async with db.write() as session:
            for name, condition, scope in RULES:
                rule = AlertRule(name=name, condition=condition, scope=scope, group_by=["site"])
                definition = rule.model_dump(mode="json")
                session.add(
                    AlertRuleRecord(
                        id=uuid7(now),
                        tenant_id="default",
                        name=name,
                        definition=definition,
                        enabled=True,
                        version=1,
                        **made,
                    )
                )
    finally:
        await db.dispose()


# --- the writer (in its own process) ----------------------------------------------------------


@dataclass
class Job:
    """What the writer process is given: the fleet that sends, and how it is told what to do."""

    url: str
    sending: list[tuple[str, int]]  # (device id, index) of the devices whose readings it sends
    probes: list[str]
    t0: float
    seed: int
    ready: Any  # multiprocessing Events: set by the writer once it writes; set to stop it;
    stop: Any
    probing: Any  # set while it should push a probe's battery every second
    probed: Any  # multiprocessing Queue: (probe device id, wall times sent and committed)


def ingest(job: Job, pipe: Any) -> None:
    """Ingest at full rate until told to stop; send back (time, points committed) samples."""
    pipe.send(uvloop.run(_ingest(job)))
    pipe.close()


async def _ingest(job: Job) -> dict[str, Any]:
    db = Database(job.url)
    ingestor = Ingestor(db)
    presence = Presence()
    rng = random.Random(job.seed)
    # A fleet already running: every device in service was seen within the last minute.
    now = time.time()
    for device_id, _ in job.sending:
        presence.seen(device_id, datetime.fromtimestamp(now - rng.uniform(0, 60), UTC))
    await presence.flush(db)
    profiles = {i: profile(i, job.seed) for _, i in job.sending}
    cursor = iter(range(sys.maxsize))
    samples: list[tuple[float, int]] = []
    running = True

    async def sender() -> None:
        while running:
            device_id, index = job.sending[next(cursor) % len(job.sending)]
            batch = points(device_id, profiles[index], time.time(), job.t0, rng)
            received = datetime.now(UTC)
            await ingestor.write(batch, received)
            presence.seen(device_id, received)

    async def flusher() -> None:
        while running:
            await asyncio.sleep(2.0)
            seen = datetime.now(UTC)
            for device_id in job.probes:
                presence.seen(device_id, seen)
            await presence.flush(db)

    async def probe(device_id: str) -> None:
        at = datetime.now(UTC)
        await ingestor.write([(device_id, "battery", at, PROBE_VALUE)], at)
        job.probed.put((device_id, at.timestamp(), time.time()))

    async def prober() -> None:
        """A one-point request a second, each on its own (a request may wait for a while in
        the group commit's queue): a probe's battery under the probe rule's threshold."""
        unused = iter(job.probes)
        while running:
            if job.probing.is_set():
                tasks.append(asyncio.create_task(probe(next(unused))))
                await asyncio.sleep(1.0)
            else:
                await asyncio.sleep(0.05)

    job.ready.set()
    tasks = [asyncio.create_task(sender()) for _ in range(SENDERS)]
    tasks += [asyncio.create_task(flusher()), asyncio.create_task(prober())]
    while not job.stop.is_set():
        samples.append((time.time(), ingestor.stats.points))
        await asyncio.sleep(0.25)
    running = False
    samples.append((time.time(), ingestor.stats.points))
    await asyncio.gather(*tasks, return_exceptions=True)
    await ingestor.close()
    await db.engine.dispose()  # no PRAGMA optimize: the other process may write
    return {"samples": samples, **asdict(ingestor.stats)}


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
    sent: float  # wall time the request was made
    written: float  # wall time its transaction committed
    seen: float | None = None  # wall time a poll first saw its alert firing
    fired_at: float | None = None


class _Run:
    """The engine ticking as the server ticks it, paused and resumed; the probes' alerts
    polled; how long the event loop went without a turn."""

    def __init__(self, url: str, job: Job, interval: float) -> None:
        self.db = Database(url)
        clock = SystemClock()
        self.engine = TimedEngine(self.db, clock, online_window=ONLINE, every=interval)
        self.deliverer = Deliverer(self.db, clock)
        self.job = job
        self.probes: dict[str, _Probe] = {}
        self.ticks: list[tuple[float, Any]] = []  # (wall time it started, EngineReport)
        self.stalls: list[tuple[float, float]] = []  # (wall time, seconds the loop was held)
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

    async def held(self) -> None:
        """Note every time the loop came back more than 0.1 s late to a 0.05 s sleep."""
        while True:
            started = time.perf_counter()
            await asyncio.sleep(0.05)
            late = time.perf_counter() - started - 0.05
            if late > 0.1:
                self.stalls.append((time.time(), late))

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

    async def watch(self) -> None:
        """Take in the probes the writer pushed; poll 4 times a second for their alerts."""
        while True:
            await asyncio.sleep(0.25)
            while not self.job.probed.empty():
                device_id, sent, written = self.job.probed.get_nowait()
                self.probes[device_id] = _Probe(sent, written)
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
        self.job.probing.set()
        await asyncio.sleep(seconds)
        self.job.probing.clear()
        deadline = time.monotonic() + 120
        await asyncio.sleep(2.0)  # the last probe's write is in
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
    job: Job, writer: psutil.Process, seconds: float, alone: float, interval: float
) -> tuple[_Run, list[_Window]]:
    """Warm-up, then ingestion alone, with the engine and probes, and alone again."""
    run = _Run(job.url, job, interval)
    tasks = [asyncio.create_task(c) for c in (run.loop(), run.watch(), run.held())]
    windows = []
    try:
        await run.warm_up()
        run.engine.spent.clear()
        for kind in ("alone", "engine", "alone"):
            start, before = time.time(), _cpu(writer)
            if kind == "alone":
                await asyncio.sleep(alone)
            else:
                await run.engine_window(seconds)
            after = _cpu(writer)
            windows.append(
                _Window(kind, start, time.time(), {k: after[k] - before[k] for k in after})
            )
        await run.fired()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await run.db.engine.dispose()  # as the writer: no PRAGMA optimize
    return run, windows


def alerting(
    kind: str,
    size: int,
    pg_url: str,
    *,
    seconds: float,
    alone: float,
    interval: float = 5.0,
    seed_: int = 7,
) -> list[Result]:
    """Detection lag, engine round time and ingestion with and without the engine."""
    with fresh_database(kind, pg_url) as url:
        started = time.perf_counter()
        fleet = seed(url, size, probes=int(seconds) + 5, seed_=seed_)
        seeded = time.perf_counter() - started
        print(f"alerting {kind}: {size:,} devices seeded in {seeded:.0f} s", file=sys.stderr)
        sending = [(fleet.ids[i], i) for i in fleet.sending]
        probes = [fleet.ids[i] for i in fleet.probes]
        events = [SPAWN.Event() for _ in range(3)]
        job = Job(url, sending, probes, fleet.t0, seed_, *events, SPAWN.Queue())
        parent, child = SPAWN.Pipe()
        proc = SPAWN.Process(target=ingest, args=(job, child))
        proc.start()
        try:
            if not job.ready.wait(300):
                raise RuntimeError("the writer did not start")
            assert proc.pid is not None
            run, windows = uvloop.run(
                _measure(job, psutil.Process(proc.pid), seconds, alone, interval)
            )
        finally:
            job.stop.set()
            written = parent.recv() if parent.poll(120) else None
            proc.join(60)
            if proc.is_alive():
                proc.kill()
            parent.close()
            child.close()
            job.probed.close()
    if written is None:
        raise RuntimeError("the writer sent no samples back")
    out = _results(kind, size, interval, fleet, run, windows, written)
    out[0].extra["seed_seconds"] = round(seeded, 1)
    return out


# --- results ----------------------------------------------------------------------------------


def _inside(t: float, windows: Sequence[_Window]) -> bool:
    return any(w.start <= t <= w.end for w in windows)


def _ms(values: Sequence[float]) -> dict[str, float]:
    """Median and max in ms, and how many."""
    ms = [1000 * v for v in values]
    return {"median_ms": round(statistics.median(ms), 1), "max_ms": round(max(ms), 1), "n": len(ms)}


@dataclass
class _Summary:
    """A run boiled down: what the three results are made of."""

    lags: list[float]  # fired_at - written, per probe
    seen: list[float]  # first seen firing - written
    writes: list[float]  # written - sent: the probe's request in the group commit
    rounds: list[float]  # EngineReport.took of the ticks that judged rules
    rate: list[float]  # ... of those that judged the rate rule
    other: list[float]  # ... of the others
    spent: dict[str, list[float]]  # per rule and step of a tick: seconds
    rates: dict[str, list[float]]  # points/s per piece, by kind of window
    cpu: dict[str, dict[str, float]]  # cores busy, median per kind of window
    held: float  # longest the event loop went without a turn
    late: float  # EngineReport.lag at most, after the first tick of the window


def summarize(run: _Run, windows: list[_Window], samples: list[tuple[float, int]]) -> _Summary:
    busy = [w for w in windows if w.kind == "engine"]
    ticks = [(t, r) for t, r in run.ticks if _inside(t, busy) and r.evaluated]
    rated = [at for at, what, _ in run.engine.spent if what == f"rule {RATE_RULE}"]
    rate = [r.took for t, r in ticks if any(t <= at <= t + r.took + 1 for at in rated)]
    spent: dict[str, list[float]] = {}
    for at, what, seconds in run.engine.spent:
        if _inside(at, busy):
            spent.setdefault(what, []).append(seconds)
    rates: dict[str, list[float]] = {"alone": [], "engine": []}
    cores: dict[str, dict[str, list[float]]] = {"alone": {}, "engine": {}}
    for w in windows:
        for a, b in pieces(w.start, w.end, PIECE):
            rates[w.kind].append(points_between(samples, a, b) / (b - a))
        for what, cpu in w.cpu.items():
            cores[w.kind].setdefault(what, []).append(cpu / (w.end - w.start))
    probes = run.probes.values()
    return _Summary(
        lags=[p.fired_at - p.written for p in probes if p.fired_at is not None],
        seen=[p.seen - p.written for p in probes if p.seen is not None],
        writes=[p.written - p.sent for p in probes],
        rounds=[r.took for _, r in ticks],
        rate=rate,
        other=[r.took for _, r in ticks if r.took not in rate],
        spent=spent,
        rates=rates,
        cpu={k: {w: statistics.median(v) for w, v in c.items()} for k, c in cores.items()},
        held=max((h for t, h in run.stalls if _inside(t, busy)), default=0.0),
        late=max((r.lag for _, r in ticks[1:]), default=0.0),
    )


def _results(
    kind: str, size: int, interval: float, fleet: Fleet, run: _Run, windows: list[_Window],
    written: dict[str, Any],
) -> list[Result]:  # fmt: skip
    s = summarize(run, windows, written.pop("samples"))
    every = {"median_s": interval, "p10_s": interval, "p90_s": interval, "rounds": 1}
    common = {
        "rules": len(RULES),
        "evaluation_interval_s": interval,
        "rows_seeded": fleet.rows,
        "open_alerts_at_end": run.engine.open_alerts(),
        "warm_up_rounds_s": [
            round(r.took, 2) for t, r in run.ticks if t < windows[0].start and r.evaluated
        ],
        "engine_errors": run.errors,
        "windows": [{"kind": w.kind, "seconds": round(w.end - w.start, 1)} for w in windows],
    }
    done = f"{len(RULES)} rules, telemetry ingested at full rate alongside"
    lag = Result(
        "alerting",
        f"detection lag: a probe's battery under `{PROBE_RULE}` (battery < 15, no `for`) to "
        f"its alert firing (alerts.fired_at - the reading's commit), {done}",
        size,
        kind,
        Stats(s.lags).summary(),
        f"the evaluation interval ({interval:g} s; on time: lag <= interval + round)",
        every,
        "a few seconds of lag at 100,000 devices and 20 rules at the full ingestion rate",
        notes="engine in this process on the system clock, ticked as the server ticks it; "
        "writer and probes (Ingestor over TimeSeries.write) in another process",
        extra=common
        | {"lag_s": [round(lag, 2) for lag in s.lags]}
        | _spread("lag", s.lags)
        | _spread("seen_lag", s.seen)
        | _spread("probe_write", s.writes)
        | {"probes": len(s.lags)},
    )
    steps = {w.removeprefix("rule "): _ms(v) for w, v in sorted(s.spent.items())}
    round_ = Result(
        "alerting-round",
        f"engine round time (EngineReport.took) of the ticks that judged rules, {done}",
        size,
        kind,
        Stats(s.rounds).summary(),
        f"the evaluation interval ({interval:g} s): the time a round may take",
        every,
        "a round well inside the evaluation interval",
        extra=common
        | _spread("round", s.rounds)
        | _spread("round_rate_rule", s.rate)
        | _spread("round_other", s.other)
        | {"loop_held_s_max": round(s.held, 2), "late_s_max": round(s.late, 2), "spent": steps},
    )
    with_engine, alone = (statistics.median(s.rates[k]) for k in ("engine", "alone"))
    ingest_ = Result(
        "alerting-ingest",
        "telemetry ingested (Ingestor over TimeSeries.write, 100-point requests, up to 20,000 "
        "points a transaction) while the engine runs, seconds per point (1/rate)",
        size,
        kind,
        Stats([1 / r for r in s.rates["engine"]]).summary(),
        "the same writer with the engine paused (windows before and after)",
        Stats([1 / r for r in s.rates["alone"]]).summary(),
        "evaluation leaves ingestion near its full rate (ratio reported, no bound)",
        extra={
            "points_per_s_with_engine": round(with_engine),
            "points_per_s_alone": round(alone),
            "with_engine_to_alone": round(with_engine / alone, 3),
            "points_per_s_all": {k: [round(r) for r in v] for k, v in s.rates.items()},
            "cpu_cores": {k: {w: round(c, 2) for w, c in v.items()} for k, v in s.cpu.items()},
            "writer": written,
            "senders": SENDERS,
        },
    )
    print(
        f"alerting {kind} {size:,}: lag median {lag.ours['median_s']:.2f} s, max "
        f"{max(s.lags):.2f} s; round median {round_.ours['median_s']:.2f} s, max "
        f"{max(s.rounds):.2f} s; {with_engine:,.0f} points/s with the engine, {alone:,.0f} alone",
        file=sys.stderr,
    )
    return [lag, round_, ingest_]


def _spread(name: str, values: Sequence[float]) -> dict[str, float | None]:
    """name_median_s, name_p95_s, name_max_s (None without values)."""
    if not values:
        return {f"{name}_{q}_s": None for q in ("median", "p95", "max")}
    return {
        f"{name}_median_s": round(statistics.median(values), 3),
        f"{name}_p95_s": round(quantile(values, 0.95), 3),
        f"{name}_max_s": round(max(values), 3),
    }
