"""Small HTTP helpers shared by the routes: msgspec JSON responses and error bodies."""

from __future__ import annotations

from typing import Any

import msgspec
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

_encoder = msgspec.json.Encoder()


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return _encoder.encode(content)


def error(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> JSON:
    return JSON({"error": code, "detail": detail}, status_code=status, headers=headers)


class RejectNul:
    """ASGI middleware: a NUL in the path or the query string gets a clear 400 before any route
    sees it (Postgres text cannot hold NUL, so it would otherwise surface as a server error)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and (
            b"%00" in scope.get("query_string", b"")
            or b"%00" in scope.get("raw_path", b"")
            or "\x00" in scope.get("path", "")
        ):
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008, "reason": "NUL in request"})
                return
            response = error(400, "invalid_parameter", "the path or query contains a NUL character")
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
