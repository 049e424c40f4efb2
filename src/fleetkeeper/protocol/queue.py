"""A bounded telemetry queue on disk: points wait here while the server is out of reach.

One SQLite file (WAL, so a crash loses at most the last push). Points leave in the order they
came, oldest first. Beyond `max_points` the oldest are dropped and counted: a device offline
for a month keeps its most recent history rather than failing to record anything new.

    queue.push(points)          # collect
    batch = queue.peek(1000)    # send...
    queue.ack(len(batch))       # ...and forget once the server has answered
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Self

from fleetkeeper.protocol.messages import Point

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS points (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    metric TEXT NOT NULL,
    value REAL NOT NULL,
    ts REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class TelemetryQueue:
    def __init__(self, path: Path, max_points: int = 100_000) -> None:
        if max_points < 1:
            raise ValueError("a queue holds at least one point")
        self.path = Path(path)
        self.max_points = max_points
        self._peeked: list[int] = []
        self._conn = self._open()

    def _open(self) -> sqlite3.Connection:
        try:
            return self._connect()
        except sqlite3.DatabaseError as exc:
            # A damaged queue must not stop the agent: keep the file for a post-mortem and
            # start an empty one.
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            log.warning("telemetry queue %s is unreadable (%s); moved to %s", self.path, exc, aside)
            self.path.replace(aside)
            return self._connect()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
        except sqlite3.DatabaseError:
            conn.close()
            raise
        return conn

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._conn.close()

    def __len__(self) -> int:
        row = self._conn.execute("SELECT count(*) FROM points").fetchone()
        return int(row[0])

    @property
    def dropped(self) -> int:
        """How many points were dropped for room, over the queue's whole life."""
        row = self._conn.execute("SELECT value FROM counters WHERE name = 'dropped'").fetchone()
        return int(row[0]) if row else 0

    def push(self, points: Iterable[Point]) -> int:
        """Add points at the end; returns how many old points were dropped to make room."""
        rows = [(p.metric, float(p.value), float(p.ts)) for p in points]
        if not rows:
            return 0
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany("INSERT INTO points (metric, value, ts) VALUES (?, ?, ?)", rows)
            count = int(conn.execute("SELECT count(*) FROM points").fetchone()[0])
            excess = max(0, count - self.max_points)
            if excess:
                conn.execute(
                    "DELETE FROM points WHERE seq IN (SELECT seq FROM points ORDER BY seq LIMIT ?)",
                    (excess,),
                )
                conn.execute(
                    "INSERT INTO counters (name, value) VALUES ('dropped', ?) "
                    "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
                    (excess,),
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return excess

    def peek(self, n: int) -> list[Point]:
        """The `n` oldest points, still in the queue."""
        rows = self._conn.execute(
            "SELECT seq, metric, value, ts FROM points ORDER BY seq LIMIT ?", (max(0, n),)
        ).fetchall()
        self._peeked = [int(r[0]) for r in rows]
        return [Point(r[1], r[2], r[3]) for r in rows]

    def ack(self, n: int) -> None:
        """Forget the first `n` points of the last `peek` (the `n` oldest, without a peek).

        Points dropped for room meanwhile are simply gone already; points pushed meanwhile
        stay, whatever `n` says.
        """
        if n <= 0:
            return
        if len(self._peeked) >= n:
            # A peek takes the smallest sequence numbers and new points get larger ones, so
            # "up to the n-th peeked" is exactly the points that were sent.
            last, self._peeked = self._peeked[n - 1], self._peeked[n:]
            self._conn.execute("DELETE FROM points WHERE seq <= ?", (last,))
        else:
            self._peeked = []
            self._conn.execute(
                "DELETE FROM points WHERE seq IN (SELECT seq FROM points ORDER BY seq LIMIT ?)",
                (n,),
            )
