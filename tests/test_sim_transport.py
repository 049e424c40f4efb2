"""The simulator's lean HTTP/1.1 transport against a scripted server on a real socket."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import httpx
import pytest

from fleetkeeper.protocol import DeviceClient, Unavailable, generate_key
from fleetkeeper.sim.transport import LeanTransport

Answer = Callable[[bytes, asyncio.StreamWriter], Awaitable[bool]]  # True: keep the connection


def json_answer(body: bytes = b'{"ok": true}', status: str = "200 OK") -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


@dataclass
class Scripted:
    answer: Answer
    connections: int = 0
    open_now: int = 0
    most_open: int = 0
    requests: list[bytes] = field(default_factory=list)
    port: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                if not await self.answer(request, writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.open_now -= 1
            writer.close()


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Answer], Awaitable[Scripted]]]:
    servers: list[asyncio.Server] = []

    async def start(answer: Answer) -> Scripted:
        scripted = Scripted(answer)
        server = await asyncio.start_server(scripted.handle, "127.0.0.1", 0)
        scripted.port = server.sockets[0].getsockname()[1]
        servers.append(server)
        return scripted

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


def client(port: int, transport: LeanTransport | None = None) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", transport=transport or LeanTransport(4)
    )


async def test_answers_come_back_and_connections_are_kept_alive(serve: Callable) -> None:
    async def answer(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(json_answer(b'{"n": %d}' % len(request)))
        return True

    server = await serve(answer)
    async with client(server.port) as http:
        first = await http.post("/device/v1/checkin", json={"wait": 0})
        second = await http.get("/device/v1/ping", headers={"Authorization": "Bearer t"})
    assert first.status_code == 200 and first.json()["n"] > 0
    assert second.status_code == 200
    assert server.connections == 1
    assert server.requests[0].startswith(b"POST /device/v1/checkin HTTP/1.1\r\n")
    assert server.requests[0].endswith(b'{"wait":0}')
    assert b"Bearer t" in server.requests[1]


async def test_a_chunked_answer_is_put_together(serve: Callable) -> None:
    async def answer(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(
            b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
            b'5\r\n{"a":\r\n3\r\n 1}\r\n0\r\n\r\n'
        )
        return True

    server = await serve(answer)
    async with client(server.port) as http:
        response = await http.post("/x", content=b"hi")
        again = await http.post("/x", content=b"hi")
    assert response.status_code == 201 and response.json() == {"a": 1}
    assert again.json() == {"a": 1}
    assert server.connections == 1


async def test_an_answer_that_ends_with_the_connection_is_read_to_the_end(
    serve: Callable,
) -> None:
    async def answer(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it")
        return False

    server = await serve(answer)
    async with client(server.port) as http:
        assert (await http.get("/")).text == "all of it"
        assert (await http.get("/")).text == "all of it"
    assert server.connections == 2


async def test_a_connection_the_server_closed_while_idle_is_replaced(serve: Callable) -> None:
    async def answer(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(json_answer())
        return False  # answers, then hangs up without saying so

    server = await serve(answer)
    async with client(server.port) as http:
        for _ in range(3):
            assert (await http.get("/")).json() == {"ok": True}
    assert server.connections == 3


async def test_no_more_connections_than_the_limit(serve: Callable) -> None:
    async def answer(request: bytes, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(0.02)
        writer.write(json_answer())
        return True

    server = await serve(answer)
    async with client(server.port, LeanTransport(2)) as http:
        # Waiting for one of the two connections counts as connecting: be patient on a busy box.
        answers = await asyncio.gather(*(http.get("/", timeout=60) for _ in range(8)))
    assert all(a.status_code == 200 for a in answers)
    assert server.most_open <= 2


async def test_a_refused_connection_is_a_connect_error() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with client(port) as http:
        with pytest.raises(httpx.ConnectError):
            await http.get("/")


async def test_a_silent_server_is_a_read_timeout(serve: Callable) -> None:
    async def answer(request: bytes, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(1)
        return False

    server = await serve(answer)
    async with client(server.port) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.get("/", timeout=0.1)


async def test_the_device_client_sees_transport_failures_as_unavailable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with httpx.AsyncClient(transport=LeanTransport(2)) as http:
        device = DeviceClient(f"http://127.0.0.1:{port}", generate_key(), http=http)
        with pytest.raises(Unavailable, match="cannot reach"):
            await device.enroll("SN-1", "thermo-v2", provisioning_token="fkp_x")


async def test_garbage_is_a_protocol_error(serve: Callable) -> None:
    async def answer(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        return False

    server = await serve(answer)
    async with client(server.port) as http:
        with pytest.raises(httpx.RemoteProtocolError):
            await http.get("/")
