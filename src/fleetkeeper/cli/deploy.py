"""`fleetkeeper deploy ...`: roll an artifact or a bulk operation out to a fleet query."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from fleetkeeper.cli import output
from fleetkeeper.cli.client import ApiClient, compact, join
from fleetkeeper.cli.options import WINDOW_HELP, Json, Paging, Reason, window_option
from fleetkeeper.cli.remote import remote

app = typer.Typer(
    help="Deployments: updates and bulk operations rolled out in phases, with health checks, "
    "pause, stop, abort and rollback.",
    no_args_is_help=True,
)

PATH = "/api/v1/deployments"
FINAL = frozenset({"stopped", "aborted", "canceled", "finished"})
UNSUCCESSFUL = ("failed", "timed_out", "rolled_back")
COLUMNS = (
    output.Column("Id", "id", no_wrap=True),
    output.Column("Name", "name"),
    output.Column("State", "state"),
    output.Column("Phase", "phase"),
    output.Column("Succeeded", "counts.succeeded"),
    output.Column("Failed", "counts.failed"),
    output.Column("Total", "total"),
    output.Column("Created", "created_at"),
)
DeploymentId = Annotated[str, typer.Argument(metavar="ID", help="The deployment's id.")]
Follow = Annotated[
    bool, typer.Option("--follow", "-f", help="Watch the rollout live until it ends.")
]


@dataclass(frozen=True)
class PolicyOptions:
    """The common rollout settings as options; --policy FILE gives the whole policy."""

    phases: Annotated[
        str | None,
        typer.Option(help="Cumulative percentages of the target per phase, e.g. 10,50,100."),
    ] = None
    error_threshold: Annotated[
        float | None, typer.Option(min=0, max=100, help="% of a phase failing that acts.")
    ] = None
    on_error: Annotated[
        str | None, typer.Option(help="pause (a human resumes) or abort.", metavar="pause|abort")
    ] = None
    rollback_on_abort: Annotated[
        bool, typer.Option(help="On abort, roll back the devices already updated.")
    ] = False
    rate: Annotated[
        float | None, typer.Option(min=0.01, help="Devices per minute to start with.")
    ] = None
    soak: Annotated[
        str | None, typer.Option(help="How long a phase must stay healthy, e.g. 30m.")
    ] = None
    window: Annotated[
        list[str] | None,
        typer.Option(help=WINDOW_HELP),
    ] = None
    policy: Annotated[
        Path | None,
        typer.Option(
            exists=True, dir_okay=False, metavar="FILE.json", help="The whole rollout policy."
        ),
    ] = None

    def rollout(self) -> dict[str, Any] | None:
        body: dict[str, Any] = {}
        if self.policy is not None:
            try:
                loaded = json.loads(self.policy.read_text(encoding="utf-8"))
            except (ValueError, UnicodeDecodeError) as exc:
                raise typer.BadParameter(f"not JSON: {exc}", param_hint="--policy") from None
            if not isinstance(loaded, dict):
                raise typer.BadParameter("holds no JSON object", param_hint="--policy")
            body.update(loaded)
        if self.phases:
            try:
                body["phases"] = [float(p) for p in self.phases.split(",") if p.strip()]
            except ValueError:
                raise typer.BadParameter(
                    "numbers separated by commas", param_hint="--phases"
                ) from None
        if self.on_error is not None and self.on_error not in ("pause", "abort"):
            raise typer.BadParameter("pause or abort", param_hint="--on-error")
        body.update(
            compact(
                {
                    "error_threshold": self.error_threshold,
                    "on_error": self.on_error,
                    "rollback_on_abort": self.rollback_on_abort or None,
                    "soak": self.soak,
                }
            )
        )
        if self.rate is not None:
            body["rate"] = {**body.get("rate", {}), "base_per_minute": self.rate}
            body["rate"].setdefault("max_per_minute", max(self.rate, 1000.0))
        if self.window:
            windows = [window_option(w) for w in self.window]
            body["schedule"] = {**body.get("schedule", {}), "windows": windows}
        return body or None


def _args(pairs: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--arg")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


@app.command("create")
@remote
def create(
    api: ApiClient,
    target: Annotated[str, typer.Option("--target", "-q", help="Fleet query, e.g. 'group:pilot'.")],
    artifact: Annotated[
        str | None, typer.Option("--artifact", help="Artifact id: an update.")
    ] = None,
    command: Annotated[
        str | None,
        typer.Option(help="A bulk operation instead: reboot, factory_reset, or any command."),
    ] = None,
    arg: Annotated[
        list[str] | None, typer.Option(help="Command argument KEY=VALUE (repeatable).")
    ] = None,
    name: Annotated[str | None, typer.Option(help="A name for the deployment.")] = None,
    continuous: Annotated[bool, typer.Option(help="Devices that match later get it too.")] = False,
    supersede: Annotated[
        bool, typer.Option(help="Cancel older executions not yet installing, not queue.")
    ] = False,
    rollout: PolicyOptions = PolicyOptions(),
    reason: Reason = None,
    follow: Follow = False,
    as_json: Json = False,
) -> None:
    """Deploy an artifact (or a bulk operation) to a fleet query; it starts at once."""
    if (artifact is None) == (command is None):
        raise typer.BadParameter("give --artifact or --command", param_hint="--artifact")
    body = compact(
        {
            "target": target,
            "artifact_id": artifact,
            "command": {"name": command, "args": _args(arg)} if command else None,
            "name": name,
            "continuous": continuous or None,
            "supersede": supersede or None,
            "rollout": rollout.rollout(),
            "reason": reason,
        }
    )
    created = api.post(PATH, body)
    if follow:
        watch(api, created["id"], as_json)
    else:
        output.emit(created, as_json, render)


@app.command("list")
@remote
def list_deployments(
    api: ApiClient,
    state: Annotated[str | None, typer.Option(help="Only deployments in this state.")] = None,
    paging: Paging = Paging(),
    as_json: Json = False,
) -> None:
    """List deployments, newest first."""
    page = api.get(PATH, compact({"state": state, **paging.params()}))
    output.listing(page, as_json, COLUMNS, noun="deployments")


@app.command("show")
@remote
def show(
    api: ApiClient, deployment_id: DeploymentId, follow: Follow = False, as_json: Json = False
) -> None:
    """Show a deployment's progress: state, counts per state and phase, failure reasons, ETA."""
    if follow:
        watch(api, deployment_id, as_json)
    else:
        output.emit(api.get(join(PATH, deployment_id)), as_json, render)


