"""GET /docs: the interactive API documentation, with every asset served by the service itself.

FastAPI's own /docs page loads Swagger UI's script and style from a public CDN and its favicon from
fastapi's site, so on a host that reaches nothing outside it is a blank page. Here the same page
(``get_swagger_ui_html``) points at the copy of ``swagger-ui-dist`` shipped in ``app/static/swagger-ui``
(see its README for the version and licence), served from a fixed list of files: no path from the
request reaches the file system. /redoc is turned off (``FASTAPI_DOCS_OPTIONS``): its page loads ReDoc
and web fonts from CDNs as well.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from starlette.exceptions import HTTPException

ASSETS_DIR: Final = Path(__file__).resolve().parents[2] / "static" / "swagger-ui"
DOCS_PATH: Final = "/docs"
ASSETS_PATH: Final = "/docs/assets"
# The files the page loads, with their media types; nothing else under ASSETS_DIR is served.
ASSETS: Final[dict[str, str]] = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon-32x32.png": "image/png",
}
# FastAPI(**FASTAPI_DOCS_OPTIONS): no CDN-backed /docs or /redoc of FastAPI's own.
FASTAPI_DOCS_OPTIONS: Final[dict[str, Any]] = {"docs_url": None, "redoc_url": None}
# validatorUrl None: no badge that would send the spec to validator.swagger.io.
SWAGGER_UI_PARAMETERS: Final[dict[str, Any]] = {"validatorUrl": None}
# The assets change only with a new release of the service; let browsers keep them for a day.
ASSET_CACHE_CONTROL: Final = "public, max-age=86400"

router = APIRouter(include_in_schema=False)


@router.get(DOCS_PATH, response_class=HTMLResponse)
async def swagger_ui(request: Request) -> HTMLResponse:
    app = request.app
    if app.openapi_url is None:
        raise HTTPException(status_code=404, detail="the OpenAPI document is turned off")
    root = str(request.scope.get("root_path", "")).rstrip("/")  # behind a proxy that strips a prefix
    assets = f"{root}{ASSETS_PATH}"
    return get_swagger_ui_html(
        openapi_url=f"{root}{app.openapi_url}",
        title=f"{app.title} - API documentation",
        swagger_js_url=f"{assets}/swagger-ui-bundle.js",
        swagger_css_url=f"{assets}/swagger-ui.css",
        swagger_favicon_url=f"{assets}/favicon-32x32.png",
        swagger_ui_parameters={**SWAGGER_UI_PARAMETERS, **(app.swagger_ui_parameters or {})},
    )


@router.api_route(ASSETS_PATH + "/{name}", methods=["GET", "HEAD"])
async def swagger_ui_asset(name: str) -> FileResponse:
    media_type = ASSETS.get(name)
    if media_type is None:
        raise HTTPException(status_code=404, detail=f"no documentation asset {name!r}")
    return FileResponse(
        ASSETS_DIR / name, media_type=media_type, headers={"Cache-Control": ASSET_CACHE_CONTROL}
    )
