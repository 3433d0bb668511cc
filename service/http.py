"""Small HTTP helpers shared by the routes: msgspec JSON responses and error bodies."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from typing import Any, cast

import msgspec
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, ExceptionHandler, Message, Receive, Scope, Send
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


SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]
HSTS = (b"strict-transport-security", b"max-age=31536000")


def response_headers(hsts: bool) -> list[tuple[bytes, bytes]]:
    return [*SECURITY_HEADERS, HSTS] if hsts else list(SECURITY_HEADERS)


class SecurityHeaders:
    """ASGI middleware: every HTTP answer says ``X-Content-Type-Options: nosniff`` and
    ``Referrer-Policy: no-referrer``, and with ``hsts`` (SENSE_HSTS, for a service reached over
    HTTPS) ``Strict-Transport-Security``. The webhook's raw answers carry the same
    (service/webhook.py)."""

    def __init__(self, app: ASGIApp, hsts: bool = False) -> None:
        self.app = app
        self.headers = response_headers(hsts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *self.headers]}
            await send(message)

        await self.app(scope, receive, with_headers)


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


class BodyTimeout(Exception):
    """A request's body did not arrive within its deadline (answered 408, see ``BodyDeadline``)."""


class BodyDeadline:
    """ASGI middleware: a request's whole body must arrive within ``seconds`` of the route's
    first read, else the read raises ``BodyTimeout`` (answered 408 + Connection: close), so a
    client trickling a body cannot hold a connection and a handler for as long as it likes.
    The webhook reads its body under the same deadline itself (service/webhook.py)."""

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        done = False

        async def bounded() -> Message:
            nonlocal deadline, done
            if done:
                return await receive()
            if deadline is None:
                deadline = loop.time() + self.seconds
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise BodyTimeout() from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                done = True
            return message

        await self.app(scope, bounded, send)


CLOSE = {"Connection": "close"}  # after this answer: what the client sends next is not read


def body_timeout_detail(seconds: float) -> str:
    return f"body not received within SENSE_BODY_TIMEOUT_SECONDS ({seconds:g} s)"


def body_timeout_handler(seconds: float) -> ExceptionHandler:
    detail = body_timeout_detail(seconds)

    async def answer(request: Request, exc: Exception) -> Response:
        return error(408, "body_timeout", detail, CLOSE)

    return cast(ExceptionHandler, answer)


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
