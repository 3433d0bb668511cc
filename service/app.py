"""The Starlette application: ``create_app()`` and its lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import msgspec
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from service import admin, api, db, logs, metrics, openapi, search, stream, webhook
from service.events import EVENTS, IGNORED, KEPT_AS_EVENTS, Ops
from service.http import JSON, RejectNul, error
from service.ingest import Batcher, Committed, Writer
from service.payloads import Envelope
from service.resolve import Instance, Registry
from service.settings import Settings, load_settings

log = logging.getLogger("sense.app")
access_log = logging.getLogger("sense.webhook")

_KNOWN_EVENTS = set(EVENTS) | IGNORED | KEPT_AS_EVENTS


@dataclass
class Services:
    """What the routes share within one process."""

    settings: Settings
    pool: asyncpg.Pool
    registry: Registry
    batcher: Batcher
    ready: bool = False
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    def event_label(self, event: str) -> str:
        """A bounded label for metrics: known event names, or "other"."""
        return event if event in _KNOWN_EVENTS else "other"

    def observe_webhook(
        self, event: str, outcome: str, seconds: float, status: int, context: dict[str, str]
    ) -> None:
        count, timing = metrics.webhook_series(event, outcome)
        count.inc()
        timing.observe(seconds)
        # Stored events are the bulk: debug. Everything else is worth a line at info.
        level = logging.DEBUG if outcome in ("stored", "ignored") else logging.INFO
        if access_log.isEnabledFor(level):
            access_log.log(
                level,
                "webhook",
                extra={
                    **context,
                    "outcome": outcome,
                    "status": status,
                    "ms": round(seconds * 1000, 2),
                },
            )

    def count_unavailable(self, reason: str) -> None:
        metrics.UNAVAILABLE.labels(reason).inc()

    def tenant_name(self, tenant_id: uuid.UUID) -> str:
        tenant = self.registry.snapshot.tenants.get(tenant_id)
        return tenant.name if tenant is not None else str(tenant_id)

    async def count_messages(self, committed: Committed) -> None:
        per_tenant: dict[uuid.UUID, int] = {}
        for tenant_id, _, _ in committed.created:
            per_tenant[tenant_id] = per_tenant.get(tenant_id, 0) + 1
        for tenant_id, n in per_tenant.items():
            metrics.count_tenant_messages(self.tenant_name(tenant_id), n)

    def quarantine_ops(self, source_id: uuid.UUID, env: Envelope, body: bytes) -> Ops:
        return Ops(quarantine=[(source_id, env.instance, env.event, "unknown instance", body)])

    def instance_names(self, tenant_id: uuid.UUID) -> Mapping[uuid.UUID, str]:
        return self.registry.instance_names(tenant_id)

    def spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def replay_for(self, instances: list[Instance] | None) -> None:
        """Replay quarantine for newly registered instances (None: for every registered one,
        as at start-up), once the batch in flight — which may still have quarantined them
        under the old map — is committed."""
        await self.batcher.settled()
        targets: list[tuple[str | None, str | None]] = (
            [(None, None)] if instances is None else [(str(i.source_id), i.name) for i in instances]
        )
        async with self.pool.acquire() as conn:
            for source, name in targets:
                try:
                    result = await admin.replay_quarantine(conn, source, name)
                except Exception:
                    log.exception("replay of quarantine failed", extra={"instance": name})
                    continue
                if result.replayed:
                    log.info(
                        "replayed quarantined events",
                        extra={"instance": name or "*", "replayed": result.replayed},
                    )
                    self.batcher.run_hooks(result.committed)


def _admin_authorized(request: Request) -> Response | None:
    services: Services = request.app.state.services
    expected = services.settings.admin_token
    if not expected:
        return error(403, "forbidden", "admin API disabled: set SENSE_ADMIN_TOKEN")
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    import hmac

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


# Each registration reloads this process's map at once (others follow by NOTIFY), so what the
# admin just created works on the very next request.


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


async def metrics_endpoint(request: Request) -> Response:
    services: Services = request.app.state.services
    try:
        async with services.pool.acquire(timeout=1) as conn:
            quarantined = await conn.fetchval(db.q("count_quarantine"))
    except Exception:
        quarantined = None
    body, content_type = metrics.render(quarantined)
    return Response(body, media_type=content_type)


def _observe_flush(rows: int, seconds: float) -> None:
    metrics.BATCH_ROWS.observe(rows)
    metrics.FLUSH_SECONDS.observe(seconds)


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
        Route("/api/v1/messages", api.list_messages, methods=["GET"]),
        Route("/api/v1/messages/{instance}/{message_id:path}", api.get_message, methods=["GET"]),
        Route("/api/v1/chats", api.list_chats, methods=["GET"]),
        Route("/api/v1/instances", api.list_instances, methods=["GET"]),
        Route("/api/admin/tenants", _admin_route(TenantIn, _create_tenant), methods=["POST"]),
        Route("/api/admin/sources", _admin_route(SourceIn, _create_source), methods=["POST"]),
        Route("/api/admin/instances", _admin_route(InstanceIn, _create_instance), methods=["POST"]),
        Route(
            "/api/admin/quarantine/replay",
            _admin_route(ReplayIn, _replay, status=200),
            methods=["POST"],
        ),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
        Route("/openapi.json", openapi_json, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
    ]


class App(Starlette):
    """The Starlette app, with the webhook posts (and the bench's reference routes) handed to
    their raw ASGI handlers before Starlette's middleware and routing (service.webhook)."""

    raw_routes: dict[str, webhook.Handler]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            for prefix, handler in self.raw_routes.items():
                if path.startswith(prefix):
                    secret = webhook.split_path(path, prefix)
                    if secret is None:
                        break
                    scope["app"] = self
                    services: Services = self.state.services
                    await webhook.serve(services, handler, secret, scope, receive, send)
                    return
        await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or load_settings()
    logs.configure(settings.log_level)
    if not settings.database_url:
        raise SystemExit("SENSE_DATABASE_URL is required (or use `sense run`)")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        dsn = settings.database_url
        assert dsn is not None
        pool = await db.create_pool(dsn, settings.db_pool_size, settings.db_timeout_seconds)
        registry = Registry()
        batcher = Batcher(
            [Writer(dsn, settings.db_timeout_seconds) for _ in range(settings.flushers)],
            max_queued=settings.queue_max_requests,
            max_batch_rows=settings.batch_max_rows,
            max_batch_requests=settings.batch_max_requests,
            linger=settings.batch_linger_seconds,
            max_queued_bytes=settings.queue_max_bytes,
            max_batch_bytes=settings.batch_max_bytes,
            on_flush=_observe_flush,
            on_depth=metrics.QUEUE_DEPTH.set,
        )
        services = Services(settings, pool, registry, batcher)
        app.state.services = services
        batcher.hooks.append(services.count_messages)
        registry.on_new_instances(lambda added: services.spawn(services.replay_for(added)))
        await registry.start(dsn, pool, settings.registry_refresh_seconds)
        # enrichment seam: post-commit hooks go into batcher.hooks here
        from service import enqueue

        enqueuer = app.state.enqueuer = await enqueue.start(settings)
        if enqueuer is not None:
            batcher.hooks.append(enqueuer.hook)
        # stream seam: start the live stream (publisher hook + relay) here
        live = await stream.start(settings, pool, registry)
        app.state.live = live
        # first hook: a message's "created" frame is queued before its enrichment is
        batcher.hooks.insert(0, live.publish)
        batcher.start()
        # instances registered while no server ran: their quarantined events go home now
        services.spawn(services.replay_for(None))
        services.ready = True
        try:
            yield
        finally:
            # Granian stopped accepting; write what is queued before going away.
            await batcher.close()
            # enrichment seam: stop what was started above
            if enqueuer is not None:
                await enqueuer.stop()
            # stream seam: stop the live stream here
            await live.stop()
            await registry.stop()
            for task in list(services._tasks):
                task.cancel()
            await pool.close()
            metrics.mark_process_dead(os.getpid())

    # stream seam: add the WebSocket, search and dashboard routes here
    all_routes = routes() + search.routes() + stream.routes()
    app = App(routes=all_routes, lifespan=lifespan, middleware=[Middleware(RejectNul)])
    app.raw_routes = {webhook.PREFIX: webhook.receive}
    if settings.bench_routes:
        from service import baseline

        app.raw_routes.update(baseline.ROUTES)
    app.router.redirect_slashes = False
    return app
