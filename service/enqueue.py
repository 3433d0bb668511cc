"""Hand committed messages to the workers (Dramatiq on Redis), from the web process.

Every message whose content was just stored goes to the index actor (``INDEX_QUEUE``,
``INDEX_ACTOR``): it writes the message's search row within seconds, whatever the analysis
backlog, and hands the messages still waiting for analysis on to the enrichment actor
(``QUEUE``, ``ACTOR``). The web process never imports the AI stack, nor the worker's actors:
it builds the Dramatiq message by queue and actor name and puts it on the broker. The batcher's
post-commit hook only appends ids to a buffer; one sender task per process takes everything
waiting and enqueues it as one broker message per ``enrich_batch_size`` ids, in a thread, with
a short socket timeout. At low load a flush is one or two messages: the sender lingers
``SENSE_ENQUEUE_LINGER_SECONDS`` (50 ms) so that the flushes of that moment share one broker
message — per-message overhead in the worker (a fetch, two queries, an inference call) would
otherwise dominate; under load the buffer fills past a batch and nothing waits. A webhook never
waits for Redis, and a dead broker costs one failed attempt per back-off period, not one per
flush.
Ids that cannot be enqueued (Redis down or slow) stay in the buffer and are sent again as soon
as Redis answers: the sender retries after 0.5 s, then every 2 s at most. Only past
``MAX_BUFFERED`` ids (or when the process stops before Redis is back) are ids dropped here;
their rows stay ``pending`` (and unindexed) in Postgres, and the workers' reconciler enqueues
them once they are ``SENSE_RECONCILE_AGE_SECONDS`` old.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from service import tasks
from service.contracts import INDEX_ACTOR, INDEX_QUEUE, Key, job, redis_broker
from service.rows import Committed

if TYPE_CHECKING:
    from service.settings import Settings

log = logging.getLogger("sense.enqueue")

MAX_BUFFERED = 200_000  # ids waiting while the broker is away; past it, the reconciler's
BACKOFF_START = 0.5  # seconds before trying again after a failure, doubling up to BACKOFF_MAX
BACKOFF_MAX = 2.0


class Enqueuer:
    """The batcher's enrichment hook and its single sender task."""

    def __init__(
        self,
        broker: Any,
        *,
        batch_size: int,
        linger: float = 0.0,
        max_buffered: int = MAX_BUFFERED,
        queue: str = INDEX_QUEUE,
        actor: str = INDEX_ACTOR,
    ) -> None:
        self.broker = broker
        self.queue = queue
        self.actor = actor
        self.batch_size = batch_size
        self.linger = linger
        self.max_buffered = max_buffered
        self.sent_messages = 0
        self.dropped_ids = 0
        self._buffer: list[Key] = []
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._backoff = BACKOFF_START
        self._sent_chunks = 0  # of the batch being sent (a failure keeps only the rest)

    def start(self) -> None:
        self.broker.declare_queue(self.queue)
        self._task = asyncio.create_task(self._run(), name="sense-enqueue")

    async def hook(self, committed: Committed) -> None:
        """Post-commit hook: never blocks, never raises."""
        created = committed.created
        if not created:
            return
        room = self.max_buffered - len(self._buffer)
        if room < len(created):
            self.dropped_ids += len(created) - max(room, 0)
        if room > 0:
            self._buffer.extend(created[:room])
            self._idle.clear()
            self._wakeup.set()

    async def drain(self, seconds: float) -> None:
        """Wait (at most ``seconds``) until what is buffered has been handed to the broker."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), seconds)

    async def stop(self, drain_seconds: float = 2.0) -> None:
        await self.drain(drain_seconds)
        if self._buffer:
            log.warning(
                "%d messages not enqueued at shutdown (Redis away): the reconciler sends them",
                len(self._buffer),
            )
        await tasks.stop(self._task)
        with contextlib.suppress(Exception):
            self.broker.client.close()

    async def _run(self) -> None:
        while True:
            if not self._buffer:
                self._idle.set()
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if self.linger and len(self._buffer) < self.batch_size:
                await asyncio.sleep(self.linger)
            keys, self._buffer = self._buffer, []
            chunks = [keys[i : i + self.batch_size] for i in range(0, len(keys), self.batch_size)]
            try:
                await asyncio.to_thread(self._send, chunks)
            except Exception as exc:
                # keep them, ahead of what arrived meanwhile, and try again shortly
                waiting = [key for chunk in chunks[self._sent_chunks :] for key in chunk]
                waiting.extend(self._buffer)
                keep = self._buffer = waiting[: self.max_buffered]
                self.dropped_ids += len(waiting) - len(keep)
                log.warning(
                    "enrichment enqueue failed (%s: %s); %d messages waiting, next try in %.1f s",
                    exc.__class__.__name__,
                    exc,
                    len(keep),
                    self._backoff,
                )
                await asyncio.sleep(self._backoff)
                self._backoff = min(self._backoff * 2, BACKOFF_MAX)
            else:
                self._backoff = BACKOFF_START

    def _send(self, chunks: list[list[Key]]) -> None:
        self._sent_chunks = 0
        for chunk in chunks:
            self.broker.enqueue(job(self.queue, self.actor, chunk))
            self.sent_messages += 1
            self._sent_chunks += 1


async def start(
    settings: Settings, queue: str = INDEX_QUEUE, actor: str = INDEX_ACTOR
) -> Enqueuer | None:
    """The enqueuer for ``create_app``'s lifespan, or None without SENSE_REDIS_URL (then every
    message stays ``pending`` until a worker's reconciler finds it). Backfill has its own, on
    its own queue (``BACKFILL_QUEUE``: taken after live traffic)."""
    if not settings.redis_url:
        log.warning("no SENSE_REDIS_URL: messages are not analysed until a worker reconciles them")
        return None
    broker = redis_broker(settings.redis_url, settings.enqueue_timeout_seconds)
    enqueuer = Enqueuer(
        broker,
        batch_size=settings.enrich_batch_size,
        linger=settings.enqueue_linger_seconds,
        queue=queue,
        actor=actor,
    )
    enqueuer.start()
    return enqueuer
