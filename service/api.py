"""Read API for a tenant: messages (newest first, or after a live-stream cursor), chats,
instances. A token only ever sees its tenant."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response

from service import db
from service.http import JSON, error
from service.live.frames import decode_position, encode_position
from service.requests import chat_forms, instance_filter, int_param, tenant_of, unauthorized
from service.resources import (
    Chat,
    ItemsOfJobs,
    MessagePage,
    instance_from_row,
    iso,
    job_from_row,
    message_from_row,
    rounded_sentiment,
)

if TYPE_CHECKING:
    from service.resolve import Tenant
    from service.state import Services


def encode_cursor(ts: datetime, seq: int) -> str:
    return f"{int(ts.timestamp() * 1_000_000)}.{seq}"


def decode_cursor(cursor: str) -> tuple[datetime, int]:
    micros, _, seq = cursor.partition(".")
    try:
        ts, position = datetime.fromtimestamp(int(micros) / 1_000_000, UTC), int(seq)
    except (ValueError, OverflowError, OSError):
        raise ValueError("before is not a cursor returned by this API") from None
    if not 0 <= position < 2**63:  # a bigint
        raise ValueError("before is not a cursor returned by this API")
    return ts, position


async def list_messages(request: Request) -> Response:
    services: Services = request.app.state.services
    tenant = tenant_of(request)
    if tenant is None:
        return unauthorized()
    params = request.query_params
    if params.get("after"):  # live clients catching up, oldest first
        return await messages_after(request, tenant)
    try:
        limit = int_param(request, "limit", 50, 1, 500)
        before = decode_cursor(params["before"]) if params.get("before") else None
    except ValueError as exc:
        return error(400, "invalid_parameter", str(exc))
    try:
        instance_id = instance_filter(request, tenant)
    except LookupError as exc:
        return error(404, "not_found", str(exc))
    rows = await services.pool.fetch(
        db.q("list_messages"),
        tenant.tenant_id,
        instance_id,
        chat_forms(params.get("chat") or None),
        before[0] if before else None,
        before[1] if before else None,
        limit + 1,
    )
    names = services.instance_names(tenant.tenant_id)
    items = [message_from_row(r, names.get(r["instance_id"], "?")) for r in rows[:limit]]
    cursor = None
    if len(rows) > limit:
        last = rows[limit - 1]
        cursor = encode_cursor(last["message_ts"], last["seq"])
    return JSON(MessagePage(items, cursor))


async def get_message(request: Request) -> Response:
    services: Services = request.app.state.services
    tenant = tenant_of(request)
    if tenant is None:
        return unauthorized()
    name = request.path_params["instance"]
    inst = services.registry.tenant_instance(tenant.tenant_id, name)
    if inst is None:
        return error(404, "not_found", "no such message")
    row = await services.pool.fetchrow(
        db.q("get_message"), tenant.tenant_id, inst.instance_id, request.path_params["message_id"]
    )
    if row is None:
        return error(404, "not_found", "no such message")
    return JSON(message_from_row(row, name))


async def list_chats(request: Request) -> Response:
    services: Services = request.app.state.services
    tenant = tenant_of(request)
    if tenant is None:
        return unauthorized()
    try:
        limit = int_param(request, "limit", 100, 1, 1000)
    except ValueError as exc:
        return error(400, "invalid_parameter", str(exc))
    try:
        instance_id = instance_filter(request, tenant)
    except LookupError as exc:
        return error(404, "not_found", str(exc))
    rows = await services.pool.fetch(db.q("list_chats"), tenant.tenant_id, instance_id, limit)
    names = services.instance_names(tenant.tenant_id)
    items = []
    for r in rows:
        name = names.get(r["instance_id"], "?")
        last = message_from_row(r, name) if r["message_id"] is not None else None
        items.append(
            Chat(
                instance=name,
                chat_jid=r["chat_jid"],
                chat_type=r["chat_type"],
                name=r["name"],
                unread=r["unread"],
                last_message_at=iso(r["last_message_ts"]),
                last_message=last,
                sentiment=rounded_sentiment(r["avg_sentiment"]),
                satisfaction=r["avg_satisfaction"],
                analyzed_messages=r["analyzed_messages"] or 0,
            )
        )
    return JSON({"items": items})


async def list_instances(request: Request) -> Response:
    services: Services = request.app.state.services
    tenant = tenant_of(request)
    if tenant is None:
        return unauthorized()
    rows = await services.pool.fetch(db.q("list_instances"), tenant.tenant_id)
    items = [instance_from_row(r) for r in rows]
    return JSON({"items": items})


async def list_backfill(request: Request) -> Response:
    """The tenant's backfill jobs, newest first: what was looked for, and what was recovered."""
    services: Services = request.app.state.services
    tenant = tenant_of(request)
    if tenant is None:
        return unauthorized()
    try:
        limit = int_param(request, "limit", 50, 1, 500)
    except ValueError as exc:
        return error(400, "invalid_parameter", str(exc))
    rows = await services.pool.fetch(db.q("backfill_list"), tenant.tenant_id, limit)
    return JSON(ItemsOfJobs([job_from_row(r) for r in rows]))


async def messages_after(request: Request, tenant: Tenant) -> Response:
    """The ``after`` branch of ``GET /api/v1/messages``: oldest first; ``next`` is the cursor
    to pass next time (the given one when nothing new is final yet)."""
    services: Services = request.app.state.services
    params = request.query_params
    if params.get("before"):
        return error(400, "invalid_parameter", "give before or after, not both")
    try:
        limit = int_param(request, "limit", 50, 1, 500)
        xid, seq = decode_position(params["after"])
    except ValueError as exc:
        return error(400, "invalid_parameter", str(exc))
    try:
        instance_id = instance_filter(request, tenant)
    except LookupError as exc:
        return error(404, "not_found", str(exc))
    rows = await services.pool.fetch(
        db.q("list_messages_after"),
        tenant.tenant_id,
        instance_id,
        chat_forms(params.get("chat") or None),
        str(xid),
        seq,
        limit,
    )
    names = services.instance_names(tenant.tenant_id)
    items = [message_from_row(r, names.get(r["instance_id"], "?")) for r in rows]
    cursor = encode_position(rows[-1]["content_xid"], rows[-1]["seq"]) if rows else params["after"]
    return JSON(MessagePage(items, cursor))
