"""The composition root: ``create_app()`` builds the process's services in its lifespan, hooks
them together (batcher → live stream → enrichment) and serves the route table. It only wires;
every handler lives in its own module and imports ``service.state``, never this one."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from service import (
    admin_api,
    api,
    backfill,
    dashboard,
    db,
    endpoints,
    enqueue,
    live,
    logs,
    metrics,
    observe,
    probes,
    search,
    webhook,
)
from service.contracts import BACKFILL_ACTOR, BACKFILL_QUEUE
from service.http import (
    BodyDeadline,
    BodyTimeout,
    RejectNul,
    SecurityHeaders,
    body_timeout_handler,
    response_headers,
    unavailable_handlers,
)
from service.ingest import Batcher, Writer
from service.live import endpoint
from service.quarantine import Guard
from service.resolve import Registry
from service.settings import Settings, load_settings
from service.state import Services

log = logging.getLogger("sense.app")


def routes() -> list[BaseRoute]:
    """The route table (the webhook is served ahead of it, see ``App``)."""
    return [
        Route("/api/v1/messages", api.list_messages, methods=["GET"]),
        Route("/api/v1/messages/{instance}/{message_id:path}", api.get_message, methods=["GET"]),
        Route("/api/v1/chats", api.list_chats, methods=["GET"]),
        Route("/api/v1/instances", api.list_instances, methods=["GET"]),
        Route("/api/v1/backfill", api.list_backfill, methods=["GET"]),
        *search.routes(),
        *endpoint.routes(),
        *endpoints.routes(),
        *admin_api.routes(),
        *probes.routes(),
        *dashboard.routes(),
    ]


def _observe_flush(rows: int, seconds: float) -> None:
    metrics.BATCH_ROWS.observe(rows)
    metrics.FLUSH_SECONDS.observe(seconds)


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
        guard = Guard(
            pool,
            max_events=settings.quarantine_max_events,
            max_bytes=settings.quarantine_max_bytes,
            retention_days=settings.quarantine_retention_days,
            on_totals=metrics.set_quarantine,
        )
        services = Services(
            settings,
            pool,
            registry,
            batcher,
            guard,
            response_headers=response_headers(settings.hsts),
        )
        app.state.services = services
        registry.on_new_instances(lambda added: services.spawn(services.replay_for(added)))
        await registry.start(dsn, pool, settings.registry_refresh_seconds)
        stream = app.state.live = await live.start(settings, pool, registry)
        enqueuer = app.state.enqueuer = await enqueue.start(settings)
        runner = triggers = recovered = None
        if settings.backfill_enabled:
            recovered = await enqueue.start(settings, BACKFILL_QUEUE, BACKFILL_ACTOR)
            runner = services.backfill = backfill.Runner(
                pool, settings, [stream.publish] + ([recovered.hook] if recovered else [])
            )
            triggers = backfill.Triggers(pool, settings, runner.wakeup.set)
        # Post-commit hooks, in this order: a message's "created" frame is queued before its
        # enrichment is, and both before the per-tenant counter.
        hooks = [stream.publish]
        if enqueuer is not None:
            hooks.append(enqueuer.hook)
        hooks.append(services.count_messages)
        if triggers is not None:
            hooks.append(triggers.hook)
        batcher.on_commit(*hooks)
        batcher.start()
        await guard.refresh()
        guard.start()
        # instances registered while no server ran: their quarantined events go home now
        services.spawn(services.replay_for(None))
        if runner is not None:
            runner.start(triggers)
        observer = observe.Observer(pool, settings, stream.redis)
        observer.start()
        services.ready = True
        try:
            yield
        finally:
            await observer.stop()
            if runner is not None:
                await runner.stop()  # a job left mid-way is resumed by the next runner
            # Granian stopped accepting; write what is queued before going away.
            await batcher.close()
            await guard.stop()
            for sender in (enqueuer, recovered):
                if sender is not None:
                    await sender.stop()
            await stream.stop()
            await registry.stop()
            for task in list(services._tasks):
                task.cancel()
            await pool.close()
            metrics.mark_process_dead(os.getpid())

    handlers = {
        **unavailable_handlers(settings.retry_after_seconds, metrics.count_api_unavailable),
        BodyTimeout: body_timeout_handler(settings.body_timeout_seconds),
    }
    app = App(
        routes=routes(),
        lifespan=lifespan,
        middleware=[
            Middleware(SecurityHeaders, hsts=settings.hsts),
            Middleware(RejectNul),
            Middleware(BodyDeadline, seconds=settings.body_timeout_seconds),
        ],
        exception_handlers=handlers,
    )
    app.raw_routes = {webhook.PREFIX: webhook.receive}
    if settings.bench_routes:
        from service import baseline

        app.raw_routes.update(baseline.ROUTES)
    app.router.redirect_slashes = False
    return app