def _action(action: str, doc: str) -> Callable[..., None]:
    def command(
        api: ApiClient,
        deployment_id: DeploymentId,
        reason: Reason = None,
        as_json: Json = False,
    ) -> None:
        output.emit(
            api.post(join(PATH, deployment_id, action), compact({"reason": reason})),
            as_json,
            render,
        )

    command.__doc__ = doc
    command.__name__ = action
    return remote(command)


app.command("pause")(
    _action("pause", "Pause: no new devices until resumed; running ones carry on.")
)
app.command("resume")(_action("resume", "Resume a paused deployment."))
app.command("stop")(_action("stop", "Stop: no new devices ever; running ones finish."))


Rollback = Annotated[bool, typer.Option(help="Also roll back the devices already updated.")]


def _end(action: str, doc: str) -> Callable[..., None]:
    def command(
        api: ApiClient,
        deployment_id: DeploymentId,
        rollback: Rollback = False,
        reason: Reason = None,
        as_json: Json = False,
    ) -> None:
        body = compact({"reason": reason, "rollback": rollback or None})
        output.emit(api.post(join(PATH, deployment_id, action), body), as_json, render)

    command.__doc__ = doc
    command.__name__ = action
    return remote(command)


app.command("cancel")(
    _end("cancel", "Cancel the rest: queued devices are dropped, started ones asked to stop.")
)
app.command("abort")(
    _end("abort", "Abort: cancel the rest because the rollout went wrong (optionally roll back).")
)


@app.command("retry")
@remote
def retry(
    api: ApiClient, deployment_id: DeploymentId, reason: Reason = None, as_json: Json = False
) -> None:
    """Put failed and timed-out devices back in the queue."""
    done = api.post(join(PATH, deployment_id, "retry-failed"), compact({"reason": reason}))
    output.emit(done, as_json, lambda d: f"{d['requeued']} executions queued again.")


