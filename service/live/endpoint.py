"""``WS /api/v1/stream``: authenticate, attach to the relay, send ``ready``, then pump the
client's buffer until it leaves, falls behind (1013) or the server goes away."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

import msgspec
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from service import db
from service.http import CLOSE_TRY_AGAIN
from service.live.frames import (
    AUTH_TIMEOUT,
    CLOSE_SLOW,
    CLOSE_UNAUTHORIZED,
    PONG,
    Ready,
    encoder,
)
from service.live.relay import Client, close_socket

if TYPE_CHECKING:
    from service.live.hub import Live

log = logging.getLogger("sense.stream")


class _Hello(msgspec.Struct):
    token: str | None = None
    type: str | None = None


_hello = msgspec.json.Decoder(_Hello)


async def _token(ws: WebSocket) -> str | None:
    token = ws.query_params.get("token")
    if not token:
        scheme, _, value = ws.headers.get("authorization", "").partition(" ")
        token = value.strip() if scheme.lower() == "bearer" else None
    if not token:
        try:
            first = await asyncio.wait_for(ws.receive_text(), AUTH_TIMEOUT)
            token = _hello.decode(first).token
        except (TimeoutError, msgspec.DecodeError, KeyError, WebSocketDisconnect, RuntimeError):
            token = None
    return token.strip() if token else None


_waiting = 0  # sockets of this process waiting for their first message (the token)


async def stream_endpoint(ws: WebSocket) -> None:
    global _waiting
    live: Live = ws.app.state.live
    await ws.accept()
    if _waiting >= live.max_unauthenticated:
        # no token yet and too many like it: refuse instead of holding one more
        await close_socket(ws, CLOSE_TRY_AGAIN, "too many connections waiting to authenticate")
        return
    _waiting += 1
    try:
        token = await _token(ws)
    finally:
        _waiting -= 1
    tenant = live.registry.tenant_for_token(token) if token else None
    if tenant is None:
        await close_socket(ws, CLOSE_UNAUTHORIZED, 'unauthorized: send {"token": "<tenant token>"}')
        return
    client = Client(ws, tenant.tenant_id, live.buffer_frames, live.buffer_bytes)
    try:
        await live.relay.attach(client)
    except Exception as exc:
        log.warning("live subscribe failed: %s", exc.__class__.__name__)
        await live.relay.detach(client)
        await close_socket(ws, CLOSE_TRY_AGAIN, "Redis unavailable, reconnect later")
        return
    if live.registry.tenant_for_token(token or "") is None:  # rotated while we subscribed
        await live.relay.detach(client)
        await close_socket(ws, CLOSE_UNAUTHORIZED, "token rotated or revoked")
        return
    try:
        # first frame, ahead of any event that arrived while we read the frontier
        client.offer_first(encoder.encode(Ready(tenant.name, await live.frontier())).decode())
    except db.UNAVAILABLE_ERRORS:
        await live.relay.detach(client)
        await close_socket(ws, CLOSE_TRY_AGAIN, "database unavailable, reconnect later")
        return
    sender = asyncio.create_task(client.send_forever())
    receiver = asyncio.create_task(_receive(ws, client))
    dropped = asyncio.create_task(client.dropped.wait())
    revoked = asyncio.create_task(client.revoked.wait())
    try:
        done, _ = await asyncio.wait(
            {sender, receiver, dropped, revoked}, return_when=asyncio.FIRST_COMPLETED
        )
        if revoked in done:
            for task in (sender, receiver):
                task.cancel()
            await asyncio.gather(sender, receiver, return_exceptions=True)
            await close_socket(ws, CLOSE_UNAUTHORIZED, "token rotated or revoked")
        elif dropped in done:
            log.info("live client of %s dropped: too slow", tenant.name)
            sender.cancel()
            # The close frame queues behind what the socket still holds, so a client that
            # stays stalled may only see the connection end (Granian gives up on the close
            # handshake); either way it reconnects and catches up.
            await close_socket(ws, CLOSE_SLOW, "too slow: reconnect and catch up with ?after=")
    except (WebSocketDisconnect, RuntimeError, OSError):
        pass
    finally:
        tasks: tuple[asyncio.Task[Any], ...] = (sender, receiver, dropped, revoked)
        for task in tasks:
            task.cancel()
        await live.relay.detach(client)


async def _receive(ws: WebSocket, client: Client) -> None:
    while True:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            return
        text = message.get("text")
        if text and '"ping"' in text:
            with contextlib.suppress(msgspec.DecodeError):
                if _hello.decode(text).type == "ping":
                    client.offer(PONG)


def routes() -> list[WebSocketRoute]:
    return [WebSocketRoute("/api/v1/stream", stream_endpoint)]
