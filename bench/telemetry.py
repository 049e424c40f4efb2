"""Telemetry: ingestion over HTTP beside the raw insert of the same rows, and a 30-day chart.

Ingestion. The fleet is written straight into the database and every device gets an access
token signed with the server's key, as in bench/device.py. A separate process (bench/loadgen.py,
as for check-ins) sends POST /device/v1/telemetry over keep-alive connections in HTTP/1.1:
batches of 100 points, one device's 10 metrics at 10 times within the last minutes, devices
taken round-robin. Every body is built before its round starts and none is sent twice, so each
point is new to the server (a resent point would be ignored, yet answered as accepted). The
rate is the points the server answered as accepted inside the measured window. The server runs
with the per-device rate limit raised and the health watch off (SERVER_ENV): the bench measures
ingestion, not the limiter (10,000 devices stay far below the default anyway, the chart's
seeding would not) nor the watch, which may take up to a quarter of the process (its duty) and
on PostgreSQL can run on another replica.

Limit. The same kind of rows inserted into the same `telemetry` table of a second database of
the same kind, migrated and populated alike, through the bare driver: SQLite executemany with
the server's pragmas, PostgreSQL COPY (asyncpg copy_records_to_table). Each in transactions of
5,000 rows (the limit the ratio is taken against) and of 100 rows (what one transaction per
HTTP batch costs at best). Its rounds are interleaved with the HTTP rounds.

Roll-ups. After the load, the summed `count` of telemetry_1m and telemetry_1h beside the raw
rows and the points accepted, polled until equal (or a timeout): whether the roll-ups kept up
and how long they lagged behind the load.

Chart. One device gets 30 days of one-minute readings through the device API (1,000-point
batches, old timestamps), then GET /api/v1/devices/{id}/telemetry?metric=...&from=-30d
&step=3600 runs 50 times. Server time is the growth of the server's own request-latency
histogram (/metrics) over each request, as the requests run one at a time; beside it the
least the database must do: the same hours read from telemetry_1h by the bare driver (or,
without roll-ups, the raw rows grouped by hour).
"""

from __future__ import annotations

import asyncio
import math
import random
import re
import sqlite3
import statistics
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import uvloop
from sqlalchemy.engine import make_url

from bench.databases import RawConnection, fresh_database
from bench.harness import Result, Stats, server, server_pid
from bench.loadgen import SPAWN, Load, checkin_request, device_post, keep_busy, send_all
from bench.population import device_tokens, populate

_ACCEPTED = re.compile(rb'"accepted"\s*:\s*(\d+)')

# (name, typical value, swing, noise): one device's readings, varying as a real one's do.
METRICS = (
    ("battery", 70.0, 20.0, 0.3),
    ("temperature", 21.0, 4.0, 0.2),
    ("humidity", 45.0, 10.0, 0.5),
    ("pressure", 1013.0, 6.0, 0.3),
    ("cpu", 30.0, 25.0, 5.0),
    ("memory", 55.0, 10.0, 1.0),
    ("storage", 62.0, 1.0, 0.05),
    ("signal", -75.0, 10.0, 2.0),
    ("voltage", 3.7, 0.3, 0.01),
    ("current", 0.4, 0.2, 0.02),
)
TIMES = 10  # timestamps per batch: 10 metrics x 10 times = 100 points
BATCH = len(METRICS) * TIMES
CHART_METRIC = "temperature"
SERVER_ENV = {
    "FLEETKEEPER_DEVICE_RATE_PER_SECOND": "100000",
    "FLEETKEEPER_DEVICE_RATE_BURST": "100000",
    "FLEETKEEPER_MONITOR_INTERVAL_SECONDS": "0",
}
ROUTE = "/api/v1/devices/{device_id}/telemetry"
COLUMNS = ("device_id", "metric", "ts", "value", "received_at")  # the telemetry table's
ROLLUPS = ("telemetry_1m", "telemetry_1h")


