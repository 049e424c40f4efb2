"""docs/cli.md is the `--help` of every command, as generated; it cannot drift."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetkeeper.cli import reference

CLI_MD = Path(__file__).resolve().parent.parent / "docs" / "cli.md"


def test_cli_reference_is_current() -> None:
    assert CLI_MD.read_text(encoding="utf-8") == reference.render(), (
        "docs/cli.md is out of date: regenerate it with "
        "`python -m fleetkeeper.cli.reference > docs/cli.md`"
    )


def test_cli_reference_covers_every_command() -> None:
    text = reference.render()
    for path in reference.command_paths():
        assert f"## `{' '.join(['fleetkeeper', *path])}`" in text


def test_cli_reference_does_not_depend_on_the_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    first = reference.render()
    monkeypatch.setenv("COLUMNS", "37")
    monkeypatch.setenv("FORCE_COLOR", "1")
    assert reference.render() == first
