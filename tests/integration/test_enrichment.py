"""Enrichment on real Postgres and real Redis: the web process enqueues after commit, one broker
message per flush; a real worker process (in-process here, the e2e test runs `sense worker`)
analyses idempotently, retries, fails and dead-letters; the reconciler recovers what a Redis
outage — really caused by stopping the embedded Redis — left pending."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import dramatiq
import httpx
import pytest
import redis
from starlette.applications import Starlette

from service import db
from service.contracts import INDEX_ACTOR, INDEX_QUEUE, NAMESPACE, QUEUE
from service.embedded import EmbeddedRedis
from service.settings import Settings, load_settings
from tests.integration.conftest import ADMIN, Deployment, upsert
from tests.unit.test_actors import Flaky
from workers.actors import Enrichment, Indexing
from workers.main import WorkerProcess
from workers.provider import BadAnswer, LocalProvider
from workers.reconciler import Reconciler
from workers.store import Store

WAIT = 30.0
QUEUE_KEY = f"{NAMESPACE}:{QUEUE}"
INDEX_KEY = f"{NAMESPACE}:{INDEX_QUEUE}"


def _settings(database_url: str, redis_url: str, **extra: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "redis_url": redis_url,
        "admin_token": ADMIN,
        "enrich_min_backoff_seconds": 0.05,
        "enrich_max_backoff_seconds": 0.2,
        "reconcile_interval_seconds": 0.3,
        "reconcile_age_seconds": 0.5,
        **extra,
    }
    return load_settings({}, **values)


def _flush_queue(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(f"{NAMESPACE}:sense-*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture(scope="module")
def local() -> LocalProvider:
    return LocalProvider()


@pytest.fixture
async def app(
    conn: asyncpg.Connection, database_url: str, redis_url: str
) -> AsyncIterator[Starlette]:
    _flush_queue(redis_url)
    from service.app import create_app

    application = create_app(_settings(database_url, redis_url))
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
def worker(
    app: Starlette, database_url: str, redis_url: str, local: LocalProvider
) -> Iterator[WorkerProcess]:
    process = WorkerProcess(_settings(database_url, redis_url), threads=2, provider=local)
    process.start()
    yield process
    process.stop(timeout=5)


async def _wait(condition: Any, what: str, seconds: float = WAIT) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = await condition()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def _analysis(d: Deployment, tenant: str, instance: str, mid: str) -> dict[str, Any]:
    r = await d.message(tenant, instance, mid)
    assert r.status_code == 200, r.text
    analysis: dict[str, Any] = r.json()["analysis"]
    return analysis


async def _done(d: Deployment, tenant: str, instance: str, mid: str) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        a = await _analysis(d, tenant, instance, mid)
        return a if a["state"] != "pending" else None

    result: dict[str, Any] = await _wait(check, f"analysis of {mid}")
    return result


def _queued(redis_url: str, key: str = INDEX_KEY) -> list[dramatiq.Message[Any]]:
    client = redis.Redis.from_url(redis_url)
    try:
        raw = client.hvals(f"{key}.msgs")
    finally:
        client.close()
    return [dramatiq.Message.decode(m) for m in raw]


async def test_enqueue_after_commit_one_broker_message_per_flush(
    deployment: Deployment, app: Starlette, conn: asyncpg.Connection, redis_url: str
) -> None:
    sticker = {"stickerMessage": {"mimetype": "image/webp"}}
    bodies = [upsert("acme-main", f"E{i}", f"mensagem {i}") for i in range(30)]
    bodies.append(upsert("acme-main", "STICKER", message=sticker, messageType="stickerMessage"))
    bodies.append(upsert("globex-main", "G1", "olá"))
    responses = await asyncio.gather(*(deployment.post(b) for b in bodies))
    assert all(r.status_code == 200 for r in responses)
    await app.state.enqueuer.drain(5)
    messages = _queued(redis_url)
    ids = [tuple(k) for m in messages for k in m.args[0]]
    rows = await conn.fetch(
        "SELECT tenant_id, instance_id, message_id, analysis_state FROM messages"
    )
    stored = {(str(r[0]), str(r[1]), r[2]) for r in rows}
    # every stored message goes to the index actor, the sticker too (skipped, not analysed)
    assert len(stored) == 32 and set(ids) == stored and len(ids) == 32
    assert {r["analysis_state"] for r in rows if r["message_id"] == "STICKER"} == {"skipped"}
    # 32 webhooks in a few flushes, not 32 broker messages; each carries ids across tenants
    assert len(messages) < 10
    assert {(m.queue_name, m.actor_name) for m in messages} == {(INDEX_QUEUE, INDEX_ACTOR)}
    assert _queued(redis_url, QUEUE_KEY) == []  # analysis is the index actor's hand-over


async def test_worker_analyses_and_the_api_shows_it(
    deployment: Deployment, worker: WorkerProcess, conn: asyncpg.Connection
) -> None:
    await deployment.post(upsert("acme-main", "P1", "Adorei o atendimento, muito obrigado!"))
    await deployment.post(upsert("acme-main", "N1", "Péssimo, o produto chegou quebrado"))
    sticker = {"stickerMessage": {"mimetype": "image/webp"}}
    await deployment.post(upsert("acme-main", "S1", message=sticker, messageType="stickerMessage"))
    positive = await _done(deployment, "acme", "acme-main", "P1")
    assert positive["state"] == "done" and positive["analyzable"] is True
    assert positive["sentiment"] > 0.3 and positive["emotion"] == "gratidão"
    assert positive["satisfaction"] > 70
    negative = await _done(deployment, "acme", "acme-main", "N1")
    assert negative["sentiment"] < -0.3 and negative["satisfaction"] < 35
    skipped = await _analysis(deployment, "acme", "acme-main", "S1")
    assert skipped["state"] == "done" and skipped["analyzable"] is False
    assert skipped["sentiment"] is None
    row = await conn.fetchrow(
        "SELECT vector_dims(s.embedding) AS dims, m.analyzed_at FROM messages AS m"
        " JOIN message_search AS s USING (tenant_id, instance_id, message_id)"
        " WHERE message_id = 'P1'"
    )
    assert row["dims"] == 512 and row["analyzed_at"] is not None
    # the sticker has a search row too (nothing to find in it): nothing left for the reconciler
    assert await conn.fetchval("SELECT count(*) FROM message_search") == 3
    # the conversation's rolling sentiment and satisfaction
    r = await deployment.get("/api/v1/chats", "acme")
    chat = r.json()["items"][0]
    assert chat["analyzed_messages"] == 2
    expected = (positive["sentiment"] + negative["sentiment"]) / 2
    assert chat["sentiment"] == pytest.approx(expected, abs=1e-3)
    assert chat["satisfaction"] == pytest.approx(
        (positive["satisfaction"] + negative["satisfaction"]) / 2
    )


async def test_actor_is_idempotent_on_postgres(
    deployment: Deployment,
    app: Starlette,
    conn: asyncpg.Connection,
    database_url: str,
    local: LocalProvider,
) -> None:
    await deployment.post(upsert("acme-main", "I1", "Gostei muito, obrigado"))
    key = await conn.fetchrow("SELECT tenant_id, instance_id, message_id FROM messages")
    args = [[str(key[0]), str(key[1]), key[2]]]
    store = Store(database_url).start()
    try:
        enrichment = Enrichment(store, local)
        first = enrichment.analyze(args)
        before = await conn.fetchrow("SELECT * FROM messages WHERE message_id = 'I1'")
        second = enrichment.analyze(args + args)
        after = await conn.fetchrow("SELECT * FROM messages WHERE message_id = 'I1'")
    finally:
        store.close()
    assert len(first) == 1 and second == []
    assert dict(before) == dict(after) and after["analysis_state"] == "done"


async def test_failures_are_retried_then_failed_and_dead_lettered(
    deployment: Deployment,
    app: Starlette,
    database_url: str,
    redis_url: str,
    local: LocalProvider,
) -> None:
    flaky = Flaky(local, failures=100, error=BadAnswer("garbage from the model"))
    # the reconciler stays out of it: on a slow box it would re-enqueue F1 while its retries
    # back off, and count an attempt of its own
    settings = _settings(database_url, redis_url, enrich_max_retries=2, reconcile_age_seconds=60)
    process = WorkerProcess(settings, threads=1, provider=flaky)
    process.start()
    try:
        await deployment.post(upsert("acme-main", "F1", "tanto faz"))
        failed = await _done(deployment, "acme", "acme-main", "F1")
    finally:
        process.stop(timeout=5)
    assert failed["state"] == "failed"
    # a code and a fixed sentence, never the provider's words
    assert failed["error"] == "bad_answer: the analyzer's answer could not be used"
    assert flaky.calls == 3
    client = redis.Redis.from_url(redis_url)
    try:
        dead = [dramatiq.Message.decode(m) for m in client.hvals(f"{QUEUE_KEY}.XQ.msgs")]
    finally:
        client.close()
    assert any(k[2] == "F1" for m in dead for k in m.args[0])


async def test_enqueues_that_failed_while_redis_was_down_are_sent_once_it_is_back(
    deployment: Deployment, conn: asyncpg.Connection, database_url: str, tmp_path: Path
) -> None:
    own = EmbeddedRedis(tmp_path).start()  # the session Redis is shared: stop our own
    # no worker, and a reconciler age no test waits for: only the web process can re-send
    settings = _settings(database_url, own.url, reconcile_age_seconds=3600)
    from service.app import create_app

    application = create_app(settings)
    try:
        async with application.router.lifespan_context(application):
            transport = httpx.ASGITransport(app=application)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                d = Deployment(client, deployment.tokens, deployment.secrets, deployment.tenant_of)
                own.stop()  # Redis is down from here
                for i in range(10):
                    assert (await d.post(upsert("acme-main", f"Q{i}", "Adorei"))).status_code == 200
                enqueuer = application.state.enqueuer
                await asyncio.sleep(1.0)  # the sender has tried and failed by now
                assert enqueuer.sent_messages == 0
                own.start()  # back, and empty

                async def all_queued() -> bool:
                    ids = {k[2] for m in _queued(own.url) for k in m.args[0]}
                    return ids == {f"Q{i}" for i in range(10)}

                await _wait(all_queued, "the 10 failed enqueues re-sent", seconds=10)
                assert enqueuer.dropped_ids == 0
    finally:
        own.stop()


async def test_reconciler_recovers_what_a_redis_outage_left_pending(
    deployment: Deployment,
    conn: asyncpg.Connection,
    database_url: str,
    tmp_path: Path,
    local: LocalProvider,
) -> None:
    own = EmbeddedRedis(tmp_path).start()  # the session Redis is shared: stop our own
    settings = _settings(database_url, own.url)
    from service.app import create_app

    application = create_app(settings)
    try:
        async with application.router.lifespan_context(application):
            transport = httpx.ASGITransport(app=application)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                d = Deployment(client, deployment.tokens, deployment.secrets, deployment.tenant_of)
                await d.post(upsert("acme-main", "BEFORE", "Tudo certo, obrigado"))
                await application.state.enqueuer.drain(5)
                own.stop()  # Redis is down from here
                statuses = []
                for i in range(20):
                    statuses.append(
                        (await d.post(upsert("acme-main", f"R{i}", "Adorei"))).status_code
                    )
                assert statuses == [200] * 20  # webhooks never fail for Redis
                state = await conn.fetchval(
                    "SELECT array_agg(DISTINCT analysis_state) FROM messages"
                    " WHERE message_id LIKE 'R%'"
                )
                assert state == ["pending"]
                own.start()  # back, empty: the 20 enqueues are gone for good
                process = WorkerProcess(settings, threads=2, provider=local)
                process.start()
                try:
                    for mid in ("BEFORE", "R0", "R19"):
                        assert (await _done(d, "acme", "acme-main", mid))["state"] == "done"

                    async def none_pending() -> bool:
                        n = await conn.fetchval(
                            "SELECT count(*) FROM messages WHERE analysis_state = 'pending'"
                        )
                        return n == 0

                    await _wait(none_pending, "every pending row analysed")
                finally:
                    process.stop(timeout=5)
    finally:
        own.stop()


async def test_only_one_reconciler_works_at_a_time(
    conn: asyncpg.Connection, database_url: str
) -> None:
    stores = [Store(database_url).start(), Store(database_url).start()]
    sent: list[int] = []
    try:
        a, b = (
            Reconciler(
                s, lambda keys: sent.append(len(keys)), age=1, max_age=60, interval=1, batch_size=10
            )
            for s in stores
        )
        assert a.run_once().locked
        with stores[0].advisory_lock() as got:
            assert got
            assert not b.run_once().locked  # another process holds it: skip the round
        assert b.run_once().locked
    finally:
        for s in stores:
            s.close()


async def test_reconciler_pages_stale_rows_and_expires_very_old_ones(
    deployment: Deployment, app: Starlette, conn: asyncpg.Connection, database_url: str
) -> None:
    for i in range(25):
        await deployment.post(upsert("acme-main", f"S{i}", "olá"))
    await conn.execute(
        "UPDATE messages SET content_at = now() - interval '10 minutes' WHERE message_id <> 'S0'"
    )
    await conn.execute(
        "UPDATE messages SET content_at = now() - interval '3 days' WHERE message_id = 'S1'"
    )
    store = Store(database_url).start()
    batches: list[list[str]] = []
    expired: list[str] = []
    try:
        reconciler = Reconciler(
            store,
            lambda keys: batches.append([k[2] for k in keys]),
            age=60,
            max_age=86_400,
            interval=1,
            batch_size=10,
            on_expired=lambda keys: expired.extend(k[2] for k in keys),
        )
        done = reconciler.run_once()
    finally:
        store.close()
    assert done.enqueued == 23 and done.expired == 1 and expired == ["S1"]
    assert [len(b) for b in batches] == [10, 10, 3]  # S0 is too recent, S1 given up on
    assert len({m for b in batches for m in b}) == 23
    row = await conn.fetchrow(
        "SELECT analysis_state, analysis_error FROM messages WHERE message_id = 'S1'"
    )
    assert row["analysis_state"] == "failed" and "RECONCILE_MAX_AGE" in row["analysis_error"]


async def test_index_actor_is_idempotent_and_hands_over_only_pending(
    deployment: Deployment, app: Starlette, conn: asyncpg.Connection, database_url: str
) -> None:
    await deployment.post(upsert("acme-main", "X1", "Quero a segunda via do boleto"))
    await deployment.post(upsert("acme-main", "X2", "Obrigado pela ajuda"))
    keys = await conn.fetch("SELECT tenant_id, instance_id, message_id FROM messages")
    args = [[str(k[0]), str(k[1]), k[2]] for k in keys]
    await conn.execute("UPDATE messages SET analysis_state = 'done' WHERE message_id = 'X2'")
    handed: list[list[str]] = []
    store = Store(database_url).start()
    try:
        indexing = Indexing(store, lambda pending: handed.append([k[2] for k in pending]))
        indexing.index(args)
        first = await conn.fetch("SELECT * FROM message_search ORDER BY message_id")
        indexing.index([*args, [args[0][0], args[0][1], "NO-SUCH-MESSAGE"]])
        second = await conn.fetch("SELECT * FROM message_search ORDER BY message_id")
    finally:
        store.close()
    assert handed == [["X1"], ["X1"]]  # X2 is analysed already; an unknown id is nothing
    assert [dict(r) for r in first] == [dict(r) for r in second]  # untouched the second time
    assert [r["message_id"] for r in first] == ["X1", "X2"]
    assert "'bolet':6" in str(first[0]["tsv"])


async def test_an_edit_reindexes_in_its_own_commit_whatever_the_order(
    deployment: Deployment, app: Starlette, conn: asyncpg.Connection, database_url: str
) -> None:
    edit = {
        "event": "messages.edited",
        "instance": "acme-main",
        "data": {
            "key": {"remoteJid": "5511999999999@s.whatsapp.net", "fromMe": True, "id": "ED1"},
            "type": "MESSAGE_EDIT",
            "editedMessage": {"conversation": "texto corrigido"},
            "timestampMs": "1700000100000",
        },
    }
    # the edit first (a stub row), the message later, the index job last: the edit wins
    assert (await deployment.post(edit)).status_code == 200
    await deployment.post(upsert("acme-main", "ED1", "texto errado", key={"fromMe": True}))
    row = await conn.fetchrow("SELECT tenant_id, instance_id, message_id FROM messages")
    await conn.fetch(db.q("index_messages"), [row[0]], [row[1]], [row[2]])
    tsv = await conn.fetchval("SELECT tsv::text FROM message_search")
    assert "corrig" in tsv and "errad" not in tsv


async def _updates(conn: asyncpg.Connection) -> tuple[int, int]:
    """messages' (updates, HOT updates) so far, this backend's own counts included."""
    await conn.execute("SELECT pg_stat_force_next_flush()")
    await conn.execute("SELECT 1")  # the flush happens as this transaction ends
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    row = await conn.fetchrow(
        "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'messages'"
    )
    return row[0], row[1]


async def test_the_analysis_update_is_hot_and_touches_no_index(
    deployment: Deployment, app: Starlette, conn: asyncpg.Connection, local: LocalProvider
) -> None:
    for i in range(20):
        await deployment.post(upsert("acme-main", f"H{i}", f"Adorei o produto {i}, obrigado"))
    keys = await conn.fetch("SELECT tenant_id, instance_id, message_id FROM messages")
    columns = [[k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys]]
    await conn.fetch(db.q("index_messages"), *columns)
    before = await _updates(conn)
    saved = 0
    for i in range(0, 20, 4):  # as the worker writes: a few rows per transaction
        batch = [c[i : i + 4] for c in columns]
        saved += len(
            await conn.fetch(
                db.q("enrich_save"),
                *batch,
                ["done"] * 4,
                [0.8] * 4,
                ["alegria"] * 4,
                [90] * 4,
                [0.05] * (4 * 512),  # four vectors, flat
                "test/1",
                [0, 1, 2, 3],
                512,
            )
        )
    updated, hot = (a - b for a, b in zip(await _updates(conn), before, strict=True))
    assert saved == 20 and updated == 20 and hot == 20  # in place: no index entry added
    dims = await conn.fetchval(
        "SELECT count(*) FROM message_search WHERE vector_dims(embedding) = 512"
    )
    assert dims == 20


async def test_each_message_gets_its_own_embedding_from_the_flat_array(
    deployment: Deployment, app: Starlette, conn: asyncpg.Connection
) -> None:
    """The save sends the batch's vectors as one flat real[] and each row its slot in it
    (workers/store.py): a vector lands on its own message, a row without one keeps none."""
    for i in range(3):
        await deployment.post(upsert("acme-main", f"S{i}", f"mensagem {i}"))
    keys = await conn.fetch(
        "SELECT tenant_id, instance_id, message_id FROM messages ORDER BY message_id DESC"
    )
    columns = [[k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys]]
    await conn.fetch(db.q("index_messages"), *columns)
    first = [0.5 if j == 0 else 0.0 for j in range(512)]
    third = [0.25 if j == 511 else 0.0 for j in range(512)]
    saved = await conn.fetch(
        db.q("enrich_save"),
        *columns,  # S2, S1, S0
        ["done", "skipped", "done"],
        [0.8, None, -0.5],
        ["alegria", None, "raiva"],
        [90, None, 10],
        first + third,  # the two vectors, flat: S2 is slot 0, S0 slot 1, S1 has none
        "test/1",
        [0, None, 1],
        512,
    )
    assert len(saved) == 3
    rows = await conn.fetch(
        "SELECT message_id, embedding::text AS v FROM message_search ORDER BY message_id"
    )
    got = {r["message_id"]: r["v"] for r in rows}
    assert got["S1"] is None
    assert [float(x) for x in got["S2"].strip("[]").split(",")] == first
    assert [float(x) for x in got["S0"].strip("[]").split(",")] == third


async def test_reconciler_walks_from_its_watermark_and_reindexes_what_was_never_indexed(
    deployment: Deployment, app: Starlette, conn: asyncpg.Connection, database_url: str
) -> None:
    for i in range(12):
        await deployment.post(upsert("acme-main", f"W{i}", "olá"))
    await conn.execute(
        "UPDATE messages SET content_at = now() - interval '10 minutes', analysis_state = 'done'"
    )
    keys = await conn.fetch("SELECT tenant_id, instance_id, message_id FROM messages ORDER BY seq")
    # all indexed but W5 (its index job was lost): W0..W4 are done, W5 blocks the watermark
    done = [k for k in keys if k[2] != "W5"]
    await conn.fetch(
        db.q("index_messages"), [k[0] for k in done], [k[1] for k in done], [k[2] for k in done]
    )
    store = Store(database_url).start()
    sent: list[list[str]] = []
    try:
        reconciler = Reconciler(
            store,
            lambda keys: sent.append([k[2] for k in keys]),
            age=60,
            max_age=86_400,
            interval=1,
            batch_size=10,
            page_size=4,  # several pages
        )
        first = reconciler.run_once()
        mark = await conn.fetchrow("SELECT content_at, seq FROM sense_reconcile")
        w4 = await conn.fetchrow("SELECT content_at, seq FROM messages WHERE message_id = 'W4'")
        assert (mark["content_at"], mark["seq"]) == (w4["content_at"], w4["seq"])
        # W5 gets indexed: the next round starts after W4 and moves past everything
        w5 = [k for k in keys if k[2] == "W5"]
        await conn.fetch(db.q("index_messages"), [w5[0][0]], [w5[0][1]], [w5[0][2]])
        second = reconciler.run_once()
        third = reconciler.run_once()
    finally:
        store.close()
    assert first.enqueued == 1 and sent[0] == ["W5"] and first.scanned == 12
    assert second.enqueued == 0 and second.scanned == 7  # W5..W11 only
    assert third.scanned == 0  # nothing since the watermark
    w11 = await conn.fetchrow("SELECT content_at, seq FROM messages WHERE message_id = 'W11'")
    mark = await conn.fetchrow("SELECT content_at, seq FROM sense_reconcile")
    assert (mark["content_at"], mark["seq"]) == (w11["content_at"], w11["seq"])


async def test_each_analysis_records_its_analyzer_and_reanalyze_rescores_older_ones(
    deployment: Deployment,
    worker: WorkerProcess,
    conn: asyncpg.Connection,
    redis_url: str,
    local: LocalProvider,
) -> None:
    from service.reanalyze import Selection, broker_sender, follow, mark_and_send

    for i in range(4):
        await deployment.post(upsert("acme-main", f"RA{i}", "Adorei o atendimento, obrigado!"))
    for i in range(4):
        analysis = await _done(deployment, "acme", "acme-main", f"RA{i}")
        assert analysis["analyzer"] == local.version
    # two of them scored by an older analyzer (as if before an upgrade), with other scores
    await conn.execute(
        "UPDATE messages SET analyzer = 'local/rules-old+minilm-l6', sentiment = -0.9,"
        " emotion = 'raiva' WHERE message_id IN ('RA0', 'RA1')"
    )
    untouched = await conn.fetchval("SELECT analyzed_at FROM messages WHERE message_id = 'RA2'")
    quiet: Any = lambda *args: None  # noqa: E731 (no progress bar in the test log)
    selection = Selection(local.version)
    marked = await mark_and_send(conn, selection, broker_sender(redis_url), report=quiet)
    assert marked == 2  # only what another analyzer scored
    async with asyncio.timeout(WAIT):
        assert await follow(conn, selection, marked, every=0.05, report=quiet) == 0
    rows = {
        r["message_id"]: r
        for r in await conn.fetch("SELECT message_id, analyzer, emotion, analyzed_at FROM messages")
    }
    for mid in ("RA0", "RA1"):
        assert rows[mid]["analyzer"] == local.version and rows[mid]["emotion"] == "gratidão"
    assert rows["RA2"]["analyzed_at"] == untouched  # current already: not scored again
    # everything, when asked
    everything = Selection(local.version, everything=True)
    assert await mark_and_send(conn, everything, broker_sender(redis_url), report=quiet) == 4
    seen: list[tuple[int, int]] = []
    async with asyncio.timeout(WAIT):
        await follow(conn, everything, 4, every=0.05, report=lambda _, d, t: seen.append((d, t)))
    assert seen[-1] == (4, 4)
    assert await conn.fetchval("SELECT count(*) FROM messages WHERE analyzer IS NULL") == 0
