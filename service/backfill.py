"""Backfill: ask an Evolution server what it stored for an instance in a time window and merge
what is missing (../shared/evolution-rest.md is the reference for every rule below).

- ``POST {evolution_url}/chat/findMessages/{instance}`` with the source's key in ``apikey``,
  the window as ISO-8601 ``Z`` strings (both bounds: epoch seconds would select 1970), no key
  filter, ``page`` from 1 and ``offset`` as the page size; records come newest first, with no
  tie-breaker, so pages are collected until an empty one, by Evolution's row ``id``; when the
  distinct ids do not add up to ``total`` (rows of the same second moved between pages, or were
  re-timestamped by an edit), the window is split in two and each half asked again (down to one
  second).
- Each record goes through the webhook's own reader as a ``messages.upsert`` of that instance
  (``events.build_ops``: the same JID and ``@lid`` rules, ``remoteJidAlt``/``participantAlt``
  phones) and the same merging statement (``ingest.write_ops``, one transaction per page): a
  message already stored is untouched, a missing one is created, a receipt it lacks is applied
  (status = the highest of ``MessageUpdate[]``), nothing is duplicated.
- Errors end the run with a clear message and nothing half-merged: 401 (the key), 404 (no such
  instance on that server), 503 ``LICENSE_REQUIRED`` (2.4.0-rc not activated: an operator's
  action, never retried), other 5xx and timeouts (retried with backoff, then given up).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import asyncpg
import httpx
import msgspec

from service import db, metrics, tasks
from service.contracts import Key
from service.events import OverLimit, PayloadError, build_ops
from service.ingest import write_ops
from service.resolve import Instance
from service.rows import STATUS_RANK, Committed, Ops

if TYPE_CHECKING:
    from service.settings import Settings

log = logging.getLogger("sense.backfill")

PAGE_SIZE = 100
RETRIES = 3
BACKOFF = 1.0  # seconds before the first retry of a failed request, doubling
LOADING_WAIT = 30  # backoffs to wait for an instance Evolution is still loading
SLICE_SECONDS = 3600.0  # a job reads its window an hour at a time (the cursor stays small)


class BackfillError(Exception):
    """The run cannot go on; the message says why and what to do. ``status``: the admin API's
    answer when the job cannot even be created."""

    status = 422
    code = "backfill_refused"


class NotFound(BackfillError):
    status = 404
    code = "not_found"


@dataclass
class Progress:
    pages: int = 0
    found: int = 0
    new: int = 0
    skipped: int = 0  # records the reader refused (over limits, not a message...)
    created: list[Key] = field(default_factory=list)  # what this run stored, for the workers


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Evolution:
    """The few REST calls backfill needs, with the rules of evolution-rest.md §6."""

    def __init__(
        self,
        base_url: str,
        apikey: str,
        *,
        timeout: float = 60.0,
        pace: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.pace = pace
        self.client = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers={"apikey": apikey, "Accept-Encoding": "gzip"},
            timeout=httpx.Timeout(timeout, connect=5.0),
        )

    async def aclose(self) -> None:
        await self.client.aclose()

    async def find_messages(
        self, instance: str, start: datetime, end: datetime, page: int, offset: int = PAGE_SIZE
    ) -> dict[str, Any]:
        body = {
            "where": {"messageTimestamp": {"gte": _iso(start), "lte": _iso(end)}},
            "page": page,
            "offset": offset,
        }
        path = f"/chat/findMessages/{quote(instance, safe='')}"
        for attempt in range(RETRIES + 1):
            if self.pace is not None:
                await self.pace()
            try:
                r = await self.client.post(path, json=body)
            except httpx.HTTPError as exc:
                if attempt == RETRIES:
                    raise BackfillError(f"Evolution unreachable: {exc.__class__.__name__}") from exc
                await asyncio.sleep(BACKOFF * 2**attempt)
                continue
            if r.status_code == 200:
                messages = r.json().get("messages")
                if not isinstance(messages, dict):
                    raise BackfillError("Evolution answered findMessages without `messages`")
                return messages
            self._refuse(r, instance)
            if attempt == RETRIES:
                raise BackfillError(f"Evolution answered {r.status_code} {RETRIES + 1} times")
            loading = r.status_code == 500 and "reading 'fetchMessages'" in r.text
            # an instance Evolution is still loading (its boot): give it time (§6)
            await asyncio.sleep(BACKOFF * (LOADING_WAIT if loading else 2**attempt))
        raise AssertionError("unreachable")

    @staticmethod
    def _refuse(r: httpx.Response, instance: str) -> None:
        """Raise for answers that retrying cannot change."""
        try:
            doc = r.json()
        except ValueError:
            doc = {}
        if r.status_code == 503 and isinstance(doc, dict) and doc.get("code") == "LICENSE_REQUIRED":
            raise BackfillError(
                "Evolution answered 503 LICENSE_REQUIRED: the server is not activated"
                " (activate it in its /manager, then run the backfill again)"
            )
        if r.status_code == 401:
            raise BackfillError(
                "Evolution refused the key (401): check the source's evolution_apikey"
            )
        if r.status_code == 403:
            raise BackfillError(
                "Evolution refused the key for this instance (403): use the server's global key"
            )
        if r.status_code == 404:
            raise BackfillError(f"Evolution has no instance {instance!r} (404)")
        if r.status_code < 500:
            raise BackfillError(f"Evolution answered {r.status_code}: {r.text[:200]}")


def envelope_of(instance: str, record: dict[str, Any]) -> bytes:
    """A stored record as the ``messages.upsert`` webhook of that message would carry it."""
    data = {k: v for k, v in record.items() if k not in ("id", "MessageUpdate")}
    statuses = [u.get("status") for u in record.get("MessageUpdate") or [] if isinstance(u, dict)]
    ranked = [s for s in statuses if s in STATUS_RANK]
    if ranked:
        data["status"] = max(ranked, key=lambda s: STATUS_RANK[s])
    elif not (record.get("key") or {}).get("fromMe"):
        data["status"] = "DELIVERY_ACK"  # it reached this phone; a later receipt says more
    return msgspec.json.encode({"event": "messages.upsert", "instance": instance, "data": data})


class LeaseLost(Exception):
    """Another process holds this job now (this runner stalled past its lease): stop, keep
    nothing of the page in hand (its transaction is rolled back)."""


@dataclass
class Cursor:
    """Where a job stands, saved with each page's merge: the windows still to read (a stack,
    the current one last), the page reached in the current one, and the Evolution row ids
    seen in it so far with the ``total`` Evolution announced (to tell a complete window)."""

    windows: list[tuple[float, float]]
    page: int = 1
    seen: list[str] = field(default_factory=list)

    @classmethod
    def over(cls, start: datetime, end: datetime) -> Cursor:
        return cls([(start.timestamp(), end.timestamp())])

    def next_slice(self) -> bool:
        """Before a window's first page: if it is longer than ``SLICE_SECONDS``, read its
        oldest slice first and keep the rest for after (True: the windows changed)."""
        lo, hi = self.windows[-1]
        if self.page != 1 or hi - lo <= SLICE_SECONDS:
            return False
        self.windows[-1:] = [(lo + SLICE_SECONDS, hi), (lo, lo + SLICE_SECONDS)]
        return True

    def dump(self) -> bytes:
        return msgspec.json.encode({"windows": self.windows, "page": self.page, "seen": self.seen})

    @classmethod
    def load(cls, raw: Any) -> Cursor:
        doc = msgspec.json.decode(raw) if isinstance(raw, str | bytes) else raw
        return cls([(lo, hi) for lo, hi in doc["windows"]], doc["page"], doc["seen"])


Save = Callable[[asyncpg.Connection, Cursor, Progress], Awaitable[None]]
Hook = Callable[[Committed], Awaitable[None]]


def as_recovered(committed: Committed) -> Committed:
    """``committed`` with its created rows saying ``origin: backfill`` (as stored), for the
    live stream's ``message.created`` frames."""
    created = set(committed.created)
    rows: list[Any] = []
    for row in committed.messages:
        key = (row["tenant_id"], row["instance_id"], row["message_id"])
        rows.append({**dict(row), "origin": "backfill"} if key in created else row)
    return Committed(committed.created, committed.instances, rows, committed.rows)


