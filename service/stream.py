"""The live stream: committed changes fanned out to every server process's WebSocket clients.

How it flows::

    flusher commits ─▶ Publisher (one per process, in commit order; the rows the commit returned)
        ─▶ PUBSUB NUMSUB: which of the commit's tenants have a live client anywhere
        ─▶ PUBLISH sense:live:{tenant_id}  (one Redis message per listened tenant per flush)
    worker writes analysis ─▶ publish_analyzed() ─▶ the same channel
    every process: Relay (one pub/sub connection, SUBSCRIBEd to the tenants it has clients of)
        ─▶ each client's bounded buffer ─▶ its WebSocket

Without SENSE_REDIS_URL the publisher hands its frames to the relay of its own process (fine for
one process; with several, a client only sees what its own process ingested).

``WS /api/v1/stream`` — authenticate with the tenant token, either as ``?token=`` or as the
first message ``{"token": "…"}`` within 10 s (browsers: prefer the message, URLs get logged).
Every frame is one JSON text message with a ``type``:

``{"type": "ready", "tenant": "acme", "cursor": "c812.0"}``
    Sent once, when the subscription is live: every event committed from here on is delivered.
    ``cursor`` is a catch-up position taken at that moment.
``{"type": "message.created", "cursor": "c815.42", "message": {…message resource…}}``
    A message's content was stored (design.md, "The message resource"). ``cursor`` is its
    position: ``GET /api/v1/messages?after=<cursor>`` lists what arrived after it.
``{"type": "message.updated", "message": {…}}``
    Status, edit, delete or reaction changed: the whole resource as it is now.
``{"type": "message.analyzed", "instance": "…", "message_id": "…", "analysis": {…}}``
    The worker wrote the analysis; ``analysis`` is the resource's ``analysis`` object
    (``state``, ``sentiment``, ``emotion``, ``satisfaction``, ``analyzable``, ``error``).
``{"type": "instance.state", "instance": {…}}`` / ``{"type": "instance.qrcode", "instance": {…}}``
    Connection state or pairing QR changed: the instance as ``GET /api/v1/instances`` shows it
    (``qrcode.base64`` is a ``data:image/png`` URL; it is null once the state is ``open``).
``{"type": "resync", "reason": "…"}``
    Events may have been missed (the relay lost Redis for a moment): catch up as on reconnect.
``{"type": "heartbeat"}``
    Every 25 s, so that idle proxies keep the connection.

The client may send ``{"type": "ping"}`` (answered ``{"type": "pong"}``); anything else is
ignored. Close codes: 4401 bad or missing token, 1013 the client fell behind (its buffer of
``BUFFER_FRAMES`` frames / ``BUFFER_BYTES`` bytes filled up) and was dropped, 1001 the server
is going away (a dropped client whose socket is still backed up may only see the connection
end: the close frame waits behind the data it has not read). Delivery is at most once per
connection: after any reconnect, resume with ``GET /api/v1/messages?after=<cursor>`` from
the smallest cursor among the last few ``message.created`` frames received (or the ``ready``
cursor), and drop duplicates by (instance, message_id) — frames of transactions committed by
different processes in the same instant may arrive slightly out of cursor order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from importlib import resources
from typing import TYPE_CHECKING, Any

import asyncpg
import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from service import api, db
from service.http import JSON, error
from service.ingest import Committed
from service.resolve import Registry

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from service.settings import Settings

log = logging.getLogger("sense.stream")

CHANNEL_PREFIX = "sense:live:"
CONTROL_CHANNEL = "sense:live:control"  # always subscribed: keeps the reader loop simple
BUFFER_FRAMES = 5000  # per client; past either limit the client is dropped (close 1013)
BUFFER_BYTES = 2 * 1024 * 1024
FRAMES_PER_MESSAGE = 256  # frames per Redis message, so one flush cannot swamp a buffer
AUTH_TIMEOUT = 10.0
HEARTBEAT_SECONDS = 25.0
CLOSE_UNAUTHORIZED = 4401
CLOSE_SLOW = 1013
CLOSE_GOING_AWAY = 1001

_encoder = msgspec.json.Encoder()


def channel(tenant_id: uuid.UUID | str) -> str:
    return f"{CHANNEL_PREFIX}{tenant_id}"


# frames --------------------------------------------------------------------------------------


class Created(msgspec.Struct, tag="message.created", tag_field="type"):
    cursor: str
    message: api.Message


class Updated(msgspec.Struct, tag="message.updated", tag_field="type"):
    message: api.Message


class Analyzed(msgspec.Struct, tag="message.analyzed", tag_field="type"):
    instance: str
    message_id: str
    analysis: api.Analysis


class InstanceState(msgspec.Struct, tag="instance.state", tag_field="type"):
    instance: api.InstanceOut


class InstanceQrCode(msgspec.Struct, tag="instance.qrcode", tag_field="type"):
    instance: api.InstanceOut


class Ready(msgspec.Struct, tag="ready", tag_field="type"):
    tenant: str
    cursor: str


class AnalyzedItem(msgspec.Struct):
    """What the worker hands to ``publish_analyzed`` for each message it analysed."""

    instance_id: uuid.UUID
    message_id: str
    state: str  # done | failed | skipped
    sentiment: float | None = None
    emotion: str | None = None
    satisfaction: int | None = None
    error: str | None = None


class _Wire(msgspec.Struct):
    """One Redis message: finished frames, plus analyses whose instance name the relay adds."""

    frames: list[msgspec.Raw] = []
    analyzed: list[AnalyzedItem] = []


_wire_decoder = msgspec.json.Decoder(_Wire)
_HEARTBEAT = '{"type":"heartbeat"}'
_PONG = '{"type":"pong"}'


def encode_position(content_xid: int, seq: int) -> str:
    return f"c{content_xid}.{seq}"


def decode_position(cursor: str) -> tuple[int, int]:
    xid, dot, seq = cursor.removeprefix("c").partition(".")
    try:
        if not cursor.startswith("c") or not dot:
            raise ValueError
        value = int(xid), int(seq)
    except ValueError:
        raise ValueError("after is not a cursor from this API (message.created or ready)") from None
    if not (0 <= value[0] < 2**64 and 0 <= value[1] < 2**63):  # an xid8 and a bigint
        raise ValueError("after is not a cursor from this API (message.created or ready)")
    return value


def _wire(frames: list[bytes]) -> bytes:
    return b'{"frames":[' + b",".join(frames) + b"]}"


def publish_analyzed(
    redis_client: Any, tenant_id: uuid.UUID | str, items: Iterable[AnalyzedItem | Mapping[str, Any]]
) -> int:
    """Tell the tenant's live clients that these messages were analysed (worker side).

    Call it after the analysis is committed, with a *sync* ``redis.Redis`` client; ``items``
    are ``AnalyzedItem`` or mappings with the same keys (``instance_id``, ``message_id``,
    ``state``, ``sentiment``, ``emotion``, ``satisfaction``, ``error``). Returns the number of
    Redis messages published. Best effort: a live client that misses it catches up on reconnect.
    """
    converted = [
        i if isinstance(i, AnalyzedItem) else msgspec.convert(i, AnalyzedItem, strict=False)
        for i in items
    ]
    sent = 0
    for start in range(0, len(converted), FRAMES_PER_MESSAGE):
        chunk = converted[start : start + FRAMES_PER_MESSAGE]
        redis_client.publish(channel(tenant_id), _encoder.encode(_Wire(analyzed=chunk)))
        sent += 1
    return sent


def analysis_of(item: AnalyzedItem) -> api.Analysis:
    return api.Analysis(
        state="done" if item.state == "skipped" else item.state,
        sentiment=api.rounded_sentiment(item.sentiment),
        emotion=item.emotion,
        satisfaction=item.satisfaction,
        analyzable=item.state != "skipped",
        error=item.error,
    )


# clients and the relay ---------------------------------------------------------------------


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
            wire = _wire_decoder.decode(payload)
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
                frames.append(_encoder.encode(analyzed).decode())
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
            self.broadcast(_HEARTBEAT)


# publisher ------------------------------------------------------------------------------------


Key = tuple[uuid.UUID, uuid.UUID, str]
Sink = Callable[[list[tuple[uuid.UUID, bytes]]], Awaitable[None]]
# Of these tenants, those with a live client somewhere (a subscribed channel) right now.
Listened = Callable[[set[uuid.UUID]], Awaitable[set[uuid.UUID]]]


class Publisher:
    """Turns each commit into frames, in commit order, one task per process. The batcher hook
    only queues (it never waits on Postgres or Redis); bursts coalesce into one read."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        registry: Registry,
        sink: Sink,
        listened: Listened,
        max_pending: int = 10_000,
    ) -> None:
        self.pool = pool
        self.registry = registry
        self.sink = sink
        self.listened = listened
        self.max_pending = max_pending
        self._pending: deque[Committed] = deque()
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self.lost = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="sense-publisher")

    async def hook(self, committed: Committed) -> None:
        if not (committed.messages or committed.instances):
            return
        if len(self._pending) >= self.max_pending:
            self._pending.popleft()  # far behind: the oldest go; clients catch up on reconnect
            self.lost += 1
        self._pending.append(committed)
        self._idle.clear()
        self._wakeup.set()

    async def drain(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), seconds)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            if not self._pending:
                self._idle.set()
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch = list(self._pending)
            self._pending.clear()
            try:
                await self.publish(batch)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis or Postgres away: these frames are lost, not the data
                log.warning("live publish failed: %s: %s", exc.__class__.__name__, exc)

    async def publish(self, batch: list[Committed]) -> None:
        # Frames only for tenants someone listens to: asked after the commit, so a client whose
        # `ready` (sent once its channel is subscribed) came before the commit is counted.
        # Most tenants have no dashboard open most of the time.
        tenants = {row["tenant_id"] for committed in batch for row in committed.messages}
        tenants.update(t for committed in batch for t, _, _ in committed.instances)
        listened = await self.listened(tenants) if tenants else set()
        if not listened:
            return
        # The rows as each commit left them (the writer returns them): a message created and
        # changed within this burst is one "created" frame with its latest state.
        rows: dict[Key, tuple[bool, Any]] = {}
        instances: dict[tuple[uuid.UUID, uuid.UUID], set[str]] = {}
        for committed in batch:
            for row in committed.messages:
                if row["tenant_id"] not in listened:
                    continue
                key = (row["tenant_id"], row["instance_id"], row["message_id"])
                seen = rows.get(key)
                rows[key] = (row["created"] or (seen is not None and seen[0]), row)
            for tenant_id, instance_id, kind in committed.instances:
                if tenant_id in listened:
                    instances.setdefault((tenant_id, instance_id), set()).add(kind)
        per_tenant: dict[uuid.UUID, list[bytes]] = {}
        names: dict[uuid.UUID, Mapping[uuid.UUID, str]] = {}
        for (tenant_id, instance_id, _), (created, row) in rows.items():
            tenant_names = names.get(tenant_id)
            if tenant_names is None:
                tenant_names = names[tenant_id] = self.registry.instance_names(tenant_id)
            message = api.message_from_row(row, tenant_names.get(instance_id, "?"))
            frame: Any
            if created:
                frame = Created(encode_position(row["content_xid"], row["seq"]), message)
            else:
                frame = Updated(message)
            per_tenant.setdefault(tenant_id, []).append(_encoder.encode(frame))
        if instances:
            for r in await self.pool.fetch(
                db.q("stream_instances"),
                [k[0] for k in instances],
                [k[1] for k in instances],
            ):
                out = api.instance_from_row(r)
                kinds = instances[(r["tenant_id"], r["instance_id"])]
                frames = per_tenant.setdefault(r["tenant_id"], [])
                if "state" in kinds:
                    frames.append(_encoder.encode(InstanceState(out)))
                if "qrcode" in kinds:
                    frames.append(_encoder.encode(InstanceQrCode(out)))
        messages = [
            (tenant_id, _wire(frames[i : i + FRAMES_PER_MESSAGE]))
            for tenant_id, frames in per_tenant.items()
            for i in range(0, len(frames), FRAMES_PER_MESSAGE)
        ]
        if messages:
            await self.sink(messages)


