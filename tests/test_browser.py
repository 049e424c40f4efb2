"""The dashboard in a real browser: Debian's Chromium, driven by Playwright, against a real
`fleetkeeper serve` with a small living fleet (tests/browser.py), on SQLite and PostgreSQL.

Each test is a user's journey, found by what a person sees (roles, labels, accessible names).
They skip when Chromium or Playwright is missing, and fail instead where services are required
(FLEETKEEPER_TEST_REQUIRE_SERVICES=1, as in .ci/run).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from browser import (
    ADMIN_PASSWORD,
    Fleet,
    Portal,
    Server,
    launch,
    log_in,
    needs_browser,
    postgres_database,
    running_server,
    seed,
    upload_artifact,
    wait_for,
    work_jobs,
)

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

LOW_BATTERY = "TH-M01"  # madrid-4's first device: its battery is down to 9 %
PASSWORD = "browser-user-pass"
USERS = {"olga": "operator", "rita": "release_manager"}  # besides admin
RULE = {
    "name": "battery_low",
    "scope": f"serial = {LOW_BATTERY}",
    "condition": "battery < 15",
    "severity": "critical",
    "group_wait": "0s",
}


@dataclass
class Site:
    """The server under test, its fleet, and an admin API client."""

    server: Server
    fleet: Fleet
    portal: Portal
    api: httpx.Client

    def get(self, path: str, **params: Any) -> Any:
        r = self.api.get(path, params=params)
        assert r.status_code == 200, r.text
        return r.json()


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def site(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Site]:
    needs_browser()
    data_dir = tmp_path_factory.mktemp(f"browser-{request.param}")
    with contextlib.ExitStack() as stack:
        url = None
        if request.param == "postgresql":
            url = stack.enter_context(postgres_database())
            if url is None:
                pytest.skip("PostgreSQL not reachable (set FLEETKEEPER_TEST_POSTGRES_URL)")
        portal = Portal()
        stack.callback(portal.close)
        server = stack.enter_context(running_server(data_dir, url))
        api = stack.enter_context(server.api())
        fleet = seed(portal, server, low_battery={LOW_BATTERY})
        stack.callback(portal.call, fleet.http.aclose())
        r = api.post("/api/v1/alert-rules", json=RULE)
        assert r.status_code == 201, r.text
        for username, role in USERS.items():
            body = {"username": username, "role": role, "password": PASSWORD}
            r = api.post("/api/v1/users", json=body)
            assert r.status_code == 201, r.text
        yield Site(server, fleet, portal, api)


@pytest.fixture(scope="module")
def browser(site: Site) -> Iterator[Browser]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = launch(playwright)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser, site: Site) -> Iterator[Page]:
    """A fresh browser context (no cookies) at laptop size; confirmations are accepted."""
    context = browser.new_context(base_url=site.server.url, viewport={"width": 1280, "height": 800})
    context.set_default_timeout(10_000)
    tab = context.new_page()
    tab.on("dialog", lambda dialog: dialog.accept())
    yield tab
    context.close()


def navigations(page: Page) -> list[str]:
    """The URLs the tab's page loads from now on (a reload counts)."""
    seen: list[str] = []

    def loaded(frame: Any) -> None:
        if frame == page.main_frame:
            seen.append(frame.url)

    page.on("framenavigated", loaded)
    return seen


# --- journeys ----------------------------------------------------------------------------------


def test_an_operator_logs_in_sees_the_fleet_and_logs_out(page: Page, site: Site) -> None:
    from playwright.sync_api import expect

    page.goto("/")
    expect(page).to_have_url(re.compile(r"/login\?next=%2F$"))
    page.get_by_label("User").fill("admin")
    page.get_by_label("Password").fill("not-the-password")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_contain_text("wrong username or password")

    page.get_by_label("Password").fill(ADMIN_PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("heading", name="Fleet overview")).to_be_visible()
    summary = page.get_by_role("region", name="Summary")
    expect(summary).to_contain_text(f"{len(site.fleet.ids)} devices")
    main = page.get_by_role("navigation", name="Main")
    for area in ("Overview", "Devices", "Deployments", "Alerts", "Audit", "Users"):
        expect(main.get_by_role("link", name=area, exact=True)).to_be_visible()
    expect(page.get_by_role("region", name="Fleet map")).to_be_visible()

    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(re.compile(r"/login$"))
    page.goto("/")
    expect(page.get_by_role("button", name="Log in")).to_be_visible()