@app.command("events")
@remote
def events(
    api: ApiClient, deployment_id: DeploymentId, paging: Paging = Paging(), as_json: Json = False
) -> None:
    """The deployment's timeline: phases, rate changes, pauses, operator actions."""
    page = api.get(join(PATH, deployment_id, "events"), paging.params())
    columns = (
        output.Column("At", "at", no_wrap=True),
        output.Column("Event", "kind"),
        output.Column("By", "actor"),
        output.Column("Detail", "detail"),
    )
    output.listing(page, as_json, columns, noun="events")


@app.command("executions")
@remote
def executions(
    api: ApiClient,
    deployment_id: DeploymentId,
    state: Annotated[str | None, typer.Option(help="Only in this state, e.g. failed.")] = None,
    paging: Paging = Paging(),
    as_json: Json = False,
) -> None:
    """Each device's execution (state=skipped lists incompatible devices with the reason)."""
    page = api.get(
        join(PATH, deployment_id, "executions"), compact({"state": state, **paging.params()})
    )
    columns = (
        output.Column("Serial", "serial", no_wrap=True),
        output.Column("Phase", "phase"),
        output.Column("State", "state"),
        output.Column("Reason", "reason"),
        output.Column("Attempt", "attempt"),
        output.Column("From", "from_version"),
        output.Column("To", "to_version"),
    )
    output.listing(page, as_json, columns, noun="executions")


# --- the live view -------------------------------------------------------------------------


def watch(
    api: ApiClient,
    deployment_id: str,
    as_json: bool,
    *,
    every: float = 1.0,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Follow until the deployment ends; exit status 1 when it ended badly."""
    path = join(PATH, deployment_id)
    current = api.get(path)
    if as_json:
        while current["state"] not in FINAL:
            sleep(every)
            current = api.get(path)
        output.print_json(current)
    else:
        with Live(render(current), console=output.stdout(), auto_refresh=False) as live:
            while current["state"] not in FINAL:
                sleep(every)
                current = api.get(path)
                live.update(render(current), refresh=True)
    if current["state"] in ("aborted", "canceled"):
        raise typer.Exit(1)


def render(d: dict[str, Any]) -> RenderableType:
    """Phases with progress bars, counts per state, failure reasons."""
    head = Text.assemble(
        (f"{d['name']}", "bold"),
        f"  {d['id']}\n",
        ("state ", "dim"),
        (d["state"], _state_style(d["state"])),
        f"  target {d['target']!r}  devices {d['total']}",
    )
    if d.get("reason"):
        head.append(f"\nreason: {d['reason']}")
    if d.get("eta") and d["state"] == "running":
        head.append(f"  eta {d['eta']}")
    phases = Table.grid(padding=(0, 1))
    for phase in d.get("phases", []):
        counts = phase["counts"]
        done = sum(counts.get(s, 0) for s in ("succeeded", *UNSUCCESSFUL, "canceled"))
        size = max(phase["size"], 1)
        label = f"{phase['percent']:g}%" if phase.get("percent") is not None else phase["count"]
        phases.add_row(
            f"phase {phase['index'] + 1} ({label})",
            ProgressBar(total=size, completed=done, width=30),
            f"{counts.get('succeeded', 0)} ok  "
            f"{sum(counts.get(s, 0) for s in UNSUCCESSFUL)} failed  of {phase['size']}  "
            f"[{phase['state']}]",
        )
    counts = Text("  ".join(f"{k} {v}" for k, v in d.get("counts", {}).items() if v), style="cyan")
    parts: list[RenderableType] = [head, phases, counts]
    if d.get("failure_reasons"):
        reasons = ", ".join(f"{k} {v}" for k, v in d["failure_reasons"].items())
        parts.append(Text(f"failures: {reasons}", style="red"))
    if d.get("skipped"):
        skipped = ", ".join(f"{k} {v}" for k, v in d["skipped"].items())
        parts.append(Text(f"skipped: {skipped}", style="dim"))
    return Group(*parts)


def _state_style(state: str) -> str:
    return {"running": "green", "paused": "yellow", "finished": "bold green"}.get(state, "red")
