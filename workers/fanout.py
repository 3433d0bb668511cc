"""Fan-out deliveries, in the worker processes: each tenant's endpoints read the tenant's change
feed (migration 0017) from their own position and receive every event they subscribed to, in
order, signed (Standard Webhooks), at least once.

One thread per worker process runs an event loop. Every ``SENSE_FANOUT_POLL_SECONDS`` it
claims the endpoints that are due (enabled, next try reached) and not held by a live worker,
under a lease it renews, up to ``SENSE_FANOUT_CONCURRENCY`` at once, one task each. A task
delivers its endpoint's events one at a time (so, in order), moving the endpoint's position past
each one only once the receiver answered 2xx: a worker killed mid-delivery leaves the position
where it was, and whoever takes the endpoint after the lease sends that event again, with the
same ``webhook-id``. A failure (non-2xx, timeout, refused connection) records the attempt and
lets the endpoint go until its next try (service/outbound.py RETRY_SCHEDULE, or the receiver's
Retry-After); 410 Gone disables it; failing for ``SENSE_FANOUT_DISABLE_AFTER_SECONDS`` disables
it with its backlog kept. A slow receiver holds only its own task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import asyncpg
import httpx
import msgspec
from prometheus_client import Counter, Gauge, Histogram

from service import db, outbound
from service.outbound import ENVELOPE_TYPES, EVENT_TYPES, MESSAGE_TYPES, Filters
from service.resources import instance_from_row, iso, message_from_row

if TYPE_CHECKING:
    from service.settings import Settings

log = logging.getLogger("sense.fanout")

BATCH = 100  # feed rows read at a time
TURN = 1_000  # events delivered per claim; then the endpoint is let go (others get a turn)
KEEP_ATTEMPTS = 100  # per endpoint
BACKLOG_CAP = 10_000  # the backlog gauge counts this far
CHORES_SECONDS = 15.0  # the gauges
PRUNE_SECONDS = 600.0  # the feed's old rows

DELIVERIES = Counter(
    "sense_fanout_deliveries_total",
    "Delivery attempts by outcome (delivered: 2xx; failed: another status, a timeout or no"
    " connection; refused: the URL resolved to a forbidden address; gone: 410, endpoint disabled)",
    ["endpoint_id", "outcome"],
)
ATTEMPT_SECONDS = Histogram(
    "sense_fanout_attempt_seconds",
    "Delivery attempt time, request to answer",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
BACKLOG = Gauge(
    "sense_fanout_backlog",
    f"Feed events an endpoint has not handled yet (counted up to {BACKLOG_CAP:,})",
    ["endpoint_id"],
    multiprocess_mode="livemax",
)
OLDEST = Gauge(
    "sense_fanout_oldest_undelivered_seconds",
    "Age of the oldest event an endpoint has not handled yet (0: none)",
    ["endpoint_id"],
    multiprocess_mode="livemax",
)
FAILING = Gauge(
    "sense_fanout_endpoints_failing",
    "Enabled endpoints whose last delivery failed",
    multiprocess_mode="livemax",
)
DISABLED = Gauge(
    "sense_fanout_endpoints_disabled",
    "Endpoints disabled (by their tenant, by a 410, or after failing for days)",
    multiprocess_mode="livemax",
)


class LeaseLost(Exception):
    """The endpoint is no longer this worker's: it was changed (a replay, new settings or
    secret) or this worker stalled past its lease and another one holds it now."""


@dataclass
class Target:
    """A claimed endpoint, as its task holds it."""

    endpoint_id: uuid.UUID
    tenant_id: uuid.UUID
    url: str
    events: frozenset[str]
    filters: Filters
    mode: str
    keys: list[str]
    xid: int
    seq: int
    attempts: int
    owner: str  # this claim's: a later claim (even by this worker) makes its moves fail

    @classmethod
    def of(cls, row: Any, owner: str) -> Target:
        keys = [row["secret"]]
        until = row["old_secret_until"]
        if row["old_secret"] and until is not None and until > datetime.now(UTC):
            keys.append(row["old_secret"])  # both verify while the old one is honoured
        return cls(
            row["endpoint_id"],
            row["tenant_id"],
            row["url"],
            frozenset(row["events"]),
            msgspec.convert(row["filters"] or {}, Filters),
            row["mode"],
            keys,
            row["position_xid"],
            row["position_seq"],
            row["attempts"],
            owner,
        )


class Dispatcher:
    def __init__(self, settings: Settings) -> None:
        assert settings.database_url
        self.settings = settings
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.lease = settings.fanout_lease_seconds
        self.pool: asyncpg.Pool | None = None
        self.client: httpx.AsyncClient | None = None
        self._labels: set[str] = set()
        self._prune_at = 0.0

    def run_forever(self, stop: threading.Event) -> None:
        asyncio.run(self.run(stop))

    async def run(self, stop: threading.Event) -> None:
        s = self.settings
        assert s.database_url
        while self.pool is None:
            try:
                self.pool = await db.create_pool(s.database_url, 4, s.db_timeout_seconds)
            except Exception as exc:  # Postgres not up yet: deliveries start once it is
                log.warning("fanout: %s: %s", exc.__class__.__name__, exc)
                if stop.wait(min(5.0, 10 * s.fanout_poll_seconds)):
                    return
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(s.fanout_timeout_seconds, connect=5.0),
            follow_redirects=False,
            limits=httpx.Limits(max_connections=2 * s.fanout_concurrency),
            headers={"user-agent": "sense-ingest-fanout"},
        )
        running: dict[uuid.UUID, asyncio.Task[None]] = {}
        chores_at = 0.0
        try:
            while not stop.is_set():
                for endpoint_id, task in list(running.items()):
                    if task.done():
                        del running[endpoint_id]
                        if not task.cancelled() and task.exception() is not None:
                            log.error("fanout task failed", exc_info=task.exception())
                try:
                    free = s.fanout_concurrency - len(running)
                    if free > 0:
                        owner = f"{self.owner}:{uuid.uuid4().hex[:8]}"
                        rows = await self.pool.fetch(db.q("fanout_claim"), owner, self.lease, free)
                        for row in rows:
                            target = Target.of(row, owner)
                            old = running.get(target.endpoint_id)
                            if old is not None:  # changed meanwhile: the old turn stops
                                old.cancel()
                            running[target.endpoint_id] = asyncio.create_task(self.turn(target))
                    if time.monotonic() >= chores_at:
                        await self.chores()
                        chores_at = time.monotonic() + CHORES_SECONDS
                except Exception as exc:  # Postgres away (or anything else): next poll again
                    log.warning("fanout: %s: %s", exc.__class__.__name__, exc)
                await asyncio.sleep(s.fanout_poll_seconds)
        finally:
            for task in running.values():
                task.cancel()
            await asyncio.gather(*running.values(), return_exceptions=True)
            await self.client.aclose()
            await self.pool.close()

    # one endpoint's turn --------------------------------------------------------------------

    async def turn(self, target: Target) -> None:
        assert self.pool is not None
        heartbeat = asyncio.create_task(self._heartbeat(target))
        try:
            outcome = await self._deliver_backlog(target)
            if outcome != "failed":
                # caught up: look again a little later (an idle endpoint costs a claim and a
                # read per look); its turn over with more to send: at once
                idle = 2 * self.settings.fanout_poll_seconds if outcome == "caught up" else 0.0
                await self._release(target, datetime.now(UTC) + timedelta(seconds=idle))
        except LeaseLost:  # changed (replay, settings, secret) or taken over: claimed afresh
            log.info("endpoint let go", extra={"endpoint_id": str(target.endpoint_id)})
        except Exception:  # Postgres blinked mid-turn, or a bug: try again later, with backoff
            log.exception("fanout turn failed", extra={"endpoint_id": str(target.endpoint_id)})
            due = datetime.now(UTC) + timedelta(seconds=outbound.retry_delay(target.attempts + 1))
            with contextlib.suppress(Exception):
                await self.pool.execute(
                    db.q("fanout_failed"), target.endpoint_id, target.owner, due
                )
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):  # shutting down: let it go at once
                await asyncio.shield(self._release(target, datetime.now(UTC)))
            raise
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat

    async def _deliver_backlog(self, target: Target) -> str:
        """Deliver until ``caught up``, until the ``turn over``, or until a delivery
        ``failed`` (then it was let go until its next try, or disabled)."""
        assert self.pool is not None
        handled = 0
        while handled < TURN:
            rows = await self.pool.fetch(
                db.q("fanout_feed_after"), target.tenant_id, str(target.xid), target.seq, BATCH
            )
            if not rows:
                return "caught up"
            messages, instances = await self._context(target, rows)
            for row in rows:
                body = self._body(target, row, messages, instances)
                if body is not None:
                    if not await self._deliver(target, row, body):
                        return "failed"
                    handled += 1
                target.xid, target.seq = row["xid"], row["seq"]
                if body is not None:
                    await self._advance(target)
            await self._advance(target)  # past the batch's last rows, delivered or not
        return "turn over"

    async def _context(
        self, target: Target, rows: list[Any]
    ) -> tuple[dict[tuple[uuid.UUID, str], Any], dict[uuid.UUID, Any]]:
        """The messages (as they are now) and instances the rows name."""
        assert self.pool is not None
        keys = [
            (r["instance_id"], r["message_id"])
            for r in rows
            if r["message_id"] is not None and r["type"] in MESSAGE_TYPES
        ]
        messages: dict[tuple[uuid.UUID, str], Any] = {}
        if keys and target.mode == "sense":
            found = await self.pool.fetch(
                db.q("fanout_messages"),
                target.tenant_id,
                [k[0] for k in keys],
                [k[1] for k in keys],
            )
            messages = {(m["instance_id"], m["message_id"]): m for m in found}
        ids = list({r["instance_id"] for r in rows})
        found = await self.pool.fetch(db.q("fanout_instances"), target.tenant_id, ids)
        return messages, {i["instance_id"]: i for i in found}

    def _body(
        self,
        target: Target,
        row: Any,
        messages: dict[tuple[uuid.UUID, str], Any],
        instances: dict[uuid.UUID, Any],
    ) -> tuple[str, bytes] | None:
        """(event, body) of a feed row for this endpoint, or None if it does not want it."""
        kind = row["type"]
        instance = instances.get(row["instance_id"])
        if instance is None:
            return None  # the instance was removed since
        if target.mode == "evolution":
            if kind not in ENVELOPE_TYPES or ENVELOPE_TYPES[kind] not in target.events:
                return None
            envelope = row["envelope"]
            inner = envelope.get("data") if isinstance(envelope, dict) else None
            key = inner.get("key") if isinstance(inner, dict) else None
            key = key if isinstance(key, dict) else {}
            from_me = key.get("fromMe") if isinstance(key.get("fromMe"), bool) else None
            remote = key.get("remoteJid")
            group = "group" if isinstance(remote, str) and remote.endswith("@g.us") else None
            if not outbound.wanted(target.filters, instance["name"], from_me, group):
                return None
            return kind, msgspec.json.encode({**envelope, "destination": target.url})
        if kind not in EVENT_TYPES or kind not in target.events:
            return None
        data: Any
        if kind in MESSAGE_TYPES:
            message = messages.get((row["instance_id"], row["message_id"]))
            if message is None:
                return None  # no content (yet): nothing a receiver could use
            if not outbound.wanted(
                target.filters, instance["name"], message["from_me"], message["chat_type"]
            ):
                return None
            data = message_from_row(message, instance["name"])
        else:
            if target.filters.instances is not None and (
                instance["name"] not in target.filters.instances
            ):
                return None
            data = instance_from_row(instance)
        at = row["at"].astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return kind, msgspec.json.encode(outbound.Delivery(kind, at, data))

    async def _deliver(self, target: Target, row: Any, event_body: tuple[str, bytes]) -> bool:
        assert self.pool is not None and self.client is not None
        event, body = event_body
        msg_id = outbound.webhook_id(row["xid"], row["seq"])
        now = datetime.now(UTC)
        headers = {
            "content-type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": outbound.signature(target.keys, msg_id, now, body),
        }
        status: int | None = None
        error: str | None = None
        snippet: str | None = None
        wait: float | None = None
        refused = False
        started = time.perf_counter()
        try:
            addresses = await outbound.resolve(target.url, self.settings.fanout_allow_private)
            url, host, extensions = outbound.pinned(target.url, addresses[0])
            request = self.client.build_request(
                "POST", url, content=body, headers={**headers, **host}, extensions=extensions
            )
            response = await self.client.send(request, stream=True)
            try:
                status = response.status_code
                wait = outbound.retry_after(response.headers.get("retry-after"))
                kept = b""
                async for part in response.aiter_raw():
                    kept += part
                    if len(kept) >= outbound.RESPONSE_SNIPPET:
                        break
                snippet = kept[: outbound.RESPONSE_SNIPPET].decode("utf-8", "replace") or None
            finally:
                await response.aclose()
        except outbound.UrlRefused as exc:
            error, refused = str(exc), True
        except httpx.TimeoutException:
            error = f"no answer within {self.settings.fanout_timeout_seconds:g} s"
        except httpx.HTTPError as exc:
            error = f"{exc.__class__.__name__}: {exc}"[:300] or exc.__class__.__name__
        seconds = time.perf_counter() - started
        ATTEMPT_SECONDS.observe(seconds)
        label = str(target.endpoint_id)
        await self.pool.execute(
            db.q("fanout_attempt"),
            target.endpoint_id,
            msg_id,
            event,
            status,
            round(seconds * 1000),
            error,
            snippet,
            KEEP_ATTEMPTS,
        )
        if status is not None and 200 <= status < 300:
            DELIVERIES.labels(label, "delivered").inc()
            target.attempts = 0
            return True
        if status == 410:
            DELIVERIES.labels(label, "gone").inc()
            await self.pool.execute(
                db.q("fanout_disable"),
                target.endpoint_id,
                target.owner,
                "the receiver answered 410 Gone: re-enable it once it accepts deliveries again",
            )
            log.info("endpoint disabled (410)", extra={"endpoint_id": str(target.endpoint_id)})
            return False
        DELIVERIES.labels(label, "refused" if refused else "failed").inc()
        delay = outbound.retry_delay(target.attempts + 1, wait)
        done = await self.pool.fetchrow(
            db.q("fanout_failed"),
            target.endpoint_id,
            target.owner,
            now + timedelta(seconds=delay),
        )
        since = done["failing_since"] if done is not None else None
        if since is not None and (now - since).total_seconds() > (
            self.settings.fanout_disable_after_seconds
        ):
            reason = f"failing since {iso(since)}: re-enable it once the receiver is back"
            await self.pool.execute(db.q("fanout_disable_failing"), target.endpoint_id, reason)
            log.warning("endpoint disabled", extra={"endpoint_id": str(target.endpoint_id)})
        return False

    async def _advance(self, target: Target) -> None:
        assert self.pool is not None
        moved = await self.pool.fetchval(
            db.q("fanout_advance"),
            target.endpoint_id,
            target.owner,
            str(target.xid),
            target.seq,
            self.lease,
        )
        if moved is None:
            raise LeaseLost  # another worker holds it now: stop here

    async def _release(self, target: Target, due: datetime) -> None:
        assert self.pool is not None
        await self.pool.execute(db.q("fanout_release"), target.endpoint_id, target.owner, due)

    async def _heartbeat(self, target: Target) -> None:
        assert self.pool is not None
        while True:
            await asyncio.sleep(self.lease / 3)
            with contextlib.suppress(Exception):  # Postgres blinked: the next beat tries again
                await self.pool.execute(
                    db.q("fanout_renew"), target.endpoint_id, target.owner, self.lease
                )

    # metrics and housekeeping ---------------------------------------------------------------

    async def chores(self) -> None:
        assert self.pool is not None
        if time.monotonic() >= self._prune_at:
            async with self.pool.acquire() as conn, conn.transaction():
                if await conn.fetchval(db.q("fanout_prune_lock")):  # one worker at a time
                    retention = self.settings.fanout_retention_seconds
                    await conn.execute(db.q("fanout_prune"), retention)
            self._prune_at = time.monotonic() + PRUNE_SECONDS
        rows = await self.pool.fetch(db.q("fanout_backlog"), BACKLOG_CAP)
        labels = set()
        for r in rows:
            label = str(r["endpoint_id"])
            labels.add(label)
            BACKLOG.labels(label).set(r["backlog"])
            OLDEST.labels(label).set(r["oldest_seconds"] or 0.0)
        for gone in self._labels - labels:
            BACKLOG.remove(gone)
            OLDEST.remove(gone)
        self._labels = labels
        FAILING.set(sum(1 for r in rows if r["enabled"] and r["failing_since"] is not None))
        DISABLED.set(sum(1 for r in rows if not r["enabled"]))
