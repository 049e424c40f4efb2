"""Measuring: repeated timings with median and spread, a server in a subprocess, results."""

from __future__ import annotations

import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
BENCH_TOKEN = "fkt_bench-admin-token-not-for-production"


@dataclass
class Stats:
    """Seconds per operation over several rounds."""

    samples: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def p10(self) -> float:
        return _quantile(self.samples, 0.1)

    @property
    def p90(self) -> float:
        return _quantile(self.samples, 0.9)

    def summary(self) -> dict[str, float]:
        return {
            "median_s": self.median,
            "p10_s": self.p10,
            "p90_s": self.p90,
            "rounds": len(self.samples),
        }


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(fn: Callable[[], Any], *, rounds: int, warmup: int = 2) -> Stats:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return Stats(samples)


@dataclass
class Result:
    scenario: str
    metric: str
    fleet_size: int
    database: str
    ours: dict[str, float]
    limit_name: str
    limit: dict[str, float]
    goal: str
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        """Our median over the limit's median: how many times the raw work we take."""
        return self.ours["median_s"] / self.limit["median_s"]


def machine() -> dict[str, Any]:
    import sqlalchemy

    import fleetkeeper

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "fleetkeeper": fleetkeeper.__version__,
        "sqlalchemy": sqlalchemy.__version__,
        "sqlite": __import__("sqlite3").sqlite_version,
    }


def save(results: list[Result], name: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS / f"{stamp}-{name}.json"
    payload = {
        "date": datetime.now(UTC).isoformat(),
        "machine": machine(),
        "results": [asdict(r) | {"ratio": r.ratio} for r in results],
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def server(
    database_url: str, *, data_dir: Path | None = None, env: Mapping[str, str] | None = None
) -> Iterator[httpx.Client]:
    """A `fleetkeeper serve` subprocess on a free port; yields an admin client for it.

    `env`: variables for the server on top of ours (settings a scenario changes), which
    leaves this process's own environment alone.
    """
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="fk-bench-"))
    server_env = {
        **os.environ,
        "FLEETKEEPER_ADMIN_TOKEN": BENCH_TOKEN,
        "FLEETKEEPER_MAX_IMPORT_BYTES": str(512 * 1024 * 1024),
        **(env or {}),
    }
    log = (workdir / "server.log").open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fleetkeeper",
            "serve",
            "--port",
            str(port),
            "--data-dir",
            str(data_dir or workdir),
            "--database-url",
            database_url,
        ],
        env=server_env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited; see {workdir / 'server.log'}")
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("server did not become healthy in 120 s")
            time.sleep(0.2)
        with httpx.Client(
            base_url=base, timeout=600, headers={"Authorization": f"Bearer {BENCH_TOKEN}"}
        ) as client:
            yield client
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def server_pid(port: int) -> int:
    """The `fleetkeeper serve` child that `server` started on `port`."""
    for child in psutil.Process().children():
        if str(port) in child.cmdline() and "serve" in child.cmdline():
            return child.pid
    raise RuntimeError(f"no server child process on port {port}")
