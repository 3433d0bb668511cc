"""The dashboard: one static page and its assets, served with a strict CSP."""

from __future__ import annotations

import re
from importlib import resources

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

_STATIC = resources.files("service").joinpath("static")
_CSP = (
    "default-src 'self'; img-src 'self' data:; connect-src 'self' {ws}; "
    "style-src 'self'; script-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'self'"
)
_HOST = re.compile(r"[A-Za-z0-9.\-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")


def csp(host: str | None) -> str:
    """The page's policy: its WebSocket may reach this host only (older browsers do not count
    ws:/wss: of the same host as 'self', so it is named; no other host)."""
    ws = f"ws://{host} wss://{host}" if host and _HOST.fullmatch(host) else ""
    return _CSP.format(ws=ws).replace("'self' ;", "'self';")


async def dashboard(request: Request) -> Response:
    body = _STATIC.joinpath("index.html").read_bytes()
    return Response(
        body,
        media_type="text/html; charset=utf-8",
        headers={
            "Content-Security-Policy": csp(request.headers.get("host")),
            "Cache-Control": "no-cache",
        },
    )


def routes() -> list[BaseRoute]:
    """The dashboard page and its static files."""
    return [
        Route("/", dashboard, methods=["GET"]),
        Mount("/static", app=StaticFiles(directory=str(_STATIC)), name="static"),
    ]
