"""Small HTTP helpers shared by the routes: msgspec JSON responses and error bodies."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import Any, cast

import msgspec
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, ExceptionHandler, Receive, Scope, Send
from starlette.websockets import WebSocket

from service import db

_encoder = msgspec.json.Encoder()
CLOSE_TRY_AGAIN = 1013  # WebSocket "try again later": the server cannot serve it right now


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


def unavailable_handlers(
    retry_after: int, count: Callable[[str], None]
) -> Mapping[Any, ExceptionHandler]:
    """Starlette exception handlers: the database or Redis being unreachable, wherever a read,
    search or admin route meets it, is answered 503 + Retry-After (a WebSocket: close 1013, try
    again later); the client retries and the pool reconnects by itself, never a 500.
    ``count(reason)`` counts each answer."""
    retry = {"Retry-After": str(retry_after)}

    def handler(reason: str, what: str) -> ExceptionHandler:
        async def answer(conn: Request | WebSocket, exc: Exception) -> Response | None:
            count(reason)
            if isinstance(conn, WebSocket):
                with contextlib.suppress(RuntimeError, OSError):
                    await conn.close(CLOSE_TRY_AGAIN, f"{what} unavailable, reconnect later")
                return None
            return error(503, "unavailable", f"{what} unavailable, retry later", retry)

        return cast(ExceptionHandler, answer)

    database, redis = handler("database", "database"), handler("redis", "Redis")
    handlers: dict[Any, ExceptionHandler] = {exc: database for exc in db.UNAVAILABLE_ERRORS}
    handlers[RedisConnectionError] = handlers[RedisTimeoutError] = redis
    return handlers
