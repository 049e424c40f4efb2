#!/usr/bin/env python3
"""Set up a virtual environment for Fleetkeeper and run it or its tests.

    python3 dev.py run     # install into .venv, then run the demo (server + simulated fleet)
    python3 dev.py test    # install into .venv with test extras, then lint, type-check and test

Only the Python standard library is used here so the script works on a fresh clone.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / ("python.exe" if os.name == "nt" else "python")


def _ensure_venv(extras: str) -> None:
    if sys.version_info < (3, 11):
        sys.exit(f"Fleetkeeper needs Python 3.11 or newer, this is {sys.version.split()[0]}")
    if not PY.exists():
        print(f"creating virtual environment in {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    # Re-install only when the project definition changed since the last install.
    stamp = VENV / f".installed-{extras or 'base'}"
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text() == digest:
        return
    target = f"{ROOT}[{extras}]" if extras else str(ROOT)
    print(f"installing fleetkeeper{f'[{extras}]' if extras else ''} into {VENV}", flush=True)
    subprocess.run([str(PY), "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
    subprocess.run([str(PY), "-m", "pip", "install", "-q", "-e", target], check=True)
    stamp.write_text(digest)


def run(args: list[str]) -> int:
    _ensure_venv("")
    cmd = [str(BIN / "fleetkeeper"), *(args or ["demo"])]
    return subprocess.call(cmd)


def test(args: list[str]) -> int:
    _ensure_venv("test")
    steps = [
        [str(PY), "-m", "ruff", "check", "src", "tests", "bench"],
        [str(PY), "-m", "mypy"],
        [str(PY), "-m", "pytest", *args],
    ]
    for step in steps:
        print(
            "$",
            " ".join(Path(step[0]).name if i == 0 else s for i, s in enumerate(step)),
            flush=True,
        )
        code = subprocess.call(step, cwd=ROOT)
        if code != 0:
            return code
    return 0


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in {"run", "test"}:
        print(__doc__)
        return 2
    command, rest = sys.argv[1], sys.argv[2:]
    return run(rest) if command == "run" else test(rest)


if __name__ == "__main__":
    sys.exit(main())
