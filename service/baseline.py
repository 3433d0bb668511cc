"""Reference routes for the load benchmark (bench/), mounted only when SENSE_BENCH_ROUTES=1.

- null ceiling: the same server and envelope decode, answering 200 without doing anything;
- naive baseline: what the first design did per request ("Strategy B"): one instance lookup
  query, then one INSERT (its own transaction) per message.
Both read the body and decode the envelope exactly as the real route does.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service import db, payloads
from service.events import PayloadError, build_ops
from service.http import JSON, error
from service.resolve import Instance, digest
from service.webhook import BodyTooLarge, read_body

if TYPE_CHECKING:
    from service.app import Services


def _echo(request: Request, response: Response) -> Response:
    """Echo X-Request-Id like the real route does (the bench matches acks to requests by it)."""
    request_id = request.headers.get("x-request-id")
    if request_id is not None:
        response.headers["X-Request-Id"] = request_id
    return response


async def null_ceiling(request: Request) -> Response:
    return _echo(request, await _null_ceiling(request))


async def _null_ceiling(request: Request) -> Response:
    services: Services = request.app.state.services
    try:
        body = await read_body(request, services.settings.max_body_bytes)
        payloads.envelope_decoder.decode(body)
    except BodyTooLarge:
        return error(413, "payload_too_large", "too large")
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return error(400, "invalid_envelope", str(exc))
    return JSON({"status": "stored"})


async def naive(request: Request) -> Response:
    return _echo(request, await _naive(request))


async def _naive(request: Request) -> Response:
    services: Services = request.app.state.services
    try:
        body = await read_body(request, services.settings.max_body_bytes)
        envelope = payloads.envelope_decoder.decode(body)
    except BodyTooLarge:
        return error(413, "payload_too_large", "too large")
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        return error(400, "invalid_envelope", str(exc))
    async with services.pool.acquire() as conn:
        row = await conn.fetchrow(
            db.q("naive_lookup_instance"), digest(request.path_params["secret"]), envelope.instance
        )
        if row is None:
            return JSON({"status": "quarantined"}, status_code=202)
        inst = Instance(row["tenant_id"], row["instance_id"], row["source_id"], row["name"], None)
        try:
            built = build_ops(envelope, inst, int(time.time() * 1000))
        except PayloadError as exc:
            return error(400, "invalid_data", str(exc))
        for op in built.ops.messages:
            await conn.execute(db.q("naive_insert_message"), *op.record())
    return JSON({"status": "stored"})


def routes() -> list[Route]:
    return [
        Route("/bench/null/{secret}", null_ceiling, methods=["POST"]),
        Route("/bench/null/{secret}/{suffix:path}", null_ceiling, methods=["POST"]),
        Route("/bench/naive/{secret}", naive, methods=["POST"]),
        Route("/bench/naive/{secret}/{suffix:path}", naive, methods=["POST"]),
    ]
