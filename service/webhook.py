"""``POST /api/webhooks/evolution/{secret}[/{event-suffix}]``: the receive path.

200 only after the rows are committed; 202 for quarantine (unknown instance) and ignored
events; 401 bad secret/apikey; 413 too large; 400 not an Evolution envelope; 503 + Retry-After
when the queue is full or the database is down (Evolution retries 5xx, drops 4xx).

This is the hot path, so it is a plain ASGI handler (``Raw``): the app hands it webhook posts
before Starlette's middleware, routing, Request and Response objects, which cost about as much
server CPU as the rest of the request (bench/RESULTS.md). The bench's null and naive routes go
through the same reader and writer, so they stay comparable.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgspec
from starlette.types import Receive, Scope, Send

from service import payloads
from service.events import (
    MAX_NAME_CHARS,
    OverLimit,
    PayloadError,
    build_ops,
    canonical_event,
    sanitize_json,
)
from service.http import CLOSE, BodyTimeout, body_timeout_detail
from service.ingest import Fallback, Overloaded, Unavailable
from service.resolve import Instance
from service.rows import Ops

if TYPE_CHECKING:
    from service.state import Services

log = logging.getLogger("sense.webhook")

PREFIX = "/api/webhooks/evolution/"
# what it serves under PREFIX, as /openapi.json names it
PATHS = (PREFIX + "{secret}", PREFIX + "{secret}/{suffix}")

_encoder = msgspec.json.Encoder()


# An X-Request-Id we log and echo as given; any other value is replaced by a generated one.
REQUEST_ID = re.compile(rb"[A-Za-z0-9._-]{1,64}")


class BodyTooLarge(Exception):
    pass


class Disconnected(Exception):
    """The client went away before its body arrived: there is no one to answer."""


class Raw:
    """One request as the ASGI server gave it: the headers the handlers read, the body."""

    __slots__ = ("content_length", "receive", "request_id", "scope")

    def __init__(self, scope: Scope, receive: Receive) -> None:
        self.scope = scope
        self.receive = receive
        self.content_length: bytes | None = None
        self.request_id: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                self.content_length = value
            elif name == b"x-request-id" and REQUEST_ID.fullmatch(value):
                self.request_id = value  # anything else is replaced by one of ours

    async def body(self, limit: int, seconds: float) -> bytes:
        """The body, refusing more than ``limit`` bytes without holding them all, and a client
        that takes more than ``seconds`` to send all of it."""
        declared = self.content_length
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise BodyTooLarge()
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(seconds):
                while True:
                    message = await self.receive()
                    if message["type"] == "http.disconnect":
                        raise Disconnected()
                    chunk = message.get("body", b"")
                    if chunk:
                        size += len(chunk)
                        if size > limit:
                            raise BodyTooLarge()
                        chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            raise BodyTimeout() from None
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class Answer:
    """A JSON answer: status, body (encoded once), extra headers."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.status = status
        self.body = body
        self.headers = headers

    async def send(
        self, send: Send, request_id: bytes | None, common: list[tuple[bytes, bytes]]
    ) -> None:
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(self.body)).encode()),
            *common,
        ]
        if self.headers:
            headers.extend((k.lower().encode(), v.encode()) for k, v in self.headers.items())
        if request_id is not None:
            headers.append((b"x-request-id", request_id))
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})


def answer(status: int, content: Any, headers: dict[str, str] | None = None) -> Answer:
    return Answer(status, _encoder.encode(content), headers)


def failure(status: int, code: str, detail: str, headers: dict[str, str] | None = None) -> Answer:
    return answer(status, {"error": code, "detail": detail}, headers)


# stands in for the instance an unknown instance's event is checked against before quarantine
UNREGISTERED = Instance(uuid.UUID(int=0), uuid.UUID(int=0), uuid.UUID(int=0), "", None)

