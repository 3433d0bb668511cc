"""The dashboard: one static page and its assets, served with a strict CSP."""

from __future__ import annotations

from importlib import resources

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

_STATIC = resources.files("service").joinpath("static")
_CSP = (
    "default-src 'self'; img-src 'self' data:; connect-src 'self' ws: wss:; "
    "style-src 'self'; script-src 'self'; frame-ancestors 'none'"
)


async def dashboard(request: Request) -> Response:
    body = _STATIC.joinpath("index.html").read_bytes()
    return Response(
        body,
        media_type="text/html; charset=utf-8",
        headers={"Content-Security-Policy": _CSP, "Cache-Control": "no-cache"},
    )


def routes() -> list[BaseRoute]:
    """The dashboard page and its static files."""
    return [
        Route("/", dashboard, methods=["GET"]),
        Mount("/static", app=StaticFiles(directory=str(_STATIC)), name="static"),
    ]
