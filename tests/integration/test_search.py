"""GET /api/v1/search: Portuguese full-text and semantic search, per tenant, on real Postgres
and Redis. The query embedding comes from workers.query_embed driven by a deterministic
hashing ``embed`` (the real seam; only the model is stood in for)."""

from __future__ import annotations

import hashlib
import math
import re
import threading
import time
import unicodedata
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import pytest
from starlette.applications import Starlette

from service import contracts, db, search
from tests.integration.conftest import Deployment, running_app, upsert
from workers.query_embed import serve_query_embeddings

DIMS = contracts.EMBED_DIMENSIONS


def fake_embed(texts: list[str]) -> list[list[float]]:
    """Bag of words hashed into 512 signed dimensions, L2-normalised: texts that share words
    are close, others are nearly orthogonal."""
    out = []
    for text in texts:
        folded = unicodedata.normalize("NFKD", text.lower())
        folded = "".join(c for c in folded if not unicodedata.combining(c))
        vec = [0.0] * DIMS
        for word in "".join(c if c.isalnum() else " " for c in folded).split():
            digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
            index = int.from_bytes(digest[:4], "little") % DIMS
            vec[index] += 1.0 if digest[4] & 1 else -1.0
        norm = math.sqrt(sum(x * x for x in vec)) or 1.0
        out.append([x / norm for x in vec])
    return out


@pytest.fixture
async def app(
    conn: asyncpg.Connection, database_url: str, redis_url: str
) -> AsyncIterator[Starlette]:
    async with running_app(database_url, redis_url=redis_url) as application:
        yield application


@pytest.fixture
def embed_worker(redis_url: str) -> Iterator[threading.Thread]:
    stop = threading.Event()
    thread = threading.Thread(
        target=serve_query_embeddings, args=(redis_url, fake_embed, stop), daemon=True
    )
    thread.start()
    yield thread
    stop.set()
    thread.join(5)


async def store(d: Deployment, instance: str, message_id: str, text: str, **extra: Any) -> None:
    r = await d.post(upsert(instance, message_id, text, **extra))
    assert r.status_code == 200, r.text


async def index_stored(conn: asyncpg.Connection) -> None:
    """What the workers' index actor does for every stored message: its search row."""
    rows = await conn.fetch("SELECT tenant_id, instance_id, message_id FROM messages")
    await conn.fetch(
        db.q("index_messages"),
        [r[0] for r in rows],
        [r[1] for r in rows],
        [r[2] for r in rows],
    )


async def embed_stored(conn: asyncpg.Connection) -> None:
    """What the workers do: index each message, then write its embedding."""
    await index_stored(conn)
    rows = await conn.fetch("SELECT tenant_id, instance_id, message_id, text FROM messages")
    for r, vec in zip(rows, fake_embed([r["text"] or "" for r in rows]), strict=True):
        await conn.execute(
            "UPDATE message_search SET embedding = $4::text::vector"
            " WHERE tenant_id = $1 AND instance_id = $2 AND message_id = $3",
            r["tenant_id"],
            r["instance_id"],
            r["message_id"],
            contracts.vector_literal(vec),
        )


async def ids(d: Deployment, tenant: str, q: str, mode: str = "text", **params: Any) -> list[str]:
    r = await d.get("/api/v1/search", tenant, q=q, mode=mode, **params)
    assert r.status_code == 200, r.text
    return [hit["message"]["message_id"] for hit in r.json()["items"]]


async def test_text_search_understands_portuguese(
    deployment: Deployment, conn: asyncpg.Connection
) -> None:
    await store(deployment, "acme-main", "A1", "Adorei o atendimento de vocês!")
    await store(deployment, "acme-main", "A2", "Não recebi meu pedido ainda")
    await store(deployment, "acme-main", "A3", "Qual o horário de funcionamento?")
    await store(deployment, "globex-main", "G1", "atendimento péssimo, não recomendo")
    # searchable once the index actor has written the search rows, not before
    assert await ids(deployment, "acme", "atendimentos") == []
    await index_stored(conn)
    # stemming: plural and verb forms; accents folded both ways
    assert await ids(deployment, "acme", "atendimentos") == ["A1"]
    assert await ids(deployment, "acme", "nao recebido") == ["A2"]
    assert await ids(deployment, "acme", "horario") == ["A3"]
    assert await ids(deployment, "acme", '"meu pedido"') == ["A2"]
    assert await ids(deployment, "acme", "pedido or horário") in (["A2", "A3"], ["A3", "A2"])
    # the other tenant's matching message never shows
    assert await ids(deployment, "globex", "atendimento") == ["G1"]
    assert await ids(deployment, "acme", "péssimo") == []
    body = (await deployment.get("/api/v1/search", "acme", q="atendimento")).json()
    assert body["mode"] == "text" and body["query"] == "atendimento"
    hit = body["items"][0]
    assert hit["highlight"].startswith("Adorei o \x02atendimento\x03 de vocês")
    assert hit["score"] > 0 and hit["message"]["instance"] == "acme-main"


