"""The admin HTTP API (``SENSE_ADMIN_TOKEN``): register tenants, sources and instances, replay
quarantine. Each registration reloads this process's map at once (others follow by NOTIFY), so
what the admin just created works on the very next request."""

from __future__ import annotations

import hmac
from typing import Any

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service import admin
from service.http import JSON, error
from service.state import Services


def _admin_authorized(request: Request) -> Response | None:
    services: Services = request.app.state.services
    expected = services.settings.admin_token
    if not expected:
        return error(403, "forbidden", "admin API disabled: set SENSE_ADMIN_TOKEN")
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip(), expected):
        return error(401, "unauthorized", "admin token required", {"WWW-Authenticate": "Bearer"})
    return None


class TenantIn(msgspec.Struct):
    name: str


class SourceIn(msgspec.Struct):
    name: str


class InstanceIn(msgspec.Struct):
    tenant: str
    source: str
    name: str
    apikey: str | None = None


class ReplayIn(msgspec.Struct):
    source: str | None = None
    instance: str | None = None


async def _admin_body(request: Request, kind: type[Any]) -> Any:
    body = await request.body()
    return msgspec.json.decode(body or b"{}", type=kind)


def _admin_route(kind: type[Any], action: Any, status: int = 201) -> Any:
    async def handler(request: Request) -> Response:
        denied = _admin_authorized(request)
        if denied is not None:
            return denied
        services: Services = request.app.state.services
        try:
            payload = await _admin_body(request, kind)
            result = await action(services, payload)
        except msgspec.ValidationError as exc:
            return error(422, "invalid_body", str(exc))
        except msgspec.DecodeError as exc:
            return error(400, "invalid_json", str(exc))
        except admin.AdminError as exc:
            return error(exc.status, exc.code, exc.detail)
        return JSON(result, status_code=status)

    return handler


async def _create_tenant(s: Services, body: TenantIn) -> Any:
    created = await admin.create_tenant(s.pool, body.name)
    await s.registry.load(s.pool)
    return created


async def _create_source(s: Services, body: SourceIn) -> Any:
    created = await admin.create_source(s.pool, body.name)
    await s.registry.load(s.pool)
    return created


async def _create_instance(s: Services, body: InstanceIn) -> Any:
    created = await admin.add_instance(s.pool, body.tenant, body.source, body.name, body.apikey)
    await s.registry.load(s.pool)
    return created


async def _replay(s: Services, body: ReplayIn) -> Any:
    async with s.pool.acquire() as conn:
        result = await admin.replay_quarantine(conn, body.source, body.instance)
    s.batcher.run_hooks(result.committed)
    return {"replayed": result.replayed}


def routes() -> list[Route]:
    return [
        Route("/api/admin/tenants", _admin_route(TenantIn, _create_tenant), methods=["POST"]),
        Route("/api/admin/sources", _admin_route(SourceIn, _create_source), methods=["POST"]),
        Route("/api/admin/instances", _admin_route(InstanceIn, _create_instance), methods=["POST"]),
        Route(
            "/api/admin/quarantine/replay",
            _admin_route(ReplayIn, _replay, status=200),
            methods=["POST"],
        ),
    ]
