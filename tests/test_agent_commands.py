"""The command runner: ping built in, declared handlers only, no shell unless allowed."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path
from typing import Any

from fleetkeeper.agent import AgentConfig, CommandRunner, Handler
from fleetkeeper.agent.commands import MAX_OUTPUT, Tail
from fleetkeeper.clock import FakeClock
from fleetkeeper.protocol import Command

PY = sys.executable
ECHO_ARGS = [PY, "-c", "import sys; print(sys.argv[1:])"]


def alive(pid: int) -> bool:
    """Whether `pid` still runs (a killed child may linger as a zombie until it is reaped)."""
    for _ in range(50):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            return False
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
        time.sleep(0.01)
    return True


def runner(*handlers: Handler, allow_shell: bool = False) -> CommandRunner:
    config = AgentConfig(commands={h.name: h for h in handlers}, allow_shell=allow_shell)
    return CommandRunner(config, FakeClock())


def command(name: str, timeout: float = 30, **args: Any) -> Command:
    return Command(id="c1", name=name, args=args, timeout=timeout)


async def test_ping_answers_pong_without_any_config() -> None:
    outcome = await runner().run(command("ping"))
    assert outcome.state == "succeeded"
    assert outcome.result == {"pong": True, "time": "2026-01-01T00:00:00+00:00"}


async def test_an_undeclared_command_fails_as_unknown() -> None:
    outcome = await runner().run(command("reboot"))
    assert (outcome.state, outcome.result) == ("failed", {"error": "unknown_command"})


async def test_a_declared_handler_runs_with_arguments_in_its_argv() -> None:
    handler = Handler("restart_service", (*ECHO_ARGS, "{service}", "--unit={service}.service"))
    outcome = await runner(handler).run(command("restart_service", service="nginx"))
    assert outcome.state == "succeeded" and outcome.result == {"exit_code": 0}
    assert outcome.output == "['nginx', '--unit=nginx.service']\n"


async def test_an_argument_never_reaches_a_shell() -> None:
    handler = Handler("echo", (*ECHO_ARGS, "{text}"))
    outcome = await runner(handler).run(command("echo", text="x; touch /tmp/pwned $(id)"))
    assert outcome.output == "['x; touch /tmp/pwned $(id)']\n"


async def test_numbers_and_booleans_fill_placeholders_as_text() -> None:
    handler = Handler("set", (*ECHO_ARGS, "{level}", "{on}"))
    outcome = await runner(handler).run(command("set", level=3, on=True))
    assert outcome.output == "['3', 'true']\n"


async def test_a_missing_argument_fails_without_running() -> None:
    handler = Handler("restart_service", (*ECHO_ARGS, "{service}"))
    outcome = await runner(handler).run(command("restart_service"))
    assert outcome.result == {"error": "missing_argument", "argument": "service"}


async def test_an_argument_must_be_text_or_a_number() -> None:
    handler = Handler("restart_service", (*ECHO_ARGS, "{service}"))
    outcome = await runner(handler).run(command("restart_service", service={"a": 1}))
    assert outcome.state == "failed" and outcome.result["error"] == "invalid_argument"


async def test_an_argument_must_match_its_declared_pattern() -> None:
    handler = Handler(
        "restart_service", (*ECHO_ARGS, "{service}"), args={"service": re.compile(r"[a-z]+")}
    )
    outcome = await runner(handler).run(command("restart_service", service="--help"))
    assert outcome.result["error"] == "invalid_argument"
    assert "does not match" in outcome.result["detail"]


async def test_a_failing_program_fails_with_its_exit_code_and_output() -> None:
    handler = Handler("fail", (PY, "-c", "import sys; print('boom'); sys.exit(3)"))
    outcome = await runner(handler).run(command("fail"))
    assert outcome.state == "failed"
    assert outcome.result == {"error": "exit_status", "exit_code": 3}
    assert outcome.output == "boom\n"


async def test_stderr_is_captured_with_stdout() -> None:
    handler = Handler("warn", (PY, "-c", "import sys; sys.stderr.write('careful\\n')"))
    outcome = await runner(handler).run(command("warn"))
    assert outcome.output == "careful\n"


async def test_a_program_that_is_not_there_fails_to_start() -> None:
    handler = Handler("ghost", ("/nonexistent/program",))
    outcome = await runner(handler).run(command("ghost"))
    assert outcome.result["error"] == "cannot_start"


async def test_a_program_past_its_timeout_is_killed_with_its_children(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    script = f"sleep 30 & echo $! > {pidfile}; echo started; wait"
    handler = Handler("hang", ("/bin/sh", "-c", script), timeout=0.3)
    started = time.monotonic()
    outcome = await runner(handler).run(command("hang"))
    assert time.monotonic() - started < 3
    assert outcome.state == "failed" and outcome.result == {"error": "timeout", "timeout": 0.3}
    assert outcome.output == "started\n"
    assert not alive(int(pidfile.read_text()))


async def test_the_command_timeout_caps_the_handler_timeout() -> None:
    handler = Handler("hang", (PY, "-c", "import time; time.sleep(30)"), timeout=600)
    outcome = await runner(handler).run(command("hang", timeout=0.2))
    assert outcome.result == {"error": "timeout", "timeout": 0.2}


async def test_shell_is_refused_unless_allowed() -> None:
    outcome = await runner().run(command("shell", command="echo hi"))
    assert outcome.state == "failed" and outcome.result["error"] == "unknown_command"
    assert "allow_shell" in outcome.result["detail"]


async def test_shell_runs_through_sh_when_allowed() -> None:
    outcome = await runner(allow_shell=True).run(command("shell", command="echo hi | tr a-z A-Z"))
    assert outcome.state == "succeeded" and outcome.output == "HI\n"


async def test_shell_needs_a_command_string() -> None:
    outcome = await runner(allow_shell=True).run(command("shell", command=["echo"]))
    assert outcome.result["error"] == "invalid_argument"


async def test_long_output_keeps_its_last_64_kib() -> None:
    script = "import sys; sys.stdout.write('a' * 100000 + 'THE END')"
    outcome = await runner(Handler("chatty", (PY, "-c", script))).run(command("chatty"))
    assert outcome.output is not None
    assert len(outcome.output.encode()) <= MAX_OUTPUT
    assert outcome.output.startswith("[... ") and outcome.output.endswith("aaaTHE END")


def test_tail_never_splits_a_character() -> None:
    tail = Tail(limit=40)
    tail.feed("é".encode() * 100)
    text = tail.text()
    assert "\ufffd" not in text and len(text.encode()) <= 40