def in_window(record: dict[str, Any], lo: float, hi: float) -> bool:
    stamp = record.get("messageTimestamp")
    return not isinstance(stamp, int) or int(lo) <= stamp <= hi


def apply_marks(ops: Ops, record: dict[str, Any]) -> None:
    """What the stored row says beyond its content: an edit (``MessageUpdate`` ``EDITED``, 2.3.0+:
    the row holds the new content, re-timestamped to the edit; edits made on WhatsApp Web fire
    no webhook) is applied as an edit of that time; a delete marked on the key
    (``key.deleted``, API deletes with ``DATABASE_DELETE_MESSAGE``) as a delete."""
    key = record.get("key") or {}
    updates = record.get("MessageUpdate") or []
    edited = any(isinstance(u, dict) and u.get("status") == "EDITED" for u in updates)
    stamp = record.get("messageTimestamp")
    for op in ops.messages:
        if op.message_id != key.get("id") or not op.has_content:
            continue
        if edited and op.text is not None and isinstance(stamp, int) and stamp > 0:
            op.edited_text, op.edit_ts = op.text, stamp * 1000
        if key.get("deleted") is True:
            op.deleted = True


async def merge_page(
    conn: asyncpg.Connection, instance: Instance, records: list[dict[str, Any]], done: Progress
) -> Committed:
    """Merge ``records`` within the caller's transaction; what it created is marked backfill."""
    from service import payloads

    ops = Ops()
    for record in records:
        try:
            envelope = payloads.envelope_decoder.decode(envelope_of(instance.name, record))
            built = build_ops(envelope, instance).ops
        except (msgspec.DecodeError, msgspec.ValidationError, PayloadError, OverLimit):
            done.skipped += 1
            continue
        apply_marks(built, record)
        ops.extend(built)
    if not ops.row_count():
        return Committed()
    committed = await write_ops(conn, ops)
    if committed.created:  # what this run created, as recovered (origin: backfill)
        t, i, m = (list(column) for column in zip(*committed.created, strict=True))
        await conn.execute(db.q("mark_backfilled"), t, i, m)
    done.new += len(committed.created)
    done.created += committed.created
    return as_recovered(committed)


