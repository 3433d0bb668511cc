"""Gauges that need a query: the enrichment backlog, the workers' queue lengths, instances by
state and those connected but silent. /metrics runs no query (an unauthenticated scrape must
not cost the database), so one server process computes them every ``SENSE_OBSERVE_SECONDS``
(the others skip that round: an advisory lock) and the gauges keep the most recent value."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

import asyncpg

from service import db, metrics, tasks
from service.contracts import BACKFILL_QUEUE, INDEX_QUEUE, QUEUE

if TYPE_CHECKING:
    from service.settings import Settings

log = logging.getLogger("sense.observe")

SCAN = 200_000  # messages looked at for the enrichment backlog
QUEUES = (INDEX_QUEUE, QUEUE, BACKFILL_QUEUE)
STATES = ("open", "connecting", "close", "refused", "unknown")


class Observer:
    def __init__(self, pool: asyncpg.Pool, settings: Settings, redis: Any | None) -> None:
        self.pool = pool
        self.settings = settings
        self.redis = redis
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="sense-observe")

    async def stop(self) -> None:
        await tasks.stop(self._task)

    async def _run(self) -> None:
        while True:
            try:
                await self.once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Postgres or Redis away: the next round tries again
                log.warning("observe: %s: %s", exc.__class__.__name__, exc)
            await asyncio.sleep(self.settings.observe_seconds)

    async def once(self) -> bool:
        """One round; False if another process is computing this round."""
        async with self.pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval(db.q("observe_lock")):
                return False
            enrich = await conn.fetchrow(db.q("observe_enrichment"), SCAN)
            states = await conn.fetch(
                db.q("observe_instances"), self.settings.silent_instance_seconds
            )
        metrics.ENRICH_PENDING.set(enrich["pending"])
        metrics.ENRICH_OLDEST.set(enrich["oldest_seconds"])
        by_state = {r["state"]: r["n"] for r in states}
        for state in {*STATES, *by_state}:
            metrics.INSTANCES.labels(state).set(by_state.get(state, 0))
        metrics.INSTANCES_SILENT.set(sum(r["silent"] for r in states))
        if self.redis is not None:
            for queue in QUEUES:
                metrics.QUEUE_JOBS.labels(queue).set(await self.redis.llen(f"dramatiq:{queue}"))
        return True
