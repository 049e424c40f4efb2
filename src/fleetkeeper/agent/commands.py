"""Running the commands the server hands out.

- `ping` is built in and always answers `{"pong": true, "time": ...}`.
- Any other name runs only if the config file declares it (`[commands.NAME] run = [...]`):
  the argv is fixed by the config, the command's arguments only fill `{placeholders}` inside
  argv elements, and no shell is involved, so an argument cannot become a second command.
- `shell` runs `args.command` through /bin/sh, and only with `allow_shell = true`.
- Anything else fails with `{"error": "unknown_command"}`.

A program gets no stdin, its stdout and stderr are captured together (the last 64 KiB are
kept), and on timeout its whole process group is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fleetkeeper.agent.config import AgentConfig, Handler, substitute
from fleetkeeper.clock import Clock, SystemClock
from fleetkeeper.protocol.messages import Command

MAX_OUTPUT = 64 * 1024
SHELL = "/bin/sh"
# After the program exits, how long to wait for the rest of its output (a daemon it started
# may hold the pipe open for ever).
DRAIN_SECONDS = 1.0


@dataclass(frozen=True)
class Outcome:
    state: str  # "succeeded" or "failed"
    result: dict[str, Any]
    output: str | None = None


def failed(error: str, output: str | None = None, **details: Any) -> Outcome:
    return Outcome("failed", {"error": error, **details}, output)


class Tail:
    """The last `limit` bytes of a stream, and how many came before them."""

    def __init__(self, limit: int = MAX_OUTPUT) -> None:
        self.limit = limit
        self.cut = 0
        self._data = bytearray()

    def feed(self, chunk: bytes) -> None:
        self._data += chunk
        excess = len(self._data) - self.limit
        if excess > 0:
            del self._data[:excess]
            self.cut += excess

    def text(self) -> str:
        if not self.cut:
            return self._data.decode("utf-8", errors="replace")
        marker = f"[... {self.cut} earlier bytes cut ...]\n".encode()
        kept = bytes(self._data[len(marker) :])
        # The cut may have split a UTF-8 character: drop continuation bytes at the start.
        while kept and kept[0] & 0xC0 == 0x80:
            kept = kept[1:]
        return (marker + kept).decode("utf-8", errors="replace")


def _argument(name: str, args: Mapping[str, Any], handler: Handler) -> str:
    if name not in args:
        raise LookupError(name)
    value = args[name]
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str | int | float):
        text = str(value)
    else:
        raise ValueError(f"argument {name!r} must be a string or a number")
    if "\x00" in text:
        raise ValueError(f"argument {name!r} holds a NUL character")
    pattern = handler.args.get(name)
    if pattern is not None and not pattern.fullmatch(text):
        raise ValueError(f"argument {name!r} does not match {pattern.pattern!r}")
    return text


def build_argv(handler: Handler, args: Mapping[str, Any]) -> list[str]:
    """The handler's argv with the command's arguments filled in (LookupError, ValueError)."""
    values = {name: _argument(name, args, handler) for name in handler.placeholders()}
    return [substitute(element, values) for element in handler.run]


class CommandRunner:
    def __init__(self, config: AgentConfig, clock: Clock | None = None, shell: str = SHELL) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.shell = shell

    async def run(self, command: Command) -> Outcome:
        if command.name == "ping":
            return Outcome("succeeded", {"pong": True, "time": self.clock.now().isoformat()})
        limit = command.timeout if command.timeout > 0 else None
        if command.name == "shell":
            return await self._shell(command, limit)
        handler = self.config.commands.get(command.name)
        if handler is None:
            return failed("unknown_command")
        try:
            argv = build_argv(handler, command.args)
        except LookupError as exc:
            return failed("missing_argument", argument=exc.args[0])
        except ValueError as exc:
            return failed("invalid_argument", detail=str(exc))
        timeout = min(handler.timeout, limit) if limit else handler.timeout
        return await execute(argv, timeout)

    async def _shell(self, command: Command, limit: float | None) -> Outcome:
        if not self.config.allow_shell:
            return failed(
                "unknown_command", detail="shell commands are disabled (allow_shell = false)"
            )
        script = command.args.get("command")
        if not isinstance(script, str) or not script or "\x00" in script:
            return failed("invalid_argument", detail="args.command must be a non-empty string")
        return await execute([self.shell, "-c", script], limit or 60.0)


async def execute(argv: list[str], seconds: float) -> Outcome:
    """Run `argv` (no shell, no stdin), capture its output, kill its group after `seconds`."""
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # its own process group, so a timeout kills its children
        )
    except OSError as exc:
        return failed("cannot_start", detail=f"{argv[0]}: {exc.strerror or exc}")
    tail = Tail()
    reader = asyncio.create_task(_read(process, tail))
    try:
        async with asyncio.timeout(seconds):
            code = await process.wait()
    except TimeoutError:
        await _kill(process)
        await _finish(reader)
        return failed("timeout", tail.text() or None, timeout=seconds)
    except BaseException:  # cancelled: the agent is stopping
        await _kill(process)
        await _finish(reader)
        raise
    await _finish(reader)
    output = tail.text() or None
    if code == 0:
        return Outcome("succeeded", {"exit_code": 0}, output)
    return failed("exit_status", output, exit_code=code)


async def _read(process: asyncio.subprocess.Process, tail: Tail) -> None:
    assert process.stdout is not None
    while chunk := await process.stdout.read(65536):
        tail.feed(chunk)


async def _finish(reader: asyncio.Task[None]) -> None:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(DRAIN_SECONDS):
            await asyncio.shield(reader)
    if not reader.done():
        reader.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await reader


async def _kill(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        process.kill()
    await process.wait()