# the service: publisher + relay + Redis -----------------------------------------------------


class Live:
    """What ``create_app``'s lifespan starts and stops (see the ``stream seam`` comments)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        registry: Registry,
        redis: aioredis.Redis | None,
        *,
        buffer_frames: int = BUFFER_FRAMES,
        buffer_bytes: int = BUFFER_BYTES,
    ) -> None:
        self.pool = pool
        self.registry = registry
        self.redis = redis
        self.buffer_frames = buffer_frames
        self.buffer_bytes = buffer_bytes
        self.relay = Relay(registry, redis)
        self.publisher = Publisher(
            pool,
            registry,
            self._to_redis if redis else self._to_relay,
            self._listened_redis if redis else self._listened_here,
        )

    async def publish(self, committed: Committed) -> None:
        """The batcher's post-commit hook."""
        await self.publisher.hook(committed)

    async def _to_redis(self, messages: list[tuple[uuid.UUID, bytes]]) -> None:
        assert self.redis is not None
        async with self.redis.pipeline(transaction=False) as pipe:
            for tenant_id, payload in messages:
                pipe.publish(channel(tenant_id), payload)
            await pipe.execute()

    async def _listened_redis(self, tenants: set[uuid.UUID]) -> set[uuid.UUID]:
        """The tenants whose channel has a subscriber in any process (PUBSUB NUMSUB)."""
        assert self.redis is not None
        order = list(tenants)
        counts = await self.redis.pubsub_numsub(*(channel(t) for t in order))
        return {t for t, (_, n) in zip(order, counts, strict=True) if n}

    async def _listened_here(self, tenants: set[uuid.UUID]) -> set[uuid.UUID]:
        return {t for t in tenants if self.relay.clients.get(t)}

    async def _to_relay(self, messages: list[tuple[uuid.UUID, bytes]]) -> None:
        for tenant_id, payload in messages:
            self.relay.dispatch(tenant_id, payload)
            await asyncio.sleep(0)

    async def start(self) -> None:
        self.publisher.start()
        await self.relay.start()

    async def stop(self) -> None:
        await self.publisher.drain(2.0)  # the last commits' frames go out before we do
        await self.publisher.stop()
        closing = [
            _close(client.ws, CLOSE_GOING_AWAY, "server shutting down")
            for peers in self.relay.clients.values()
            for client in peers
        ]
        if closing:
            await asyncio.gather(*closing)
        await self.relay.stop()
        if self.redis is not None:
            with contextlib.suppress(Exception):
                await self.redis.aclose()

    async def frontier(self) -> str:
        xmin = await self.pool.fetchval(db.q("stream_frontier"))
        return encode_position(int(xmin), 0)


