"""What the handlers of one process share (``Services``): the pool, the tenant registry, the
batcher, and the bookkeeping every webhook does (metrics, the access log, quarantine rows,
replay). It sits below every handler: handlers import it, never service/app.py."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import asyncpg

from service import admin, metrics
from service.events import EVENTS, IGNORED, KEPT_AS_EVENTS
from service.ingest import Batcher
from service.payloads import Envelope
from service.quarantine import Guard, kept_copy
from service.resolve import Instance, Registry
from service.rows import Committed, Ops
from service.settings import Settings

if TYPE_CHECKING:
    from service.backfill import Runner

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
    quarantine: Guard
    ready: bool = False
    backfill: Runner | None = None  # this process's backfill runner (service/backfill.py)
    # what every answer carries (service/http.py SecurityHeaders; the webhook adds them itself)
    response_headers: list[tuple[bytes, bytes]] = field(default_factory=list)
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
            metrics.count_tenant_messages(str(tenant_id), n)

    def quarantine_ops(self, source_id: uuid.UUID, env: Envelope, body: bytes) -> Ops:
        kept, presented = kept_copy(body)
        return Ops(
            quarantine=[(source_id, env.instance, env.event, "unknown instance", kept, presented)]
        )

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
