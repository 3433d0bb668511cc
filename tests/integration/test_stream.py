"""The live stream in-process, on real Postgres and Redis: the app's own ``/api/v1/stream``
endpoint driven through ASGI by sockets whose reading speed the test controls (the part of a
web server the test stands in for), so buffers can be tiny and a stalled reader exact."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import redis
from starlette.applications import Starlette

from service import contracts
from service.live import frames, hub, publisher
from tests.integration.conftest import Deployment, running_app, upsert

WAIT = 10.0


@pytest.fixture
async def app(
    conn: asyncpg.Connection, database_url: str, redis_url: str
) -> AsyncIterator[Starlette]:
    async with running_app(database_url, redis_url=redis_url) as application:
        yield application


class Socket:
    """The server side of one WebSocket as an ASGI server presents it. A stalled socket takes
    ``allow`` text frames, then blocks every further send until ``resume()`` (as a full TCP
    buffer would); control messages (accept, close) always go through."""

    def __init__(self, app: Starlette, token: str, allow: int | None = None) -> None:
        self.app = app
        self.token = token
        self.allow = allow
        self.frames: list[dict[str, Any]] = []
        self.closed: int | None = None
        self.incoming: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._flowing = asyncio.Event()
        self._arrived = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def receive(self) -> dict[str, Any]:
        return await self.incoming.get()

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "websocket.send":
            if self.allow is not None and len(self.frames) >= self.allow:
                await self._flowing.wait()
            self.frames.append(json.loads(message["text"]))
        elif message["type"] == "websocket.close":
            self.closed = message.get("code", 1000)
        self._arrived.set()

    def resume(self) -> None:
        self.allow = None
        self._flowing.set()

    async def open(self) -> Socket:
        scope = {
            "type": "websocket",
            "asgi": {"version": "3.0"},
            "scheme": "ws",
            "path": "/api/v1/stream",
            "raw_path": b"/api/v1/stream",
            "query_string": f"token={self.token}".encode(),
            "headers": [(b"host", b"test")],
            "client": ("127.0.0.1", 50000),
            "server": ("test", 80),
            "subprotocols": [],
            "state": {},
        }
        await self.incoming.put({"type": "websocket.connect"})
        self.task = asyncio.create_task(self.app(scope, self.receive, self.send))  # type: ignore[arg-type]
        await self.wait_for(lambda: bool(self.frames) and self.frames[0]["type"] == "ready")
        return self

    async def wait_for(self, done: Any) -> None:
        async with asyncio.timeout(WAIT):
            while not done():
                self._arrived.clear()
                await self._arrived.wait()

    def created(self) -> list[str]:
        return [f["message"]["message_id"] for f in self.frames if f["type"] == "message.created"]

    async def disconnect(self) -> None:
        await self.incoming.put({"type": "websocket.disconnect", "code": 1000})
        if self.task is not None:
            await asyncio.wait_for(self.task, WAIT)


async def test_a_stalled_client_is_closed_1013_while_a_fast_one_gets_everything(
    app: Starlette, deployment: Deployment
) -> None:
    live: hub.Live = app.state.live
    live.buffer_frames = 4  # per client; the default is frames.BUFFER_FRAMES
    slow = await Socket(app, deployment.tokens["acme"], allow=1).open()
    fast = await Socket(app, deployment.tokens["acme"]).open()
    other = await Socket(app, deployment.tokens["globex"]).open()
    posted = [f"M{n}" for n in range(12)]
    for message_id in posted:
        r = await deployment.post(upsert("acme-main", message_id, f"mensagem {message_id}"))
        assert r.status_code == 200
    await fast.wait_for(lambda: len(fast.created()) == len(posted))
    assert fast.created() == posted
    await slow.wait_for(lambda: slow.closed is not None)
    assert slow.closed == frames.CLOSE_SLOW
    assert slow.task is not None
    await asyncio.wait_for(slow.task, WAIT)  # the endpoint let go of it
    slow.resume()
    assert len(slow.created()) < len(posted)
    assert fast.closed is None and live.relay.client_count == 2
    # the other tenant saw none of it
    assert other.created() == [] and other.closed is None
    for s in (fast, other):
        await s.disconnect()
    assert live.relay.client_count == 0


async def test_analyses_published_for_another_tenants_instance_never_cross(
    app: Starlette, deployment: Deployment, conn: asyncpg.Connection, redis_url: str
) -> None:
    acme = await Socket(app, deployment.tokens["acme"]).open()
    for tenant, instance in (("acme", "acme-main"), ("globex", "globex-main")):
        r = await deployment.post(upsert(instance, f"{tenant}-1", "oi"))
        assert r.status_code == 200
    await acme.wait_for(lambda: acme.created() == ["acme-1"])
    ids = {
        r["name"]: (r["tenant_id"], r["instance_id"])
        for r in await conn.fetch("SELECT name, tenant_id, instance_id FROM instances")
    }
    acme_tenant, acme_instance = ids["acme-main"]
    _, globex_instance = ids["globex-main"]
    client = redis.Redis.from_url(redis_url)
    try:
        # a worker bug publishing globex's analysis on acme's channel: acme must not see it
        contracts.publish_analyzed(
            client,
            acme_tenant,
            [
                {"instance_id": globex_instance, "message_id": "globex-1", "state": "done"},
                {
                    "instance_id": str(acme_instance),
                    "message_id": "acme-1",
                    "state": "done",
                    "sentiment": -0.5,
                    "emotion": "raiva",
                    "satisfaction": 20,
                },
            ],
        )
    finally:
        client.close()
    await acme.wait_for(lambda: any(f["type"] == "message.analyzed" for f in acme.frames))
    analyzed = [f for f in acme.frames if f["type"] == "message.analyzed"]
    assert analyzed == [
        {
            "type": "message.analyzed",
            "instance": "acme-main",
            "message_id": "acme-1",
            "analysis": {
                "state": "done",
                "sentiment": -0.5,
                "emotion": "raiva",
                "satisfaction": 20,
                "analyzable": True,
                "error": None,
                "analyzer": None,
            },
        }
    ]
    await acme.disconnect()


def test_cursor_round_trip_and_rejects() -> None:
    assert frames.decode_position(frames.encode_position(812, 42)) == (812, 42)
    for bad in ("", "c", "c12", "x1.2", "c-1.2", "c1.x", "1700000000.5"):
        with pytest.raises(ValueError):
            frames.decode_position(bad)
    assert contracts.channel(uuid.UUID(int=1)).startswith(contracts.CHANNEL_PREFIX)


async def test_frames_are_built_only_for_tenants_someone_listens_to(
    app: Starlette, redis_url: str
) -> None:
    """The publisher asks Redis which of a commit's tenants have a subscribed channel (a live
    client in any process) and builds and publishes nothing for the others."""
    import redis.asyncio as aioredis

    from service.rows import Committed

    live = app.state.live
    quiet, listened = uuid.uuid4(), uuid.uuid4()
    client = aioredis.Redis.from_url(redis_url)
    pubsub = client.pubsub()
    try:
        await pubsub.subscribe(contracts.channel(listened))
        assert await live._listened_redis({quiet, listened}) == {listened}

        sent: list[Any] = []

        async def sink(messages: list[Any]) -> None:
            sent.extend(messages)

        def committed(tenant_id: uuid.UUID) -> Committed:
            instance_id = uuid.uuid4()
            row = {
                "tenant_id": tenant_id, "instance_id": instance_id, "message_id": "M1",
                "created": True, "chat_jid": "5511999999999@s.whatsapp.net",
                "chat_type": "user", "sender_jid": None, "sender_phone": None, "from_me": False,
                "push_name": None, "type": "text", "text": "oi", "status": None,
                "edited_text": None, "edit_ts": None, "deleted": False, "reactions": {},
                "quoted_message_id": None, "message_ts": None, "analysis_state": "pending",
                "sentiment": None, "emotion": None, "satisfaction": None,
                "analysis_error": None, "seq": 1, "content_xid": 100,
            }  # fmt: skip
            return Committed(created=[(tenant_id, instance_id, "M1")], messages=[row])

        frames_of = publisher.Publisher(live.pool, live.registry, sink, live._listened_redis)
        await frames_of.publish([committed(quiet)])
        assert sent == []
        await frames_of.publish([committed(quiet), committed(listened)])
        assert [tenant_id for tenant_id, _ in sent] == [listened]
    finally:
        await pubsub.aclose()
        await client.aclose()