async def test_text_search_follows_edits_deletes_and_filters(
    deployment: Deployment, conn: asyncpg.Connection
) -> None:
    await store(deployment, "acme-main", "E1", "texto original", key={"fromMe": True})
    await store(deployment, "acme-main", "D1", "mensagem apagada sobre boleto")
    await store(
        deployment,
        "acme-main",
        "B1",
        "segunda via do boleto",
        remote="5511911112222@s.whatsapp.net",
    )
    await index_stored(conn)
    assert await ids(deployment, "acme", "original") == ["E1"]
    edit = {
        "event": "messages.edited",
        "instance": "acme-main",
        "data": {
            "key": {"remoteJid": "5511999999999@s.whatsapp.net", "fromMe": True, "id": "E1"},
            "type": "MESSAGE_EDIT",
            "editedMessage": {"conversation": "texto corrigido com boleto"},
            "timestampMs": "1700000100000",
        },
    }
    delete = {
        "event": "messages.delete",
        "instance": "acme-main",
        "data": {"remoteJid": "5511999999999@s.whatsapp.net", "fromMe": False, "id": "D1"},
    }
    for body in (edit, delete):
        assert (await deployment.post(body)).status_code == 200
    # the edit re-indexed its message in the edit's own commit (no worker needed); indexing
    # again (a late or repeated index job) keeps the edited text
    assert await ids(deployment, "acme", "original") == []
    assert sorted(await ids(deployment, "acme", "boleto")) == ["B1", "E1"]
    await index_stored(conn)
    assert await ids(deployment, "acme", "original") == []
    assert sorted(await ids(deployment, "acme", "boleto")) == ["B1", "E1"]
    assert await ids(deployment, "acme", "boleto", chat="5511911112222@s.whatsapp.net") == ["B1"]
    # any form of the chat's JID names it (device suffix, @c.us)
    assert await ids(deployment, "acme", "boleto", chat="5511911112222:7@c.us") == ["B1"]
    assert await ids(deployment, "acme", "boleto", limit=1) in (["B1"], ["E1"])


async def test_search_answers_bad_requests_clearly(deployment: Deployment) -> None:
    assert (await deployment.client.get("/api/v1/search", params={"q": "x"})).status_code == 401
    for params in ({"q": ""}, {"q": "x", "mode": "fuzzy"}, {"q": "x", "limit": "0"}):
        r = await deployment.get("/api/v1/search", "acme", **params)
        assert r.status_code == 400 and r.json()["error"] == "invalid_parameter", r.text
    r = await deployment.get("/api/v1/search", "acme", q="x", instance="globex-main")
    assert r.status_code == 404  # another tenant's instance does not exist for acme
    # only stop words: a valid query that matches nothing
    assert await ids(deployment, "acme", "de o a") == []


async def test_semantic_search_ranks_by_meaning_within_the_tenant(
    deployment: Deployment, conn: asyncpg.Connection, embed_worker: threading.Thread
) -> None:
    await store(deployment, "acme-main", "S1", "quero cancelar minha assinatura")
    await store(deployment, "acme-main", "S2", "o entregador chegou atrasado")
    await store(deployment, "acme-main", "S3", "obrigado pela ajuda")
    await store(deployment, "globex-main", "G1", "cancelar assinatura agora")
    await store(deployment, "acme-main", "NOEMB", "cancelar assinatura sem embedding ainda")
    await embed_stored(conn)
    await conn.execute("UPDATE message_search SET embedding = NULL WHERE message_id = 'NOEMB'")
    r = await deployment.get("/api/v1/search", "acme", q="cancelar a assinatura", mode="semantic")
    assert r.status_code == 200, r.text
    body = r.json()
    found = [h["message"]["message_id"] for h in body["items"]]
    assert found[0] == "S1" and "G1" not in found and "NOEMB" not in found
    assert sorted(found) == ["S1", "S2", "S3"]
    scores = [h["score"] for h in body["items"]]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0.5
    assert body["items"][0]["highlight"] is None
    other = await ids(deployment, "globex", "cancelar a assinatura", mode="semantic")
    assert other == ["G1"]


