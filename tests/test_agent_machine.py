"""What the agent learns from the machine: metrics, serial and model, and its state dir."""

from __future__ import annotations

import json
import logging
import stat
from pathlib import Path

import pytest

from fleetkeeper.agent import METRICS, AgentConfig, Identity, StateDir, StateError, hardware
from fleetkeeper.agent.metrics import MetricDescription, MetricsCollector
from fleetkeeper.protocol import Point


def test_the_catalogue_names_the_protocol_metrics() -> None:
    assert {m.name for m in METRICS} == {
        "battery",
        "cpu",
        "memory",
        "storage_used",
        "temperature",
        "net_rx_bytes",
        "net_tx_bytes",
        "uptime",
    }


def test_this_machine_reports_cpu_memory_and_storage() -> None:
    points = MetricsCollector(clock=lambda: 1_800_000_000.0).collect()
    by_name = {p.metric: p for p in points}
    assert {"cpu", "memory", "storage_used"} <= set(by_name)
    assert all(p.ts == 1_800_000_000.0 for p in points)
    assert 0 <= by_name["memory"].value <= 100


def test_missing_sensors_are_left_out() -> None:
    collector = MetricsCollector(
        [MetricDescription("battery", lambda: None), MetricDescription("cpu", lambda: 3.0)],
        clock=lambda: 5.0,
    )
    assert collector.collect() == [Point("cpu", 3.0, 5.0)]


def test_a_failing_sensor_is_logged_once_and_the_others_still_go(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken() -> float:
        raise OSError("sensor gone")

    collector = MetricsCollector(
        [MetricDescription("temperature", broken), MetricDescription("cpu", lambda: 3.0)],
        clock=lambda: 5.0,
    )
    with caplog.at_level(logging.WARNING):
        assert collector.collect() == collector.collect() == [Point("cpu", 3.0, 5.0)]
    assert len([r for r in caplog.records if "sensor gone" in r.getMessage()]) == 1


def machine(tmp_path: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_serial_prefers_the_hardware_serial(tmp_path: Path) -> None:
    root = machine(
        tmp_path,
        {
            "sys/class/dmi/id/product_serial": "PF2ABC12\n",
            "etc/machine-id": "3d1219c7c4c5404aaa1f6d2a48adfda4\n",
        },
    )
    assert hardware.default_serial(root) == "PF2ABC12"


def test_serial_skips_vendor_placeholders_for_the_machine_id(tmp_path: Path) -> None:
    root = machine(
        tmp_path,
        {
            "sys/class/dmi/id/product_serial": "To Be Filled By O.E.M.",
            "etc/machine-id": "3d1219c7c4c5404aaa1f6d2a48adfda4\n",
        },
    )
    assert hardware.default_serial(root) == "linux-3d1219c7c4c5404aaa1f6d2a48adfda4"


def test_serial_falls_back_to_the_host_name(tmp_path: Path) -> None:
    assert hardware.default_serial(tmp_path).startswith("linux-")


def test_model_comes_from_dmi_as_a_model_name(tmp_path: Path) -> None:
    root = machine(tmp_path, {"sys/class/dmi/id/product_name": "ThinkCentre M720q (10T8)\n"})
    assert hardware.default_model(root) == "thinkcentre-m720q-10t8"


def test_model_of_a_raspberry_pi_comes_from_the_device_tree(tmp_path: Path) -> None:
    root = machine(tmp_path, {"proc/device-tree/model": "Raspberry Pi 4 Model B Rev 1.4\x00"})
    assert hardware.default_model(root) == "raspberry-pi-4-model-b-rev-1.4"


def test_model_defaults_to_linux_generic(tmp_path: Path) -> None:
    assert hardware.default_model(tmp_path) == "linux-generic"


def test_serials_are_cleaned_to_what_the_server_takes() -> None:
    assert hardware.clean_serial("  SN 12/34 (b) ") == "SN-12/34-b"


def test_inventory_puts_the_config_over_the_facts() -> None:
    config = AgentConfig(
        firmware_version="2.0",
        hardware_revision="B",
        attributes={"site": "berlin-1", "os": "custom"},
    )
    found = hardware.inventory(config, {"os": "Debian", "hostname": "box"})
    assert found == {
        "firmware_version": "2.0",
        "hardware_revision": "B",
        "attributes": {"os": "custom", "hostname": "box", "site": "berlin-1"},
    }


def test_facts_describe_this_machine() -> None:
    found = hardware.facts()
    assert found["cpu_count"] >= 1 and found["memory_total_mb"] > 0 and found["hostname"]


def test_identity_round_trips_in_a_private_file(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    state.prepare()
    identity = Identity("dev-1", "SN-1", "thermo-v2", "CERT", "CA")
    state.save_identity(identity)
    assert state.load_identity() == identity
    assert stat.S_IMODE(state.identity_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(state.path.stat().st_mode) == 0o700


def test_no_identity_file_means_not_enrolled(tmp_path: Path) -> None:
    assert StateDir(tmp_path).load_identity() is None


def test_a_damaged_identity_is_refused_rather_than_re_enrolled(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    state.identity_path.write_text(json.dumps({"serial": "SN-1"}))
    with pytest.raises(StateError, match="damaged"):
        state.load_identity()


def test_wipe_removes_credentials_and_optionally_the_queue(tmp_path: Path) -> None:
    state = StateDir(tmp_path)
    for path in (
        state.key_path,
        state.identity_path,
        state.queue_path,
        tmp_path / "telemetry.sqlite3-wal",
        tmp_path / "agent.toml",
    ):
        path.write_text("x")
    assert {p.name for p in state.wipe(local_data=False)} == {"device.key", "identity.json"}
    assert state.queue_path.exists()
    assert {p.name for p in state.wipe(local_data=True)} == {
        "telemetry.sqlite3",
        "telemetry.sqlite3-wal",
    }
    assert [p.name for p in tmp_path.iterdir()] == ["agent.toml"]
