"""The live stream of one process, assembled: publisher + relay + Redis (``Live``, ``start``)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import TYPE_CHECKING

import asyncpg

from service import db
from service.contracts import channel
from service.live.frames import BUFFER_BYTES, BUFFER_FRAMES, CLOSE_GOING_AWAY, encode_position
from service.live.publisher import Publisher
from service.live.relay import Relay, close_socket
from service.resolve import Registry
from service.rows import Committed

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from service.settings import Settings

log = logging.getLogger("sense.stream")


class Live:
    """The live stream of one process: the publisher, the relay and their Redis connection; what
    ``create_app``'s lifespan starts and stops."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        registry: Registry,
        redis: aioredis.Redis | None,
        *,
        buffer_frames: int = BUFFER_FRAMES,
        buffer_bytes: int = BUFFER_BYTES,
        max_unauthenticated: int = 1000,
    ) -> None:
        self.pool = pool
        self.registry = registry
        self.redis = redis
        self.buffer_frames = buffer_frames
        self.buffer_bytes = buffer_bytes
        self.max_unauthenticated = max_unauthenticated  # sockets waiting for their token
        self.relay = Relay(registry, redis)
        registry.on_tokens_changed(self._revoke)
        self.publisher = Publisher(
            pool,
            registry,
            self._to_redis if redis else self._to_relay,
            self._listened_redis if redis else self._listened_here,
        )

    def _revoke(self, tenant_ids: list[uuid.UUID]) -> None:
        """A tenant's token was rotated or revoked: its open sessions end (4401)."""
        for tenant_id in tenant_ids:
            for client in self.relay.clients.get(tenant_id, ()):
                client.revoked.set()

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
            close_socket(client.ws, CLOSE_GOING_AWAY, "server shutting down")
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
        max_unauthenticated=settings.stream_max_unauthenticated,
    )
    await live.start()
    return live