async def advance(
    conn: asyncpg.Connection,
    evolution: Evolution,
    instance: Instance,
    cursor: Cursor,
    done: Progress,
    *,
    page_size: int = PAGE_SIZE,
    save: Save | None = None,
    hooks: Sequence[Hook] = (),
    count_first: bool = False,
    report: Callable[[Progress], None] = lambda p: None,
) -> None:
    """Read ``cursor``'s windows to the end, one page at a time, newest first as Evolution
    answers. Each page's records are merged, and the cursor moved past it, in one transaction
    (``save`` writes it): a job resumed elsewhere starts at the first page not merged."""
    while cursor.windows:
        if cursor.next_slice():
            continue
        lo, hi = cursor.windows[-1]
        start, end = (datetime.fromtimestamp(t, UTC) for t in (lo, hi))
        if count_first and cursor.page == 1 and not cursor.seen:
            # a sweep: when Evolution has as many rows as are stored here, skip the pages (a
            # heuristic, §4.3: duplicates and edits count there; a mismatch is what matters)
            answer = await evolution.find_messages(instance.name, start, end, 1, 1)
            local = await conn.fetchval(
                db.q("backfill_local_count"), instance.tenant_id, instance.instance_id, lo, hi
            )
            done.pages += 1
            if int(answer.get("total") or 0) == local:
                cursor.windows.pop()
                async with conn.transaction():
                    if save is not None:
                        await save(conn, cursor, done)
                report(done)
                continue
        answer = await evolution.find_messages(instance.name, start, end, cursor.page, page_size)
        records = [r for r in answer.get("records") or [] if isinstance(r, dict)]
        total = int(answer.get("total") or 0)
        seen = set(cursor.seen)
        fresh = [r for r in records if str(r.get("id")) not in seen]
        cursor.seen += [str(r.get("id")) for r in fresh]
        done.pages += 1
        # 2.2.0 has no time filter (it answers the whole history): keep the window's own
        fresh = [r for r in fresh if in_window(r, lo, hi)]
        done.found += len(fresh)
        if not records or cursor.page >= int(answer.get("pages") or 0):
            cursor.windows.pop()
            if len(cursor.seen) < total and hi - lo > 1:
                middle = lo + (hi - lo) / 2  # rows moved between pages: ask each half again
                cursor.windows += [(middle, hi), (lo, middle)]
            cursor.page, cursor.seen = 1, []
        else:
            cursor.page += 1
        new_before, skipped_before = done.new, done.skipped
        async with conn.transaction():
            committed = await merge_page(conn, instance, fresh, done) if fresh else Committed()
            if save is not None:
                await save(conn, cursor, done)
        new = done.new - new_before
        metrics.count_backfill(new, len(fresh) - new - (done.skipped - skipped_before))
        for hook in hooks:
            await hook(committed)
        report(done)


