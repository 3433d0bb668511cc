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
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import asyncpg
import httpx
import msgspec

from service import db
from service.contracts import Key
from service.events import OverLimit, PayloadError, build_ops
from service.ingest import write_ops
from service.resolve import Instance
from service.rows import STATUS_RANK, Ops

PAGE_SIZE = 100
RETRIES = 3


class BackfillError(Exception):
    """The run cannot go on; the message says why and what to do."""


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

    def __init__(self, base_url: str, apikey: str, *, timeout: float = 60.0) -> None:
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
            try:
                r = await self.client.post(path, json=body)
            except httpx.HTTPError as exc:
                if attempt == RETRIES:
                    raise BackfillError(f"Evolution unreachable: {exc.__class__.__name__}") from exc
                await asyncio.sleep(2**attempt)
                continue
            if r.status_code == 200:
                messages = r.json().get("messages")
                if not isinstance(messages, dict):
                    raise BackfillError("Evolution answered findMessages without `messages`")
                return messages
            self._refuse(r, instance)
            if attempt == RETRIES:
                raise BackfillError(f"Evolution answered {r.status_code} {RETRIES + 1} times")
            await asyncio.sleep(2**attempt)
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


async def merge_page(
    conn: asyncpg.Connection, instance: Instance, records: list[dict[str, Any]], done: Progress
) -> None:
    from service import payloads

    ops = Ops()
    for record in records:
        try:
            envelope = payloads.envelope_decoder.decode(envelope_of(instance.name, record))
            ops.extend(build_ops(envelope, instance).ops)
        except (msgspec.DecodeError, msgspec.ValidationError, PayloadError, OverLimit):
            done.skipped += 1
    if ops.row_count():
        async with conn.transaction():
            committed = await write_ops(conn, ops)
            if committed.created:  # what this run created, as recovered (origin: backfill)
                t, i, m = (list(column) for column in zip(*committed.created, strict=True))
                await conn.execute(db.q("mark_backfilled"), t, i, m)
        done.new += len(committed.created)
        done.created += committed.created


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
    """Merge what Evolution stored for ``instance`` in [start, end]."""
    done = Progress()
    windows = [(start, end)]
    while windows:
        lo, hi = windows.pop()
        seen: set[str] = set()
        total = 0
        page = 1
        while True:
            answer = await evolution.find_messages(instance.name, lo, hi, page, page_size)
            records = [r for r in answer.get("records") or [] if isinstance(r, dict)]
            total = int(answer.get("total") or 0)
            done.pages += 1
            fresh = [r for r in records if str(r.get("id")) not in seen]
            seen.update(str(r.get("id")) for r in records)
            if fresh:
                done.found += len(fresh)
                await merge_page(conn, instance, fresh, done)
            report(done)
            if not records or page >= int(answer.get("pages") or 0):
                break
            page += 1
        if len(seen) < total and hi - lo > timedelta(seconds=1):
            middle = lo + (hi - lo) / 2  # rows moved between pages: ask each half again
            windows += [(lo, middle), (middle, hi)]
    return done


async def instance_to_fill(
    conn: asyncpg.Connection, name: str, source: str | None
) -> tuple[Instance, str, str]:
    """The registered instance ``name`` (of ``source`` if given) and its source's Evolution
    URL and key."""
    rows = await conn.fetch(db.q("backfill_instance"), name)
    if source is not None:
        rows = [r for r in rows if source in (r["source"], str(r["source_id"]))]
    if not rows:
        raise BackfillError(f"no registered instance {name!r}")
    if len(rows) > 1:
        raise BackfillError(f"instance {name!r} is on several sources: say which with --source")
    r = rows[0]
    if not r["evolution_url"] or not r["evolution_apikey"]:
        raise BackfillError(
            f"source {r['source']!r} has no Evolution URL and key: set them with"
            " `sense source update NAME --evolution-url URL --evolution-apikey KEY`"
        )
    instance = Instance(r["tenant_id"], r["instance_id"], r["source_id"], r["name"])
    return instance, r["evolution_url"], r["evolution_apikey"]
