"""What the machine says about itself: serial, model and inventory facts.

The serial prefers what is printed on the hardware (DMI product serial, device-tree serial), so
it matches a manufacturer's list for zero-touch provisioning; then the OS installation's
machine id; then the host name. Files are read below `root` so tests can fake a machine.
"""

from __future__ import annotations

import platform
import re
import shutil
import socket
from pathlib import Path
from typing import Any

import psutil  # no stubs installed

from fleetkeeper import __version__
from fleetkeeper.agent.config import AgentConfig

DEFAULT_MODEL = "linux-generic"
# Placeholders firmware vendors leave in DMI fields instead of a real value.
_JUNK = {
    "",
    "0",
    "none",
    "n/a",
    "na",
    "default string",
    "not specified",
    "not applicable",
    "system serial number",
    "system product name",
    "to be filled by o.e.m.",
    "123456789",
    "0123456789",
    "chassis serial number",
}
_SERIAL_BAD = re.compile(r"[^A-Za-z0-9._:/-]+")
_MODEL_BAD = re.compile(r"[^a-z0-9_.:-]+")


def _read(root: Path, relative: str) -> str | None:
    try:
        text = (root / relative).read_text(encoding="utf-8", errors="replace")
    except OSError:  # absent, or readable by root only (DMI serials often are)
        return None
    text = text.replace("\x00", "").strip()
    return None if text.lower() in _JUNK else text


def clean_serial(text: str) -> str:
    """`text` as the server accepts a serial: letters, digits and `._:/-`, at most 128."""
    cleaned = _SERIAL_BAD.sub("-", text.strip()).strip("-._:/")
    return cleaned[:128] or "unknown"


def clean_model(text: str) -> str:
    """`text` as a model name: lower case, letters, digits and `_.:-`, at most 100."""
    cleaned = _MODEL_BAD.sub("-", text.strip().lower()).strip("-_.:")
    return cleaned[:100] or DEFAULT_MODEL


def default_serial(root: Path = Path("/")) -> str:
    for relative in (
        "sys/class/dmi/id/product_serial",
        "sys/firmware/devicetree/base/serial-number",
        "proc/device-tree/serial-number",
    ):
        found = _read(root, relative)
        if found:
            return clean_serial(found)
    machine_id = _read(root, "etc/machine-id")
    if machine_id:
        return clean_serial(f"linux-{machine_id}")
    return clean_serial(f"linux-{socket.gethostname()}")


def default_model(root: Path = Path("/")) -> str:
    for relative in (
        "sys/class/dmi/id/product_name",
        "sys/firmware/devicetree/base/model",
        "proc/device-tree/model",
    ):
        found = _read(root, relative)
        if found:
            return clean_model(found)
    return DEFAULT_MODEL


def hardware_revision(root: Path = Path("/")) -> str | None:
    return _read(root, "sys/class/dmi/id/product_version")


def os_release(root: Path = Path("/")) -> dict[str, str]:
    text = _read(root, "etc/os-release") or _read(root, "usr/lib/os-release") or ""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip():
            out[key.strip()] = value.strip().strip('"').strip("'")
    return out


def facts(root: Path = Path("/")) -> dict[str, Any]:
    """Inventory attributes that describe this machine (stable between runs)."""
    release = os_release(root)
    return {
        "hostname": socket.gethostname(),
        "os": release.get("PRETTY_NAME") or platform.system(),
        "kernel": platform.release(),
        "arch": platform.machine(),
        "cpu_count": psutil.cpu_count() or 0,
        "memory_total_mb": psutil.virtual_memory().total // (1024 * 1024),
        "agent_version": __version__,
    }


def inventory(config: AgentConfig, found: dict[str, Any]) -> dict[str, Any]:
    """What the agent reports: the config's values over what the machine says."""
    return {
        "firmware_version": config.firmware_version,
        "hardware_revision": config.hardware_revision or hardware_revision(),
        "attributes": {**found, **config.attributes},
    }


def battery() -> tuple[float, bool | None] | None:
    """The battery's charge (%) and whether the machine is on power; None without a battery."""
    sensors = getattr(psutil, "sensors_battery", None)
    try:
        found = sensors() if sensors else None
    except (OSError, RuntimeError):  # a sysfs node that vanished or cannot be read
        return None
    if found is None:
        return None
    plugged = found.power_plugged
    return float(found.percent), (bool(plugged) if plugged is not None else None)


def free_storage(path: Path) -> int | None:
    """Bytes free on the file system holding `path` (or its nearest existing parent)."""
    for candidate in (path, *path.parents):
        try:
            return shutil.disk_usage(candidate).free
        except FileNotFoundError:
            continue
        except OSError:
            return None
    return None
