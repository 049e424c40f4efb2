"""Static files: our own (`static/`), plotly.js from the `plotly` package and Leaflet from
`xstatic-leaflet`, all from disk, cacheable."""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from starlette.staticfiles import StaticFiles

HERE = Path(__file__).parent


def _package_dir(name: str) -> Path:
    """Where an installed package lives, without importing it (plotly takes a second)."""
    spec = find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the dashboard needs the package {name!r}: pip install fleetkeeper")
    return Path(next(iter(spec.submodule_search_locations)))


PLOTLY_JS = _package_dir("plotly") / "package_data" / "plotly.min.js"
LEAFLET = _package_dir("xstatic.pkg.leaflet") / "data"
_CACHE = {"Cache-Control": "public, max-age=86400"}


def install(app: FastAPI) -> None:
    app.mount("/static/app", StaticFiles(directory=HERE / "static"), name="static-app")
    app.mount("/static/vendor/leaflet", StaticFiles(directory=LEAFLET), name="static-leaflet")

    @app.get("/static/vendor/plotly.min.js", include_in_schema=False)
    async def plotly_js() -> FileResponse:
        return FileResponse(PLOTLY_JS, media_type="text/javascript", headers=_CACHE)
