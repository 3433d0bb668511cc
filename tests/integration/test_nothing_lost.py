"""The group commit's "nothing lost" paths against real Postgres: a batch Postgres rejects, a
deadlock, a batch that fails twice, a post-commit hook that raises, the batch byte cap."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest
from prometheus_client import REGISTRY
from starlette.applications import Starlette

from service import db, metrics, payloads
from service.events import build_ops
from service.ingest import Batcher, Writer
from service.resolve import Instance
from service.rows import Committed, Ops
from tests.integration.conftest import (
    Deployment,
    registered_instance,
    running_app,
    status_update,
    upsert,
)
from tests.integration.polling import eventually

WRITER_WAITS_FOR_A_LOCK = (
    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
    " AND application_name = 'sense-writer' AND wait_event_type = 'Lock'"
)


@contextlib.asynccontextmanager
async def rejected(
    conn: asyncpg.Connection, marker: str, errcode: str = "P0001"
) -> AsyncIterator[None]:
    """Postgres refuses every message whose id starts with ``marker`` (SQLSTATE ``errcode``),
    by a test-only trigger, dropped on exit."""
    name = f"sense_test_reject_{uuid.uuid4().hex[:8]}"
    await conn.execute(
        f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        f" IF NEW.message_id LIKE '{marker}%' THEN"
        f" RAISE EXCEPTION 'test refuses %', NEW.message_id USING ERRCODE = '{errcode}';"
        " END IF; RETURN NEW; END $$"
    )
    try:
        await conn.execute(
            f"CREATE TRIGGER {name} BEFORE INSERT ON messages"
            f" FOR EACH ROW EXECUTE FUNCTION {name}()"
        )
        yield
    finally:
        await conn.execute(f"DROP TRIGGER IF EXISTS {name} ON messages")
        await conn.execute(f"DROP FUNCTION IF EXISTS {name}()")


@contextlib.asynccontextmanager
async def deployed(
    database_url: str, **settings: Any
) -> AsyncIterator[tuple[Starlette, Deployment]]:
    """The app (one flusher unless told) with tenant acme, source evo and instance acme-main."""
    async with running_app(database_url, **{"flushers": 1, **settings}) as app:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            d = Deployment(client)
            await d.tenant("acme")
            await d.source("evo")
            assert (await d.instance("acme", "evo", "acme-main")).status_code == 201
            yield app, d


async def in_one_batch(
    app: Starlette, conn: asyncpg.Connection, d: Deployment, bodies: list[dict[str, Any]]
) -> list[httpx.Response]:
    """Post ``bodies`` so that the (single) flusher takes them as one batch: it is held on a
    row lock of an earlier request while they queue, then let go."""
    assert (await d.post(upsert("acme-main", "HOLD"))).status_code == 200
    batcher: Batcher = app.state.services.batcher
    lock = conn.transaction()
    await lock.start()
    try:
        await conn.execute("SELECT 1 FROM messages WHERE message_id = 'HOLD' FOR UPDATE")
        held = asyncio.ensure_future(d.post(status_update("acme-main", "HOLD", "READ")))
        await eventually(lambda: conn.fetchval(WRITER_WAITS_FOR_A_LOCK), lambda n: n == 1)
        posts = [asyncio.ensure_future(d.post(body)) for body in bodies]

        async def depth() -> int:
            return batcher.depth

        await eventually(depth, lambda n: n == len(bodies))
    finally:
        await lock.commit()
    assert (await held).status_code == 200
    return list(await asyncio.gather(*posts))


def chat_jid(n: int) -> str:
    return f"55119{n:08d}@s.whatsapp.net"


async def written(conn: asyncpg.Connection, message_id: str, jid: str) -> dict[str, int]:
    """How many rows of each table hold something of one message (its row, its chat, the
    kept request)."""
    return {
        "messages": await conn.fetchval(
            "SELECT count(*) FROM messages WHERE message_id = $1", message_id
        ),
        "chats": await conn.fetchval("SELECT count(*) FROM chats WHERE chat_jid = $1", jid),
        "quarantine": await conn.fetchval(
            "SELECT count(*) FROM quarantine WHERE position(convert_to($1, 'UTF8') in body) > 0",
            message_id,
        ),
    }


# 1a --------------------------------------------------------------------------------------


async def test_a_row_postgres_rejects_is_quarantined_and_the_rest_of_its_batch_is_stored(
    conn: asyncpg.Connection, database_url: str
) -> None:
    bodies = [
        upsert("acme-main", "GOOD1", "primeira", remote=chat_jid(1)),
        upsert("acme-main", "POISON1", "recusada", remote=chat_jid(2)),
        upsert("acme-main", "GOOD2", "segunda", remote=chat_jid(3)),
    ]
    async with deployed(database_url) as (app, d):
        async with rejected(conn, "POISON"):
            answers = await in_one_batch(app, conn, d, bodies)
        assert [(r.status_code, r.json()) for r in answers] == [
            (200, {"status": "stored"}),
            (202, {"status": "quarantined"}),
            (200, {"status": "stored"}),
        ]
        for mid, text in (("GOOD1", "primeira"), ("GOOD2", "segunda")):
            got = await d.message("acme", "acme-main", mid)
            assert got.status_code == 200 and got.json()["text"] == text
        assert await written(conn, "POISON1", chat_jid(2)) == {
            "messages": 0,
            "chats": 0,
            "quarantine": 1,
        }
        kept = await conn.fetchrow("SELECT instance_name, event, reason, body FROM quarantine")
        assert kept["instance_name"] == "acme-main" and kept["event"] == "messages.upsert"
        assert kept["reason"].startswith("write failed: RaiseError: test refuses POISON1")
        assert msgspec.json.decode(kept["body"])["data"]["key"]["id"] == "POISON1"
        # kept, not lost: once Postgres takes it, a replay files it
        r = await d.admin("/api/admin/quarantine/replay", {"instance": "acme-main"})
        assert r.json() == {"replayed": 1}
        got = await d.message("acme", "acme-main", "POISON1")
        assert got.status_code == 200 and got.json()["text"] == "recusada"


# 1b --------------------------------------------------------------------------------------


def _ops(instance: Instance, *bodies: dict[str, Any]) -> Ops:
    ops = Ops()
    for body in bodies:
        envelope = payloads.envelope_decoder.decode(msgspec.json.encode(body))
        ops.extend(build_ops(envelope, instance).ops)
    return ops


class Records(logging.Handler):
    """The messages one logger emits (on the logger itself: the app's set-up replaces the
    root's handlers)."""

    def __init__(self, name: str) -> None:
        super().__init__(logging.DEBUG)
        self.logger = logging.getLogger(name)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def __enter__(self) -> Records:
        self.level_before = self.logger.level
        self.logger.setLevel(logging.DEBUG)
        self.logger.addHandler(self)
        return self

    def __exit__(self, *_: object) -> None:
        self.logger.removeHandler(self)
        self.logger.setLevel(self.level_before)


async def test_a_deadlocked_batch_is_written_again_and_stored(
    conn: asyncpg.Connection, database_url: str
) -> None:
    instance = await registered_instance(conn)
    # the writer checks for a deadlock after 2 s of waiting (time enough for this test to
    # close the cycle), the other transaction only after a minute: the writer is the victim
    separator = "&" if "?" in database_url else "?"
    writer = Writer(f"{database_url}{separator}deadlock_timeout=2s", 5)
    batcher = Batcher([writer], max_queued=100, max_batch_rows=1000, max_batch_requests=100)
    batcher.start()
    other = await db.connect(database_url)
    try:
        stored = await batcher.submit(
            _ops(instance, upsert("i", "DL-A", "a"), upsert("i", "DL-B", "b"))
        )
        assert stored == "stored"
        await other.execute("SET deadlock_timeout = '1min'")
        tx = other.transaction()
        await tx.start()
        # another transaction holds row B; the batch (holding its lock on the table, and row
        # A) waits for it ...
        await other.execute("UPDATE messages SET push_name = 'outro' WHERE message_id = 'DL-B'")
        with Records("sense.ingest") as records:
            batch = asyncio.ensure_future(
                batcher.submit(
                    _ops(
                        instance,
                        status_update("i", "DL-A", "READ"),
                        status_update("i", "DL-B", "READ"),
                    )
                )
            )
            await eventually(lambda: conn.fetchval(WRITER_WAITS_FOR_A_LOCK), lambda n: n == 1)
            # ... and the other then waits for the batch's table lock: a deadlock. Postgres
            # cancels the batch, so this is granted (at once, in the same step: the batch
            # written again cannot take it first) and the batch waits until this commits.
            await other.execute("LOCK TABLE messages IN SHARE MODE")
            await tx.commit()
            assert await batch == "stored"
        # written again as it was, not taken apart request by request
        assert [m for m in records.messages if "batch of" in m] == [
            "batch of 1: DeadlockDetectedError; writing it again"
        ]
    finally:
        await other.close()
        await batcher.close()
    rows = await conn.fetch("SELECT message_id, status, push_name FROM messages ORDER BY 1")
    # both transactions' changes are there: the batch's statuses and the other's name
    assert [tuple(r) for r in rows] == [("DL-A", 40, "João Silva"), ("DL-B", 40, "outro")]


async def test_a_batch_failing_twice_answers_503_and_writes_nothing_of_it(
    conn: asyncpg.Connection, database_url: str
) -> None:
    bodies = [
        upsert("acme-main", "GOOD1", "boa", remote=chat_jid(1)),
        upsert("acme-main", "SERIAL1", "em conflito", remote=chat_jid(2)),
    ]
    async with deployed(database_url, retry_after_seconds=7) as (app, d):
        with Records("sense.ingest") as records:
            # serialization_failure on every attempt: the batch is tried twice, then each
            # request alone (twice too)
            async with rejected(conn, "SERIAL", errcode="40001"):
                good, failed = await in_one_batch(app, conn, d, bodies)
        assert any("SerializationError; writing it again" in m for m in records.messages)
        assert any(m.startswith("batch of 2 failed") for m in records.messages)
        assert good.status_code == 200
        assert failed.status_code == 503
        assert failed.headers["retry-after"] == "7"
        assert failed.json()["error"] == "unavailable"
        # nothing of it was written, not even in quarantine: Evolution sends it again
        nothing = {"messages": 0, "chats": 0, "quarantine": 0}
        assert await written(conn, "SERIAL1", chat_jid(2)) == nothing
        stored = {"messages": 1, "chats": 1, "quarantine": 0}
        assert await written(conn, "GOOD1", chat_jid(1)) == stored
        again = await d.post(bodies[1])
        assert again.status_code == 200, again.text
        assert await written(conn, "SERIAL1", chat_jid(2)) == stored
        assert (await d.message("acme", "acme-main", "SERIAL1")).json()["text"] == "em conflito"


# 1c --------------------------------------------------------------------------------------


def tenant_counter(app: Any, tenant: str) -> float:
    """The messages counted for ``tenant`` (labelled by its id) in this process."""
    tenants = app.state.services.registry.snapshot.tenants.values()
    tenant_id = next(str(t.tenant_id) for t in tenants if t.name == tenant)
    return REGISTRY.get_sample_value("sense_tenant_messages_total", {"tenant_id": tenant_id}) or 0.0


async def test_a_post_commit_hook_that_raises_loses_nothing_and_later_commits_run_the_hooks(
    conn: asyncpg.Connection, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # every test's tenants are new ids: room below the per-process label cap for this one's
    monkeypatch.setattr(metrics, "_tenant_labels", set())
    calls: list[str] = []
    seen: list[str] = []

    async def broken(committed: Committed) -> None:
        calls.append("broken")
        raise RuntimeError("hook exploded")

    async def recording(committed: Committed) -> None:
        seen.extend(message_id for _, _, message_id in committed.created)

    async def recorded() -> int:
        return len(seen)

    async with deployed(database_url) as (app, d):
        batcher: Batcher = app.state.services.batcher
        # the failing hook first: the app's own hooks and the recording one come after it
        batcher.on_commit(broken, *batcher.hooks, recording)
        counted = tenant_counter(app, "acme")
        for n in (1, 2):
            r = await d.post(upsert("acme-main", f"HOOK{n}", f"gancho {n}"))
            assert (r.status_code, r.json()) == (200, {"status": "stored"})
            got = await d.message("acme", "acme-main", f"HOOK{n}")
            assert got.status_code == 200 and got.json()["text"] == f"gancho {n}"
            await eventually(recorded, n.__eq__)  # the hooks run after the answer
        assert seen == ["HOOK1", "HOOK2"]
        assert calls == ["broken", "broken"]
        # the app's per-tenant counter, a hook after the broken one, counted both
        assert tenant_counter(app, "acme") - counted == 2


# 1d --------------------------------------------------------------------------------------


async def test_the_batch_byte_cap_splits_batches_and_everything_is_stored(
    conn: asyncpg.Connection, database_url: str
) -> None:
    instance = await registered_instance(conn)
    flushed: list[int] = []
    batcher = Batcher(
        [Writer(database_url, 5)],
        max_queued=100,
        max_batch_rows=10_000,
        max_batch_requests=1000,
        max_batch_bytes=1000,
        on_flush=lambda rows, seconds: flushed.append(rows),
    )
    batches: list[list[str]] = []

    async def record(committed: Committed) -> None:
        batches.append([message_id for _, _, message_id in committed.created])

    batcher.on_commit(record)
    sizes = [400] * 9 + [5000, 100]
    submitted: list[Awaitable[str]] = []
    for n, size in enumerate(sizes):
        ops = _ops(instance, upsert("i", f"CAP{n}", remote=chat_jid(n)))
        submitted.append(asyncio.ensure_future(batcher.submit(ops, size=size)))
    await asyncio.sleep(0)  # all queued before the flusher starts
    batcher.start()
    try:
        assert await asyncio.gather(*submitted) == ["stored"] * len(sizes)
    finally:
        await batcher.close()  # also waits for the hooks
    # at most 1000 bytes of requests per batch; a request bigger than that goes alone
    assert [sorted(b) for b in batches] == [
        ["CAP0", "CAP1"],
        ["CAP2", "CAP3"],
        ["CAP4", "CAP5"],
        ["CAP6", "CAP7"],
        ["CAP8"],
        ["CAP9"],
        ["CAP10"],
    ]
    assert len(flushed) == len(batches)
    ids = await conn.fetch(
        "SELECT message_id FROM messages WHERE instance_id = $1", instance.instance_id
    )
    assert sorted(r[0] for r in ids) == sorted(f"CAP{n}" for n in range(len(sizes)))
