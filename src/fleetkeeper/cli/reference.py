"""The CLI reference (docs/cli.md), generated from the `--help` of every command.

    python -m fleetkeeper.cli.reference > docs/cli.md

The text is the same on every machine: fixed width, no colour, no trailing spaces.
"""

from __future__ import annotations

from collections.abc import Iterator

import typer
import typer.main
from typer.testing import CliRunner

from fleetkeeper.cli import app

WIDTH = 100
# Rich takes its size from COLUMNS and LINES (with only one of them set, a terminal it thinks
# dumb would be 80 wide); NO_COLOR keeps escape codes out, and the runner strips any left.
ENVIRONMENT = {"COLUMNS": str(WIDTH), "LINES": "50", "NO_COLOR": "1", "TERM": "dumb"}

HEADER = """\
# Command-line reference

<!-- Generated from the commands' --help by `python -m fleetkeeper.cli.reference > docs/cli.md`.
     Do not edit by hand: tests/test_cli_reference.py checks that it is current. -->

Management commands reach a server through `--server URL` (or `FLEETKEEPER_SERVER`, default
`http://127.0.0.1:8080`) and `--token` (or `FLEETKEEPER_TOKEN`), given on the root command or
on the command itself (the command's wins). Every command that shows data accepts `--json` and
then prints the server's JSON only.

Exit codes: `0` success, `1` a failure reported by the server or the operation (the problem's
title and detail are printed on stderr), `2` a usage error.
"""


def command_paths() -> Iterator[list[str]]:
    """Every command and command group, depth first, in the order they were registered."""

    def walk(command: object, path: list[str]) -> Iterator[list[str]]:
        yield path
        for name, sub in getattr(command, "commands", {}).items():
            yield from walk(sub, [*path, name])

    yield from walk(typer.main.get_command(app), [])


def help_text(path: list[str]) -> str:
    result = CliRunner().invoke(
        app, [*path, "--help"], prog_name="fleetkeeper", env=ENVIRONMENT, color=False
    )
    if result.exit_code != 0:
        raise RuntimeError(f"fleetkeeper {' '.join(path)} --help failed: {result.output}")
    lines = [line.rstrip() for line in result.stdout.splitlines()]
    return "\n".join(lines).strip("\n")


def render() -> str:
    sections = [HEADER]
    for path in command_paths():
        title = " ".join(["fleetkeeper", *path])
        sections.append(f"## `{title}`\n\n```text\n{help_text(path)}\n```\n")
    return "\n".join(sections)


if __name__ == "__main__":
    typer.echo(render(), nl=False)