def test_an_operator_finds_devices_by_a_fleet_query_and_opens_one(page: Page, site: Site) -> None:
    from playwright.sync_api import expect

    log_in(page, "olga", PASSWORD)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Devices").click()
    query = page.get_by_role("searchbox", name="Fleet query")
    query.fill("attributes.site = berlin-1")
    query.press("Enter")

    expect(page).to_have_url(re.compile(r"/devices\?.*q=attributes.site"))
    for serial in site.fleet.sites["berlin-1"]:
        expect(page.get_by_role("link", name=serial, exact=True)).to_be_visible()
    for serial in site.fleet.sites["oslo-3"]:
        expect(page.get_by_role("link", name=serial, exact=True)).to_have_count(0)

    page.get_by_role("link", name="TH-B02", exact=True).click()
    expect(page).to_have_url(re.compile(rf"/devices/{site.fleet.ids['TH-B02']}$"))
    expect(page.get_by_role("heading", name=re.compile("TH-B02")).first).to_be_visible()
    expect(page.get_by_text("berlin-1").first).to_be_visible()


def test_a_release_manager_starts_a_deployment_and_watches_it_finish_live(
    page: Page, site: Site
) -> None:
    from playwright.sync_api import expect

    artifact = upload_artifact(site.api, "2.0.0")
    devices = site.fleet.at("lyon-2")
    agent = site.portal.start(work_jobs(devices))
    try:
        log_in(page, "rita", PASSWORD)
        page.get_by_role("navigation", name="Main").get_by_role("link", name="Deployments").click()
        page.get_by_role("link", name="New deployment").click()
        page.get_by_label("Name", exact=True).fill("lyon-2 to 2.0.0")
        page.get_by_label("Artifact", exact=True).select_option(artifact["id"])
        page.get_by_label("Fleet query", exact=True).fill("attributes.site = lyon-2")
        # A quick policy: one phase, no pacing to speak of, no start jitter.
        page.get_by_label("Phases", exact=True).fill("100")
        page.get_by_label("Devices per minute", exact=True).fill("1000")
        page.get_by_label("More policy settings", exact=True).fill('{"jitter": 0}')
        page.get_by_label("Reason", exact=True).fill("browser test: lyon-2 to 2.0.0")
        page.get_by_role("button", name="Create deployment").click()

        expect(page).to_have_url(re.compile(r"/deployments/[0-9a-f-]{36}(\?|$)"))
        expect(page.get_by_role("status").filter(has_text="Deployment created")).to_be_visible()
        found = re.search(r"/deployments/([0-9a-f-]{36})", page.url)
        assert found is not None
        deployment_id = found.group(1)
        loaded = navigations(page)
        # Live: the page follows the rollout without being reloaded.
        state = page.get_by_role("heading", level=1).get_by_role("status")
        expect(state).to_have_text("finished", timeout=30_000)
        summary = page.get_by_role("region", name="Summary")
        expect(summary).to_contain_text(f"{len(devices)} succeeded")
        assert loaded == [], f"the page was reloaded: {loaded}"
        shown = site.get(f"/api/v1/deployments/{deployment_id}")
        assert shown["state"] == "finished"
        assert shown["counts"]["succeeded"] == len(devices)
    finally:
        agent.cancel()
    for device in devices:
        seen = site.get(f"/api/v1/devices/{device.device_id}")
        assert seen["firmware_version"] == "2.0.0"


def test_an_operator_acknowledges_a_firing_alert(page: Page, site: Site) -> None:
    from playwright.sync_api import expect

    def firing() -> Any:
        items = site.get("/api/v1/alerts", state="firing", rule="battery_low")["items"]
        return items[0] if items else None

    alert = wait_for(firing, within=20, what="the battery alert to fire")
    log_in(page, "olga", PASSWORD)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Alerts").click()
    row = page.get_by_role("row").filter(has_text=LOW_BATTERY)
    expect(row).to_have_count(1)
    expect(row).to_contain_text("battery_low")
    row.get_by_text(re.compile(r"^Act\b")).click()  # the row's actions, folded away
    row.get_by_label("Note").first.fill("crew on the way")
    row.get_by_role("button", name="Acknowledge").click()

    expect(page.get_by_role("row").filter(has_text=LOW_BATTERY)).to_contain_text(
        "acknowledged by olga"
    )
    shown = site.get(f"/api/v1/alerts/{alert['id']}")
    assert shown["acknowledged_by"].startswith("olga"), shown
    assert shown["acknowledged_note"] == "crew on the way"
