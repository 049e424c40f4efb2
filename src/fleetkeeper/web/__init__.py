"""The web dashboard: server-rendered pages under `/`, on the same server as the API.

Pages are Jinja2 templates (`templates/`) filled by the same services the API uses, as the
logged-in user (`sessions.WebUser`: a `Principal` like an API token's), so a page shows
only what its user may see and an action the user may not take is refused by the service
whatever the page offers. Our own CSS and JavaScript are in `static/`; charts (plotly.js)
and maps (Leaflet) come from the Python packages `plotly` and `xstatic-leaflet` and are
served from the installed files: the dashboard needs no internet access and no build step.

- `common`: the logged-in user as a dependency, CSRF checks, rendering, flash messages.
- `sessions`: login sessions (cookie, expiry, CSRF token).
- `assets`: the static files.
- `pages/`: one module per area (login, overview, devices, deployments, alerts, audit, users).

docs/dashboard.md is the user's guide.
"""

from __future__ import annotations

from fastapi import FastAPI

from fleetkeeper.web import assets, common
from fleetkeeper.web.pages import ROUTERS


def install(app: FastAPI) -> None:
    common.install(app)
    assets.install(app)
    for router in ROUTERS:
        app.include_router(router)
