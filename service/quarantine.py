"""What quarantine keeps, how much and for how long.

Events of instances nobody registered yet are kept in ``quarantine`` and replayed into their
tenant once the instance is registered (service/admin.py). What is kept:

- the body without inline media (payloads.without_inline_media) and without the envelope's
  ``apikey``: only its sha256 is kept beside it, for the replay's check (``kept_copy``);
- at most ``SENSE_QUARANTINE_MAX_EVENTS`` events and ``SENSE_QUARANTINE_MAX_BYTES`` bytes per
  source: past either, that source's events for unregistered instances are answered 503 +
  Retry-After (Evolution retries; nothing is dropped silently) until instances are registered
  or rows expire; other sources are not affected (``Guard``);
- for ``SENSE_QUARANTINE_RETENTION_DAYS``: older rows are deleted.

``Guard`` keeps each source's count and bytes in memory, read from Postgres every few seconds
and counted up between reads, so the check costs no query; it sets the same figures into the
``sense_quarantine_*`` gauges (a scrape queries nothing either).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg
import msgspec

from service import db, tasks
from service.payloads import lenient_document, without_inline_media
from service.resolve import digest

log = logging.getLogger("sense.quarantine")

NO_KEY = "Apikey not found"  # what Evolution sends when the instance has none


def kept_copy(body: bytes) -> tuple[bytes, bytes | None]:
    """``body`` as quarantine keeps it (no inline media, no ``apikey``) and the sha256 of the
    apikey it presented (None: none presented)."""
    body = without_inline_media(body)
    if b'"apikey"' not in body:
        return body, None
    doc = lenient_document(body)
    if not isinstance(doc, dict) or "apikey" not in doc:  # (None: not JSON, nothing to file)
        return body, None
    key = doc.pop("apikey")
    presented = digest(key) if isinstance(key, str) and key and key != NO_KEY else None
    return msgspec.json.encode(doc), presented


@dataclass(slots=True)
class Held:
    events: int = 0
    bytes: int = 0


class Guard:
    """Per-source quarantine figures of this process, the cap check and the expiry sweep."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        max_events: int,
        max_bytes: int,
        retention_days: float,
        refresh_seconds: float = 5.0,
        sweep_seconds: float = 600.0,
        on_totals: Callable[[int, int], None] | None = None,
    ) -> None:
        self.pool = pool
        self.on_totals = on_totals  # (events, bytes) of every source, whenever they change
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.retention_seconds = retention_days * 86400
        self.refresh_seconds = refresh_seconds
        self.sweep_seconds = sweep_seconds
        self.held: dict[uuid.UUID, Held] = {}
        self.loaded = False
        self._task: asyncio.Task[None] | None = None

    def full(self, source_id: uuid.UUID) -> bool:
        held = self.held.get(source_id)
        return held is not None and (held.events >= self.max_events or held.bytes >= self.max_bytes)

    def added(self, source_id: uuid.UUID, size: int) -> None:
        held = self.held.setdefault(source_id, Held())
        held.events += 1
        held.bytes += size
        self._publish()

    def _publish(self) -> None:
        totals = self.totals()
        if totals is not None and self.on_totals is not None:
            self.on_totals(totals.events, totals.bytes)

    def totals(self) -> Held | None:
        """All sources together, or None before the first read."""
        if not self.loaded:
            return None
        return Held(
            sum(h.events for h in self.held.values()), sum(h.bytes for h in self.held.values())
        )

    async def refresh(self) -> None:
        rows = await self.pool.fetch(db.q("quarantine_held"))
        self.held = {r["source_id"]: Held(r["events"], r["bytes"]) for r in rows}
        self.loaded = True
        self._publish()

    async def sweep(self) -> int:
        """Delete what is past its retention; how many rows went."""
        deleted = await self.pool.fetchval(db.q("quarantine_expire"), self.retention_seconds)
        if deleted:
            log.warning(
                "quarantine: %d events older than %g days deleted (never registered)",
                deleted,
                self.retention_seconds / 86400,
            )
        return int(deleted)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="sense-quarantine")

    async def stop(self) -> None:
        await tasks.stop(self._task)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_sweep = loop.time()
        while True:
            try:
                if loop.time() >= next_sweep:
                    await self.sweep()
                    next_sweep = loop.time() + self.sweep_seconds
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database is away: keep the last figures
                log.warning("quarantine figures not refreshed: %s", exc.__class__.__name__)
            await asyncio.sleep(self.refresh_seconds)
