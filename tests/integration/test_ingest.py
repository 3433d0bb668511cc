"""The group-commit batcher against real Postgres: several flushers, the barrier, the close."""

from __future__ import annotations

import asyncio

import asyncpg
import msgspec
import pytest

from service import payloads
from service.events import build_ops
from service.ingest import Batcher, Overloaded, Unavailable, Writer
from service.resolve import Instance
from tests.integration.conftest import registered_instance, status_update, upsert


def _ops(instance: Instance, body: dict[str, object]):  # type: ignore[no-untyped-def]
    envelope = payloads.envelope_decoder.decode(msgspec.json.encode(body))
    return build_ops(envelope, instance).ops


@pytest.mark.parametrize("flushers", [1, 3])
async def test_every_submitted_request_is_committed_once(
    conn: asyncpg.Connection, database_url: str, flushers: int
) -> None:
    instance = await registered_instance(conn)
    batcher = Batcher(
        [Writer(database_url, 5) for _ in range(flushers)],
        max_queued=10_000,
        max_batch_rows=50,
        max_batch_requests=20,
        linger=0.001,
    )
    batcher.start()
    try:
        # receipts before and after their messages, spread over concurrent batches: the merges
        # are commutative, so whichever flusher commits first, each message ends up READ
        bodies = []
        for n in range(300):
            bodies.append(upsert("i", f"M{n}", f"mensagem {n}"))
            bodies.append(status_update("i", f"M{n}", "READ"))
        bodies.reverse()
        results = await asyncio.gather(*(batcher.submit(_ops(instance, b)) for b in bodies))
        assert set(results) == {"stored"}
        await batcher.settled()  # nothing in flight: returns at once
    finally:
        await batcher.close()
    rows = await conn.fetch(
        "SELECT message_id, status, has_content FROM messages WHERE tenant_id = $1",
        instance.tenant_id,
    )
    assert len(rows) == 300
    assert {r["status"] for r in rows} == {40} and all(r["has_content"] for r in rows)


async def test_settled_waits_for_what_was_submitted_before(
    conn: asyncpg.Connection, database_url: str
) -> None:
    instance = await registered_instance(conn)
    batcher = Batcher(
        [Writer(database_url, 5), Writer(database_url, 5)],
        max_queued=10_000,
        max_batch_rows=5,
        max_batch_requests=5,
    )
    batcher.start()
    try:
        submitted = [
            asyncio.ensure_future(batcher.submit(_ops(instance, upsert("i", f"S{n}"))))
            for n in range(40)
        ]
        await asyncio.sleep(0)  # queued, not written yet
        await batcher.settled()
        assert all(f.done() for f in submitted)
        count = await conn.fetchval(
            "SELECT count(*) FROM messages WHERE tenant_id = $1", instance.tenant_id
        )
        assert count == 40
    finally:
        await batcher.close()
    with pytest.raises(Unavailable):  # closed: nothing more is taken (503, retried later)
        await batcher.submit(_ops(instance, upsert("i", "LATE")))


async def test_bodies_held_past_the_byte_cap_are_refused_not_buffered(
    conn: asyncpg.Connection, database_url: str
) -> None:
    instance = await registered_instance(conn)
    batcher = Batcher(
        [Writer(database_url, 5)],
        max_queued=100,
        max_batch_rows=50,
        max_batch_requests=20,
        max_queued_bytes=1000,
    )
    # not started yet: what is submitted waits in the queue, holding its bytes
    first = asyncio.ensure_future(batcher.submit(_ops(instance, upsert("i", "BIG1")), size=800))
    await asyncio.sleep(0)
    with pytest.raises(Overloaded):  # 503 + Retry-After: Evolution sends it again
        await batcher.submit(_ops(instance, upsert("i", "BIG2")), size=800)
    small = asyncio.ensure_future(batcher.submit(_ops(instance, upsert("i", "SMALL")), size=100))
    batcher.start()
    assert await first == "stored" and await small == "stored"
    # nothing held any more: one body bigger than the cap alone still goes through
    assert await batcher.submit(_ops(instance, upsert("i", "HUGE")), size=5000) == "stored"
    await batcher.close()
