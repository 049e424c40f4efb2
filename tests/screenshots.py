"""Screenshots of the dashboard's main pages for the README and docs/dashboard.md.

    .venv/bin/python tests/screenshots.py [--out docs/screenshots]

Starts a real server (SQLite in a temp folder), seeds a fleet of four sites through the API and
the device API (tests/browser.py), rolls an update out to one site, leaves another rollout in
progress, lets two alert rules fire, then has headless Chromium save the overview, the device
list, a device (its top, and its charts and track), the finished deployment, the alerts and
the audit log at laptop size (1280 x 800), and the overview at phone width (390 x 844).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx

from browser import (
    Fleet,
    Portal,
    launch,
    log_in,
    remove_tree,
    running_server,
    seed,
    upload_artifact,
    wait_for,
    work_jobs,
)

ROOT = Path(__file__).resolve().parent.parent
LAPTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
QUICK = {  # a rollout that is over in seconds
    "phases": [50, 100],
    "jitter": 0,
    "rate": {"base_per_minute": 1000, "max_per_minute": 1000},
}
RULES = [
    {
        "name": "battery_low",
        "condition": "battery < 15",
        "clear": "battery > 20",
        "severity": "critical",
        "group_by": ["rule", "site"],
        "group_wait": "0s",
    },
    {
        "name": "temperature_high",
        "condition": "temperature > 23",
        "severity": "warning",
        "group_by": ["rule", "site"],
        "group_wait": "0s",
    },
]


def stage(api: httpx.Client, portal: Portal, fleet: Fleet) -> dict[str, str]:
    """A fleet with a history: one finished rollout, one in progress, alerts firing."""
    artifact = upload_artifact(api, "2.0.0")
    done = _deploy(api, "oslo-3 to 2.0.0", "attributes.site = oslo-3", artifact["id"])
    agent = portal.start(work_jobs(fleet.at("oslo-3"), step=0.2))
    try:
        wait_for(lambda: _state(api, done) == "finished", within=60, what="the oslo-3 rollout")
    finally:
        agent.cancel()
    # Nobody at berlin-1 takes the job yet: the rollout waits for its first phase.
    _deploy(api, "berlin-1 to 2.0.0", "attributes.site = berlin-1", artifact["id"])
    for rule in RULES:
        r = api.post("/api/v1/alert-rules", json=rule)
        assert r.status_code == 201, r.text

    def firing() -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = api.get("/api/v1/alerts", params={"state": "firing"}).json()[
            "items"
        ]
        return items if len(items) >= 3 else []

    alerts = wait_for(firing, within=30, what="the alerts to fire")
    r = api.post(f"/api/v1/alerts/{alerts[-1]['id']}/ack", json={"note": "crew on the way"})
    assert r.status_code == 200, r.text
    return {"deployment": done, "device": fleet.ids["TH-M02"]}


def _deploy(api: httpx.Client, name: str, target: str, artifact_id: str) -> str:
    body = {
        "name": name,
        "target": target,
        "artifact_id": artifact_id,
        "rollout": QUICK,
        "reason": f"release 2.0.0 to {target.rsplit(' ', 1)[1]}",
    }
    r = api.post("/api/v1/deployments", json=body)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _state(api: httpx.Client, deployment_id: str) -> str:
    return str(api.get(f"/api/v1/deployments/{deployment_id}").json()["state"])


def shoot(base_url: str, ids: dict[str, str], out: Path) -> list[Path]:
    from playwright.sync_api import sync_playwright

    device = f"/devices/{ids['device']}"
    # (file name, page, window size, the heading scrolled to the top or None)
    pages = [
        ("overview", "/", LAPTOP, None),
        ("devices", "/devices", LAPTOP, None),
        ("device", device, LAPTOP, None),
        ("device-telemetry", device, LAPTOP, "Telemetry"),
        ("deployment", f"/deployments/{ids['deployment']}", LAPTOP, None),
        ("alerts", "/alerts", LAPTOP, None),
        ("audit", "/audit", LAPTOP, None),
        ("overview-phone", "/", PHONE, None),
    ]
    out.mkdir(parents=True, exist_ok=True)
    saved = []
    with sync_playwright() as playwright:
        browser = launch(playwright)
        for name, path, size, heading in pages:
            context = browser.new_context(
                base_url=base_url, viewport=size, device_scale_factor=1, color_scheme="light"
            )
            page = context.new_page()
            log_in(page)
            page.goto(path, wait_until="networkidle")
            if heading:
                found = page.get_by_role("heading", name=heading, exact=True)
                found.evaluate("element => element.scrollIntoView({block: 'start'})")
            time.sleep(0.5)  # maps and charts draw after their data arrives
            target = out / f"{name}.png"
            page.screenshot(path=str(target))
            saved.append(target)
            context.close()
        browser.close()
    return saved


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="fk-screenshots-"))
    portal = Portal()
    try:
        with running_server(folder / "data") as server, server.api() as api:
            fleet = seed(
                portal,
                server,
                per_site=6,
                unseen=3,
                history=timedelta(hours=24),
                low_battery=("TH-M01", "TH-L04"),
            )
            try:
                ids = stage(api, portal, fleet)
                for path in shoot(server.url, ids, args.out):
                    print(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
            finally:
                portal.call(fleet.http.aclose())
    finally:
        portal.close()
        remove_tree(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
