"""Install handlers (directory slots, script slots), the [update] config and its docs."""

from __future__ import annotations

import json
import re
import sys
import tomllib
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from fleetkeeper.agent.config import (
    SCRIPT_PLACEHOLDERS,
    AgentConfig,
    ConfigError,
    ScriptSettings,
    UpdateSettings,
    parse_config,
)
from fleetkeeper.agent.update import DirectorySlots, ScriptSlots, SlotError, build_slots
from fleetkeeper.agent.update.trust import TrustStore, check_signature, trusted_key
from fleetkeeper.protocol.messages import ArtifactRef, ReleaseKey
from test_agent_update_driver import (
    FIRMWARE,
    Device,
    PowerLoss,
    b64,
    make_device,
    raw_public,
    sign,
)

DOCS = Path(__file__).resolve().parent.parent / "docs" / "agent.md"
KEY = "sb8fin6xfkwBjHQb6Y3+j1FU+moqRBqOtQLJbojtYrE="

# --- directory slots -------------------------------------------------------------------------


async def booted(root: Path) -> DirectorySlots:
    slots = DirectorySlots(root, initial_version="1.0.0")
    await slots.boot()
    return slots


async def test_a_new_device_runs_slot_a_holding_the_configured_version(tmp_path: Path) -> None:
    slots = await booted(tmp_path)
    assert await slots.active_slot() == "a"
    assert (await slots.version("a"), await slots.version("b")) == ("1.0.0", None)


async def test_the_running_slot_is_never_installed_into(tmp_path: Path) -> None:
    slots = await booted(tmp_path)
    artifact = tmp_path / "fw.bin"
    artifact.write_bytes(b"x")
    with pytest.raises(SlotError, match="slot a is running"):
        await slots.install("a", artifact, "2.0.0")


async def test_a_trial_slot_boots_once_and_the_next_boot_falls_back(tmp_path: Path) -> None:
    slots = await booted(tmp_path)
    await slots.switch("b", trial=True)
    assert await slots.reboot() is True
    assert await slots.active_slot() == "b"
    await DirectorySlots(tmp_path).boot()  # a second boot, no commit
    state = slots.state()
    assert (state["running"], state["next"], state["trial"]) == ("a", "a", False)


async def test_a_committed_slot_keeps_booting(tmp_path: Path) -> None:
    slots = await booted(tmp_path)
    await slots.switch("b", trial=True)
    await slots.reboot()
    await slots.commit()
    for _ in range(3):
        await DirectorySlots(tmp_path).boot()
    assert (await slots.active_slot(), slots.state()["committed"]) == ("b", "b")


async def test_a_rollback_points_back_and_takes_effect_at_the_next_boot(tmp_path: Path) -> None:
    slots = await booted(tmp_path)
    await slots.switch("b", trial=True)
    await slots.reboot()
    await slots.rollback()
    assert await slots.active_slot() == "b"
    await slots.reboot()
    assert await slots.active_slot() == "a"


async def test_an_install_replaces_what_the_slot_held(tmp_path: Path) -> None:
    slots = await booted(tmp_path)
    (tmp_path / "b" / "stale").write_text("old")
    artifact = tmp_path / "fw.bin"
    artifact.write_bytes(b"new image")
    await slots.install("b", artifact, "2.0.0")
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["VERSION", "payload"]
    assert await slots.version("b") == "2.0.0"
    assert not (tmp_path / ".b.new").exists()


# --- script slots ----------------------------------------------------------------------------

# A stand-in for a device's slot tool and its bootloader, state in fw.json beside it.
FW_TOOL = """
import json, pathlib, shutil, sys
home = pathlib.Path(__file__).parent
path = home / "fw.json"
state = json.loads(path.read_text()) if path.exists() else {
    "running": "a", "next": "a", "committed": "a", "trial": False, "versions": {"a": "2.3.0"}}
command, *args = sys.argv[1:]
if command == "active":
    print(state["running"])
elif command == "version":
    print(state["versions"].get(args[0], ""))
elif command == "install":
    slot, image, version = args
    shutil.copyfile(image, home / f"{slot}.img")
    state["versions"][slot] = version
elif command == "switch":
    state["next"], state["trial"] = args[0], args[1] == "true"
elif command == "commit":
    state["committed"], state["trial"] = state["running"], False
elif command == "rollback":
    state["next"], state["trial"] = state["committed"], False
elif command == "reboot":
    state["running"] = state["next"]
else:
    sys.exit(f"unknown command {command}")
path.write_text(json.dumps(state))
"""


