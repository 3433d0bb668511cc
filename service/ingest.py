"""Group commit: requests queue their rows; a flusher writes each batch as one statement in its
own transaction (``sense_ingest`` over typed arrays: one round trip, committed at once) and only
then releases the requests waiting on it. Knows nothing about HTTP.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg

from service import db
from service.quarantine import kept_copy
from service.rows import Committed, Ops, merge_messages, message_key

log = logging.getLogger("sense.ingest")


class Overloaded(Exception):
    """The ingest queue is full (answer 503 + Retry-After)."""


class Unavailable(Exception):
    """The database cannot be written right now (answer 503 + Retry-After)."""


class DatabaseDown(ConnectionError):
    """The writer could not connect (an OSError, so it counts as unavailable)."""


@dataclass(frozen=True, slots=True)
class Fallback:
    """What to keep in quarantine if this request's rows cannot be written."""

    source_id: uuid.UUID
    instance_name: str
    event: str
    body: bytes


# @lid -> phone pairs this process has committed, so that a batch that teaches nothing new
# skips the lid map (its upsert and the moves it checks for). Pairs recur with every message
# of a chat; they change only when a number does. Should another process have stored a newer
# phone for a @lid since, a batch repeating the older pair keeps the newer one, as if it had
# arrived first (the map is "latest arrival wins" anyway).
KNOWN_LIDS_MAX = 200_000


class Writer:
    """Writes Ops on its own connection, one statement per batch (``write_ops``)."""

    def __init__(self, dsn: str, timeout: float) -> None:
        self.dsn = dsn
        self.timeout = timeout
        self._conn: asyncpg.Connection | None = None
        self._known_lids: dict[tuple[uuid.UUID, str], str] = {}

    async def _connection(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            self._conn = None
            try:
                conn = await db.connect(
                    self.dsn,
                    timeout=self.timeout,
                    server_settings={"application_name": "sense-writer"},
                )
            except Exception as exc:
                # Whatever stops us from connecting (refused, shutting down, not accepting
                # connections, auth...) is the database being unavailable, not bad data.
                raise DatabaseDown(f"{exc.__class__.__name__}: {exc}") from exc
            self._conn = conn
        return self._conn

    async def close(self) -> None:
        if self._conn is not None and not self._conn.is_closed():
            await self._conn.close()

    def reset(self) -> None:
        if self._conn is not None:
            self._conn.terminate()
        self._conn = None

    async def write(self, ops: Ops) -> Committed:
        conn = await self._connection()
        known = self._known_lids
        # All or nothing: one unknown pair and the whole list goes (its order decides which
        # phone wins for a @lid named twice).
        lids_known = all(known.get((t, lid)) == phone for t, lid, phone in ops.lid_pairs)
        done = await write_ops(conn, ops, lids_known=lids_known)  # its own implicit transaction
        if ops.lid_pairs and not lids_known:
            if len(known) + len(ops.lid_pairs) > KNOWN_LIDS_MAX:
                known.clear()
            for t, lid, phone in ops.lid_pairs:
                known[(t, lid)] = phone
        return done


async def write_ops(conn: asyncpg.Connection, ops: Ops, *, lids_known: bool = False) -> Committed:
    """Write ``ops`` in one statement (``sense_ingest``, migration 0008): outside a
    transaction it is its own, committed when this returns; inside the caller's, part of it.
    ``lids_known``: every @lid pair is already in the lid map as it is (skip them)."""
    done = Committed(rows=ops.row_count())
    # In key order: the flushers of other processes upsert overlapping keys (a receipt and its
    # message arrive together); locking rows in one global order cannot deadlock, where arrival
    # order did (each deadlock stalled both batches for deadlock_timeout, 1 s).
    merged = sorted(merge_messages(ops.messages), key=message_key) if ops.messages else []
    rows = await conn.fetch(
        db.q("ingest"),
        [] if lids_known else ops.lid_pairs,
        [op.record() for op in merged],
        ops.contacts,
        ops.chats,
        ops.groups,
        ops.instance_states,
        ops.qrcodes,
        ops.events,
        ops.quarantine,
        ops.envelopes,
    )
    for r in rows:
        if r["created"]:
            done.created.append((r["tenant_id"], r["instance_id"], r["message_id"]))
    done.messages = rows
    done.instances.extend((t, i, "state") for t, i, *_ in ops.instance_states)
    done.instances.extend((t, i, "qrcode") for t, i, *_ in ops.qrcodes)
    return done


CommitHook = Callable[[Committed], Awaitable[None]]


@dataclass(slots=True)
class _Item:
    ops: Ops
    fallback: Fallback | None
    future: asyncio.Future[str]
    size: int  # bytes of the request held while it waits


# Two flushers writing overlapping keys at once wait on each other's row locks; should they
# still deadlock (Postgres picks one), the loser's batch is simply written again.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.QueryCanceledError,  # statement_timeout, a cancel by an operator
)


