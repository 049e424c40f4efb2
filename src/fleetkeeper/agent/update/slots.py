"""Install handlers: where an update goes and how the device boots into it.

A device has two slots. It runs one (the *active* slot) and installs into the other; a switch
points the boot at the new slot *on trial*: the next boot runs it once, and unless it is
committed, the boot after that returns to the last committed slot. This is what a bootloader
with a boot counter does (U-Boot's `bootcount`/`bootlimit`, GRUB's `grubenv` tricks, RAUC,
SWUpdate); the agent only drives it.

- `DirectorySlots` keeps the slots as directories and plays the bootloader itself: each start
  of the agent counts as a boot. It is what tests and demos use.
- `ScriptSlots` calls the device's own tools, argv lists from `[update.script]`, never through a
  shell; its `reboot` may really reboot, and the agent carries on from its journal at the next
  start.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import tarfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from fleetkeeper.agent.commands import Outcome, execute
from fleetkeeper.agent.config import ScriptSettings, substitute
from fleetkeeper.durable import sync_directory
from fleetkeeper.protocol.keys import write_private

log = logging.getLogger("fleetkeeper.agent.update")


class SlotError(Exception):
    """A slot operation failed; the message says what and why."""


class SlotHandler(Protocol):
    async def boot(self) -> None:
        """Once per start of the agent: what the bootloader did (or, emulated, does now)."""
        ...

    async def active_slot(self) -> str:
        """The slot the device runs now."""
        ...

    def other(self, slot: str) -> str:
        """The slot that is not `slot`."""
        ...

    async def version(self, slot: str) -> str | None:
        """The version `slot` holds, None when unknown or empty."""
        ...

    async def install(self, slot: str, artifact: Path, version: str) -> None:
        """Put the verified `artifact` into `slot` (never the active one); safe to repeat."""
        ...

    async def switch(self, slot: str, trial: bool) -> None:
        """Boot `slot` next: once on trial (until `commit`), or for good."""
        ...

    async def reboot(self) -> bool:
        """Boot what the pointer says. True: done in-process, the agent carries on at once;
        False: the machine is going down, and the agent resumes at its next start."""
        ...

    async def commit(self) -> None:
        """Keep the running slot: it becomes the committed one."""
        ...

    async def rollback(self) -> None:
        """Point the boot back at the committed slot (takes effect at the next boot)."""
        ...


# --- directory slots -------------------------------------------------------------------------

BOOT_FILE = "boot.json"
VERSION_FILE = "VERSION"
PAYLOAD_FILE = "payload"


class DirectorySlots:
    """Slots `<root>/a/` and `<root>/b/`, and `<root>/boot.json` as the bootloader's memory:

        {"running": "a", "next": "b", "committed": "a", "trial": true, "boots": 0}

    An artifact that is a tar archive is unpacked into the slot, anything else is copied to
    `<slot>/payload`; `<slot>/VERSION` holds the version.
    """

    slots = ("a", "b")

    def __init__(
        self, root: Path, *, initial_version: str | None = None, max_trial_boots: int = 1
    ) -> None:
        self.root = Path(root)
        self.initial_version = initial_version
        self.max_trial_boots = max_trial_boots

    def state(self) -> dict[str, Any]:
        try:
            data = json.loads((self.root / BOOT_FILE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            data = {}
        except (OSError, ValueError) as exc:
            raise SlotError(f"{self.root / BOOT_FILE} is unreadable: {exc}") from None
        running = data.get("running") if data.get("running") in self.slots else "a"
        committed = data.get("committed") if data.get("committed") in self.slots else running
        return {
            "running": running,
            "next": data.get("next") if data.get("next") in self.slots else committed,
            "committed": committed,
            "trial": data.get("trial") is True,
            "boots": int(data.get("boots") or 0),
        }

    def _save(self, state: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        write_private(self.root / BOOT_FILE, (json.dumps(state) + "\n").encode("utf-8"))

    def _slot(self, slot: str) -> Path:
        if slot not in self.slots:
            raise SlotError(f"no slot {slot!r} (slots: {', '.join(self.slots)})")
        return self.root / slot

    async def boot(self) -> None:
        state = self._boot(self.state())
        running = self._slot(state["running"])
        running.mkdir(parents=True, exist_ok=True)
        self._slot(self.other(state["running"])).mkdir(parents=True, exist_ok=True)
        if self.initial_version and not (running / VERSION_FILE).exists():
            # The firmware the device shipped with: a rollback to it needs to find it.
            _write_text(running / VERSION_FILE, self.initial_version)

    def _boot(self, state: dict[str, Any]) -> dict[str, Any]:
        if state["trial"]:
            state["boots"] += 1
            if state["boots"] > self.max_trial_boots:
                log.warning(
                    "slot %s booted %d times on trial without a commit: back to slot %s",
                    state["next"],
                    state["boots"] - 1,
                    state["committed"],
                )
                state.update(next=state["committed"], trial=False, boots=0)
        state["running"] = state["next"]
        self._save(state)
        return state

    async def active_slot(self) -> str:
        return str(self.state()["running"])

    def other(self, slot: str) -> str:
        return "b" if slot == "a" else "a"

    async def version(self, slot: str) -> str | None:
        try:
            text = (self._slot(slot) / VERSION_FILE).read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        return text or None

    async def install(self, slot: str, artifact: Path, version: str) -> None:
        target = self._slot(slot)
        if slot == self.state()["running"]:
            raise SlotError(f"slot {slot} is running: it cannot be installed into")
        await asyncio.to_thread(self._install, target, artifact, version)

    def _install(self, target: Path, artifact: Path, version: str) -> None:
        staging = target.with_name(f".{target.name}.new")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        if tarfile.is_tarfile(artifact):
            try:
                with tarfile.open(artifact) as archive:
                    archive.extractall(staging, filter="data")
            except (tarfile.TarError, OSError) as exc:
                shutil.rmtree(staging, ignore_errors=True)
                raise SlotError(f"cannot unpack the artifact: {exc}") from exc
        else:
            shutil.copyfile(artifact, staging / PAYLOAD_FILE)
        _write_text(staging / VERSION_FILE, version)
        _sync_tree(staging)
        # The slot is not running: it may be half-gone for a moment, the rename is atomic.
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
        sync_directory(target.parent)

    async def switch(self, slot: str, trial: bool) -> None:
        self._slot(slot)
        state = self.state()
        state.update(next=slot, trial=trial, boots=0)
        if not trial:
            state["committed"] = slot
        self._save(state)

    async def reboot(self) -> bool:
        self._boot(self.state())
        return True

    async def commit(self) -> None:
        state = self.state()
        state.update(committed=state["running"], next=state["running"], trial=False, boots=0)
        self._save(state)

    async def rollback(self) -> None:
        state = self.state()
        state.update(next=state["committed"], trial=False, boots=0)
        self._save(state)


def _write_text(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _sync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    sync_directory(root)


# --- script slots ----------------------------------------------------------------------------

Runner = Callable[[list[str], float], Awaitable[Outcome]]  # commands.execute by default


class ScriptSlots:
    """The device's own slot tools, one argv per operation (`[update.script]`).

    `active` prints the slot running now; `version` (optional) prints what a slot holds —
    without it the agent remembers what it installed where, in `record`. Without `reboot`
    a switch takes effect at once (an application-level A/B, say), and the agent carries on.
    """

    def __init__(
        self,
        settings: ScriptSettings,
        record: Path,
        *,
        initial_version: str | None = None,
        run: Runner = execute,
    ) -> None:
        self.settings = settings
        self.record = Path(record)
        self.initial_version = initial_version
        self._run = run

    async def _call(self, name: str, argv: tuple[str, ...], **values: str) -> str:
        command = [substitute(element, values) for element in argv]
        outcome = await self._run(command, self.settings.timeout)
        output = (outcome.output or "").strip()
        if outcome.state != "succeeded":
            error = outcome.result.get("error", "failed")
            code = outcome.result.get("exit_code")
            why = f"exit status {code}" if code is not None else str(error)
            tail = f": {output[-500:]}" if output else ""
            raise SlotError(f"update.script.{name} ({command[0]}) failed with {why}{tail}")
        return output

    async def boot(self) -> None:
        # The real bootloader has done its part; remember what the first slot holds.
        if self.initial_version and not self.settings.version:
            versions = self._versions()
            running = await self.active_slot()
            if running not in versions:
                self._remember(running, self.initial_version)

    async def active_slot(self) -> str:
        output = await self._call("active", self.settings.active)
        slot = output.splitlines()[-1].strip() if output else ""
        if slot not in self.settings.slots:
            raise SlotError(
                f"update.script.active printed {slot!r}, not one of "
                f"{', '.join(self.settings.slots)}"
            )
        return slot

    def other(self, slot: str) -> str:
        first, second = self.settings.slots
        return second if slot == first else first

    async def version(self, slot: str) -> str | None:
        if self.settings.version:
            output = await self._call("version", self.settings.version, slot=slot)
            return output.splitlines()[-1].strip() if output else None
        return self._versions().get(slot)

    async def install(self, slot: str, artifact: Path, version: str) -> None:
        self._forget(slot)  # half-installed, it holds nothing worth naming
        await self._call(
            "install", self.settings.install, slot=slot, path=str(artifact), version=version
        )
        if not self.settings.version:
            self._remember(slot, version)

    async def switch(self, slot: str, trial: bool) -> None:
        await self._call(
            "switch", self.settings.switch, slot=slot, trial="true" if trial else "false"
        )

    async def reboot(self) -> bool:
        if not self.settings.reboot:
            return True
        await self._call("reboot", self.settings.reboot, slot=await self.active_slot())
        return False

    async def commit(self) -> None:
        await self._call("commit", self.settings.commit, slot=await self.active_slot())

    async def rollback(self) -> None:
        await self._call("rollback", self.settings.rollback, slot=await self.active_slot())

    def _versions(self) -> dict[str, str]:
        try:
            data = json.loads(self.record.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict):
            return {}
        return {str(k): str(v) for k, v in data.items() if isinstance(v, str)}

    def _remember(self, slot: str, version: str) -> None:
        self._store({**self._versions(), slot: version})

    def _forget(self, slot: str) -> None:
        versions = self._versions()
        if versions.pop(slot, None) is not None:
            self._store(versions)

    def _store(self, versions: dict[str, str]) -> None:
        self.record.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_private(self.record, (json.dumps(versions) + "\n").encode("utf-8"))