async def start(settings: Settings, pool: asyncpg.Pool, registry: Registry) -> Live:
    redis = None
    if settings.redis_url:
        import redis.asyncio as aioredis

        redis = aioredis.Redis.from_url(settings.redis_url, health_check_interval=30)
    elif settings.workers > 1:
        log.warning("no SENSE_REDIS_URL: live clients only see what their own process ingests")
    live = Live(
        pool,
        registry,
        redis,
        buffer_frames=settings.stream_buffer_frames,
        buffer_bytes=settings.stream_buffer_bytes,
    )
    await live.start()
    return live


async def _close(ws: WebSocket, code: int, reason: str) -> None:
    if ws.application_state == WebSocketState.DISCONNECTED:
        return
    with contextlib.suppress(Exception):
        await asyncio.wait_for(ws.close(code, reason), 1.0)


# the endpoint ---------------------------------------------------------------------------------


class _Hello(msgspec.Struct):
    token: str | None = None
    type: str | None = None


_hello = msgspec.json.Decoder(_Hello)


async def _authenticate(ws: WebSocket, registry: Registry) -> Any:
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
    return registry.tenant_for_token(token.strip()) if token else None


async def stream_endpoint(ws: WebSocket) -> None:
    live: Live = ws.app.state.live
    await ws.accept()
    tenant = await _authenticate(ws, live.registry)
    if tenant is None:
        await _close(ws, CLOSE_UNAUTHORIZED, 'unauthorized: send {"token": "<tenant token>"}')
        return
    client = Client(ws, tenant.tenant_id, live.buffer_frames, live.buffer_bytes)
    try:
        await live.relay.attach(client)
    except Exception as exc:
        log.warning("live subscribe failed: %s", exc.__class__.__name__)
        await live.relay.detach(client)
        await _close(ws, 1011, "live stream unavailable")
        return
    try:
        # first frame, ahead of any event that arrived while we read the frontier
        client.offer_first(_encoder.encode(Ready(tenant.name, await live.frontier())).decode())
    except Exception:
        await live.relay.detach(client)
        await _close(ws, 1011, "live stream unavailable")
        return
    sender = asyncio.create_task(client.send_forever())
    receiver = asyncio.create_task(_receive(ws, client))
    dropped = asyncio.create_task(client.dropped.wait())
    try:
        done, _ = await asyncio.wait(
            {sender, receiver, dropped}, return_when=asyncio.FIRST_COMPLETED
        )
        if dropped in done:
            log.info("live client of %s dropped: too slow", tenant.name)
            sender.cancel()
            # The close frame queues behind what the socket still holds, so a client that
            # stays stalled may only see the connection end (Granian gives up on the close
            # handshake); either way it reconnects and catches up.
            await _close(ws, CLOSE_SLOW, "too slow: reconnect and catch up with ?after=")
    except (WebSocketDisconnect, RuntimeError, OSError):
        pass
    finally:
        for task in (sender, receiver, dropped):
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
                    client.offer(_PONG)