STORED = answer(200, {"status": "stored"})
QUARANTINED = answer(202, {"status": "quarantined"})
IGNORED = answer(202, {"status": "ignored"})
NOT_FOUND = failure(404, "not_found", "no such route")
METHOD_NOT_ALLOWED = failure(405, "method_not_allowed", "use POST", {"Allow": "POST"})
SERVER_ERROR = failure(500, "internal_error", "the server could not handle this request")

Handler = Callable[["Services", Raw, str], Awaitable[Answer]]


async def serve(
    services: Services, handler: Handler, secret: str, scope: Scope, receive: Receive, send: Send
) -> None:
    """Run ``handler`` for one POST and send its answer (or a 500 if it raised)."""
    raw = Raw(scope, receive)
    if scope["method"] != "POST":
        await METHOD_NOT_ALLOWED.send(send, raw.request_id, services.response_headers)
        return
    try:
        result = await handler(services, raw, secret)
    except Disconnected:
        return  # nobody to answer; nothing was stored
    except Exception:
        log.exception("webhook handler failed")
        result = SERVER_ERROR
    await result.send(send, raw.request_id, services.response_headers)


def split_path(path: str, prefix: str) -> str | None:
    """The secret of ``{prefix}{secret}[/{suffix}]``, or None for a path with no secret."""
    secret = path[len(prefix) :].partition("/")[0]
    return secret or None


async def receive(services: Services, raw: Raw, secret: str) -> Answer:
    started = time.perf_counter()
    if raw.request_id is None:
        raw.request_id = uuid.uuid4().hex[:16].encode()  # logged and echoed
    context: dict[str, str] = {"request_id": raw.request_id.decode()}
    event, outcome, status = "unknown", "rejected", 500
    try:
        result, event, outcome = await _receive(services, raw, secret, context)
        status = result.status
        return result
    except Disconnected:
        outcome, status = "disconnected", 499  # counted, but not as a server error
        raise
    finally:
        services.observe_webhook(event, outcome, time.perf_counter() - started, status, context)


async def _receive(
    services: Services, raw: Raw, secret: str, context: dict[str, str]
) -> tuple[Answer, str, str]:
    settings = services.settings
    source = services.registry.source_for_secret(secret)
    if source is None:
        return failure(401, "unauthorized", "unknown webhook secret"), "unknown", "rejected"
    try:
        body = await raw.body(settings.max_body_bytes, settings.body_timeout_seconds)
    except BodyTooLarge:
        detail = f"body exceeds SENSE_MAX_BODY_BYTES ({settings.max_body_bytes} bytes)"
        return failure(413, "payload_too_large", detail), "unknown", "rejected"
    except BodyTimeout:
        detail = body_timeout_detail(settings.body_timeout_seconds)
        return failure(408, "body_timeout", detail, CLOSE), "unknown", "rejected"
    try:
        envelope = payloads.envelope_decoder.decode(body)
    except msgspec.ValidationError as exc:
        detail = f"not an Evolution webhook envelope: {exc}"
        return failure(400, "invalid_envelope", detail), "unknown", "rejected"
    except msgspec.DecodeError as exc:
        return failure(400, "invalid_json", f"body is not JSON: {exc}"), "unknown", "rejected"
    except UnicodeDecodeError:
        return failure(400, "invalid_json", "body is not UTF-8"), "unknown", "rejected"
    except RecursionError:
        return failure(400, "invalid_json", "body nested too deeply"), "unknown", "rejected"
    if len(envelope.instance) > MAX_NAME_CHARS:
        detail = f"instance name longer than {MAX_NAME_CHARS} characters"
        return failure(422, "over_limit", detail), "unknown", "rejected"
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
        # Nobody registered this instance (yet): keep the event, replay it once they do. What
        # the instance would refuse is refused now: kept, it could never be replayed.
        try:
            build_ops(envelope, UNREGISTERED)
        except OverLimit as exc:
            return failure(422, "over_limit", str(exc)), label, "rejected"
        except PayloadError as exc:
            return failure(400, "invalid_data", str(exc)), label, "rejected"
        if services.quarantine.full(source.source_id):
            services.count_unavailable("quarantine_full")
            return quarantine_full(services), label, "rejected"
        ops = services.quarantine_ops(source.source_id, envelope, body)
        result = await _submit(services, ops, None, len(body))
        if isinstance(result, Answer):
            return result, label, "rejected"
        services.quarantine.added(source.source_id, len(ops.quarantine[0][4]))
        return QUARANTINED, label, "quarantined"
    context["tenant"] = services.tenant_name(instance.tenant_id)
    if not instance.apikey_matches(envelope.apikey):
        detail = "apikey missing or not the instance's registered key"
        return failure(401, "unauthorized", detail), label, "rejected"
    try:
        built = build_ops(envelope, instance)
    except OverLimit as exc:
        return failure(422, "over_limit", str(exc)), label, "rejected"
    except PayloadError as exc:
        return failure(400, "invalid_data", str(exc)), label, "rejected"
    if built.outcome == "ignored":
        return IGNORED, label, "ignored"
    if services.registry.keeps_envelopes(instance.tenant_id) and event in ENVELOPE_EVENTS:
        keep_envelope(built.ops, instance, event, body)
    fallback = Fallback(source.source_id, envelope.instance, envelope.event, body)
    result = await _submit(services, built.ops, fallback, len(body))
    if isinstance(result, Answer):
        return result, label, "rejected"
    if result == "quarantined":
        return QUARANTINED, label, "quarantined"
    if built.outcome == "unrecognized":
        return answer(202, {"status": "kept", "event": envelope.event}), label, "stored"
    return STORED, label, "stored"


