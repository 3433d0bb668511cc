"""This process's live clients: each WebSocket with its bounded buffer (``Client``), and the
relay that subscribes to the Redis channels of the tenants it has clients of and hands every
frame to their buffers (``Relay``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import deque
from typing import TYPE_CHECKING, Any

import msgspec
from starlette.websockets import WebSocket, WebSocketState

from service import metrics
from service.contracts import CHANNEL_PREFIX, CONTROL_CHANNEL, channel
from service.live.frames import (
    HEARTBEAT,
    HEARTBEAT_SECONDS,
    Analyzed,
    analysis_of,
    encoder,
    wire_decoder,
)
from service.resolve import Registry

if TYPE_CHECKING:
    import redis.asyncio as aioredis

log = logging.getLogger("sense.stream")


class Client:
    """One WebSocket with its bounded buffer. The relay only ever appends; never waits."""

    def __init__(self, ws: WebSocket, tenant_id: uuid.UUID, max_frames: int, max_bytes: int):
        self.ws = ws
        self.tenant_id = tenant_id
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self.queue: deque[str] = deque()
        self.queued_bytes = 0
        self.dropped = asyncio.Event()
        self.revoked = asyncio.Event()  # the token it authenticated with no longer works
        self._ready = asyncio.Event()

    def offer_first(self, frame: str) -> None:
        self.queue.appendleft(frame)
        self.queued_bytes += len(frame)
        self._ready.set()

    def offer(self, frame: str) -> bool:
        if self.dropped.is_set():
            return False
        size = len(frame)
        if len(self.queue) >= self.max_frames or self.queued_bytes + size > self.max_bytes:
            self.queue.clear()
            self.queued_bytes = 0
            self.dropped.set()  # the endpoint closes it (1013); never stall the others
            return False
        self.queue.append(frame)
        self.queued_bytes += size
        self._ready.set()
        return True

    async def send_forever(self) -> None:
        while True:
            while not self.queue:
                self._ready.clear()
                await self._ready.wait()
            frame = self.queue.popleft()
            self.queued_bytes -= len(frame)
            await self.ws.send_text(frame)


class Relay:
    """This process's subscriptions and clients: one pub/sub connection, one channel per tenant
    that has clients here."""

    def __init__(self, registry: Registry, redis: aioredis.Redis | None) -> None:
        self.registry = registry
        self.redis = redis
        self.clients: dict[uuid.UUID, set[Client]] = {}
        self._pubsub: Any = None
        self._confirmed: dict[str, asyncio.Future[None]] = {}
        self._subscribing = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._heartbeat(), name="sense-heartbeat"))
        if self.redis is None:
            return
        try:
            await self._connect()
        except Exception as exc:  # Redis down at start: the reader keeps retrying
            log.warning("live relay could not reach Redis: %s", exc.__class__.__name__)
        self._tasks.append(asyncio.create_task(self._read_forever(), name="sense-relay"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()

    @property
    def client_count(self) -> int:
        return sum(len(c) for c in self.clients.values())

    async def attach(self, client: Client) -> None:
        """Register ``client``; returns once its tenant's channel is subscribed."""
        self.clients.setdefault(client.tenant_id, set()).add(client)
        metrics.STREAM_CLIENTS.set(self.client_count)
        if self._pubsub is None:
            return  # Redis is away: the reader subscribes everyone when it is back
        name = channel(client.tenant_id)
        # One (un)subscription at a time: a tenant's last client leaving while a new one
        # arrives must end subscribed, whatever order Redis sees the commands in otherwise.
        async with self._subscribing:
            waiter = self._confirmed.get(name)  # present: subscribed or on its way
            if waiter is None:
                waiter = asyncio.get_running_loop().create_future()
                self._confirmed[name] = waiter
                try:
                    await self._pubsub.subscribe(name)
                except BaseException:
                    self._confirmed.pop(name, None)
                    raise
        await asyncio.wait_for(asyncio.shield(waiter), timeout=5.0)

    async def detach(self, client: Client) -> None:
        peers = self.clients.get(client.tenant_id)
        if peers is None:
            return
        peers.discard(client)
        metrics.STREAM_CLIENTS.set(self.client_count)
        if peers:
            return
        del self.clients[client.tenant_id]
        name = channel(client.tenant_id)
        async with self._subscribing:
            if client.tenant_id in self.clients:
                return  # a new client of this tenant came meanwhile: stay subscribed
            self._confirmed.pop(name, None)
            if self._pubsub is not None:
                with contextlib.suppress(Exception):
                    await self._pubsub.unsubscribe(name)

    def dispatch(self, tenant_id: uuid.UUID, payload: bytes) -> None:
        peers = self.clients.get(tenant_id)
        if not peers:
            return
        try:
            wire = wire_decoder.decode(payload)
        except msgspec.DecodeError:
            log.warning("undecodable live event for tenant %s", tenant_id)
            return
        frames = [bytes(raw).decode() for raw in wire.frames]
        if wire.analyzed:
            names = self.registry.instance_names(tenant_id)
            for item in wire.analyzed:
                name = names.get(item.instance_id)
                if name is None:  # not this tenant's instance: never cross tenants
                    continue
                analyzed = Analyzed(name, item.message_id, analysis_of(item))
                frames.append(encoder.encode(analyzed).decode())
        for client in list(peers):
            for frame in frames:
                if not client.offer(frame):
                    break

    def broadcast(self, frame: str) -> None:
        for peers in self.clients.values():
            for client in list(peers):
                client.offer(frame)

    async def _connect(self) -> None:
        assert self.redis is not None
        pubsub = self.redis.pubsub()
        channels = [CONTROL_CHANNEL, *(channel(t) for t in self.clients)]
        loop = asyncio.get_running_loop()
        for name in channels[1:]:
            waiter = self._confirmed.get(name)
            if waiter is None or waiter.done():
                self._confirmed[name] = loop.create_future()
        try:
            await pubsub.subscribe(*channels)
        except BaseException:
            with contextlib.suppress(Exception):
                await pubsub.aclose()
            raise
        self._pubsub = pubsub

    async def _read_forever(self) -> None:
        backoff = 0.2
        while True:
            try:
                message = await self._pubsub.get_message(timeout=None)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("live relay lost Redis (%s); reconnecting", exc.__class__.__name__)
                with contextlib.suppress(Exception):
                    await self._pubsub.aclose()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                try:
                    await self._connect()
                except Exception:
                    continue
                backoff = 0.2
                self.broadcast('{"type":"resync","reason":"relay reconnected to Redis"}')
                continue
            if message is None:
                continue
            name = message["channel"].decode()
            kind = message["type"]
            if kind == "subscribe":
                waiter = self._confirmed.get(name)
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)
            elif kind == "message" and name.startswith(CHANNEL_PREFIX) and name != CONTROL_CHANNEL:
                try:
                    tenant_id = uuid.UUID(name[len(CHANNEL_PREFIX) :])
                except ValueError:
                    continue
                self.dispatch(tenant_id, message["data"])
                await asyncio.sleep(0)  # let the clients' senders drain between messages

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            self.broadcast(HEARTBEAT)


# publisher ------------------------------------------------------------------------------------


Key = tuple[uuid.UUID, uuid.UUID, str]


async def close_socket(ws: WebSocket, code: int, reason: str) -> None:
    if ws.application_state == WebSocketState.DISCONNECTED:
        return
    with contextlib.suppress(Exception):
        await asyncio.wait_for(ws.close(code, reason), 1.0)
