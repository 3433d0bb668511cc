"""A tenant's outbound endpoints (fan-out), over its token: create, list, read, change, remove,
rotate the signing secret, replay, and the recent attempts. The workers deliver
(workers/fanout.py); what an endpoint may be and how deliveries look is service/outbound.py."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service import db, outbound
from service.admin import AdminError
from service.http import JSON, error
from service.outbound import EVENT_TYPES, MODES, Filters, UrlRefused
from service.requests import (
    BodyTooLarge,
    body_refusal,
    int_param,
    read_json,
    tenant_of,
    unauthorized,
)
from service.resources import iso
from service.state import Services

MAX_DESCRIPTION = 1_000
MAX_OVERLAP_SECONDS = 7 * 86_400


class EndpointIn(msgspec.Struct, forbid_unknown_fields=True):
    url: str
    events: list[str] = msgspec.field(default_factory=lambda: list(EVENT_TYPES))
    mode: str = "sense"
    description: str | None = None
    filters: Filters = msgspec.field(default_factory=Filters)
    enabled: bool = True


class EndpointPatch(msgspec.Struct, forbid_unknown_fields=True):
    url: str | None = None
    events: list[str] | None = None
    mode: str | None = None
    description: str | None = None
    filters: Filters | None = None
    enabled: bool | None = None


class Endpoint(msgspec.Struct, omit_defaults=True):
    """An endpoint as the API shows it; ``secret`` only when it was just made."""

    id: str
    url: str
    events: list[str]
    mode: str
    filters: Filters
    enabled: bool
    description: str | None = None
    disabled_reason: str | None = None
    failing_since: str | None = None
    next_attempt_at: str | None = None
    created_at: str | None = None
    secret: str | None = None


class Endpoints(msgspec.Struct):
    items: list[Endpoint]


class EndpointSecretRotated(msgspec.Struct):
    secret: str
    old_valid_until: str


class EndpointRotateIn(msgspec.Struct, forbid_unknown_fields=True):
    overlap_seconds: float = 86_400


class EndpointReplayIn(msgspec.Struct, forbid_unknown_fields=True):
    since: datetime | None = None
    after: str | None = None


class Replaying(msgspec.Struct):
    position: str  # the cursor delivery starts after


class EndpointAttempt(msgspec.Struct):
    webhook_id: str
    event: str
    status: int | None
    ms: int
    error: str | None
    response: str | None
    at: str


class EndpointAttempts(msgspec.Struct):
    items: list[EndpointAttempt]


class Refused(AdminError):
    """What an endpoints request cannot do: the status, code and detail it is answered with
    (as the admin API's refusals, so the CLI reports both alike)."""


def encode_position(xid: int, seq: int) -> str:
    return f"f{xid}.{seq}"


def decode_position(text: str) -> tuple[int, int]:
    try:
        xid, seq = text.removeprefix("f").split(".")
        return int(xid), int(seq)
    except ValueError:
        raise Refused(422, "invalid_body", f"not a feed position: {text!r}") from None


def endpoint_from_row(r: Any, secret: str | None = None) -> Endpoint:
    return Endpoint(
        id=str(r["endpoint_id"]),
        url=r["url"],
        events=list(r["events"]),
        mode=r["mode"],
        filters=msgspec.convert(r["filters"] or {}, Filters),
        enabled=r["enabled"],
        description=r["description"],
        disabled_reason=r["disabled_reason"],
        failing_since=iso(r["failing_since"]),
        next_attempt_at=iso(r["next_at"]) if r["attempts"] else None,
        created_at=iso(r["created_at"]),
        secret=secret,
    )


async def _checked(services: Services, url: str, events: list[str], mode: str) -> None:
    unknown = sorted(set(events) - set(EVENT_TYPES))
    if unknown or not events:
        raise Refused(422, "invalid_body", f"events must be among {list(EVENT_TYPES)}: {unknown}")
    if mode not in MODES:
        raise Refused(422, "invalid_body", f"mode must be one of {list(MODES)}")
    try:
        await outbound.resolve(url, services.settings.fanout_allow_private)
    except UrlRefused as exc:
        raise Refused(422, "url_refused", str(exc)) from None


def _filters(filters: Filters) -> dict[str, Any]:
    return msgspec.to_builtins(filters)


async def create(s: Services, tenant_id: uuid.UUID, body: EndpointIn) -> tuple[int, Any]:
    await _checked(s, body.url, body.events, body.mode)
    if body.description is not None and len(body.description) > MAX_DESCRIPTION:
        raise Refused(422, "invalid_body", f"description over {MAX_DESCRIPTION} characters")
    secret = outbound.new_secret()
    row = await s.pool.fetchrow(
        db.q("endpoint_create"),
        tenant_id,
        body.url,
        body.description,
        list(dict.fromkeys(body.events)),
        _filters(body.filters),
        body.mode,
        secret,
        body.enabled,
    )
    await s.registry.load(s.pool)  # evolution mode: this process keeps envelopes from now
    return 201, endpoint_from_row(row, secret)


async def _get(s: Services, tenant_id: uuid.UUID, endpoint_id: uuid.UUID) -> Any:
    row = await s.pool.fetchrow(db.q("endpoint_get"), tenant_id, endpoint_id)
    if row is None:
        raise Refused(404, "not_found", "no such endpoint")
    return row


async def _update(
    s: Services, tenant_id: uuid.UUID, endpoint_id: uuid.UUID, body: EndpointPatch
) -> tuple[int, Any]:
    row = await _get(s, tenant_id, endpoint_id)
    if body.url is not None or body.events is not None or body.mode is not None:
        await _checked(
            s,
            body.url if body.url is not None else row["url"],
            body.events if body.events is not None else list(row["events"]),
            body.mode if body.mode is not None else row["mode"],
        )
    row = await s.pool.fetchrow(
        db.q("endpoint_update"),
        tenant_id,
        endpoint_id,
        body.url,
        body.description,
        list(dict.fromkeys(body.events)) if body.events is not None else None,
        _filters(body.filters) if body.filters is not None else None,
        body.mode,
        body.enabled,
    )
    if body.mode is not None:
        await s.registry.load(s.pool)
    return 200, endpoint_from_row(row)


async def _delete(s: Services, tenant_id: uuid.UUID, endpoint_id: uuid.UUID) -> tuple[int, Any]:
    if await s.pool.fetchval(db.q("endpoint_delete"), tenant_id, endpoint_id) is None:
        raise Refused(404, "not_found", "no such endpoint")
    await s.registry.load(s.pool)
    return 204, None


async def _rotate(
    s: Services, tenant_id: uuid.UUID, endpoint_id: uuid.UUID, body: EndpointRotateIn
) -> tuple[int, Any]:
    if not 0 <= body.overlap_seconds <= MAX_OVERLAP_SECONDS:
        raise Refused(422, "invalid_body", f"overlap_seconds: 0 to {MAX_OVERLAP_SECONDS}")
    secret = outbound.new_secret()
    row = await s.pool.fetchrow(
        db.q("endpoint_rotate"), tenant_id, endpoint_id, secret, body.overlap_seconds
    )
    if row is None:
        raise Refused(404, "not_found", "no such endpoint")
    return 200, EndpointSecretRotated(secret, iso(row["old_secret_until"]) or "")


async def replay(
    s: Services, tenant_id: uuid.UUID, endpoint_id: uuid.UUID, body: EndpointReplayIn
) -> tuple[int, Any]:
    if (body.since is None) == (body.after is None):
        raise Refused(422, "invalid_body", 'give "since" (ISO time) or "after" (a position)')
    await _get(s, tenant_id, endpoint_id)
    since = body.since
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    after = decode_position(body.after) if body.after is not None else (None, None)
    first = await s.pool.fetchrow(db.q("fanout_first"), tenant_id, since, *after)
    xid, seq = (first["xid"], first["seq"] - 1) if first is not None else (None, 0)
    row = await s.pool.fetchrow(
        db.q("endpoint_rewind"), tenant_id, endpoint_id, None if xid is None else str(xid), seq
    )
    return 202, Replaying(encode_position(row["xid"], row["seq"]))


def _route(action: Any, kind: type[Any] | None = None) -> Any:
    async def handler(request: Request) -> Response:
        services: Services = request.app.state.services
        tenant = tenant_of(request)
        if tenant is None:
            return unauthorized()
        args: list[Any] = [services, tenant.tenant_id]
        raw_id = request.path_params.get("endpoint_id")
        try:
            if raw_id is not None:
                try:
                    args.append(uuid.UUID(raw_id))
                except ValueError:
                    raise Refused(404, "not_found", "no such endpoint") from None
            if kind is not None:
                args.append(await read_json(request, kind))
            status, result = await action(*args)
        except (msgspec.ValidationError, msgspec.DecodeError, BodyTooLarge) as exc:
            return body_refusal(exc)
        except Refused as exc:
            return error(exc.status, exc.code, exc.detail)
        except asyncpg.DataError as exc:
            return error(422, "invalid_body", str(exc))
        if status == 204:
            return Response(status_code=204)
        return JSON(result, status_code=status)

    return handler


async def list_all(s: Services, tenant_id: uuid.UUID) -> tuple[int, Any]:
    rows = await s.pool.fetch(db.q("endpoint_list"), tenant_id)
    return 200, Endpoints([endpoint_from_row(r) for r in rows])


async def _read(s: Services, tenant_id: uuid.UUID, endpoint_id: uuid.UUID) -> tuple[int, Any]:
    return 200, endpoint_from_row(await _get(s, tenant_id, endpoint_id))


async def list_attempts(request: Request) -> Response:
    try:
        limit = int_param(request, "limit", 50, 1, 100)
    except ValueError as exc:
        return error(400, "invalid_parameter", str(exc))

    async def read(s: Services, tenant_id: uuid.UUID, endpoint_id: uuid.UUID) -> Any:
        await _get(s, tenant_id, endpoint_id)
        rows = await s.pool.fetch(db.q("endpoint_attempts"), endpoint_id, limit)
        items = [
            EndpointAttempt(
                r["webhook_id"],
                r["event"],
                r["status"],
                r["ms"],
                r["error"],
                r["response"],
                iso(r["at"]) or "",
            )
            for r in rows
        ]
        return 200, EndpointAttempts(items)

    return await _route(read)(request)


def routes() -> list[Route]:
    base = "/api/v1/endpoints"
    one = base + "/{endpoint_id}"
    return [
        Route(base, _route(create, EndpointIn), methods=["POST"]),
        Route(base, _route(list_all), methods=["GET"]),
        Route(one, _route(_read), methods=["GET"]),
        Route(one, _route(_update, EndpointPatch), methods=["PATCH"]),
        Route(one, _route(_delete), methods=["DELETE"]),
        Route(one + "/rotate-secret", _route(_rotate, EndpointRotateIn), methods=["POST"]),
        Route(one + "/replay", _route(replay, EndpointReplayIn), methods=["POST"]),
        Route(one + "/attempts", list_attempts, methods=["GET"]),
    ]