# catch-up: GET /api/v1/messages?after=<cursor> -----------------------------------------------


async def messages_after(request: Request, tenant: Any) -> Response:
    """The ``after`` branch of ``GET /api/v1/messages``: oldest first; ``next`` is the cursor
    to pass next time (the given one when nothing new is final yet)."""
    services = request.app.state.services
    params = request.query_params
    if params.get("before"):
        return error(400, "invalid_parameter", "give before or after, not both")
    try:
        limit = api._int_param(request, "limit", 50, 1, 500)
        xid, seq = decode_position(params["after"])
    except ValueError as exc:
        return error(400, "invalid_parameter", str(exc))
    try:
        instance_id = api.instance_filter(request, tenant)
    except LookupError as exc:
        return error(404, "not_found", str(exc))
    rows = await services.pool.fetch(
        db.q("list_messages_after"),
        tenant.tenant_id,
        instance_id,
        api.chat_forms(params.get("chat") or None),
        str(xid),
        seq,
        limit,
    )
    names = services.instance_names(tenant.tenant_id)
    items = [api.message_from_row(r, names.get(r["instance_id"], "?")) for r in rows]
    cursor = encode_position(rows[-1]["content_xid"], rows[-1]["seq"]) if rows else params["after"]
    return JSON(api.MessagePage(items, cursor))


# dashboard ------------------------------------------------------------------------------------

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
    """The WebSocket, the dashboard page and its static files."""
    return [
        WebSocketRoute("/api/v1/stream", stream_endpoint),
        Route("/", dashboard, methods=["GET"]),
        Mount("/static", app=StaticFiles(directory=str(_STATIC)), name="static"),
    ]
