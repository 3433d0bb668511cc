"""``POST /api/webhooks/evolution/{secret}[/{event-suffix}]``: the receive path.

200 only after the rows are committed; 202 for quarantine (unknown instance) and ignored
events; 401 bad secret/apikey; 413 too large; 400 not an Evolution envelope; 503 + Retry-After
when the queue is full or the database is down (Evolution retries 5xx, drops 4xx).
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from service import payloads
from service.events import PayloadError, build_ops, canonical_event
from service.http import JSON, error
from service.ingest import Fallback, Overloaded, Unavailable

if TYPE_CHECKING:
    from service.app import Services


class BodyTooLarge(Exception):
    pass


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refusing more than ``limit`` bytes without holding them all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge()
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge()
        chunks.append(chunk)
    return b"".join(chunks)


async def receive(request: Request) -> Response:
    services: Services = request.app.state.services
    started = time.perf_counter()
    context: dict[str, str] = {
        "request_id": request.headers.get("x-request-id") or uuid.uuid4().hex[:16]
    }
    event, outcome, status = "unknown", "rejected", 500
    try:
        response, event, outcome = await _receive(services, request, context)
        status = response.status_code
        response.headers["X-Request-Id"] = context["request_id"]
        return response
    finally:
        services.observe_webhook(event, outcome, time.perf_counter() - started, status, context)


async def _receive(
    services: Services, request: Request, context: dict[str, str]
) -> tuple[Response, str, str]:
    settings = services.settings
    source = services.registry.source_for_secret(request.path_params["secret"])
    if source is None:
        return error(401, "unauthorized", "unknown webhook secret"), "unknown", "rejected"
    try:
        body = await read_body(request, settings.max_body_bytes)
    except BodyTooLarge:
        detail = f"body exceeds SENSE_MAX_BODY_BYTES ({settings.max_body_bytes} bytes)"
        return error(413, "payload_too_large", detail), "unknown", "rejected"
    try:
        envelope = payloads.envelope_decoder.decode(body)
    except msgspec.ValidationError as exc:
        detail = f"not an Evolution webhook envelope: {exc}"
        return error(400, "invalid_envelope", detail), "unknown", "rejected"
    except msgspec.DecodeError as exc:
        return error(400, "invalid_json", f"body is not JSON: {exc}"), "unknown", "rejected"
    # Postgres text cannot hold NUL: the names go into quarantine/event rows as text (an
    # instance name with NUL can never be registered, so nothing is lost by replacing it).
    if "\x00" in envelope.event or "\x00" in envelope.instance:
        envelope.event = envelope.event.replace("\x00", "\ufffd")
        envelope.instance = envelope.instance.replace("\x00", "\ufffd")
    event = canonical_event(envelope.event) or "unknown"
    label = services.event_label(event)
    context["source"] = source.name
    context["instance"] = envelope.instance[:200]
    context["event"] = envelope.event[:100]
    instance = services.registry.instance(source.source_id, envelope.instance)
    if instance is None:
        # Nobody registered this instance (yet): keep the event, replay it once they do.
        ops = services.quarantine_ops(
            source.source_id, envelope, payloads.without_inline_media(body)
        )
        result = await _submit(services, ops, None, len(body))
        if isinstance(result, Response):
            return result, label, "rejected"
        return JSON({"status": "quarantined"}, status_code=202), label, "quarantined"
    context["tenant"] = services.tenant_name(instance.tenant_id)
    if not instance.apikey_matches(envelope.apikey):
        return error(401, "unauthorized", "apikey does not match the instance"), label, "rejected"
    try:
        built = build_ops(envelope, instance)
    except PayloadError as exc:
        return error(400, "invalid_data", str(exc)), label, "rejected"
    if built.outcome == "ignored":
        return JSON({"status": "ignored"}, status_code=202), label, "ignored"
    fallback = Fallback(source.source_id, envelope.instance, envelope.event, body)
    result = await _submit(services, built.ops, fallback, len(body))
    if isinstance(result, Response):
        return result, label, "rejected"
    if result == "quarantined":
        return JSON({"status": "quarantined"}, status_code=202), label, "quarantined"
    if built.outcome == "unrecognized":
        return JSON({"status": "kept", "event": envelope.event}, status_code=202), label, "stored"
    return JSON({"status": "stored"}), label, "stored"


async def _submit(
    services: Services, ops: object, fallback: Fallback | None, size: int
) -> str | Response:
    retry = {"Retry-After": str(services.settings.retry_after_seconds)}
    try:
        return await services.batcher.submit(ops, fallback, size)  # type: ignore[arg-type]
    except Overloaded:
        services.count_unavailable("overloaded")
        return error(503, "overloaded", "ingest queue is full, retry later", retry)
    except Unavailable:
        services.count_unavailable("database")
        return error(503, "unavailable", "database unavailable, retry later", retry)
