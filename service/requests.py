"""What every tenant route does first: the tenant from its bearer token, integer and instance
parameters, the forms of a chat JID, a small JSON body. Shared by the read API, search, the
live stream, the endpoints API and the admin API."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from service._native import normalize_jid, phone_variant
from service.http import error
from service.resolve import Tenant

if TYPE_CHECKING:
    from service.state import Services


def tenant_of(request: Request) -> Tenant | None:
    services: Services = request.app.state.services
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return services.registry.tenant_for_token(token.strip())


def unauthorized() -> Response:
    return error(
        401,
        "unauthorized",
        "a tenant token is required (Authorization: Bearer <token>)",
        {"WWW-Authenticate": "Bearer"},
    )


def int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
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


MAX_JSON_BODY = 64 * 1024  # an admin or endpoint body is a few names, flags and a URL


class BodyTooLarge(Exception):
    pass


async def read_json(request: Request, kind: type[Any]) -> Any:
    """The body decoded as ``kind`` (``{}`` when empty); BodyTooLarge past MAX_JSON_BODY."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_JSON_BODY:
        raise BodyTooLarge()
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_JSON_BODY:
            raise BodyTooLarge()
    return msgspec.json.decode(body or b"{}", type=kind)


def body_refusal(exc: msgspec.ValidationError | msgspec.DecodeError | BodyTooLarge) -> Response:
    """The answer to a JSON body that cannot be used: 413, 400 (not JSON) or 422 (not the
    expected shape)."""
    if isinstance(exc, BodyTooLarge):
        return error(413, "payload_too_large", f"body over {MAX_JSON_BODY} bytes")
    if isinstance(exc, msgspec.ValidationError):
        return error(422, "invalid_body", str(exc))
    return error(400, "invalid_json", str(exc))
