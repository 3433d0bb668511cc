"""Read API for a tenant: messages, chats, instances. A token only ever sees its tenant."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from service import db
from service._native import normalize_jid, phone_variant
from service.events import STATUS_NAME
from service.http import JSON, error
from service.resolve import Tenant

if TYPE_CHECKING:
    from service.app import Services


class Reaction(msgspec.Struct):
    by: str
    emoji: str


class Analysis(msgspec.Struct):
    state: str  # pending | done | failed
    sentiment: float | None = None
    emotion: str | None = None
    satisfaction: int | None = None
    analyzable: bool = True
    error: str | None = None


class Message(msgspec.Struct):
    """The message resource of design.md."""

    instance: str
    message_id: str
    chat_jid: str | None
    chat_type: str | None
    sender_jid: str | None
    sender_phone: str | None
    from_me: bool
    push_name: str | None
    type: str
    text: str | None
    status: str | None
    edited: bool
    deleted: bool
    reactions: list[Reaction]
    quoted_message_id: str | None
    timestamp: str | None
    analysis: Analysis


class MessagePage(msgspec.Struct):
    items: list[Message]
    next: str | None


class Chat(msgspec.Struct):
    instance: str
    chat_jid: str
    chat_type: str
    name: str | None
    unread: int | None
    last_message_at: str | None
    last_message: Message | None
    sentiment: float | None = None
    satisfaction: float | None = None
    analyzed_messages: int = 0


class QrCode(msgspec.Struct):
    code: str | None
    base64: str | None
    pairing_code: str | None
    updated_at: str | None


class InstanceOut(msgspec.Struct):
    name: str
    state: str | None
    state_reason: int | None
    owner_jid: str | None
    profile_name: str | None
    state_updated_at: str | None
    qrcode: QrCode | None


def iso(ts: datetime | None) -> str | None:
    if ts is None:
        return None
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _reactions(raw: Any) -> list[Reaction]:
    data = msgspec.json.decode(raw) if isinstance(raw, str | bytes) else (raw or {})
    items = sorted(data.items(), key=lambda kv: (kv[1].get("ts") or 0, kv[0]))
    return [Reaction(by, r["emoji"]) for by, r in items if r.get("emoji")]


def rounded_sentiment(value: float | None) -> float | None:
    """Four decimals: the column is a real (0.636 reads back as 0.6359999775886536), and the
    live frame and the resource must say the same."""
    return None if value is None else round(value, 4)


def message_from_row(r: Any, instance_name: str) -> Message:
    state = r["analysis_state"]
    analysis = Analysis(
        state="done" if state == "skipped" else state,
        sentiment=rounded_sentiment(r["sentiment"]),
        emotion=r["emotion"],
        satisfaction=r["satisfaction"],
        analyzable=state != "skipped",
        error=r["analysis_error"],
    )
    edited_text = r["edited_text"]
    return Message(
        instance=instance_name,
        message_id=r["message_id"],
        chat_jid=r["chat_jid"],
        chat_type=r["chat_type"],
        sender_jid=r["sender_jid"],
        sender_phone=r["sender_phone"],
        from_me=bool(r["from_me"]),
        push_name=r["push_name"],
        type=r["type"] or "other",
        text=edited_text if edited_text is not None else r["text"],
        status=STATUS_NAME.get(r["status"]) if r["status"] is not None else None,
        edited=r["edit_ts"] is not None,
        deleted=r["deleted"],
        reactions=_reactions(r["reactions"]),
        quoted_message_id=r["quoted_message_id"],
        timestamp=iso(r["message_ts"]),
        analysis=analysis,
    )


def _tenant(request: Request) -> Tenant | None:
    services: Services = request.app.state.services
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return services.registry.tenant_for_token(token.strip())


def _unauthorized() -> Response:
    return error(
        401,
        "unauthorized",
        "a tenant token is required (Authorization: Bearer <token>)",
        {"WWW-Authenticate": "Bearer"},
    )


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer") from None
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}")
    return value


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


def instance_filter(request: Request, tenant: Tenant) -> uuid.UUID | None:
    """The ``instance=`` query parameter as this tenant's instance id (None when absent);
    LookupError naming it when the tenant has no such instance (answer 404)."""
    name = request.query_params.get("instance")
    if not name:
        return None
    services: Services = request.app.state.services
    inst = services.registry.tenant_instance(tenant.tenant_id, name)
    if inst is None:
        raise LookupError(f"no instance {name!r}")
    return inst.instance_id


def chat_forms(chat: str | None) -> list[str] | None:
    """Every JID one conversation may be filed as: ``@c.us`` or a device suffix name the same
    chat, and a number with a second form (BR 9th digit, MX 1, AR 9) is one person (§7)."""
    if chat is None:
        return None
    canonical = normalize_jid(chat)
    if canonical is None:
        return [chat]  # no JID: matches what it literally names, i.e. nothing filed
    variant = phone_variant(canonical)
    return [canonical] if variant is None else [canonical, variant]


async def list_messages(request: Request) -> Response:
    services: Services = request.app.state.services
    tenant = _tenant(request)
    if tenant is None:
        return _unauthorized()
    params = request.query_params
    if params.get("after"):  # stream seam: live clients catching up, oldest first
        from service.stream import messages_after

        return await messages_after(request, tenant)
    try:
        limit = _int_param(request, "limit", 50, 1, 500)
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
    tenant = _tenant(request)
    if tenant is None:
        return _unauthorized()
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
    tenant = _tenant(request)
    if tenant is None:
        return _unauthorized()
    try:
        limit = _int_param(request, "limit", 100, 1, 1000)
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
    tenant = _tenant(request)
    if tenant is None:
        return _unauthorized()
    rows = await services.pool.fetch(db.q("list_instances"), tenant.tenant_id)
    items = [instance_from_row(r) for r in rows]
    return JSON({"items": items})


def instance_from_row(r: Any) -> InstanceOut:
    qr = None
    if r["qr_code"] or r["qr_base64"] or r["pairing_code"]:
        qr = QrCode(r["qr_code"], r["qr_base64"], r["pairing_code"], iso(r["qr_at"]))
    return InstanceOut(
        name=r["name"],
        state=r["state"],
        state_reason=r["state_reason"],
        owner_jid=r["owner_jid"],
        profile_name=r["profile_name"],
        state_updated_at=iso(r["state_at"]),
        qrcode=qr,
    )


def parse_uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None
