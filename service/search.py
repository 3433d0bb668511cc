"""``GET /api/v1/search?q=&mode=text|semantic&limit=&instance=&chat=`` for one tenant.

- ``text``: Postgres full-text search with the ``sense_pt`` configuration (Portuguese stemming,
  accents folded) over the message's current text, ranked by ``ts_rank_cd``; the query syntax is
  ``websearch_to_tsquery``'s (``"exact phrase"``, ``or``, ``-word``). Needs nothing but Postgres.
- ``semantic``: cosine similarity between the query's embedding and the messages' embeddings
  (pgvector HNSW). The web process never loads a model: it asks the enrichment worker over Redis
  (``LPUSH sense:query-embed`` a request, ``BLPOP`` its own reply key) and answers 503 when no
  worker replies within ``QueryEmbedder.timeout``. The worker side is
  ``workers.query_embed.serve_query_embeddings``.

Answer: ``{"mode", "query", "items": [{"score", "highlight", "message"}]}``; ``score`` is
``ts_rank_cd`` (text) or cosine similarity in [-1, 1] (semantic); ``highlight`` (text mode) is the
best fragment with each match between U+0002 and U+0003, never HTML.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import msgspec
from redis.exceptions import RedisError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service import db
from service.contracts import (
    EMBED_DIMENSIONS,
    EMBED_QUEUE,
    EMBED_QUEUE_TTL,
    EmbedReply,
    EmbedRequest,
    reply_key,
    vector_literal,
)
from service.http import JSON, error
from service.requests import chat_forms, instance_filter, int_param, tenant_of, unauthorized
from service.resources import Message, message_from_row

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from service.state import Services

log = logging.getLogger("sense.search")

MAX_QUERY_CHARS = 500


class EmbeddingUnavailable(Exception):
    """No worker embedded the query in time (answer 503)."""


class QueryEmbedder:
    """Asks a worker for a query's embedding; remembers the last few answers, per tenant (a
    shared cache would tell, by its speed, whether another tenant searched the same words)."""

    def __init__(self, redis: aioredis.Redis | None, timeout: float = 2.0, cache_size: int = 512):
        self.redis = redis
        self.timeout = timeout
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[uuid.UUID, str], list[float]] = OrderedDict()
        self._reply = msgspec.json.Decoder(EmbedReply)

    async def embed(self, tenant_id: uuid.UUID, text: str) -> list[float]:
        cached = self._cache.get((tenant_id, text))
        if cached is not None:
            self._cache.move_to_end((tenant_id, text))
            return cached
        if self.redis is None:
            raise EmbeddingUnavailable("semantic search needs Redis (SENSE_REDIS_URL) and a worker")
        request_id = uuid.uuid4().hex
        request = EmbedRequest(request_id, text, time.time() + self.timeout)
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.lpush(EMBED_QUEUE, msgspec.json.encode(request))
                pipe.expire(EMBED_QUEUE, EMBED_QUEUE_TTL)
                await pipe.execute()
            got = await self.redis.blpop([reply_key(request_id)], timeout=self.timeout)
        except (RedisError, OSError) as exc:
            raise EmbeddingUnavailable(f"Redis unavailable ({exc.__class__.__name__})") from exc
        if got is None:
            raise EmbeddingUnavailable(
                f"no enrichment worker embedded the query within {self.timeout:g} s"
            )
        reply = self._reply.decode(got[1])
        if reply.vector is None:
            raise EmbeddingUnavailable(f"the worker could not embed the query: {reply.error}")
        if len(reply.vector) != EMBED_DIMENSIONS:
            raise EmbeddingUnavailable(
                f"the worker answered {len(reply.vector)} dimensions, not {EMBED_DIMENSIONS}"
            )
        self._cache[(tenant_id, text)] = reply.vector
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return reply.vector


class Hit(msgspec.Struct):
    score: float
    highlight: str | None
    message: Message


class Results(msgspec.Struct):
    mode: str
    query: str
    items: list[Hit]


def embedder(request: Request) -> QueryEmbedder:
    state = request.app.state
    found: QueryEmbedder | None = getattr(state, "query_embedder", None)
    if found is None:
        live = getattr(state, "live", None)
        found = QueryEmbedder(live.redis if live is not None else None)
        state.query_embedder = found
    return found


async def search(request: Request) -> Response:
    services: Services = request.app.state.services
    tenant = tenant_of(request)
    if tenant is None:
        return unauthorized()
    params = request.query_params
    query = (params.get("q") or "").strip()
    mode = params.get("mode") or "text"
    if mode not in ("text", "semantic"):
        return error(400, "invalid_parameter", "mode must be text or semantic")
    if not query:
        return error(400, "invalid_parameter", "q is required")
    if len(query) > MAX_QUERY_CHARS:
        return error(400, "invalid_parameter", f"q is longer than {MAX_QUERY_CHARS} characters")
    try:
        limit = int_param(request, "limit", 20, 1, 100)
    except ValueError as exc:
        return error(400, "invalid_parameter", str(exc))
    try:
        instance_id = instance_filter(request, tenant)
    except LookupError as exc:
        return error(404, "not_found", str(exc))
    chat = chat_forms(params.get("chat") or None)  # any form of the chat JID (§7)
    if mode == "text":
        rows = await services.pool.fetch(
            db.q("search_text"), tenant.tenant_id, query, instance_id, chat, limit
        )
        scored = [(float(r["score"]), r["highlight"], r) for r in rows]
    else:
        try:
            vector = await embedder(request).embed(tenant.tenant_id, query)
        except EmbeddingUnavailable as exc:
            return error(
                503,
                "embedding_unavailable",
                f"semantic search is unavailable: {exc}; text search (mode=text) still works",
                {"Retry-After": "5"},
            )
        rows = await semantic_rows(services, tenant.tenant_id, vector, instance_id, chat, limit)
        scored = [(1.0 - float(r["distance"]), None, r) for r in rows]
    names = services.instance_names(tenant.tenant_id)
    items = [
        Hit(round(score, 6), highlight, message_from_row(r, names.get(r["instance_id"], "?")))
        for score, highlight, r in scored
    ]
    return JSON(Results(mode, query, items))


async def semantic_rows(
    services: Services,
    tenant_id: uuid.UUID,
    vector: list[float],
    instance_id: uuid.UUID | None,
    chat: list[str] | None,
    limit: int,
) -> list[Any]:
    async with services.pool.acquire() as conn, conn.transaction():
        # Keep scanning the HNSW graph until `limit` rows of this tenant pass the filter.
        await conn.execute(db.q("search_semantic_settings"))
        rows: list[Any] = await conn.fetch(
            db.q("search_semantic"), tenant_id, vector_literal(vector), instance_id, chat, limit
        )
        return rows


def routes() -> list[Route]:
    return [Route("/api/v1/search", search, methods=["GET"])]