async def run(
    conn: asyncpg.Connection,
    evolution: Evolution,
    instance: Instance,
    start: datetime,
    end: datetime,
    report: Callable[[Progress], None] = lambda p: None,
    *,
    page_size: int = PAGE_SIZE,
) -> Progress:
    """Merge what Evolution stored for ``instance`` in [start, end], outside any job."""
    done = Progress()
    cursor = Cursor.over(start, end)
    await advance(conn, evolution, instance, cursor, done, page_size=page_size, report=report)
    return done


async def instance_to_fill(
    conn: asyncpg.Connection, name: str, source: str | None, tenant: str | None = None
) -> tuple[Instance, str, str]:
    """The registered instance ``name`` (of ``source``, of ``tenant``, if given) and its
    source's Evolution URL and key."""
    rows = await conn.fetch(db.q("backfill_instance"), name)
    if source is not None:
        rows = [r for r in rows if source in (r["source"], str(r["source_id"]))]
    if tenant is not None:
        rows = [r for r in rows if tenant in (r["tenant"], str(r["tenant_id"]))]
    if not rows:
        raise NotFound(f"no registered instance {name!r}")
    if len(rows) > 1:
        raise BackfillError(f"instance {name!r} is on several sources: say which source")
    r = rows[0]
    if not r["evolution_url"] or not r["evolution_apikey"]:
        raise BackfillError(
            f"source {r['source']!r} has no Evolution URL and key: set them with"
            " `sense source update NAME --evolution-url URL --evolution-apikey KEY`"
        )
    instance = Instance(r["tenant_id"], r["instance_id"], r["source_id"], r["name"])
    return instance, r["evolution_url"], r["evolution_apikey"]


# Jobs ----------------------------------------------------------------------------------------


@dataclass
class Job:
    job_id: uuid.UUID
    instance: Instance
    reason: str
    url: str
    apikey: str
    cursor: Cursor
    done: Progress


async def create(
    conn: asyncpg.Connection,
    instance: Instance,
    start: datetime,
    end: datetime,
    max_seconds: float = 31 * 86_400.0,
) -> uuid.UUID:
    """An on-demand job over [start, end]; ``Busy`` if the instance has one queued or running."""
    if end <= start:
        raise BackfillError("the window is empty: `to` must come after `from`")
    if (end - start).total_seconds() > max_seconds:
        raise BackfillError(
            f"the window is longer than {max_seconds / 86_400:g} days"
            " (SENSE_BACKFILL_MAX_WINDOW_SECONDS): ask for it in parts"
        )
    job_id = await conn.fetchval(
        db.q("backfill_create"),
        instance.tenant_id,
        instance.instance_id,
        instance.source_id,
        "demand",
        start,
        end,
    )
    if job_id is None:
        raise Busy(await conn.fetchval(db.q("backfill_active"), instance.instance_id))
    return job_id