# Message events an `evolution` endpoint receives as Evolution sent them (service/fanout.py),
# by their canonical name (events.canonical_event).
ENVELOPE_EVENTS = {
    canonical_event(name): name
    for name in (
        "messages.upsert",
        "messages.update",
        "messages.delete",
        "messages.edited",
        "send.message",
        "send.message.update",
    )
}


def keep_envelope(ops: Ops, instance: Instance, event: str, body: bytes) -> None:
    """The envelope as received, inline media stripped (``data.message.base64``) and without
    ``destination`` (the URL Evolution posted to: this service's, with the source's secret;
    each delivery names its endpoint's instead), for the tenant's `evolution` endpoints: a feed
    row written with the event's own rows."""
    doc = msgspec.json.decode(body)
    if isinstance(doc, dict):
        doc.pop("destination", None)  # this service's webhook URL: it holds the source secret
    data = doc.get("data") if isinstance(doc, dict) else None
    message = data.get("message") if isinstance(data, dict) else None
    if isinstance(message, dict):
        message.pop("base64", None)
    ids = [op.message_id for op in ops.messages]
    envelope = sanitize_json(msgspec.json.encode(doc)).decode()
    kind = ENVELOPE_EVENTS[event]
    ops.envelopes.append(
        (instance.tenant_id, instance.instance_id, ids[0] if ids else None, kind, envelope)
    )


def quarantine_full(services: Services) -> Answer:
    s = services.settings
    detail = (
        "quarantine of this source is full (SENSE_QUARANTINE_MAX_EVENTS"
        f" {s.quarantine_max_events} / SENSE_QUARANTINE_MAX_BYTES {s.quarantine_max_bytes}):"
        " register its instances, retry later"
    )
    return failure(503, "quarantine_full", detail, {"Retry-After": str(s.retry_after_seconds)})


async def _submit(
    services: Services, ops: object, fallback: Fallback | None, size: int
) -> str | Answer:
    retry = {"Retry-After": str(services.settings.retry_after_seconds)}
    try:
        return await services.batcher.submit(ops, fallback, size)  # type: ignore[arg-type]
    except Overloaded:
        services.count_unavailable("overloaded")
        return failure(503, "overloaded", "ingest queue is full, retry later", retry)
    except Unavailable:
        services.count_unavailable("database")
        return failure(503, "unavailable", "database unavailable, retry later", retry)
