"""The playground: a static single-page app at ``/`` (and ``/playground/{endpoint id}``).

The page is plain files shipped in the package (``server/playground``): no build step, no CDN, so
it works air-gapped. It builds its forms from ``/openapi.json`` and talks to the same public routes
as the official clients (queue, SSE status stream, storage uploads), so it exercises the real flow.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from server.errors import FalError

STATIC_DIR = Path(__file__).resolve().parents[1] / "playground"
ASSETS_PREFIX = "/playground-assets"
# Browsers revalidate (cheap 304s) so an upgraded server never runs a stale app.js.
NO_CACHE = {"cache-control": "no-cache"}

router = APIRouter(tags=["playground"], include_in_schema=False)


def _index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=NO_CACHE)


@router.api_route("/", methods=["GET", "HEAD"])
@router.api_route("/playground", methods=["GET", "HEAD"])
def playground_home() -> FileResponse:
    return _index()


@router.api_route("/playground/{endpoint_id:path}", methods=["GET", "HEAD"])
def playground_endpoint(endpoint_id: str) -> FileResponse:
    """Deep link to one endpoint's form; the page reads the id from its own URL."""
    return _index()


@router.api_route(ASSETS_PREFIX + "/{name:path}", methods=["GET", "HEAD"])
def playground_asset(name: str) -> FileResponse:
    path = (STATIC_DIR / name).resolve()
    if not path.is_relative_to(STATIC_DIR) or not path.is_file():
        raise FalError(404, f"No playground file {name!r}", "not_found")
    return FileResponse(path, headers=NO_CACHE)