async def test_semantic_search_without_a_worker_is_503_and_text_still_works(
    app: Starlette, deployment: Deployment, redis_url: str, conn: asyncpg.Connection
) -> None:
    app.state.query_embedder = search.QueryEmbedder(app.state.live.redis, timeout=0.3)
    await store(deployment, "acme-main", "T1", "preciso de ajuda com o boleto")
    await index_stored(conn)
    r = await deployment.get("/api/v1/search", "acme", q="boleto", mode="semantic")
    assert r.status_code == 503
    assert r.headers["retry-after"]
    assert r.json()["error"] == "embedding_unavailable"
    assert "text search" in r.json()["detail"]
    # it waited for a worker as long as its embedder's timeout, not the default 2 s: the
    # request was queued, then given up after 0.3 s
    assert "no enrichment worker embedded the query within 0.3 s" in r.json()["detail"]
    assert await ids(deployment, "acme", "boleto") == ["T1"]
    # the unanswered request expires instead of piling up for a worker that comes later
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        assert 0 < client.ttl(contracts.EMBED_QUEUE) <= contracts.EMBED_QUEUE_TTL
    finally:
        client.delete(contracts.EMBED_QUEUE)
        client.close()


def test_worker_loop_batches_skips_expired_and_survives_embed_errors(redis_url: str) -> None:
    import msgspec
    import redis

    client = redis.Redis.from_url(redis_url)
    client.delete(contracts.EMBED_QUEUE)
    calls: list[list[str]] = []

    def embed(texts: list[str]) -> list[list[float]]:
        calls.append(texts)
        if "boom" in texts:
            raise RuntimeError("model exploded")
        return fake_embed(texts)

    now = time.time()
    requests = [
        contracts.EmbedRequest("r1", "um", now + 30),
        contracts.EmbedRequest("r2", "dois", now + 30),
        contracts.EmbedRequest("old", "velho", now - 1),
    ]
    for req in requests:
        client.rpush(contracts.EMBED_QUEUE, msgspec.json.encode(req))
    client.rpush(contracts.EMBED_QUEUE, b"not json")
    stop = threading.Event()
    thread = threading.Thread(target=serve_query_embeddings, args=(redis_url, embed, stop))
    thread.start()
    try:
        for rid in ("r1", "r2"):
            got = client.blpop([contracts.reply_key(rid)], timeout=5)
            assert got is not None
            reply = msgspec.json.decode(got[1], type=contracts.EmbedReply)
            assert reply.vector is not None and len(reply.vector) == DIMS
        assert calls == [["um", "dois"]]  # one batch; the expired one was skipped
        assert client.exists(contracts.reply_key("old")) == 0
        client.rpush(
            contracts.EMBED_QUEUE,
            msgspec.json.encode(contracts.EmbedRequest("b", "boom", now + 30)),
        )
        got = client.blpop([contracts.reply_key("b")], timeout=5)
        assert got is not None
        assert "model exploded" in msgspec.json.decode(got[1], type=contracts.EmbedReply).error
        assert thread.is_alive()
    finally:
        stop.set()
        thread.join(5)
        client.close()
    assert not thread.is_alive()


# plans: with many tenants, both searches must read through an index, filtered by tenant ------


