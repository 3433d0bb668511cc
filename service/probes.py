"""What operators and their tools call: ``/metrics``, ``/healthz``, ``/readyz`` and
``/openapi.json``."""

from __future__ import annotations

import hmac
import logging

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service import db, metrics, openapi
from service.http import JSON, error
from service.state import Services

log = logging.getLogger("sense.probes")
NOT_READY = error(503, "not_ready", "not ready")


async def metrics_endpoint(request: Request) -> Response:
    """Prometheus text; behind ``SENSE_METRICS_TOKEN`` (Bearer) when it is set, and not served
    here at all when ``SENSE_METRICS_PORT`` gives it a listener of its own (service/cli.py)."""
    settings = request.app.state.services.settings
    if settings.metrics_port:
        return error(404, "not_found", "metrics are served on SENSE_METRICS_PORT")
    if settings.metrics_token:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode(), settings.metrics_token.encode()
        ):
            return error(
                401, "unauthorized", "metrics token required", {"WWW-Authenticate": "Bearer"}
            )
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)


async def openapi_json(request: Request) -> Response:
    return JSON(openapi.document())


async def healthz(request: Request) -> Response:
    return JSON({"status": "ok"})


async def readyz(request: Request) -> Response:
    services: Services = request.app.state.services
    # The answer says ready or not, nothing more (it is unauthenticated); why is logged.
    try:
        async with services.pool.acquire(timeout=2) as conn:
            pending = await db.pending_migrations(conn)
    except Exception as exc:
        log.warning("not ready: database unreachable (%s)", exc.__class__.__name__)
        return NOT_READY
    if pending:
        log.warning("not ready: migrations not applied: %s", ", ".join(pending))
        return NOT_READY
    if not services.registry.loaded:
        log.warning("not ready: registry not loaded")
        return NOT_READY
    return JSON({"status": "ready"})


def routes() -> list[Route]:
    return [
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route("/openapi.json", openapi_json, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
    ]
