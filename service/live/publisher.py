"""Committed changes to frames: one task per process, in commit order, from the rows each commit
returned (nothing is read back), only for tenants with a live client somewhere."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import asyncpg

from service import db, tasks
from service.contracts import FRAMES_PER_MESSAGE, Key
from service.live.frames import (
    Created,
    InstanceQrCode,
    InstanceState,
    Updated,
    encode_position,
    encoder,
    wire,
)
from service.resolve import Registry
from service.resources import instance_from_row, message_from_row
from service.rows import Committed

log = logging.getLogger("sense.stream")


Sink = Callable[[list[tuple[uuid.UUID, bytes]]], Awaitable[None]]
# Of these tenants, those with a live client somewhere (a subscribed channel) right now.
Listened = Callable[[set[uuid.UUID]], Awaitable[set[uuid.UUID]]]


class Publisher:
    """Turns each commit into frames, in commit order, one task per process. The batcher hook
    only queues (it never waits on Postgres or Redis); bursts coalesce into one read."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        registry: Registry,
        sink: Sink,
        listened: Listened,
        max_pending: int = 10_000,
    ) -> None:
        self.pool = pool
        self.registry = registry
        self.sink = sink
        self.listened = listened
        self.max_pending = max_pending
        self._pending: deque[Committed] = deque()
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self.lost = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="sense-publisher")

    async def hook(self, committed: Committed) -> None:
        if not (committed.messages or committed.instances):
            return
        if len(self._pending) >= self.max_pending:
            self._pending.popleft()  # far behind: the oldest go; clients catch up on reconnect
            self.lost += 1
        self._pending.append(committed)
        self._idle.clear()
        self._wakeup.set()

    async def drain(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), seconds)

    async def stop(self) -> None:
        await tasks.stop(self._task)

    async def _run(self) -> None:
        while True:
            if not self._pending:
                self._idle.set()
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch = list(self._pending)
            self._pending.clear()
            try:
                await self.publish(batch)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis or Postgres away: these frames are lost, not the data
                log.warning("live publish failed: %s: %s", exc.__class__.__name__, exc)

    async def publish(self, batch: list[Committed]) -> None:
        # Frames only for tenants someone listens to: asked after the commit, so a client whose
        # `ready` (sent once its channel is subscribed) came before the commit is counted.
        # Most tenants have no dashboard open most of the time.
        tenants = {row["tenant_id"] for committed in batch for row in committed.messages}
        tenants.update(t for committed in batch for t, _, _ in committed.instances)
        listened = await self.listened(tenants) if tenants else set()
        if not listened:
            return
        # The rows as each commit left them (the writer returns them): a message created and
        # changed within this burst is one "created" frame with its latest state.
        rows: dict[Key, tuple[bool, Any]] = {}
        instances: dict[tuple[uuid.UUID, uuid.UUID], set[str]] = {}
        for committed in batch:
            for row in committed.messages:
                if row["tenant_id"] not in listened:
                    continue
                key = (row["tenant_id"], row["instance_id"], row["message_id"])
                seen = rows.get(key)
                rows[key] = (row["created"] or (seen is not None and seen[0]), row)
            for tenant_id, instance_id, kind in committed.instances:
                if tenant_id in listened:
                    instances.setdefault((tenant_id, instance_id), set()).add(kind)
        per_tenant: dict[uuid.UUID, list[bytes]] = {}
        names: dict[uuid.UUID, Mapping[uuid.UUID, str]] = {}
        for (tenant_id, instance_id, _), (created, row) in rows.items():
            tenant_names = names.get(tenant_id)
            if tenant_names is None:
                tenant_names = names[tenant_id] = self.registry.instance_names(tenant_id)
            message = message_from_row(row, tenant_names.get(instance_id, "?"))
            frame: Any
            if created:
                frame = Created(encode_position(row["content_xid"], row["seq"]), message)
            else:
                frame = Updated(message)
            per_tenant.setdefault(tenant_id, []).append(encoder.encode(frame))
        if instances:
            for r in await self.pool.fetch(
                db.q("stream_instances"),
                [k[0] for k in instances],
                [k[1] for k in instances],
            ):
                out = instance_from_row(r)
                kinds = instances[(r["tenant_id"], r["instance_id"])]
                frames = per_tenant.setdefault(r["tenant_id"], [])
                if "state" in kinds:
                    frames.append(encoder.encode(InstanceState(out)))
                if "qrcode" in kinds:
                    frames.append(encoder.encode(InstanceQrCode(out)))
        messages = [
            (tenant_id, wire(frames[i : i + FRAMES_PER_MESSAGE]))
            for tenant_id, frames in per_tenant.items()
            for i in range(0, len(frames), FRAMES_PER_MESSAGE)
        ]
        if messages:
            await self.sink(messages)