def fw_tool(home: Path, *, with_version: bool = True, reboot: bool = True) -> ScriptSettings:
    home.mkdir(parents=True, exist_ok=True)
    (home / "fw.py").write_text(FW_TOOL)
    tool = (sys.executable, str(home / "fw.py"))
    return ScriptSettings(
        active=(*tool, "active"),
        install=(*tool, "install", "{slot}", "{path}", "{version}"),
        switch=(*tool, "switch", "{slot}", "{trial}"),
        commit=(*tool, "commit", "{slot}"),
        rollback=(*tool, "rollback", "{slot}"),
        reboot=(*tool, "reboot") if reboot else (),
        version=(*tool, "version", "{slot}") if with_version else (),
        timeout=30,
    )


def fw_state(home: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((home / "fw.json").read_text())
    return data


async def test_script_slots_call_the_configured_programs(tmp_path: Path) -> None:
    slots = ScriptSlots(fw_tool(tmp_path / "fw"), tmp_path / "slots.json")
    assert await slots.active_slot() == "a" and slots.other("a") == "b"
    image = tmp_path / "img"
    image.write_bytes(b"image")
    await slots.install("b", image, "2.4.0")
    await slots.switch("b", trial=True)
    assert await slots.reboot() is False  # the machine goes down
    assert (await slots.active_slot(), await slots.version("b")) == ("b", "2.4.0")
    await slots.commit()
    assert fw_state(tmp_path / "fw")["committed"] == "b"


async def test_without_a_version_program_the_agent_remembers_what_it_installed(
    tmp_path: Path,
) -> None:
    record = tmp_path / "slots.json"
    slots = ScriptSlots(
        fw_tool(tmp_path / "fw", with_version=False), record, initial_version="2.3.0"
    )
    await slots.boot()
    image = tmp_path / "img"
    image.write_bytes(b"image")
    await slots.install("b", image, "2.4.0")
    assert json.loads(record.read_text()) == {"a": "2.3.0", "b": "2.4.0"}
    assert await slots.version("a") == "2.3.0"


async def test_a_failing_program_fails_with_its_output(tmp_path: Path) -> None:
    settings = fw_tool(tmp_path / "fw")
    broken = replace(settings, commit=(*settings.commit[:2], "explode"))
    with pytest.raises(SlotError, match=r"update.script.commit .* exit status 1.*unknown command"):
        await ScriptSlots(broken, tmp_path / "s.json").commit()


async def test_a_program_naming_an_unknown_slot_is_refused(tmp_path: Path) -> None:
    settings = replace(fw_tool(tmp_path / "fw"), slots=("x", "y"))
    with pytest.raises(SlotError, match="printed 'a', not one of x, y"):
        await ScriptSlots(settings, tmp_path / "s.json").active_slot()


def script_config(device: Device, home: Path) -> AgentConfig:
    """The device's [update] settings with its slots behind the fake slot tool."""
    update = replace(device.update, handler="script", slots_dir=None, script=fw_tool(home))
    return AgentConfig(firmware_version="2.3.0", update=update)


@pytest.fixture
def device(tmp_path: Path) -> Device:
    return make_device(tmp_path / "device")


async def test_an_update_through_the_script_handler_reboots_and_commits(
    device: Device, tmp_path: Path
) -> None:
    config = script_config(device, tmp_path / "fw")
    job = device.update_job()
    final = await device.run(job, config=config, slots=build_slots(config, device.state_dir))
    assert final.result == "succeeded"
    assert device.server.finals(job.id) == [{"state": "succeeded", "version": "2.4.0"}]
    state = fw_state(tmp_path / "fw")
    assert (state["running"], state["committed"]) == ("b", "b")
    assert (tmp_path / "fw" / "b.img").read_bytes() == FIRMWARE
    assert device.time.sleeps == [600]  # waited for the machine to go down


async def test_after_a_real_reboot_the_agent_carries_on_verifying(
    device: Device, tmp_path: Path
) -> None:
    config = script_config(device, tmp_path / "fw")
    job = device.update_job()
    device.time.power_loss_at_sleep = 1  # the machine goes down while the agent waits
    with pytest.raises(PowerLoss):
        await device.run(job, config=config, slots=build_slots(config, device.state_dir))
    device.time.power_loss_at_sleep = None
    second = await device.started(config=config, slots=build_slots(config, device.state_dir))
    final = await second.run_next()
    assert final.result == "succeeded"
    assert device.server.states(job.id)[-2:] == ["verifying", "succeeded"]


# --- trust -----------------------------------------------------------------------------------


def test_a_key_id_is_the_start_of_the_sha256_of_the_raw_key() -> None:
    key = trusted_key(KEY)
    assert key is not None and key.id == "9c2ce9e0d28471e4"
    assert trusted_key("not a key") is None


async def test_a_damaged_pin_file_trusts_nothing_and_does_not_pin_again(tmp_path: Path) -> None:
    pin = tmp_path / "release-keys.json"
    pin.write_text("{garbage")

    async def fetch() -> tuple[ReleaseKey, ...]:
        raise AssertionError("must not ask the server")

    assert await TrustStore((), pin).keys(fetch) == {}


async def test_an_empty_key_list_from_the_server_is_not_pinned(tmp_path: Path) -> None:
    pin = tmp_path / "release-keys.json"

    async def fetch() -> tuple[ReleaseKey, ...]:
        return ()

    assert await TrustStore((), pin).keys(fetch) == {}
    assert not pin.exists()


def test_a_signature_binds_the_version(device: Device) -> None:
    key = device.release_key
    trusted = trusted_key(b64(raw_public(key)))
    assert trusted is not None
    artifact = ArtifactRef(
        id="a",
        version="2.4.0",
        sha256="ab" * 32,
        signature=sign(key, "ab" * 32, "2.4.0"),
        key_id=trusted.id,
        url="/x",
    )
    assert check_signature(artifact, {trusted.id: trusted}) is None
    replayed = replace(artifact, version="9.9.9")
    assert "does not verify" in (check_signature(replayed, {trusted.id: trusted}) or "")


# --- config ----------------------------------------------------------------------------------


def test_an_update_table_is_read() -> None:
    config = parse_config(
        {
            "update": {
                "handler": "directory",
                "slots_dir": "/srv/slots",
                "health_check": ["/bin/healthy", "{version}"],
                "health_timeout": 30,
                "trusted_keys": [KEY],
            }
        }
    )
    assert config.update == UpdateSettings(
        handler="directory",
        slots_dir=Path("/srv/slots"),
        health_check=("/bin/healthy", "{version}"),
        health_timeout=30,
        trusted_keys=(KEY,),
    )
    assert parse_config({}).update is None


SCRIPT = {
    "active": ["fw", "active"],
    "install": ["fw", "install", "{slot}", "{path}", "{version}"],
    "switch": ["fw", "switch", "{slot}", "{trial}"],
    "commit": ["fw", "commit"],
    "rollback": ["fw", "rollback"],
}


@pytest.mark.parametrize(
    ("update", "message"),
    [
        ({"handler": "uboot"}, "update.handler must be one of directory, script"),
        ({"handler": "script"}, r"needs an \[update.script\] table"),
        ({"script": SCRIPT}, r"\[update.script\] is only used with"),
        ({"trusted_keys": ["bm9wZQ=="]}, r"trusted_keys\[0\] is 4 bytes"),
        ({"trusted_keys": ["***"]}, "not base64"),
        ({"health_check": ["{version}"]}, "program itself cannot be a placeholder"),
        ({"health_check": ["check", "{path}"]}, r"unknown placeholder\(s\) \['path'\]"),
        ({"slot_dir": "/x"}, r"update: unknown key\(s\) slot_dir"),
        ({"handler": "script", "script": SCRIPT, "slots_dir": "/x"}, "slots_dir is only used"),
        ({"handler": "script", "script": {k: SCRIPT[k] for k in list(SCRIPT)[1:]}}, "active is"),
        ({"handler": "script", "script": {**SCRIPT, "reboot": ["x", "{path}"]}}, "placeholder"),
        ({"handler": "script", "script": {**SCRIPT, "slots": ["a", "a"]}}, "two different"),
        ({"handler": "script", "script": {**SCRIPT, "shell": True}}, "unknown key"),
    ],
)
def test_update_mistakes_are_refused_naming_the_key(update: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config({"update": update})


# --- docs ------------------------------------------------------------------------------------


def toml_examples() -> list[str]:
    return re.findall(r"```toml\n(.*?)```", DOCS.read_text(), flags=re.DOTALL)


def test_every_toml_example_in_the_agent_docs_is_a_valid_config() -> None:
    examples = toml_examples()
    assert len(examples) >= 3
    for example in examples:
        parse_config(tomllib.loads(example))


def test_every_update_setting_is_documented() -> None:
    text = DOCS.read_text()
    keys = [*UpdateSettings.__dataclass_fields__, *SCRIPT_PLACEHOLDERS, "slots", "timeout"]
    missing = [key for key in keys if f"`{key}`" not in text and f"\n{key} =" not in text]
    assert not missing, f"document these [update] keys in docs/agent.md: {missing}"
