"""What operators and their tools call: ``/metrics``, ``/healthz``, ``/readyz`` and
``/openapi.json``."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service import db, metrics, openapi
from service.http import JSON, error
from service.state import Services


async def metrics_endpoint(request: Request) -> Response:
    services: Services = request.app.state.services
    try:
        async with services.pool.acquire(timeout=1) as conn:
            quarantined = await conn.fetchval(db.q("count_quarantine"))
    except Exception:
        quarantined = None
    body, content_type = metrics.render(quarantined)
    return Response(body, media_type=content_type)


async def openapi_json(request: Request) -> Response:
    return JSON(openapi.document())


async def healthz(request: Request) -> Response:
    return JSON({"status": "ok"})


async def readyz(request: Request) -> Response:
    services: Services = request.app.state.services
    try:
        async with services.pool.acquire(timeout=2) as conn:
            pending = await db.pending_migrations(conn)
    except Exception as exc:
        return error(503, "not_ready", f"database unreachable: {exc.__class__.__name__}")
    if pending:
        return error(503, "not_ready", f"migrations not applied: {', '.join(pending)}")
    if not services.registry.loaded:
        return error(503, "not_ready", "registry not loaded")
    return JSON({"status": "ready"})


def routes() -> list[Route]:
    return [
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route("/openapi.json", openapi_json, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
    ]
