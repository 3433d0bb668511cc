"""``sense reanalyze``: re-score stored messages with the current analyzers.

Each analysis records the analyzer that produced it (``messages.analyzer``, migration 0012).
Reanalysis walks the messages an older analyzer scored (or all of them, ``--all``) in arrival
order, a batch at a time: it sets them pending again and hands each batch to the workers'
analysis queue, one broker message per tenant (as the web process's enqueues, so a job never
mixes tenants). The old analysis stays readable until the new one is written; a worker writes
it and records its own version. The command then follows the workers' progress until nothing
it marked is left (``--no-wait``: it does not wait).
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from service import db
from service.contracts import ACTOR, INDEX_ACTOR, INDEX_QUEUE, QUEUE, Key, by_tenant, job

BATCH = 1000


@dataclass
class Selection:
    analyzer: str  # the current version: what it already scored is skipped (unless everything)
    tenant_id: uuid.UUID | None = None
    since: datetime | None = None
    everything: bool = False

    def args(self) -> tuple[Any, ...]:
        return (self.analyzer, self.tenant_id, self.since, self.everything)


def broker_sender(
    redis_url: str, timeout: float = 5.0, queue: str = QUEUE, actor: str = ACTOR
) -> Callable[[list[Key]], None]:
    """Sends one job (one tenant's keys) to a workers' queue: analysis by default."""
    from service.contracts import redis_broker

    broker = redis_broker(redis_url, timeout)
    broker.declare_queue(queue)

    def send(keys: list[Key]) -> None:
        broker.enqueue(job(queue, actor, keys))

    return send


def index_sender(redis_url: str) -> Callable[[list[Key]], None]:
    """New messages to the index actor, which indexes them and hands them to analysis."""
    return broker_sender(redis_url, queue=INDEX_QUEUE, actor=INDEX_ACTOR)


def tenant_jobs(keys: list[Key], size: int = 256) -> list[list[Key]]:
    """``keys`` in jobs of at most ``size``, each of one tenant."""
    return [g[i : i + size] for g in by_tenant(keys).values() for i in range(0, len(g), size)]


def progress(label: str, done: int, total: int) -> None:
    width = 30
    filled = width if total == 0 else round(width * done / total)
    percent = 100 if total == 0 else 100 * done // total
    bar = "#" * filled + "-" * (width - filled)
    sys.stderr.write(f"\r{label} [{bar}] {done}/{total} ({percent}%)")
    if done >= total:
        sys.stderr.write("\n")
    sys.stderr.flush()


async def mark_and_send(
    conn: asyncpg.Connection,
    selection: Selection,
    send: Callable[[list[Key]], None],
    *,
    batch: int = BATCH,
    chunk: int = 256,
    report: Callable[[str, int, int], None] = progress,
) -> int:
    """Set the selected messages pending again and send them to the workers; how many."""
    total = await conn.fetchval(db.q("reanalyze_count"), *selection.args())
    after: tuple[Any, int] = (await conn.fetchval("SELECT '-infinity'::timestamptz"), 0)
    marked = 0
    report("reanalyze: queued", 0, total)
    while True:
        rows = await conn.fetch(db.q("reanalyze_mark"), *selection.args(), *after, batch)
        if not rows:
            break
        last = max(rows, key=lambda r: (r["content_at"], r["seq"]))
        after = (last["content_at"], last["seq"])
        keys = [(r["tenant_id"], r["instance_id"], r["message_id"]) for r in rows]
        for keys_of_a_job in tenant_jobs(keys, chunk):
            await asyncio.to_thread(send, keys_of_a_job)
        marked += len(rows)
        report("reanalyze: queued", min(marked, total), max(total, marked))
    return marked


async def remaining(conn: asyncpg.Connection, selection: Selection) -> int:
    """Messages of the selection still waiting to be re-scored."""
    return int(
        await conn.fetchval(db.q("reanalyze_remaining"), selection.tenant_id, selection.since)
    )


async def follow(
    conn: asyncpg.Connection,
    selection: Selection,
    marked: int,
    *,
    every: float = 1.0,
    report: Callable[[str, int, int], None] = progress,
) -> int:
    """Report the workers' progress until nothing marked is pending (wrap it in
    ``asyncio.timeout`` to give up earlier); what is left (0)."""
    while True:
        left = await remaining(conn, selection)
        report("reanalyze: re-scored", max(marked - left, 0), marked)
        if left == 0:
            return 0
        await asyncio.sleep(every)