# --- the points (pure) ----------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """Batches first .. first+count-1 of the round-robin over the devices, stamped in
    [start, end): each device's batches in order, 1 ms apart at least, so a window never
    repeats a (device, metric, time) of another window that does not overlap it."""

    first: int
    count: int
    start: float
    end: float


def batches(window: Window, devices: int, seed: int = 0) -> Iterator[tuple[int, list[Any]]]:
    """(device index, [(metric, value, ts), ...]) for every batch of the window."""
    per_device = math.ceil(window.count / devices)
    step = (window.end - window.start) / (per_device * TIMES)
    if step < 0.001:
        raise ValueError("window too short for distinct millisecond timestamps")
    rng = random.Random(seed * 1_000_003 + window.first)
    for p in range(window.count):
        device = (window.first + p) % devices
        slot = p // devices
        phase = device * 0.37
        points = []
        for j in range(TIMES):
            ts = round(window.start + (slot * TIMES + j) * step, 3)
            wave = math.sin(phase + ts / 900.0)
            for name, typical, swing, noise in METRICS:
                points.append((name, typical + swing * wave + rng.gauss(0.0, noise), ts))
        yield device, points


def body(points: list[Any]) -> bytes:
    """The JSON an agent sends: {"points": [{"metric", "value", "ts" (Unix seconds)}]}."""
    items = ",".join(f'{{"metric":"{m}","value":{v:.3f},"ts":{t:.3f}}}' for m, v, t in points)
    return f'{{"points":[{items}]}}'.encode()


def telemetry_request(token: str, payload: bytes) -> bytes:
    return device_post("/device/v1/telemetry", token, payload)


def accepted_of(answer: bytes) -> int:
    """The `accepted` count of a telemetry answer's body (0 when there is none)."""
    found = _ACCEPTED.search(answer)
    return int(found.group(1)) if found else 0


def histogram_sum(metrics_text: str, route: str, method: str = "GET") -> float:
    """The request-seconds sum of one route in the server's Prometheus text."""
    for line in metrics_text.splitlines():
        if (
            line.startswith("fleetkeeper_http_request_seconds_sum{")
            and f'method="{method}"' in line
            and f'route="{route}"' in line
        ):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def sqlite_time(ts: float) -> str:
    """How SQLAlchemy stores a UTC DateTime on SQLite."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


# --- the load (in the load generator's process) ----------------------------------------------


class _Points(Load):
    """Batches handed out in order, each once; the points the server accepted counted too."""

    def __init__(self, requests: list[bytes], warmup: float, seconds: float) -> None:
        super().__init__(requests, warmup, seconds, once=True)
        self.points = 0  # accepted inside the window
        self.accepted_total = 0  # accepted at any time (warm-up and stragglers too)

    def answered(self, status: int, body: bytes, latency: float) -> bool:
        accepted = accepted_of(body) if status == 200 else 0
        self.accepted_total += accepted
        inside = super().answered(status, body, latency)
        if inside:
            self.points += accepted
        return inside


def drive(
    port: int,
    tokens: list[str],
    window: Window,
    connections: int,
    warmup: float,
    seconds: float,
    pid: int,
    database: str,
) -> dict[str, Any]:
    """Build the window's requests, then keep `connections` busy for warmup + seconds."""
    requests = [telemetry_request(tokens[d], body(p)) for d, p in batches(window, len(tokens))]
    load = _Points(requests, warmup, seconds)
    out = uvloop.run(keep_busy(port, load, connections, pid, database))
    return out | {
        "points": load.points,
        "handed_out": load.handed,
        "accepted_total": load.accepted_total,
        "ran_out": load.ran_out,
    }


# --- the limit: the same rows through the bare driver ---------------------------------------