class Busy(BackfillError):
    """The instance already has a job queued or running (one at a time per instance)."""

    status = 409
    code = "backfill_running"

    def __init__(self, job_id: uuid.UUID | None) -> None:
        super().__init__(f"instance has a backfill job queued or running: {job_id}")
        self.job_id = job_id


class Pace:
    """At most ``per_second`` findMessages requests per Evolution server from this process
    (and, through the claim, at most ``jobs_per_server`` jobs per server across processes)."""

    def __init__(self, per_second: float) -> None:
        self.gap = 1.0 / per_second
        self._next: dict[uuid.UUID, float] = {}

    async def wait(self, source_id: uuid.UUID) -> None:
        now = time.monotonic()
        at = max(now, self._next.get(source_id, now))
        self._next[source_id] = at + self.gap
        if at > now:
            await asyncio.sleep(at - now)


class Runner:
    """Claims and runs backfill jobs, in every ``sense serve`` process (and in ``sense
    backfill`` for its own job). A claimed job holds a lease that a heartbeat renews; each
    page's merge and the cursor after it commit together, so a job resumed by another
    process (this one died, or stalled past its lease) starts at the first page not merged,
    and a runner that lost its lease cannot merge one more page."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: Settings,
        hooks: Sequence[Hook] = (),
        *,
        page_size: int | None = None,
    ) -> None:
        self.pool = pool
        self.settings = settings
        self.hooks = list(hooks)
        self.page_size = page_size or settings.backfill_page_size
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.pace = Pace(settings.backfill_pages_per_second)
        self.lease = settings.backfill_lease_seconds
        self.wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def claim(self, job_id: uuid.UUID | None = None) -> Job | None:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(db.q("backfill_claim_lock"))
            row = await conn.fetchrow(
                db.q("backfill_claim"),
                self.owner,
                self.lease,
                job_id,
                self.settings.backfill_jobs_per_server,
            )
            if row is None:
                return None
            target = await conn.fetchrow(db.q("backfill_target"), row["instance_id"])
        instance = Instance(row["tenant_id"], row["instance_id"], row["source_id"], target["name"])
        cursor = (
            Cursor.load(row["cursor"])
            if row["cursor"]
            else Cursor.over(row["window_from"], row["window_to"])
        )
        done = Progress(pages=row["pages"], found=row["found"], new=row["new"])
        url, apikey = target["evolution_url"], target["evolution_apikey"]
        return Job(row["job_id"], instance, row["reason"], url, apikey, cursor, done)

    async def execute(self, job: Job, report: Callable[[Progress], None] = lambda p: None) -> str:
        """Run a claimed job to its end: ``done``, ``failed`` (the error is kept on the job),
        ``lost`` (another process holds it now) or ``interrupted`` (Postgres went away: the
        job is resumed once its lease has run out)."""

        async def save(conn: asyncpg.Connection, cursor: Cursor, done: Progress) -> None:
            saved = await conn.fetchval(
                db.q("backfill_checkpoint"),
                job.job_id,
                self.owner,
                cursor.dump().decode(),
                done.pages,
                done.found,
                done.new,
                self.lease,
            )
            if saved is None:
                raise LeaseLost

        error: str | None = None
        heartbeat = asyncio.create_task(self._heartbeat(job.job_id), name="sense-backfill-lease")
        work = asyncio.create_task(self._advance(job, save, report), name="sense-backfill-job")
        try:
            await asyncio.wait({heartbeat, work}, return_when=asyncio.FIRST_COMPLETED)
            if not work.done():  # the heartbeat found the lease gone
                return "lost"
            try:
                work.result()
            except LeaseLost:
                return "lost"
            except BackfillError as exc:
                error = str(exc)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, db.Unavailable) as exc:
                # Postgres blinked: the lease runs out and a runner resumes from the cursor
                log.warning("backfill interrupted: %s: %s", exc.__class__.__name__, exc)
                return "interrupted"
            except Exception as exc:
                log.exception("backfill job %s failed", job.job_id)
                error = f"internal error ({exc.__class__.__name__})"
        finally:  # also when this task is cancelled (the process stops): nothing left running
            await asyncio.gather(tasks.stop(heartbeat), tasks.stop(work), return_exceptions=True)
        state = "failed" if error else "done"
        async with self.pool.acquire() as conn:
            finished = await conn.fetchval(
                db.q("backfill_finish"), job.job_id, self.owner, state, error
            )
        if finished is None:
            return "lost"
        metrics.BACKFILL_JOBS.labels(state).inc()
        if job.done.new:
            metrics.BACKFILL_GAPS.labels(job.reason).inc()
        log.info(
            "backfill %s",
            state,
            extra={
                "job_id": str(job.job_id),
                "instance": job.instance.name,
                "reason": job.reason,
                "pages": job.done.pages,
                "found": job.done.found,
                "new": job.done.new,
                **({"error": error} if error else {}),
            },
        )
        return state

    async def _advance(self, job: Job, save: Save, report: Callable[[Progress], None]) -> None:
        evolution = Evolution(
            job.url,
            job.apikey,
            timeout=self.settings.backfill_timeout_seconds,
            pace=lambda: self.pace.wait(job.instance.source_id),
        )
        try:
            async with self.pool.acquire() as conn:
                await advance(
                    conn,
                    evolution,
                    job.instance,
                    job.cursor,
                    job.done,
                    page_size=self.page_size,
                    save=save,
                    hooks=self.hooks,
                    report=report,
                    count_first=job.reason == "sweep",
                )
        finally:
            await evolution.aclose()

    async def _heartbeat(self, job_id: uuid.UUID) -> None:
        while True:
            await asyncio.sleep(self.lease / 3)
            try:
                renewed = await self.pool.fetchval(
                    db.q("backfill_renew"), job_id, self.owner, self.lease
                )
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, db.Unavailable):
                continue  # Postgres blinked: the next beat tries again
            if renewed is None:
                return

    # the loop of `sense serve` -----------------------------------------------------------

    def start(self, triggers: Triggers | None = None) -> None:
        self._task = asyncio.create_task(self._loop(triggers), name="sense-backfill")

    async def stop(self) -> None:
        await tasks.stop(self._task)

    async def _loop(self, triggers: Triggers | None) -> None:
        while True:
            try:
                if triggers is not None:
                    await triggers.tick()
                job = await self.claim()
                if job is not None:
                    await self.execute(job)
                    continue  # another may be waiting
                metrics.BACKFILL_LAG.set(await self.pool.fetchval(db.q("backfill_lag")))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Postgres away: try again at the next poll
                log.warning("backfill loop: %s: %s", exc.__class__.__name__, exc)
            self.wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wakeup.wait(), self.settings.backfill_poll_seconds)


class Triggers:
    """When to look, without being asked: an instance back to ``open`` (from when it was seen
    leaving it), this service starting (per instance, from its newest stored message), and a
    periodic sweep of every instance over the recent past. Each asks for a job per instance
    (a queued one is widened); the runners take it from there."""

    def __init__(self, pool: asyncpg.Pool, settings: Settings, wake: Callable[[], None]) -> None:
        self.pool = pool
        self.settings = settings
        self.wake = wake
        self._changed: set[uuid.UUID] = set()
        self._started = False
        self._next_sweep = 0.0

    async def hook(self, committed: Committed) -> None:
        """Post-commit hook: connection states to look at on the next tick (never waits)."""
        changed = [i for _, i, kind in committed.instances if kind == "state"]
        if changed:
            self._changed.update(changed)
            self.wake()

    async def tick(self) -> None:
        if not self._started:
            await self.at_start()
            self._started = True
        if self._changed:
            changed, self._changed = list(self._changed), set()
            try:
                await self.states_changed(changed)
            except BaseException:
                self._changed.update(changed)  # not lost: looked at again next time
                raise
        if self.settings.backfill_sweep_seconds and time.monotonic() >= self._next_sweep:
            await self.sweep()
            self._next_sweep = time.monotonic() + min(60.0, self.settings.backfill_sweep_seconds)

    def _bounded(self, since: datetime | None, now: datetime) -> datetime:
        """From ``since`` (less the margin), reaching back at most the longest window; with
        nothing stored yet, as far back as a sweep looks."""
        if since is None:
            return now - timedelta(seconds=self.settings.backfill_sweep_window_seconds)
        oldest = now - timedelta(seconds=self.settings.backfill_max_window_seconds)
        return max(oldest, since - timedelta(seconds=self.settings.backfill_margin_seconds))

    async def _request(
        self,
        conn: asyncpg.Connection,
        row: Any,
        reason: str,
        start: datetime,
        end: datetime,
        not_before: datetime | None = None,
    ) -> bool:
        """Asked (a job created or widened); False if one is running for the instance."""
        job_id = await conn.fetchval(
            db.q("backfill_request"),
            row["tenant_id"],
            row["instance_id"],
            row["source_id"],
            reason,
            start,
            end,
            not_before or end,
        )
        return job_id is not None

    async def at_start(self) -> None:
        """Every instance that can be asked, since its newest stored message."""
        now = datetime.now(UTC)
        async with self.pool.acquire() as conn:
            for row in await conn.fetch(db.q("backfill_instances"), None):
                await self._request(
                    conn, row, "startup", self._bounded(row["last_message_ts"], now), now
                )

    async def states_changed(self, instance_ids: list[uuid.UUID]) -> None:
        now = datetime.now(UTC)
        async with self.pool.acquire() as conn:
            for row in await conn.fetch(db.q("backfill_states_changed"), instance_ids):
                if row["state"] != "open":
                    await conn.execute(db.q("backfill_went_down"), row["instance_id"])
                    continue
                down_at = await conn.fetchval(db.q("backfill_down_since"), row["instance_id"])
                if down_at is None:  # its going down was not seen: since its newest message
                    rows = await conn.fetch(db.q("backfill_instances"), None)
                    newest = [r for r in rows if r["instance_id"] == row["instance_id"]]
                    down_at = newest[0]["last_message_ts"] if newest else None
                # messages queued while it was away arrive now by webhook, with their original
                # times: the job waits for that before it looks (evolution-rest.md §4.3)
                wait = timedelta(seconds=self.settings.backfill_reconnect_delay_seconds)
                since = self._bounded(down_at, now)
                if await self._request(conn, row, "reconnect", since, now, now + wait):
                    await conn.execute(db.q("backfill_came_back"), row["instance_id"])
                else:  # a job is running: ask again at the next look (still remembered)
                    self._changed.add(row["instance_id"])

    async def sweep(self) -> None:
        """Instances not swept for ``backfill_sweep_seconds``: a job over the last
        ``backfill_sweep_window_seconds`` each (one process sweeps at a time)."""
        now = datetime.now(UTC)
        due = now - timedelta(seconds=self.settings.backfill_sweep_seconds)
        start = now - timedelta(seconds=self.settings.backfill_sweep_window_seconds)
        async with self.pool.acquire() as conn, conn.transaction():
            if not await conn.fetchval(db.q("backfill_sweep_lock")):
                return
            rows = await conn.fetch(db.q("backfill_instances"), due)
            for row in rows:
                await self._request(conn, row, "sweep", start, now)
            if rows:
                await conn.execute(db.q("backfill_swept"), [r["instance_id"] for r in rows])
        if rows:
            self.wake()


FINISHED = ("done", "failed")


async def follow(
    pool: asyncpg.Pool,
    runner: Runner,
    job_id: uuid.UUID,
    report: Callable[[Progress], None],
    *,
    grace: float,
) -> Any:
    """``sense backfill``: watch the job until it ends, and run it here if no server has taken
    it within ``grace`` seconds (or its runner died): the command works with no server up, and
    a job is never run twice at once. Returns the job's row."""
    deadline = time.monotonic() + grace
    while True:
        row = await pool.fetchrow(db.q("backfill_get"), job_id)
        if row["state"] in FINISHED:
            return row
        if time.monotonic() >= deadline:
            job = await runner.claim(job_id)
            if job is not None:
                await runner.execute(job, report)
                continue
        report(Progress(pages=row["pages"], found=row["found"], new=row["new"]))
        await asyncio.sleep(0.5)
