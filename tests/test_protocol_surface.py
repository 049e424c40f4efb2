"""The protocol client is what a device runs: its public surface is pinned, and it (and the
agent built on it) never imports the server."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import fleetkeeper.protocol

SRC = Path(__file__).resolve().parent.parent / "src" / "fleetkeeper"
SERVER_PACKAGES = ("fleetkeeper.api", "fleetkeeper.services", "fleetkeeper.store")


def test_public_surface() -> None:
    assert sorted(fleetkeeper.protocol.__all__) == [
        "AlreadyEnrolled",
        "ArtifactRef",
        "AuthenticationFailed",
        "Backoff",
        "CheckinResult",
        "Command",
        "CommandClosed",
        "Connectivity",
        "DeviceClient",
        "DeviceView",
        "Download",
        "Enrollment",
        "EnrollmentRefused",
        "InvalidTransition",
        "Job",
        "JobAnswer",
        "JobClosed",
        "KeyFileError",
        "Location",
        "LogUpload",
        "Point",
        "ProtocolError",
        "RateLimited",
        "Refused",
        "Rejection",
        "ReleaseKey",
        "Restricted",
        "Retired",
        "Revoked",
        "Stopped",
        "TelemetryQueue",
        "TelemetryResult",
        "Unavailable",
        "generate_key",
        "load_key",
        "load_or_create_key",
        "public_key_b64",
        "save_key",
        "sign_b64",
    ]
    for name in fleetkeeper.protocol.__all__:
        assert hasattr(fleetkeeper.protocol, name)


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_protocol_and_agent_sources_never_name_the_server() -> None:
    offenders = {
        f"{path.relative_to(SRC)}: {module}"
        for package in ("protocol", "agent")
        for path in (SRC / package).rglob("*.py")
        for module in imported_modules(path)
        if module.startswith(SERVER_PACKAGES)
    }
    assert not offenders


def test_importing_the_agent_loads_no_server_module() -> None:
    code = (
        "import sys, fleetkeeper.protocol, fleetkeeper.agent\n"
        f"print([m for m in sys.modules if m.startswith({SERVER_PACKAGES!r})])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