class RawInsert:
    """Inserts rows shaped like the server's into `telemetry` of a database of its own."""

    def __init__(self, url: str) -> None:
        self.raw = RawConnection(url)
        self.kind = self.raw.kind
        self.devices = [r[0] for r in self.raw.fetch("SELECT id FROM devices ORDER BY id")]
        if self.kind == "sqlite":  # the server's own connection settings (store/db.py)
            self.raw.run(lambda c: setattr(c, "isolation_level", None))
            for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "foreign_keys=ON"):
                self.raw.fetch(f"PRAGMA {pragma}")

    def rows(self, window: Window) -> list[tuple[Any, ...]]:
        """The window's points as rows of COLUMNS, times as the server stores them."""
        now = time.time()
        if self.kind == "sqlite":
            stamp: Any = sqlite_time
        else:
            stamp = lambda ts: datetime.fromtimestamp(ts, UTC).replace(tzinfo=None)  # noqa: E731
        received = stamp(now)
        return [
            (self.devices[d], metric, stamp(ts), value, received)
            for d, points in batches(window, len(self.devices), seed=1)
            for metric, value, ts in points
        ]

    def prepare(self, window: Window) -> None:
        """PostgreSQL: the day partitions the window needs, when `telemetry` is partitioned."""
        if self.kind != "postgresql" or not self.raw.fetch(
            "SELECT 1 FROM pg_partitioned_table WHERE partrelid = 'telemetry'::regclass"
        ):
            return
        day = datetime.fromtimestamp(window.start, UTC).date()
        while day <= datetime.fromtimestamp(window.end, UTC).date():
            following = day + timedelta(days=1)
            self.raw.fetch(
                f"CREATE TABLE IF NOT EXISTS telemetry_p{day:%Y%m%d} PARTITION OF telemetry "
                f"FOR VALUES FROM ('{day}') TO ('{following}')"
            )
            day = following

    def insert(self, rows: list[tuple[Any, ...]], per_transaction: int) -> float:
        """Seconds to insert `rows`, committing every `per_transaction` rows."""
        chunks = [rows[i : i + per_transaction] for i in range(0, len(rows), per_transaction)]
        if self.kind == "sqlite":
            sql = f"INSERT INTO telemetry ({','.join(COLUMNS)}) VALUES (?, ?, ?, ?, ?)"

            def sqlite_insert(conn: sqlite3.Connection) -> None:
                for chunk in chunks:
                    conn.execute("BEGIN IMMEDIATE")
                    conn.executemany(sql, chunk)
                    conn.execute("COMMIT")

            started = time.perf_counter()
            self.raw.run(sqlite_insert)
            return time.perf_counter() - started

        async def pg_copy(conn: Any) -> None:
            for chunk in chunks:
                await conn.copy_records_to_table("telemetry", records=chunk, columns=COLUMNS)

        started = time.perf_counter()
        self.raw.run(pg_copy)
        return time.perf_counter() - started

    def close(self) -> None:
        self.raw.close()


# --- roll-ups -------------------------------------------------------------------------------


def counts(raw: RawConnection, where: str) -> dict[str, int]:
    """Raw rows and the roll-ups' summed counts for the rows matching `where`."""
    out = {"telemetry": int(raw.fetch(f"SELECT count(*) FROM telemetry WHERE {where}")[0][0])}
    for table in ROLLUPS:
        sql = f"SELECT coalesce(sum(count), 0) FROM {table} WHERE {where}"
        out[table] = int(raw.fetch(sql)[0][0])
    return out


def wait_rollups(raw: RawConnection, where: str, expected: int, timeout: float) -> dict[str, Any]:
    """Poll until every roll-up sums to `expected` points; how long that took, or None."""
    started = time.monotonic()
    while True:
        seen = counts(raw, where)
        caught = all(seen[table] == expected for table in ROLLUPS)
        if caught or time.monotonic() - started > timeout:
            return {
                "expected": expected,
                "counts": seen,
                "caught_up": caught,
                "caught_up_after_s": round(time.monotonic() - started, 2) if caught else None,
            }
        time.sleep(0.5)


# --- the chart ------------------------------------------------------------------------------


def seed_history(port: int, token: str, metrics: list[str], days: float) -> dict[str, Any]:
    """One reading a minute of each metric for `days` up to now, through the device API."""
    return asyncio.run(_seed(port, token, metrics, days))