async def _many_tenants(conn: asyncpg.Connection, sizes: list[int]) -> list[uuid.UUID]:
    """Bulk rows straight into messages (the plan, not the ingest path, is under test)."""
    words = ["boleto", "entrega", "pedido", "atraso", "cancelar", "ajuda", "pagamento", "troca"]
    vectors = [contracts.vector_literal(v) for v in fake_embed(words)]
    records = []
    tenant_ids = [uuid.uuid4() for _ in sizes]
    for t, (tenant_id, size) in enumerate(zip(tenant_ids, sizes, strict=True)):
        instance_id = uuid.uuid4()
        for n in range(size):
            w = (n + t) % len(words)
            records.append(
                (tenant_id, instance_id, f"M{n}", True, f"sobre {words[w]} numero {n}", vectors[w])
            )
    await conn.execute(
        "CREATE TEMP TABLE bulk (tenant_id uuid, instance_id uuid, message_id text,"
        " has_content boolean, text text, embedding text)"
    )
    await conn.copy_records_to_table("bulk", records=records)
    # every row its own point near its word's (noise per row, made in SQL): thousands of
    # identical vectors make a degenerate HNSW graph, whose approximate answers are then luck
    await conn.execute("SELECT setseed(0.7)")
    await conn.execute(
        "INSERT INTO messages (tenant_id, instance_id, message_id, has_content, text,"
        " message_ts) SELECT tenant_id, instance_id, message_id, has_content, text, now()"
        " FROM bulk"
    )
    await conn.execute(
        "INSERT INTO message_search (tenant_id, instance_id, message_id, tsv, embedding)"
        " SELECT tenant_id, instance_id, message_id, to_tsvector('sense_pt', text),"
        " embedding::vector + (SELECT array_agg((random() - 0.5) * 0.02)::vector"
        " FROM generate_series(1, 512) WHERE bulk.message_id IS NOT NULL) FROM bulk"
    )
    await conn.execute("ANALYZE messages")
    await conn.execute("ANALYZE message_search")
    return tenant_ids


async def _plan(conn: asyncpg.Connection, query: str, *args: Any) -> str:
    async with conn.transaction():
        await conn.execute(db.q("search_semantic_settings"))
        return "\n".join(r[0] for r in await conn.fetch("EXPLAIN " + db.q(query), *args))


async def test_search_plans_use_an_index_and_the_tenant_filter(conn: asyncpg.Connection) -> None:
    small, *_, big = await _many_tenants(conn, [200] * 40 + [6000])
    for tenant_id in (small, big):
        plan = await _plan(conn, "search_text", tenant_id, "boleto", None, None, 20)
        print(plan)
        assert "Seq Scan" not in plan, plan
        assert re.search(r"Index Cond: \(+tenant_id = ", plan), plan
    # a big tenant: the (tenant, lexemes) GIN index answers both conditions at once
    plan = await _plan(conn, "search_text", big, "boleto", None, None, 20)
    assert "message_search_text" in plan, plan
    vector = contracts.vector_literal(fake_embed(["boleto"])[0])
    for tenant_id in (small, big):
        plan = await _plan(conn, "search_semantic", tenant_id, vector, None, None, 20)
        print(plan)
        assert "Seq Scan" not in plan, plan
        assert "Index Scan" in plan and "tenant_id = " in plan, plan
        async with conn.transaction():
            await conn.execute(db.q("search_semantic_settings"))
            rows = await conn.fetch(db.q("search_semantic"), tenant_id, vector, None, None, 20)
        # the tenant's full top-k, nearest first, never another tenant's rows
        assert len(rows) == 20
        assert {r["text"].split()[1] for r in rows[:5]} == {"boleto"}


async def test_semantic_search_is_planned_for_each_tenant_not_from_the_cache(
    conn: asyncpg.Connection,
) -> None:
    # asyncpg prepares every statement and Postgres may then reuse a generic plan: one made
    # for the average tenant, tiny among many. After a run of mid-size tenants it would scan a
    # big tenant's every row; the search settings make each search plan for its own tenant.
    *tenants, big = await _many_tenants(conn, [10] * 300 + [300] * 10 + [8000])
    mids = tenants[-10:]
    vector = contracts.vector_literal(fake_embed(["boleto"])[0])
    statement = db.q("search_semantic").replace("$2::text::vector", "$2::vector")
    async with conn.transaction():
        await conn.execute(db.q("search_semantic_settings"))
        await conn.execute(f"PREPARE nearest(uuid, vector, uuid, text[], int) AS {statement}")
        try:
            for tenant_id in mids:
                await conn.fetch(f"EXECUTE nearest('{tenant_id}', '{vector}', NULL, NULL, 20)")
            plan = "\n".join(
                r[0]
                for r in await conn.fetch(
                    f"EXPLAIN EXECUTE nearest('{big}', '{vector}', NULL, NULL, 20)"
                )
            )
        finally:
            await conn.execute("DEALLOCATE nearest")
    assert "message_search_embedding" in plan, plan