class Batcher:
    """The bounded in-process queue and its flushers, one per writer (connection).

    Each flusher takes everything waiting (up to the caps) and writes it in one transaction.
    With more than one, a batch is written while the previous one commits: the wait for the
    commit (WAL flush) is overlapped instead of serialised, and the merges are commutative, so
    which flusher commits first does not matter."""

    def __init__(
        self,
        writers: list[Writer],
        *,
        max_queued: int,
        max_batch_rows: int,
        max_batch_requests: int,
        on_flush: Callable[[int, float], None] | None = None,
        on_depth: Callable[[int], None] | None = None,
        linger: float = 0.0,
        max_queued_bytes: int = 512 * 1024 * 1024,
        max_batch_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        if not writers:
            raise ValueError("a batcher needs at least one writer")
        self.writers = writers
        self.max_queued = max_queued
        self.max_batch_rows = max_batch_rows
        self.max_batch_requests = max_batch_requests
        self.max_queued_bytes = max_queued_bytes
        self.max_batch_bytes = max_batch_bytes
        self.linger = linger
        self._held_bytes = 0
        self.hooks: list[CommitHook] = []
        self.on_flush = on_flush
        self.on_depth = on_depth
        self._queue: deque[_Item] = deque()
        self._wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._inflight: set[asyncio.Future[str]] = set()
        self._closing = False
        self._hook_tasks: set[asyncio.Task[None]] = set()
        self._down_until = 0.0

    @property
    def depth(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._run(writer), name=f"sense-flusher-{n}")
            for n, writer in enumerate(self.writers)
        ]

    async def settled(self) -> None:
        """Return once everything submitted before this call is committed or answered."""
        pending = [item.future for item in self._queue] + list(self._inflight)
        if pending:
            await asyncio.wait(pending)  # never cancels them (gather would)

    async def submit(self, ops: Ops, fallback: Fallback | None = None, size: int = 0) -> str:
        """Queue ``ops`` and wait until they are committed. Returns "stored" or "quarantined"
        (rows that could not be written were kept in quarantine instead). ``size``: the bytes
        the request holds meanwhile (its body), counted against ``max_queued_bytes``."""
        if self._closing:
            raise Unavailable("shutting down")
        if len(self._queue) >= self.max_queued:
            raise Overloaded()
        if self._held_bytes + size > self.max_queued_bytes and self._held_bytes:
            raise Overloaded()  # bodies of tens of MB (inline media): memory, not count, is full
        if time.monotonic() < self._down_until:
            raise Unavailable("database unavailable")
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._queue.append(_Item(ops, fallback, future, size))
        self._held_bytes += size
        self._wakeup.set()
        try:
            return await future
        finally:
            self._held_bytes -= size

    async def close(self) -> None:
        """Stop taking requests, write everything queued, then stop."""
        self._closing = True
        self._wakeup.set()
        if self._tasks:
            await asyncio.gather(*self._tasks)
        if self._hook_tasks:
            await asyncio.gather(*self._hook_tasks, return_exceptions=True)
        for writer in self.writers:
            await writer.close()

    def _take(self) -> list[_Item]:
        batch: list[_Item] = []
        rows = size = 0
        while self._queue and len(batch) < self.max_batch_requests:
            item = self._queue[0]
            n = item.ops.row_count()
            if batch and (
                rows + n > self.max_batch_rows or size + item.size > self.max_batch_bytes
            ):
                break
            batch.append(self._queue.popleft())
            rows += n
            size += item.size
        return batch

    async def _run(self, writer: Writer) -> None:
        last_batch = 0
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            if last_batch > 1 and self.linger > 0 and len(self._queue) < self.max_batch_requests:
                # Under load (the last batch was not a lone request), the requests answered by
                # the last commit are about to come back: a moment's wait makes this batch
                # bigger, and a flush's fixed cost (round trips, the commit) is shared by more.
                await asyncio.sleep(self.linger)
            batch = self._take()
            last_batch = len(batch)
            if self._queue:
                self._wakeup.set()  # more is waiting: an idle flusher takes it meanwhile
            if self.on_depth is not None:
                self.on_depth(len(self._queue))
            futures = [item.future for item in batch]
            self._inflight.update(futures)
            try:
                await self._flush(writer, batch)
            finally:
                self._inflight.difference_update(futures)

    async def _flush(self, writer: Writer, batch: list[_Item]) -> None:
        ops = Ops()
        for item in batch:
            ops.extend(item.ops)
        started = time.perf_counter()
        try:
            try:
                committed = await writer.write(ops)
            except TRANSIENT_ERRORS as exc:
                log.info("batch of %d: %s; writing it again", len(batch), exc.__class__.__name__)
                # a moment apart, so that the other side of a deadlock commits first
                await asyncio.sleep(random.uniform(0.005, 0.05))
                committed = await writer.write(ops)
        except db.UNAVAILABLE_ERRORS as exc:
            writer.reset()
            log.warning("database unavailable: %s", exc.__class__.__name__)
            # Fail fast for a moment instead of making every request wait for a dead server.
            self._down_until = time.monotonic() + 0.5
            for item in batch:
                _settle(item.future, exc=Unavailable(str(exc.__class__.__name__)))
            return
        except Exception as exc:  # bad data in one of the requests: find it
            log.warning("batch of %d failed (%s); writing one by one", len(batch), exc)
            await self._flush_one_by_one(writer, batch)
            return
        elapsed = time.perf_counter() - started
        for item in batch:
            _settle(item.future, result="stored")
        if self.on_flush is not None:
            self.on_flush(committed.rows, elapsed)
        self.run_hooks(committed)

    async def _flush_one_by_one(self, writer: Writer, batch: list[_Item]) -> None:
        for item in batch:
            try:
                try:
                    committed = await writer.write(item.ops)
                except TRANSIENT_ERRORS:
                    await asyncio.sleep(random.uniform(0.005, 0.05))
                    committed = await writer.write(item.ops)
            except db.UNAVAILABLE_ERRORS as exc:
                writer.reset()
                _settle(item.future, exc=Unavailable(str(exc.__class__.__name__)))
                continue
            except TRANSIENT_ERRORS as exc:  # twice: answer 503, Evolution sends it again
                _settle(item.future, exc=Unavailable(str(exc.__class__.__name__)))
                continue
            except Exception as exc:
                _settle(item.future, **await self._quarantine(writer, item, exc))
                continue
            _settle(item.future, result="stored")
            self.run_hooks(committed)

    async def _quarantine(self, writer: Writer, item: _Item, error: Exception) -> dict[str, Any]:
        if item.fallback is None:
            return {"exc": error}
        fb = item.fallback
        reason = f"write failed: {error.__class__.__name__}: {error}"[:500]
        kept, presented = kept_copy(fb.body)
        try:
            await writer.write(
                Ops(
                    quarantine=[(fb.source_id, fb.instance_name, fb.event, reason, kept, presented)]
                )
            )
        except Exception as exc:
            if isinstance(exc, db.UNAVAILABLE_ERRORS):
                writer.reset()
            return {"exc": Unavailable(exc.__class__.__name__)}
        log.error("event kept in quarantine: %s", reason)
        return {"result": "quarantined"}

    def on_commit(self, *hooks: CommitHook) -> None:
        """The post-commit hooks, run in this order after every commit (never awaited by the
        requests: a slow hook cannot delay an answer)."""
        self.hooks = list(hooks)

    def run_hooks(self, committed: Committed) -> None:
        for hook in self.hooks:
            task = asyncio.create_task(_guarded(hook, committed))
            self._hook_tasks.add(task)
            task.add_done_callback(self._hook_tasks.discard)


async def _guarded(hook: CommitHook, committed: Committed) -> None:
    try:
        await hook(committed)
    except Exception:
        log.exception("post-commit hook failed")


def _settle(
    future: asyncio.Future[str], result: str | None = None, exc: BaseException | None = None
) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result or "stored")
