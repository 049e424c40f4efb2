"""`fleetkeeper simulate`: a fleet of virtual devices against a server.

Simulator modules are imported inside the command, so other commands start quickly.
`open_transport` is the seam tests replace to put an in-process server behind the fleet.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import httpx
import typer
from rich.table import Table

from fleetkeeper.cli import output
from fleetkeeper.cli.remote import CONNECTION_PANEL, root_connection

if TYPE_CHECKING:
    from fleetkeeper.sim import Scenario, Simulator

SCENARIO_PANEL = "Scenario (overrides the --scenario file)"

SimServer = Annotated[
    str | None,
    typer.Option(
        "--server",
        rich_help_panel=CONNECTION_PANEL,
        show_default=False,
        help="URL of the Fleetkeeper server (default: the root --server, $FLEETKEEPER_SERVER "
        "or http://127.0.0.1:8080).",
    ),
]
AdminToken = Annotated[
    str | None,
    typer.Option(
        "--token",
        rich_help_panel=CONNECTION_PANEL,
        show_default=False,
        help="Admin API token (default: the root --token or $FLEETKEEPER_TOKEN): creates the "
        "device models and an auto-accepting provisioning token, and runs the scenario's "
        "rollout.",
    ),
]
ProvisioningToken = Annotated[
    str | None,
    typer.Option(
        "--provisioning-token",
        envvar="FLEETKEEPER_PROVISIONING_TOKEN",
        rich_help_panel=CONNECTION_PANEL,
        show_default=False,
        help="Fleet provisioning token the devices enrol with (the models must exist).",
    ),
]
Devices = Annotated[
    int | None,
    typer.Option(
        min=1, rich_help_panel=SCENARIO_PANEL, show_default=False, help="Fleet size [100]."
    ),
]
Seed = Annotated[
    int | None,
    typer.Option(
        rich_help_panel=SCENARIO_PANEL,
        show_default=False,
        help="Seed: the same seed gives the same fleet, keys, faults and serials [1].",
    ),
]
ScenarioFile = Annotated[
    Path | None,
    typer.Option(
        "--scenario",
        dir_okay=False,
        show_default=False,
        help="Scenario file, TOML or JSON (docs/simulator.md).",
    ),
]
Duration = Annotated[
    float | None,
    typer.Option(
        min=0.0, show_default=False, help="Stop after this many seconds (default: at Ctrl-C)."
    ),
]
Faults = Annotated[
    list[str] | None,
    typer.Option(
        "--fault",
        metavar="KIND=RATE",
        rich_help_panel=SCENARIO_PANEL,
        show_default=False,
        help="Share of devices a fault hits, 0 to 1 (repeatable), e.g. --fault flaky=0.05. "
        "Kinds: update_download_corrupt, update_install_fail, update_health_fail, disappear, "
        "flaky, sensor_stuck, sensor_out_of_range, sensor_noisy, flood, compromised, "
        "site_outage, crash_loop.",
    ),
]
CheckinInterval = Annotated[
    float | None,
    typer.Option(
        min=0.001,
        rich_help_panel=SCENARIO_PANEL,
        show_default=False,
        help="Seconds between check-ins [30].",
    ),
]
TelemetryInterval = Annotated[
    float | None,
    typer.Option(
        min=0.001,
        rich_help_panel=SCENARIO_PANEL,
        show_default=False,
        help="Seconds between measurements [10].",
    ),
]
Concurrency = Annotated[
    int | None,
    typer.Option(
        min=1,
        rich_help_panel=SCENARIO_PANEL,
        show_default=False,
        help="Requests in flight at most [64].",
    ),
]
SummaryJson = Annotated[
    bool, typer.Option("--json", help="Print the summary as JSON only, for scripts.")
]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Log every request too.")]


def open_transport(server: str) -> httpx.AsyncBaseTransport | None:
    """The transport the fleet reaches `server` through (None: the network)."""
    return None


def simulate(
    ctx: typer.Context,
    server: SimServer = None,
    devices: Devices = None,
    provisioning_token: ProvisioningToken = None,
    token: AdminToken = None,
    seed: Seed = None,
    scenario: ScenarioFile = None,
    duration: Duration = None,
    faults: Faults = None,
    checkin_interval: CheckinInterval = None,
    telemetry_interval: TelemetryInterval = None,
    concurrency: Concurrency = None,
    as_json: SummaryJson = False,
    verbose: Verbose = False,
) -> None:
    """Simulate a fleet of devices against a server through the real device API.

    Each device has its own Ed25519 key, enrols, checks in, reports its inventory (site as
    attributes.site, position as location) and telemetry (battery, rssi, storage_used,
    temperature, ...), and answers ping, get_diagnostics, update and reboot commands. Faults
    hit the share of devices their rate says. Ctrl-C or --duration ends the run with a summary
    (--json: an object with devices, messages_sent, updates and faults, among others).

    Exit codes: 0 done, 1 the server is out of reach or refuses every device, 2 a usage error.
    """
    from fleetkeeper.sim import ScenarioError, Simulator

    try:
        chosen = load_scenario(
            scenario,
            faults or [],
            devices=devices,
            seed=seed,
            concurrency=concurrency,
            checkin_interval=checkin_interval,
            telemetry_interval=telemetry_interval,
        )
    except ScenarioError as exc:
        hint = "--fault" if str(exc).startswith("--fault") else "--scenario"
        raise typer.BadParameter(str(exc), param_hint=hint) from None
    root = root_connection(ctx)
    admin = token or root.token
    if not provisioning_token and not admin:
        raise typer.BadParameter(
            "the devices need a way in: give --provisioning-token, or --token with an admin "
            "API token (then the models and a provisioning token are created)",
            param_hint="--provisioning-token / --token",
        )
    _configure_logging(verbose)
    url = server or root.server
    simulator = Simulator(
        chosen,
        url,
        provisioning_token=provisioning_token,
        admin_token=admin,
        transport=open_transport(url),
        on_progress=None if as_json else _progress,
        note=output.note,
    )
    if not as_json:
        output.note(
            f"Simulating {chosen.devices} devices against {url} (seed {chosen.seed}); "
            + (f"{duration:g} s." if duration is not None else "Ctrl-C stops.")
        )
    summary = run_until_stopped(simulator, duration)
    output.emit(summary, as_json, render_summary)


def load_scenario(path: Path | None, faults: list[str], **overrides: Any) -> Scenario:
    """The --scenario file (or the default scenario) with the options given on top."""
    from fleetkeeper.sim import Scenario, load, parse_fault_option, with_overrides

    base = load(path) if path is not None else Scenario()
    rates = dict(parse_fault_option(text) for text in faults)
    return with_overrides(base, fault_rates=rates, **overrides)


def run_until_stopped(simulator: Simulator, duration: float | None) -> dict[str, Any]:
    """Run to the end of `duration`, or to SIGINT/SIGTERM; exit 1 when it cannot run."""
    from fleetkeeper.sim import SimulationError

    async def main() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None

        def interrupted() -> None:
            if simulator.stopping:
                task.cancel()  # the second Ctrl-C: now
                return
            output.note("Stopping: requests in flight finish first (Ctrl-C again: at once).")
            simulator.stop()

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, interrupted)
        try:
            return await simulator.run(duration)
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)

    try:
        return asyncio.run(main())
    except SimulationError as exc:
        output.error(str(exc))
        raise typer.Exit(1) from None
    except asyncio.CancelledError:
        output.error("stopped at once, without a summary")
        raise typer.Exit(130) from None


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not verbose:
        logging.getLogger("httpx").setLevel(logging.WARNING)


def _progress(snapshot: dict[str, Any]) -> None:
    updates = snapshot["updates"]
    output.note(
        f"{snapshot['seconds']:>7.1f} s  {snapshot['enrolled']} enrolled, "
        f"{snapshot['messages_sent']} messages, {snapshot['rate_limited']} rate-limited, "
        f"{updates.get('attempted', 0)} updates; since the last line {snapshot['actions']} "
        f"actions, {snapshot['behind']} more than an interval late, "
        f"the latest {snapshot['max_lag']:.2f} s late"
    )


def _rollout_line(rollout: dict[str, Any]) -> str:
    what = f"{rollout['model']} {rollout['version']}: {rollout['state']}"
    if rollout.get("deployment_id"):
        what += f", deployment {rollout['deployment_id']}"
    counts = rollout.get("counts") or {}
    if counts:
        what += " (" + ", ".join(f"{n} {s.replace('_', ' ')}" for s, n in counts.items()) + ")"
    if rollout.get("detail"):
        what += f"; {rollout['detail']}"
    return what


def render_summary(summary: dict[str, Any]) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    telemetry, updates, schedule = summary["telemetry"], summary["updates"], summary["schedule"]
    rows = [
        (
            "devices",
            f"{summary['devices']} ({summary['enrolled']} enrolled, "
            f"{summary['resumed']} carried on from an earlier run, "
            f"{summary['enroll_failed']} refused)",
        ),
        ("run", f"{summary['seconds']:g} s, seed {summary['seed']}"),
        (
            "messages sent",
            f"{summary['messages_sent']} ({summary['messages_lost']} lost, "
            f"{summary['rate_limited']} rate-limited, {summary['unreachable']} unanswered, "
            f"{summary['errors']} refused)",
        ),
        (
            "telemetry points",
            f"{telemetry['accepted']} accepted, {telemetry['rejected']} "
            f"rejected, {telemetry['dropped']} dropped",
        ),
        ("updates", ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in updates.items())),
        ("failed logins", str(summary["auth_failures"])),
        (
            "schedule",
            f"{schedule['actions']} actions, {schedule['behind']} more than an "
            f"interval late, worst {schedule['max_lag']:.2f} s",
        ),
    ]
    jobs = summary.get("jobs") or {}
    if jobs.get("received"):
        rows.append(
            ("deployment jobs", ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in jobs.items()))
        )
    rollout = summary.get("rollout")
    if rollout:
        rows.append(("rollout", _rollout_line(rollout)))
    for kind, serials in summary["faults"].items():
        if serials:
            shown = ", ".join(serials[:4]) + (" ..." if len(serials) > 4 else "")
            rows.append((f"fault {kind}", f"{len(serials)}: {shown}"))
    if summary.get("first_error"):
        rows.append(("first error", str(summary["first_error"])))
    for key, value in rows:
        grid.add_row(key, value)
    return grid
