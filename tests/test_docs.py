"""Docs that cannot drift: every setting is documented."""

from __future__ import annotations

from pathlib import Path

from fleetkeeper.settings import Settings

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_every_setting_is_documented_in_operations() -> None:
    text = (DOCS / "operations.md").read_text()
    missing = [
        f"FLEETKEEPER_{name.upper()}"
        for name in Settings.model_fields
        if f"`FLEETKEEPER_{name.upper()}`" not in text
    ]
    assert not missing, f"document these settings in docs/operations.md: {missing}"
