"""The API documentation (Swagger UI at /docs, ReDoc at /redoc) from local assets: the Swagger UI and
ReDoc bundles packaged by `fastapi-offline` (from PyPI), started by our own scripts in static/, so the
pages work without internet under a policy that allows exactly these files (DOCS_POLICY). ReDoc's
bundle shows a logo from cdn.redoc.ly in its menu: it is served with that one address pointed at the
local favicon, so that the page asks no other host for anything."""

from __future__ import annotations

import html
from functools import cache
from pathlib import Path
from typing import Any

import fastapi_offline
from fastapi import APIRouter, FastAPI
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

VENDOR = Path(fastapi_offline.__file__).parent / "static"  # swagger-ui-bundle.js, swagger-ui.css, redoc...
STATIC = Path(__file__).parent / "static"
# no inline script, no other origin; ReDoc renders in a worker it creates from a blob
DOCS_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
               "font-src 'self'; connect-src 'self'; worker-src 'self' blob:; frame-ancestors 'none'; "
               "base-uri 'none'; form-action 'none'")
DOCS_PATHS = ("/docs", "/redoc")
REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"


@cache
def redoc_bundle() -> bytes:
    return (VENDOR / "redoc.standalone.js").read_text().replace(REDOC_LOGO, "/static/vendor/favicon.png").encode()


def docs_page(title: str, body: str, head: str = "") -> str:
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<link rel="icon" href="/static/vendor/favicon.png">{head}</head><body>{body}</body></html>')


def declare_keys(app: FastAPI, public: frozenset[str]) -> None:
    """Tell the schema (and Swagger UI's Authorize button) how a key is presented; the gate checks it
    (search_api/security/gate.py). Routes in `public` need none."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            schema.setdefault("components", {})["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer", "description": "Authorization: Bearer msk_..."},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}}
            schema["security"] = [{"bearer": []}, {"apiKey": []}]
            for path, operations in schema["paths"].items():
                for operation in operations.values():
                    if path in public:
                        operation["security"] = []
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def add_docs(app: FastAPI) -> None:
    """Mount the assets (/static/vendor from fastapi-offline, /static from search_api/static) and the two
    documentation pages."""
    router = APIRouter(include_in_schema=False)
    openapi = html.escape(app.openapi_url or "/openapi.json")

    @router.get("/docs", response_class=HTMLResponse)
    def swagger() -> str:
        return docs_page(f"{app.title} - API", '<div id="swagger-ui"></div><script src="/static/vendor/'
                         f'swagger-ui-bundle.js"></script><script src="/static/docs.js" data-openapi="{openapi}">'
                         '</script>', '<link rel="stylesheet" href="/static/vendor/swagger-ui.css">')

    @router.get("/redoc", response_class=HTMLResponse)
    def redoc() -> str:
        return docs_page(f"{app.title} - API reference", f'<redoc spec-url="{openapi}"></redoc>'
                         '<script src="/static/redoc.js"></script>')

    @router.get("/static/redoc.js")
    def redoc_script() -> Response:
        return Response(redoc_bundle(), media_type="text/javascript", headers={"Cache-Control": "max-age=3600"})

    app.include_router(router)
    app.mount("/static/vendor", StaticFiles(directory=VENDOR), name="docs-assets")
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
