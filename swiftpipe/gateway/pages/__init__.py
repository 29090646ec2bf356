"""The pages the gateway serves: `/` (playground), `/review` (review queue), `/dashboard`.

Plain HTML, one stylesheet and one script, all served from this package (no CDN, no build step).
The pages call the gateway's own API with a key typed once and kept in the browser session.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent
PAGES = {"/": "playground.html", "/review": "review.html", "/dashboard": "dashboard.html"}
JS = "text/javascript; charset=utf-8"
ASSETS = {"common.js": JS, "playground.js": JS, "review.js": JS, "dashboard.js": JS, "style.css": "text/css; charset=utf-8"}


def mount(app) -> None:
    from fastapi.responses import HTMLResponse, Response

    headers = {"Cache-Control": "no-cache", "Content-Security-Policy":
               "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'"}

    def page_route(filename: str):
        async def page() -> HTMLResponse:
            return HTMLResponse((HERE / filename).read_text(encoding="utf-8"), headers=headers)
        return page

    for path, filename in PAGES.items():
        app.add_api_route(path, page_route(filename), methods=["GET"], include_in_schema=False)

    def asset_route(filename: str, media_type: str):
        async def asset() -> Response:
            return Response((HERE / filename).read_bytes(), media_type=media_type, headers=headers)
        return asset

    for filename, media_type in ASSETS.items():
        app.add_api_route(f"/static/{filename}", asset_route(filename, media_type), methods=["GET"],
                          include_in_schema=False)
