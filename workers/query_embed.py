"""Worker side of semantic search: embed search queries for the web processes.

The web process never loads a model (design.md, "Light web processes"); for
``GET /api/v1/search?mode=semantic`` it LPUSHes ``{"id", "text", "deadline"}`` to
``sense:query-embed`` and BLPOPs ``sense:query-embed:reply:{id}`` for ``{"vector": [...]}`` (or
``{"error": "..."}``). This loop answers them, batching whatever is waiting into one ``embed``
call. Start it in a thread of the worker process, with the same ``embed`` as the messages use::

    stop = threading.Event()
    threading.Thread(
        target=serve_query_embeddings, args=(redis_url, embedder.embed, stop), daemon=True
    ).start()
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import msgspec
import redis

from service.contracts import EMBED_QUEUE, EmbedReply, EmbedRequest, reply_key

log = logging.getLogger("sense.query_embed")

MAX_BATCH = 32
REPLY_TTL = 30  # seconds: a reply nobody picked up goes away
POLL_SECONDS = 1.0  # how often the loop looks at `stop` while idle

_request = msgspec.json.Decoder(EmbedRequest)


def serve_query_embeddings(
    redis_url: str,
    embed: Callable[[list[str]], list[list[float]]],
    stop: threading.Event,
) -> None:
    """Answer query-embedding requests until ``stop`` is set. Survives Redis going away and
    ``embed`` failing (the waiting requests get an error reply instead of a timeout)."""
    client = redis.Redis.from_url(redis_url, socket_timeout=POLL_SECONDS + 5)
    try:
        while not stop.is_set():
            try:
                _serve_once(client, embed)
            except redis.RedisError as exc:
                log.warning("query embeddings: Redis unavailable (%s)", exc.__class__.__name__)
                stop.wait(1.0)
    finally:
        client.close()


def _serve_once(client: redis.Redis, embed: Callable[[list[str]], list[list[float]]]) -> None:
    first = client.blpop([EMBED_QUEUE], timeout=POLL_SECONDS)
    if first is None:
        return
    raw = [first[1], *(client.lpop(EMBED_QUEUE, MAX_BATCH - 1) or [])]
    now = time.time()
    requests: list[EmbedRequest] = []
    for item in raw:
        try:
            request = _request.decode(item)
        except msgspec.DecodeError:
            log.warning("query embeddings: skipped a malformed request")
            continue
        if request.deadline >= now:  # else the web process stopped waiting for it
            requests.append(request)
    if not requests:
        return
    replies: list[EmbedReply]
    try:
        vectors = embed([r.text for r in requests])
        if len(vectors) != len(requests):
            raise ValueError(f"embed returned {len(vectors)} vectors for {len(requests)} texts")
        replies = [EmbedReply(vector=[float(x) for x in v]) for v in vectors]
    except Exception as exc:
        log.exception("query embeddings: embed failed")
        replies = [EmbedReply(error=f"{exc.__class__.__name__}: {exc}")] * len(requests)
    pipe = client.pipeline(transaction=False)
    for request, reply in zip(requests, replies, strict=True):
        key = reply_key(request.id)
        pipe.rpush(key, msgspec.json.encode(reply))
        pipe.expire(key, REPLY_TTL)
    pipe.execute()
