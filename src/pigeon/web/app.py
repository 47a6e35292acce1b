"""The ASGI application: API, UI, metrics and health under one FastAPI app."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from pigeon import __version__, transcripts

from . import api, directory_api, ops, ui
from .context import WebContext
from .security import SecurityHeaders

__all__ = ["create_app"]

_STATIC = Path(__file__).parent / "static"


def create_app(context: WebContext) -> FastAPI:
    app = FastAPI(
        title="Pigeon",
        version=__version__,
        description="Mailboxes, the mail queue and the server's status. Authenticate with a"
        " bearer token (`pigeon web token create ADDRESS`) or a login session; requests that"
        " change something and rely on the session cookie must send its CSRF token (GET"
        " /api/me) as X-CSRF-Token.",
        openapi_url="/api/openapi.json",
        # The interactive pages load script from a CDN, which the CSP forbids; the document
        # itself is what tools want.
        docs_url=None,
        redoc_url=None,
    )
    app.state.context = context
    # The server has enabled recording already; an app run on its own (tests) starts it here.
    transcripts.enable(worker=context.status.worker)
    app.include_router(api.router)
    app.include_router(directory_api.router)
    app.include_router(ops.router)
    app.include_router(ui.router)
    app.mount("/static", StaticFiles(directory=_STATIC), name="static")
    app.add_middleware(SecurityHeaders)

    @app.exception_handler(ui.LoginRequired)
    async def to_login(request: Request, error: ui.LoginRequired) -> Response:
        return RedirectResponse("/login", status_code=303)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> Response:
        if request.url.path.startswith("/api/") or request.url.path in ("/metrics", "/healthz"):
            return JSONResponse(
                {"detail": error.detail}, status_code=error.status_code, headers=error.headers
            )
        return ui.templates.TemplateResponse(
            request,
            "error.html",
            {"user": None, "csrf": "", "status": error.status_code, "detail": error.detail},
            status_code=error.status_code,
        )

    return app
