"""Reference routes for the load benchmark (bench/), mounted only when SENSE_BENCH_ROUTES=1.

- null ceiling: the same server and envelope decode, answering 200 without doing anything;
- naive baseline: what the first design did per request ("Strategy B"): one instance lookup
  query, then one INSERT (its own transaction) per message.
Both are served like the real route (service.webhook: the same raw ASGI path, body reader and
answer writer, X-Request-Id echoed) and decode the envelope exactly as it does.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import msgspec

from service import db, payloads
from service.events import PayloadError, build_ops
from service.resolve import Instance, digest
from service.webhook import QUARANTINED, STORED, Answer, BodyTooLarge, Handler, Raw, failure

if TYPE_CHECKING:
    from service.state import Services


async def null_ceiling(services: Services, raw: Raw, secret: str) -> Answer:
    try:
        body = await raw.body(
            services.settings.max_body_bytes, services.settings.body_timeout_seconds
        )
        payloads.envelope_decoder.decode(body)
    except BodyTooLarge:
        return failure(413, "payload_too_large", "too large")
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return failure(400, "invalid_envelope", str(exc))
    return STORED


async def naive(services: Services, raw: Raw, secret: str) -> Answer:
    try:
        body = await raw.body(
            services.settings.max_body_bytes, services.settings.body_timeout_seconds
        )
        envelope = payloads.envelope_decoder.decode(body)
    except BodyTooLarge:
        return failure(413, "payload_too_large", "too large")
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return failure(400, "invalid_envelope", str(exc))
    async with services.pool.acquire() as conn:
        row = await conn.fetchrow(db.q("naive_lookup_instance"), digest(secret), envelope.instance)
        if row is None:
            return QUARANTINED
        inst = Instance(row["tenant_id"], row["instance_id"], row["source_id"], row["name"], None)
        try:
            built = build_ops(envelope, inst, int(time.time() * 1000))
        except PayloadError as exc:
            return failure(400, "invalid_data", str(exc))
        for op in built.ops.messages:
            await conn.execute(db.q("naive_insert_message"), *op.record())
    return STORED


# path prefix -> handler, served as service.webhook serves the real route
ROUTES: dict[str, Handler] = {"/bench/null/": null_ceiling, "/bench/naive/": naive}
