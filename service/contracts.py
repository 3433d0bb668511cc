"""What the web processes and the workers agree on across process boundaries: queue and actor
names and their arguments, the live-stream channel and the analysed-message wire format, the
query-embedding protocol, and the pgvector text form. The floor both sides stand on: it imports
neither Starlette, nor asyncpg, nor redis (``redis_broker`` imports its libraries when called).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    from dramatiq.brokers.redis import RedisBroker

Key = tuple[uuid.UUID, uuid.UUID, str]  # (tenant_id, instance_id, message_id)

# Dramatiq queues (Redis broker, namespace NAMESPACE). The web process enqueues every stored
# message to the index actor, which hands the ones waiting for analysis to the enrichment actor.
NAMESPACE = "dramatiq"
INDEX_QUEUE = "sense-index"
INDEX_ACTOR = "index_messages"
QUEUE = "sense-enrich"
ACTOR = "analyze_messages"
# Messages recovered by backfill: indexed and analysed by the workers once the two queues
# above are empty (workers/main.py), so a recovered backlog never delays live traffic.
BACKFILL_QUEUE = "sense-backfill"
BACKFILL_ACTOR = "index_recovered"


def message_args(keys: list[Key]) -> list[list[str]]:
    """Both actors' one argument: ``[[tenant_id, instance_id, message_id], ...]`` (JSON)."""
    return [[str(t), str(i), m] for t, i, m in keys]


def job(queue: str, actor: str, keys: list[Key]) -> Any:
    """The Dramatiq message of one job of ``actor`` on ``queue`` over ``keys``: how the web
    process, ``sense reanalyze`` and ``sense backfill`` hand messages to the workers without
    importing their actors."""
    import dramatiq

    return dramatiq.Message(
        queue_name=queue, actor_name=actor, args=(message_args(keys),), kwargs={}, options={}
    )


def by_tenant(keys: Iterable[Key]) -> dict[uuid.UUID, list[Key]]:
    """``keys`` grouped by tenant, each group in its original order (a job, a prompt, never
    mixes two tenants' messages)."""
    groups: dict[uuid.UUID, list[Key]] = {}
    for key in keys:
        groups.setdefault(key[0], []).append(key)
    return groups


def redis_broker(url: str, timeout: float, middleware: list[Any] | None = None) -> RedisBroker:
    """A Dramatiq Redis broker whose client fails fast (no client-side retries, short socket
    timeouts): callers decide what a failure means."""
    import redis
    from dramatiq.brokers.redis import RedisBroker
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    client = redis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=30,
    )
    return RedisBroker(client=client, namespace=NAMESPACE, middleware=middleware or [])


# The live stream: one Redis channel per tenant; each message on it is a Wire. -------------

CHANNEL_PREFIX = "sense:live:"
CONTROL_CHANNEL = "sense:live:control"  # always subscribed: keeps the reader loop simple
FRAMES_PER_MESSAGE = 256  # frames per Redis message, so one flush cannot swamp a buffer


def channel(tenant_id: uuid.UUID | str) -> str:
    return f"{CHANNEL_PREFIX}{tenant_id}"


class AnalyzedItem(msgspec.Struct):
    """What the worker publishes for each message it analysed."""

    instance_id: uuid.UUID
    message_id: str
    state: str  # done | failed | skipped
    sentiment: float | None = None
    emotion: str | None = None
    satisfaction: int | None = None
    error: str | None = None
    analyzer: str | None = None


class Wire(msgspec.Struct):
    """One Redis message: finished frames, plus analyses whose instance name the relay adds."""

    frames: list[msgspec.Raw] = []
    analyzed: list[AnalyzedItem] = []


_encoder = msgspec.json.Encoder()


def publish_analyzed(
    redis_client: Any, tenant_id: uuid.UUID | str, items: Iterable[AnalyzedItem | Mapping[str, Any]]
) -> int:
    """Tell the tenant's live clients that these messages were analysed (worker side).

    Call it after the analysis is committed, with a *sync* ``redis.Redis`` client; ``items``
    are ``AnalyzedItem`` or mappings with the same keys (``instance_id``, ``message_id``,
    ``state``, ``sentiment``, ``emotion``, ``satisfaction``, ``error``). Returns the number of
    Redis messages published. Best effort: a live client that misses it catches up on reconnect.
    """
    converted = [
        i if isinstance(i, AnalyzedItem) else msgspec.convert(i, AnalyzedItem, strict=False)
        for i in items
    ]
    sent = 0
    for start in range(0, len(converted), FRAMES_PER_MESSAGE):
        chunk = converted[start : start + FRAMES_PER_MESSAGE]
        redis_client.publish(channel(tenant_id), _encoder.encode(Wire(analyzed=chunk)))
        sent += 1
    return sent


# Query embeddings for semantic search: the web process LPUSHes an EmbedRequest on EMBED_QUEUE
# and BLPOPs its reply_key for an EmbedReply (workers/query_embed.py answers). ---------------

EMBED_QUEUE = "sense:query-embed"
EMBED_DIMENSIONS = 512
EMBED_QUEUE_TTL = 60  # seconds: with no worker for this long, waiting requests just expire


def reply_key(request_id: str) -> str:
    return f"{EMBED_QUEUE}:reply:{request_id}"


class EmbedRequest(msgspec.Struct):
    id: str
    text: str
    deadline: float  # unix time; the worker skips requests nobody waits for any more


class EmbedReply(msgspec.Struct):
    vector: list[float] | None = None
    error: str | None = None


def vector_literal(vector: list[float]) -> str:
    """pgvector's text form; ``repr`` keeps every float exactly (the column is float4)."""
    return "[" + ",".join(repr(float(x)) for x in vector) + "]"
