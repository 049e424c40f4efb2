"""Real receivers for alert notifications, on 127.0.0.1 and a free port, for any test to reuse.

- `WebhookReceiver`: a small HTTP/1.1 server (keep-alive, Content-Length bodies) that records
  every request and answers 200, or what it was told to answer next (`fail`, `answer`).
- `SmtpReceiver`: a small SMTP server (EHLO/HELO, AUTH PLAIN, MAIL, RCPT, DATA, RSET, NOOP,
  QUIT) that records every message, and can refuse recipients or the next transactions.

Both are plain `asyncio.start_server` servers: no dependency, and nothing mocked on the
sender's side. Use them as async context managers:

    async with WebhookReceiver() as hook, SmtpReceiver() as smtp:
        ... hook.url ... smtp.url ...
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from collections import deque
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any, Self

_REASONS = {
    200: "OK",
    202: "Accepted",
    204: "No Content",
    301: "Moved Permanently",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    408: "Request Timeout",
    410: "Gone",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


class _Server:
    """Start, stop and the open connections of an `asyncio.start_server` on 127.0.0.1:0."""

    def __init__(self) -> None:
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.port = 0

    async def start(self) -> Self:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self.serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError


# --- HTTP ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    """One request as it arrived: header names lower-cased, the body as raw bytes."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass(frozen=True)
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


class WebhookReceiver(_Server):
    """Answers 200 unless told otherwise; `requests` holds every request, oldest first."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[Received] = []
        self.default = Reply(200, {"Content-Type": "application/json"}, b'{"ok":true}')
        self.routes: dict[str, Reply] = {}  # path → the answer there, instead of the default
        self._next: deque[Reply] = deque()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def url_for(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}"

    def fail(
        self,
        times: int = 1,
        status: int = 500,
        *,
        headers: dict[str, str] | None = None,
        body: bytes = b"receiver says no",
    ) -> None:
        """Answer the next `times` requests with `status` (then the default again)."""
        self._next.extend(Reply(status, dict(headers or {}), body) for _ in range(times))

    def answer(
        self,
        status: int,
        *,
        path: str | None = None,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
    ) -> None:
        """Answer every request from now on (to `path`, or to any path) with `status`, after
        any queued `fail`s."""
        reply = Reply(status, dict(headers or {}), body)
        if path is None:
            self.default = reply
        else:
            self.routes["/" + path.lstrip("/")] = reply

    def bodies(self) -> list[Any]:
        return [request.json for request in self.requests]

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            line = await reader.readline()
            if not line:
                return
            method, target, _version = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
            headers: dict[str, str] = {}
            while (raw := await reader.readline()) not in (b"\r\n", b"\n", b""):
                name, _, value = raw.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            self.requests.append(Received(method, target, headers, body))
            reply = self._next.popleft() if self._next else self.routes.get(target, self.default)
            head = [f"HTTP/1.1 {reply.status} {_REASONS.get(reply.status, 'Status')}"]
            head += [f"{name}: {value}" for name, value in reply.headers.items()]
            head.append(f"Content-Length: {len(reply.body)}")
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + reply.body)
            await writer.drain()
            if headers.get("connection", "").lower() == "close":
                return


# --- SMTP ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mail:
    """One message as the server took it: envelope, raw data, and the parsed message."""

    sender: str
    recipients: list[str]
    data: bytes
    login: tuple[str, str] | None  # (username, password) when the client authenticated

    @property
    def message(self) -> EmailMessage:
        parsed = message_from_bytes(self.data, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


class SmtpReceiver(_Server):
    """Takes every message; `refuse` makes chosen recipients fail, `fail` the next MAILs."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[Mail] = []
        self.refused: dict[str, int] = {}  # address → reply code for RCPT
        self._next: deque[int] = deque()  # reply codes for the next MAIL commands

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def refuse(self, address: str, code: int = 550) -> None:
        self.refused[address] = code

    def fail(self, times: int = 1, code: int = 451) -> None:
        """Refuse the next `times` transactions at MAIL FROM with `code`."""
        self._next.extend(code for _ in range(times))

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def say(line: str) -> None:
            writer.write(line.encode() + b"\r\n")
            await writer.drain()

        await say("220 alertkit ESMTP ready")
        sender: str | None = None
        recipients: list[str] = []
        login: tuple[str, str] | None = None
        while True:
            raw = await reader.readline()
            if not raw:
                return
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            verb, _, rest = line.partition(" ")
            verb = verb.upper()
            if verb == "EHLO":
                await say("250-alertkit\r\n250-8BITMIME\r\n250-AUTH PLAIN\r\n250 SMTPUTF8")
            elif verb == "HELO":
                await say("250 alertkit")
            elif verb == "AUTH":
                mechanism, _, initial = rest.partition(" ")
                if mechanism.upper() != "PLAIN":
                    await say("504 only AUTH PLAIN")
                    continue
                if not initial:
                    await say("334 ")
                    initial = (await reader.readline()).decode().strip()
                _, user, password = base64.b64decode(initial).decode().split("\0")
                login = (user, password)
                await say("235 authenticated")
            elif verb == "MAIL":
                if self._next:
                    await say(f"{self._next.popleft()} try that again later")
                    continue
                sender, recipients = _path(rest), []
                await say("250 sender ok")
            elif verb == "RCPT":
                address = _path(rest)
                if address in self.refused:
                    await say(f"{self.refused[address]} no such mailbox {address}")
                else:
                    recipients.append(address)
                    await say("250 recipient ok")
            elif verb == "DATA":
                if sender is None or not recipients:
                    await say("503 need MAIL and RCPT first")
                    continue
                await say("354 end with <CRLF>.<CRLF>")
                lines = []
                while (chunk := await reader.readline()) not in (b".\r\n", b".\n", b""):
                    lines.append(chunk[1:] if chunk.startswith(b"..") else chunk)
                self.messages.append(Mail(sender, recipients, b"".join(lines), login))
                sender, recipients = None, []
                await say("250 queued")
            elif verb == "RSET":
                sender, recipients = None, []
                await say("250 ok")
            elif verb == "NOOP":
                await say("250 ok")
            elif verb == "QUIT":
                await say("221 bye")
                return
            else:
                await say("502 command not implemented")


def _path(argument: str) -> str:
    """`FROM:<a@b> SIZE=10` → `a@b`."""
    _, _, value = argument.partition(":")
    value = value.strip()
    if value.startswith("<"):
        value = value[1 : value.index(">")]
    return value.split(" ", 1)[0]
