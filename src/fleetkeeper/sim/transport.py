"""A lean HTTP/1.1 transport for httpx: keep-alive connections over asyncio streams.

httpx's default transport (httpcore over anyio and h11) costs about 1.5 ms of CPU a request on
the reference machine, and its pool scans every connection on every request; a simulator
sending a thousand requests a second spends more than a core on it. The simulator only ever
speaks plain HTTP/1.1 (or HTTPS) to one server, so this transport does just that: a bounded
pool of keep-alive connections, requests written in one go, answers read by Content-Length
or chunked encoding. DeviceClient and the shared `httpx.AsyncClient` stay as they are; only
the bytes on the wire go another way.

Not supported, on purpose: proxies, HTTP/2, upgrades, streaming bodies. A connection that
the server closed while idle is noticed and the request retried once on a fresh one.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import httpx

IDLE_SECONDS = 4.0  # forget idle connections before the server does (uvicorn: 5 s)
MAX_HEAD = 64 * 1024
NO_BODY = frozenset({204, 304})
Key = tuple[str, str, int]


@dataclass(eq=False)
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    used: float = field(default_factory=time.monotonic)
    served: int = 0

    def usable(self, now: float) -> bool:
        return (
            now - self.used < IDLE_SECONDS
            and not self.reader.at_eof()
            and not self.writer.is_closing()
        )

    def close(self) -> None:
        self.writer.close()


class _Stale(Exception):
    """A reused connection turned out closed before the answer began: retry on a new one."""


class LeanTransport(httpx.AsyncBaseTransport):
    def __init__(self, max_connections: int = 64, ssl_context: ssl.SSLContext | None = None):
        if max_connections < 1:
            raise ValueError("max_connections is at least 1")
        self.max_connections = max_connections
        self._ssl = ssl_context
        self._slots: asyncio.Semaphore | None = None
        self._idle: dict[Key, list[_Connection]] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"no {url.scheme!r} here", request=request)
        key = (url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80))
        timeouts = request.extensions.get("timeout", {})
        payload = _head(request) + await request.aread()
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_connections)
        async with self._slots:
            for _ in range(2):
                conn, reused = await self._connection(key, request, timeouts.get("connect"))
                try:
                    status, headers, content, keep = await self._exchange(
                        conn, payload, request, timeouts.get("read"), reused
                    )
                except _Stale:
                    conn.close()
                    continue
                except BaseException:
                    conn.close()
                    raise
                if keep:
                    conn.used = time.monotonic()
                    conn.served += 1
                    self._idle.setdefault(key, []).append(conn)
                else:
                    conn.close()
                return httpx.Response(status, headers=headers, content=content)
        raise httpx.RemoteProtocolError("the server closed the connection", request=request)

    async def aclose(self) -> None:
        for pool in self._idle.values():
            for conn in pool:
                conn.close()
        self._idle.clear()

    async def _connection(
        self, key: Key, request: httpx.Request, within: float | None
    ) -> tuple[_Connection, bool]:
        pool = self._idle.get(key)
        now = time.monotonic()
        while pool:
            conn = pool.pop()
            if conn.usable(now):
                return conn, True
            conn.close()
        scheme, host, port = key
        context = None
        if scheme == "https":
            context = self._ssl or ssl.create_default_context()
        try:
            async with asyncio.timeout(within):
                reader, writer = await asyncio.open_connection(
                    host, port, ssl=context, limit=MAX_HEAD
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(f"connecting to {host}:{port} timed out") from None
        except OSError as exc:
            raise httpx.ConnectError(str(exc) or type(exc).__name__, request=request) from None
        return _Connection(reader, writer), False

    async def _exchange(
        self,
        conn: _Connection,
        payload: bytes,
        request: httpx.Request,
        within: float | None,
        reused: bool,
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes, bool]:
        started = False
        try:
            async with asyncio.timeout(within):
                conn.writer.write(payload)
                await conn.writer.drain()
                line = await conn.reader.readline()
                if not line and reused:
                    raise _Stale
                started = True
                status, headers, keep = _parse_head(line, await _read_head(conn.reader))
                content, reusable = await _read_body(conn.reader, status, headers, request.method)
                return status, headers, content, keep and reusable
        except TimeoutError:
            raise httpx.ReadTimeout("no answer in time", request=request) from None
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            if reused and not started:
                raise _Stale from None
            raise httpx.ReadError(str(exc) or type(exc).__name__, request=request) from None
        except (ValueError, asyncio.LimitOverrunError) as exc:
            raise httpx.RemoteProtocolError(f"bad answer: {exc}", request=request) from None


def _head(request: httpx.Request) -> bytes:
    target = request.url.raw_path.decode("ascii")
    lines = [f"{request.method} {target} HTTP/1.1".encode("ascii")]
    lines += [name + b": " + value for name, value in request.headers.raw]
    if b"content-length" not in {n.lower() for n, _ in request.headers.raw}:
        lines.append(b"Content-Length: " + str(len(request.content)).encode())
    return b"\r\n".join(lines) + b"\r\n\r\n"


async def _read_head(reader: asyncio.StreamReader) -> list[bytes]:
    lines: list[bytes] = []
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n"):
            return lines
        if not line:
            raise asyncio.IncompleteReadError(b"", None)
        lines.append(line)


def _parse_head(
    status_line: bytes, lines: Sequence[bytes]
) -> tuple[int, list[tuple[bytes, bytes]], bool]:
    parts = status_line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise ValueError(f"status line {status_line[:80]!r}")
    headers = []
    keep = parts[0] == b"HTTP/1.1"
    for line in lines:
        name, sep, value = line.partition(b":")
        if not sep:
            raise ValueError(f"header line {line[:80]!r}")
        name, value = name.strip(), value.strip()
        headers.append((name, value))
        if name.lower() == b"connection":
            keep = value.lower() != b"close" and (keep or value.lower() == b"keep-alive")
    return int(parts[1]), headers, keep


async def _read_body(
    reader: asyncio.StreamReader, status: int, headers: list[tuple[bytes, bytes]], method: str
) -> tuple[bytes, bool]:
    """The body, and whether the connection may carry another request after it."""
    if method == "HEAD" or status in NO_BODY or 100 <= status < 200:
        return b"", True
    fields = {name.lower(): value for name, value in headers}
    if fields.get(b"transfer-encoding", b"").lower().endswith(b"chunked"):
        chunks: list[bytes] = []
        while True:
            size = int((await reader.readline()).split(b";", 1)[0].strip(), 16)
            if size == 0:
                await _read_head(reader)  # trailers, then the blank line
                return b"".join(chunks), True
            chunks.append(await reader.readexactly(size))
            await reader.readexactly(2)
    length = fields.get(b"content-length")
    if length is not None:
        return await reader.readexactly(int(length)), True
    return await reader.read(), False  # the body ends with the connection