async def _seed(port: int, token: str, metrics: list[str], days: float) -> dict[str, Any]:
    now = time.time()
    first = int(now - days * 86400) // 60 * 60 + 600  # inside the server's 30-day window
    minutes = list(range(first, int(now) - 60, 60))
    rng = random.Random(5)
    per_batch = 1000 // len(metrics)
    bodies = []
    for i in range(0, len(minutes), per_batch):
        points = [
            (m, 20.0 + 5 * math.sin(t / 43200) + rng.gauss(0, 0.3), float(t))
            for t in minutes[i : i + per_batch]
            for m in metrics
        ]
        bodies.append(body(points))
    gate = asyncio.Semaphore(4)
    accepted = 0
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"}
    ) as http:

        async def send(payload: bytes) -> None:
            nonlocal accepted
            async with gate:
                r = await http.post(
                    "/device/v1/telemetry",
                    content=payload,
                    headers={"Content-Type": "application/json"},
                    timeout=120,
                )
                r.raise_for_status()
                answer = r.json()
                if answer["rejected"]:
                    raise RuntimeError(f"seeding refused points: {answer['rejected'][:3]}")
                accepted += answer["accepted"]

        started = time.perf_counter()
        await asyncio.gather(*(send(b) for b in bodies))
        took = time.perf_counter() - started
    return {
        "points": accepted,
        "per_metric": len(minutes),
        "seconds": round(took, 2),
        "points_per_s": round(accepted / took),
    }


def chart(client: httpx.Client, raw: RawConnection, device_id: str, rounds: int) -> dict[str, Any]:
    """Server time (from its latency histogram), round trip and the bare SQL, per request."""
    path = f"/api/v1/devices/{device_id}/telemetry"
    params = {"metric": CHART_METRIC, "from": "-30d", "step": "3600"}
    server_s, round_trip_s, bare_s = [], [], []
    answer: list[dict[str, Any]] = []
    for i in range(rounds + 5):  # the first five warm up
        before = histogram_sum(client.get("/metrics").text, ROUTE)
        started = time.perf_counter()
        r = client.get(path, params=params)
        took = time.perf_counter() - started
        r.raise_for_status()
        answer = r.json()
        spent = histogram_sum(client.get("/metrics").text, ROUTE) - before
        sql = _chart_sql(raw, device_id, time.time())
        t0 = time.perf_counter()
        rows = raw.fetch(sql)
        bare = time.perf_counter() - t0
        if i >= 5:
            server_s.append(spent)
            round_trip_s.append(took)
            bare_s.append(bare)
    return {
        "server_s": server_s,
        "round_trip_s": round_trip_s,
        "bare_s": bare_s,
        "buckets": len(answer),
        "points_in_buckets": sum(int(b.get("count", 0)) for b in answer),
        "bare_rows": len(rows),
    }


def _chart_sql(raw: RawConnection, device_id: str, now: float) -> str:
    start = now - 30 * 86400
    if raw.kind == "sqlite":
        low, high = f"'{sqlite_time(start)}'", f"'{sqlite_time(now)}'"
    else:
        low, high = (f"to_timestamp({t}) AT TIME ZONE 'UTC'" for t in (start, now))
    return (
        "SELECT bucket, min_value, max_value, sum_value, count FROM telemetry_1h "
        f"WHERE device_id = '{device_id}' AND metric = '{CHART_METRIC}' "
        f"AND bucket >= {low} AND bucket < {high} ORDER BY bucket"
    )


# --- the scenario ---------------------------------------------------------------------------


def telemetry(
    kind: str,
    size: int,
    pg_url: str,
    *,
    rounds: int,
    seconds: float,
    limit_rows: int,
    chart_metrics: int,
    connections: int = 16,
) -> list[Result]:
    """Points/s accepted over HTTP against the bare driver's insert rate; the chart query."""
    with fresh_database(kind, pg_url) as url, fresh_database(kind, pg_url) as limit_url:
        populate(url, size)
        populate(limit_url, size)
        bare = RawInsert(limit_url)
        with (
            server(url, env=SERVER_ENV) as client,
            ProcessPoolExecutor(1, mp_context=SPAWN) as pool,
        ):
            port = client.base_url.port
            assert port is not None
            tokens = device_tokens(url)
            raw = RawConnection(url)
            run = _Run(pool, port, server_pid(port), url, tokens[1:], connections, seconds)
            chart_device = tokens[0].split(".")[1]
            try:
                ingest = run.ingest(bare, raw, f"device_id <> '{chart_device}'", rounds, limit_rows)
                metrics = [CHART_METRIC] + [m for m, *_ in METRICS if m != CHART_METRIC]
                seeded = seed_history(port, tokens[0], metrics[:chart_metrics], days=30)
                seeded["rollups"] = wait_rollups(
                    raw, f"device_id = '{chart_device}'", seeded["points"], timeout=60
                )
                shown = chart(client, raw, chart_device, rounds=50)
            finally:
                raw.close()
                bare.close()
    return _results(kind, size, connections, seconds, ingest, seeded, shown)


