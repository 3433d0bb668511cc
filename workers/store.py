"""Postgres for the worker's threads: an asyncpg pool on a private event-loop thread, behind
plain blocking methods (Dramatiq actors and the reconciler are synchronous). Queries are the
ones of service/sql/enrichment.sql."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections.abc import Coroutine, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import asyncpg

from service import db
from service.contracts import EMBED_DIMENSIONS, Key

T = TypeVar("T")

Position = tuple[datetime, int]  # (content_at, seq): a place in the order messages arrived

RECONCILE_LOCK = 0x53454E5345 + 4  # advisory lock key: one reconciler at a time (db.py has +0)


@dataclass(frozen=True, slots=True)
class Row:
    key: Key
    text: str | None


@dataclass(frozen=True, slots=True)
class Scanned:
    """A message the reconciler walked past, and what it still needs."""

    position: Position
    key: Key
    pending: bool  # not analysed yet
    unindexed: bool  # no search row yet


@dataclass(frozen=True, slots=True)
class Result:
    """One message's analysis, as written: state 'done' or 'skipped'."""

    key: Key
    state: str
    sentiment: float | None = None
    emotion: str | None = None
    satisfaction: int | None = None
    embedding: list[float] | None = None


@dataclass(frozen=True, slots=True)
class Saved:
    key: Key
    state: str
    sentiment: float | None
    emotion: str | None
    satisfaction: int | None


def parse_keys(raw: Iterable[Iterable[Any]]) -> list[Key]:
    """The actor's argument ([[tenant_id, instance_id, message_id], ...]) as typed keys."""
    out: list[Key] = []
    for item in raw:
        tenant_id, instance_id, message_id = item
        out.append((uuid.UUID(str(tenant_id)), uuid.UUID(str(instance_id)), str(message_id)))
    return out


def _columns(keys: list[Key]) -> tuple[list[uuid.UUID], list[uuid.UUID], list[str]]:
    return [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys]


class Store:
    def __init__(self, dsn: str, *, size: int = 4, timeout: float = 10.0) -> None:
        self.dsn = dsn
        self.size = size
        self.timeout = timeout
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="sense-db", daemon=True)
        self._pool: asyncpg.Pool | None = None

    def start(self) -> Store:
        self._thread.start()
        self._pool = self._call(
            db.create_pool(self.dsn, self.size, self.timeout), timeout=self.timeout * 2
        )
        return self

    def close(self) -> None:
        if self._pool is not None:
            with contextlib.suppress(Exception):
                self._call(self._pool.close(), timeout=5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return future.result(timeout or self.timeout * 3)
        except TimeoutError:
            future.cancel()
            raise

    @property
    def pool(self) -> asyncpg.Pool:
        assert self._pool is not None, "Store.start() first"
        return self._pool

    # the actors' statements --------------------------------------------------------------

    def index(self, keys: list[Key]) -> list[Key]:
        """Write the messages' search rows; answer those still waiting for analysis."""
        if not keys:
            return []
        rows = self._call(self.pool.fetch(db.q("index_messages"), *_columns(keys)))
        return [(r["tenant_id"], r["instance_id"], r["message_id"]) for r in rows]

    def load(self, keys: list[Key]) -> list[Row]:
        if not keys:
            return []
        rows = self._call(self.pool.fetch(db.q("enrich_load"), *_columns(keys)))
        return [Row((r["tenant_id"], r["instance_id"], r["message_id"]), r["text"]) for r in rows]

    def save(self, results: list[Result], analyzer: str | None = None) -> list[Saved]:
        """Write ``results`` (rows still pending only), recording ``analyzer`` (the version
        of what produced them)."""
        if not results:
            return []
        slots: list[int | None] = []
        flat: list[float] = []
        for r in results:
            if r.embedding is None:
                slots.append(None)
            else:
                if len(r.embedding) != EMBED_DIMENSIONS:
                    raise ValueError(f"an embedding of {len(r.embedding)} floats")
                slots.append(len(flat) // EMBED_DIMENSIONS)
                flat.extend(r.embedding)
        rows = self._call(
            self.pool.fetch(
                db.q("enrich_save"),
                *_columns([r.key for r in results]),
                [r.state for r in results],
                [r.sentiment for r in results],
                [r.emotion for r in results],
                [r.satisfaction for r in results],
                flat,
                analyzer,
                slots,
                EMBED_DIMENSIONS,
            )
        )
        return [
            Saved(
                (r["tenant_id"], r["instance_id"], r["message_id"]),
                r["analysis_state"],
                r["sentiment"],
                r["emotion"],
                r["satisfaction"],
            )
            for r in rows
        ]

    def fail(self, keys: list[Key], reason: str) -> list[Key]:
        if not keys:
            return []
        rows = self._call(self.pool.fetch(db.q("enrich_fail"), *_columns(keys), reason[:500]))
        return [(r["tenant_id"], r["instance_id"], r["message_id"]) for r in rows]

    # the reconciler's ---------------------------------------------------------------------

    @contextlib.contextmanager
    def advisory_lock(self, key: int = RECONCILE_LOCK) -> Iterator[bool]:
        """Hold ``key`` (session-level advisory lock on one pooled connection) if nobody else
        does; yields whether we got it."""

        async def acquire() -> asyncpg.Connection:
            return await self.pool.acquire()

        conn = self._call(acquire())
        try:
            got = bool(self._call(conn.fetchval(db.q("enrich_try_lock"), key)))
            try:
                yield got
            finally:
                if got:
                    with contextlib.suppress(Exception):
                        self._call(conn.fetchval(db.q("enrich_unlock"), key))
        finally:
            with contextlib.suppress(Exception):
                self._call(self.pool.release(conn))

    def position(self) -> Position:
        row = self._call(self.pool.fetchrow(db.q("reconcile_position")))
        assert row is not None, "migration 0009 seeds sense_reconcile"
        return (row["content_at"], row["seq"])

    def advance(self, position: Position) -> None:
        self._call(self.pool.execute(db.q("reconcile_advance"), *position))

    def scan(self, after: Position, age: float, limit: int) -> list[Scanned]:
        rows = self._call(self.pool.fetch(db.q("reconcile_scan"), *after, age, limit))
        return [
            Scanned(
                (r["content_at"], r["seq"]),
                (r["tenant_id"], r["instance_id"], r["message_id"]),
                r["pending"],
                r["unindexed"],
            )
            for r in rows
        ]

    def expire(self, max_age: float, reason: str, after: Position) -> list[Key]:
        rows = self._call(self.pool.fetch(db.q("enrich_expire"), max_age, reason[:500], *after))
        return [(r["tenant_id"], r["instance_id"], r["message_id"]) for r in rows]