@dataclass
class _Run:
    """The HTTP load against one server, and the bare inserts interleaved with it."""

    pool: ProcessPoolExecutor
    port: int
    pid: int
    url: str
    tokens: list[str]  # of the devices that send (the chart's device does not)
    connections: int
    seconds: float

    def __post_init__(self) -> None:
        start = time.time() - 300  # the first windows reach five minutes back
        self.cursor = {"http": start, "bare": start}
        self.first = {"http": 0, "bare": 0}

    def window(self, lane: str, count: int) -> Window:
        """The next `count` batches of a lane, stamped from the last window's end to now."""
        now = time.time()
        w = Window(self.first[lane], count, self.cursor[lane], now)
        self.cursor[lane], self.first[lane] = now, self.first[lane] + count
        return w

    def http(self, warmup: float, rate: float) -> dict[str, Any]:
        """A round built for `rate` points/s: it runs out of batches only if the server is
        faster than that (then `ran_out` says so)."""
        w = self.window("http", math.ceil(rate * (warmup + self.seconds) / BATCH))
        database = make_url(self.url).database or ""
        args = (self.port, self.tokens, w, self.connections, warmup, self.seconds, self.pid)
        out = self.pool.submit(drive, *args, database).result()
        self.first["http"] = w.first + out["handed_out"]  # batches never sent are skipped
        return out

    def bare(self, bare: RawInsert, rows: int, per_transaction: int) -> float:
        """Rows per second the bare driver inserts, committing every `per_transaction`."""
        w = self.window("bare", rows // BATCH)
        bare.prepare(w)
        built = bare.rows(w)
        return len(built) / bare.insert(built, per_transaction)

    def ingest(
        self, bare: RawInsert, raw: RawConnection, where: str, rounds: int, limit_rows: int
    ) -> dict[str, Any]:
        # One check-in per device, as a fleet that is already running has made: the server's
        # device cache then holds every device, as it does in steady state.
        checkins = [checkin_request(t) for t in self.tokens]
        checked_in = self.pool.submit(send_all, self.port, checkins, self.connections).result()
        if set(checked_in) != {"200"}:
            raise RuntimeError(f"check-ins before the load answered {checked_in}")
        warm = self.http(1.0, 100_000)  # also warms the server's paths and pools up
        rate = 2.5 * max(warm["points"] / warm["seconds"], 4_000)
        self.bare(bare, limit_rows, 5000)
        self.bare(bare, limit_rows, 100)
        out: dict[str, Any] = {"http": [], "limit_5000": [], "limit_100": [], "lags": []}
        accepted = warm["accepted_total"]
        for _ in range(rounds):  # interleaved, so noise on the machine hits all alike
            out["http"].append(self.http(0.5, rate))
            accepted += out["http"][-1]["accepted_total"]
            seen = counts(raw, where)
            out["lags"].append(accepted - min(seen[table] for table in ROLLUPS))
            out["limit_5000"].append(self.bare(bare, limit_rows, 5000))
            out["limit_100"].append(self.bare(bare, limit_rows, 100))
        out["accepted"] = accepted
        out["rollups"] = wait_rollups(raw, where, accepted, timeout=120)
        return out


def _results(
    kind: str,
    size: int,
    connections: int,
    seconds: float,
    ingest: dict[str, Any],
    seeded: dict[str, Any],
    shown: dict[str, Any],
) -> list[Result]:
    http = ingest["http"]
    rates = [r["points"] / r["seconds"] for r in http]
    ours = Stats([1 / r for r in rates])
    limit = Stats([1 / r for r in ingest["limit_5000"]])
    per_100 = Stats([1 / r for r in ingest["limit_100"]])

    def med(key: str, scale: float = 1.0) -> float:
        return round(float(statistics.median(scale * r[key] / r["seconds"] for r in http)), 3)

    statuses = sum((Counter(r["statuses"]) for r in http), Counter[str]())
    extra = {
        "points_per_s": round(statistics.median(rates)),
        "points_per_s_all": [round(r) for r in rates],
        "limit_points_per_s": round(1 / limit.median),
        "limit_100_points_per_s": round(1 / per_100.median),
        "ratio_to_limit_100": round(ours.median / per_100.median, 2),
        "batches_per_s": round(statistics.median(rates) / BATCH),
        "statuses": dict(statuses),
        "ran_out_of_batches": sum(r["ran_out"] for r in http),
        "server_cpu_share": med("server_cpu_s"),
        "database_cpu_share": med("database_cpu_s") if kind == "postgresql" else None,
        "client_cpu_share": med("client_cpu_s"),
        "machine_busy_cores": med("machine_busy_s"),
        "server_cpu_us_per_point": round(
            statistics.median(1e6 * r["server_cpu_s"] / max(r["points"], 1) for r in http), 2
        ),
        "latency_p50_ms": round(statistics.median(1000 * r["latency_p50_s"] for r in http), 2),
        "latency_p99_ms": round(statistics.median(1000 * r["latency_p99_s"] for r in http), 2),
        "connections": connections,
        "devices_sending": size - 1,
        "accepted_total": ingest["accepted"],
        "rollups": ingest["rollups"],
        "rollup_lag_points_at_round_end": ingest["lags"],
        "server_env": SERVER_ENV,
    }
    chart_stats = Stats(shown["server_s"])
    chart_result = Result(
        scenario="telemetry-chart",
        metric=f"GET .../telemetry?metric={CHART_METRIC}&from=-30d&step=3600, server time, "
        "one device with 30 days of one-minute readings",
        fleet_size=size,
        database=kind,
        ours=chart_stats.summary(),
        limit_name="the same hours read from telemetry_1h, bare driver",
        limit=Stats(shown["bare_s"]).summary(),
        goal="< 50 ms median",
        notes="server time = growth of the server's request-latency histogram over each "
        "request (requests one at a time); history seeded through the device API",
        extra={
            "round_trip_ms_median": round(1000 * statistics.median(shown["round_trip_s"]), 2),
            "buckets": shown["buckets"],
            "points_in_buckets": shown["points_in_buckets"],
            "bare_rows": shown["bare_rows"],
            "seeded": seeded,
        },
    )
    _print(kind, extra, ours, chart_stats)
    return [
        Result(
            scenario="telemetry",
            metric=f"POST /device/v1/telemetry, {BATCH} points a batch, {connections} keep-alive "
            "connections, seconds per accepted point (1/rate)",
            fleet_size=size,
            database=kind,
            ours=ours.summary(),
            limit_name="insert the same rows into the same table, bare driver "
            f"({'executemany' if kind == 'sqlite' else 'COPY'}, 5,000 rows a transaction)",
            limit=limit.summary(),
            goal=">= 50,000 points/s (ratio to the limit reported, no bound)",
            notes=f"{seconds:g} s per round; load generator in another process on the same "
            f"2 cores; rate limit raised, health watch off for the bench ({SERVER_ENV})",
            extra=extra,
        ),
        chart_result,
    ]


def _print(kind: str, extra: dict[str, Any], ours: Stats, chart_stats: Stats) -> None:
    ratio = ours.median * extra["limit_points_per_s"]
    print(
        f"telemetry {kind}: {extra['points_per_s']:,} points/s "
        f"(p10-p90 {1 / ours.p90:,.0f}-{1 / ours.p10:,.0f}); limit "
        f"{extra['limit_points_per_s']:,} (100 a transaction: "
        f"{extra['limit_100_points_per_s']:,}); ratio {ratio:.1f}x; roll-ups caught up: "
        f"{extra['rollups']['caught_up']}; chart {chart_stats.median * 1000:.1f} ms",
        file=sys.stderr,
    )
