"""Registering tenants, sources and instances, and replaying quarantine: the operations behind
both the ``sense`` CLI and the admin HTTP routes."""

from __future__ import annotations

import contextlib
import logging
import re
import secrets
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import msgspec

from service import db, payloads
from service.events import MAX_NAME_CHARS, PayloadError, build_ops
from service.ingest import TRANSIENT_ERRORS, write_ops
from service.resolve import Instance, digest
from service.rows import Committed

log = logging.getLogger("sense.admin")

WEBHOOK_PREFIX = "/api/webhooks/evolution/"
REFUSED_APIKEY = "refused: apikey does not match the instance's registered key"


class AdminError(Exception):
    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


class TenantCreated(msgspec.Struct):
    id: str
    name: str
    token: str


class SourceCreated(msgspec.Struct):
    id: str
    name: str
    secret: str
    webhook_path: str


class InstanceCreated(msgspec.Struct):
    id: str
    tenant: str
    source: str
    name: str


def _name(value: str, what: str) -> str:
    """A name as registered: the webhook's limit (``MAX_NAME_CHARS``) holds for every name, so
    whatever can be registered can be posted, and the other way round."""
    given = value or ""
    value = given.strip()  # the limit holds for the name as given (the schema's maxLength)
    if not value or len(given) > MAX_NAME_CHARS or "\x00" in value:
        raise AdminError(
            422,
            "invalid_name",
            f"{what} name must be 1-{MAX_NAME_CHARS} characters, without NUL",
        )
    return value


async def create_tenant(conn: asyncpg.Connection | asyncpg.Pool, name: str) -> TenantCreated:
    name = _name(name, "tenant")
    token = "st_" + secrets.token_urlsafe(32)
    tenant_id = uuid.uuid4()
    try:
        await conn.execute(db.q("insert_tenant"), tenant_id, name, digest(token))
    except asyncpg.UniqueViolationError:
        raise AdminError(409, "conflict", f"tenant {name!r} exists") from None
    return TenantCreated(str(tenant_id), name, token)


async def create_source(
    conn: asyncpg.Connection | asyncpg.Pool,
    name: str,
    require_apikey: bool = False,
    evolution_url: str | None = None,
    evolution_apikey: str | None = None,
) -> SourceCreated:
    name = _name(name, "source")
    url = _evolution_url(evolution_url)
    secret = secrets.token_urlsafe(32)
    source_id = uuid.uuid4()
    try:
        async with _transaction(conn) as c:
            await c.execute(db.q("insert_source"), source_id, name, digest(secret), require_apikey)
            if url or evolution_apikey:
                await c.execute(db.q("set_source_evolution"), source_id, url, evolution_apikey)
    except asyncpg.UniqueViolationError:
        raise AdminError(409, "conflict", f"source {name!r} exists") from None
    return SourceCreated(str(source_id), name, secret, WEBHOOK_PREFIX + secret)


class SourceUpdated(msgspec.Struct):
    id: str
    name: str
    evolution_url: str | None
    has_evolution_apikey: bool  # the key itself is never returned


async def update_source(
    conn: asyncpg.Connection | asyncpg.Pool,
    source: str,
    evolution_url: str | None = None,
    evolution_apikey: str | None = None,
) -> SourceUpdated:
    """Set where to ask the source's Evolution server what it stored (backfill)."""
    s = await _find(conn, "sources", source)
    url = _evolution_url(evolution_url)
    await conn.execute(db.q("set_source_evolution"), s["source_id"], url, evolution_apikey)
    r = await conn.fetchrow(db.q("source_evolution"), s["source_id"])
    return SourceUpdated(
        str(r["source_id"]), r["name"], r["evolution_url"], r["evolution_apikey"] is not None
    )


EVOLUTION_URL = re.compile(r"https?://[^/\s?#]+\S*")  # (the admin API's schema says the same)


def _evolution_url(url: str | None) -> str | None:
    if url is None:
        return None
    if not EVOLUTION_URL.fullmatch(url) or len(url) > 2000:
        raise AdminError(422, "invalid_body", "evolution_url must be an http(s) URL")
    return url.rstrip("/")


@contextlib.asynccontextmanager
async def _transaction(conn: asyncpg.Connection | asyncpg.Pool) -> AsyncIterator[Any]:
    if isinstance(conn, asyncpg.Pool):
        async with conn.acquire() as c, c.transaction():
            yield c
    else:
        async with conn.transaction():
            yield conn


async def find_tenant(conn: Any, ref: str) -> asyncpg.Record:
    """The tenant named or identified by ``ref`` (404 AdminError if none)."""
    return await _find(conn, "tenants", ref)


async def _find(conn: Any, table: str, ref: str) -> asyncpg.Record:
    id_column = {"tenants": "tenant_id", "sources": "source_id"}[table]
    query = db.q(f"find_{table}")
    try:
        as_uuid: uuid.UUID | None = uuid.UUID(ref)
    except (ValueError, TypeError, AttributeError):
        as_uuid = None
    if "\x00" in str(ref):  # no name holds one (see _name)
        raise AdminError(404, "not_found", f"no {table[:-1]} {ref!r}")
    row = await conn.fetchrow(query, as_uuid, str(ref))
    if row is None:
        raise AdminError(404, "not_found", f"no {table[:-1]} {ref!r}")
    assert id_column in row
    return row


async def add_instance(
    conn: asyncpg.Connection | asyncpg.Pool,
    tenant: str,
    source: str,
    name: str,
    apikey: str | None = None,
    require_apikey: bool | None = None,
) -> InstanceCreated:
    """Map ``name`` on ``source`` to ``tenant``. ``apikey`` (kept as a hash): envelopes that
    present a key must present this one. ``require_apikey``: refuse envelopes that present
    none (None: the source's default)."""
    name = _name(name, "instance")
    if require_apikey and not apikey:
        raise AdminError(422, "invalid_body", "require_apikey needs the instance's apikey")
    t = await _find(conn, "tenants", tenant)
    s = await _find(conn, "sources", source)
    instance_id = uuid.uuid4()
    try:
        await conn.execute(
            db.q("insert_instance"),
            t["tenant_id"],
            instance_id,
            s["source_id"],
            name,
            digest(apikey) if apikey else None,
            require_apikey,
        )
    except asyncpg.UniqueViolationError as exc:
        where = "that source" if "source_id" in (exc.constraint_name or "") else "that tenant"
        raise AdminError(409, "conflict", f"instance {name!r} is taken on {where}") from None
    return InstanceCreated(str(instance_id), str(t["tenant_id"]), str(s["source_id"]), name)


class ApikeySet(msgspec.Struct):
    instance: str
    source: str
    has_apikey: bool
    require_apikey: bool | None


async def set_apikey(
    conn: asyncpg.Connection | asyncpg.Pool,
    source: str,
    name: str,
    apikey: str | None,
    require_apikey: bool | None = None,
) -> ApikeySet:
    """Replace an instance's apikey (None: no key registered) and its require_apikey (None:
    the source's default); the old key is refused from the next request on."""
    if require_apikey and not apikey:
        raise AdminError(422, "invalid_body", "require_apikey needs the instance's apikey")
    s = await _find(conn, "sources", source)
    updated = await conn.fetchval(
        db.q("set_instance_apikey"),
        s["source_id"],
        name,
        digest(apikey) if apikey else None,
        require_apikey,
    )
    if updated is None:
        raise AdminError(404, "not_found", f"no instance {name!r} on source {source!r}")
    return ApikeySet(name, str(s["source_id"]), bool(apikey), require_apikey)


class TokenRotated(msgspec.Struct):
    token: str


class SecretRotated(msgspec.Struct):
    secret: str
    webhook_path: str
    old_valid_until: str | None


class Revoked(msgspec.Struct):
    revoked: bool = True


async def rotate_token(conn: asyncpg.Connection | asyncpg.Pool, tenant: str) -> TokenRotated:
    """A new API token for ``tenant``; the old one stops working at once (every server
    process drops it on the registry's NOTIFY, and closes the WebSockets it opened)."""
    t = await _find(conn, "tenants", tenant)
    token = "st_" + secrets.token_urlsafe(32)
    await conn.execute(db.q("set_tenant_token"), t["tenant_id"], digest(token))
    return TokenRotated(token)


async def revoke_token(conn: asyncpg.Connection | asyncpg.Pool, tenant: str) -> Revoked:
    """No token works for ``tenant`` until the next rotation."""
    t = await _find(conn, "tenants", tenant)
    await conn.execute(db.q("set_tenant_token"), t["tenant_id"], None)
    return Revoked()


MAX_OVERLAP_SECONDS = 30 * 86400


async def rotate_secret(
    conn: asyncpg.Connection | asyncpg.Pool, source: str, overlap_seconds: float = 3600
) -> SecretRotated:
    """A new webhook secret for ``source``; the current one is still accepted for
    ``overlap_seconds`` (0: not at all), so Evolution can be pointed at the new URL without
    losing a webhook. A secret older than the current one stops working now."""
    if not 0 <= overlap_seconds <= MAX_OVERLAP_SECONDS:
        raise AdminError(422, "invalid_body", f"overlap_seconds must be 0 to {MAX_OVERLAP_SECONDS}")
    s = await _find(conn, "sources", source)
    secret = secrets.token_urlsafe(32)
    until = await conn.fetchval(
        db.q("rotate_source_secret"), s["source_id"], digest(secret), overlap_seconds
    )
    return SecretRotated(
        secret, WEBHOOK_PREFIX + secret, until.isoformat() if until is not None else None
    )


async def revoke_secret(conn: asyncpg.Connection | asyncpg.Pool, source: str) -> Revoked:
    """No secret works for ``source`` (current or overlapping) until the next rotation."""
    s = await _find(conn, "sources", source)
    await conn.execute(db.q("revoke_source_secret"), s["source_id"])
    return Revoked()


@dataclass(slots=True)
class ReplayResult:
    replayed: int
    committed: Committed


async def replay_quarantine(
    conn: asyncpg.Connection, source: str | None = None, instance: str | None = None
) -> ReplayResult:
    """Move quarantined events of now-registered instances into their tenant.

    Chunks of rows are taken with SKIP LOCKED and deleted in the same transaction that writes
    their rows, so concurrent replays (several processes) never apply one event twice; and one
    chunk is written at a time across processes (an advisory lock), since two replays writing
    events of the same chats in one long transaction each would deadlock. A write that still
    meets a deadlock (with a live flush) is tried once more before the event is left for the
    next replay.
    """
    if instance is not None and "\x00" in instance:
        raise AdminError(422, "invalid_name", "instance name must not contain NUL")
    source_id = None
    if source is not None:
        source_id = (await _find(conn, "sources", source))["source_id"]
    total = 0
    after = 0
    committed = Committed()
    while True:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", db.REPLAY_LOCK)
            rows = await conn.fetch(db.q("claim_quarantine"), source_id, instance, after, 200)
            if not rows:
                break
            after = rows[-1]["quarantine_id"]
            ops_done: list[int] = []
            for r in rows:
                inst = Instance(
                    r["tenant_id"],
                    r["instance_id"],
                    r["source_id"],
                    r["instance_name"],
                    bytes(r["apikey_hash"]) if r["apikey_hash"] is not None else None,
                    bool(r["require_apikey"]),
                )
                try:
                    envelope = payloads.envelope_decoder.decode(r["body"])
                    # the key as the live post presented it: its hash, kept beside the body
                    # (rows kept before 0010 still carry the key itself in the body)
                    presented = r["presented_hash"]
                    if presented is not None or envelope.apikey is None:
                        allowed = inst.presented_hash_matches(
                            bytes(presented) if presented is not None else None
                        )
                    else:
                        allowed = inst.apikey_matches(envelope.apikey)
                    if not allowed:
                        # what a live post would have got 401 for is never filed: it stays,
                        # marked, for `sense quarantine list`
                        await conn.execute(db.q("refuse_quarantine"), r[0], REFUSED_APIKEY)
                        log.warning("quarantined event %s refused: apikey mismatch", r[0])
                        continue
                    built = build_ops(envelope, inst)
                except (msgspec.DecodeError, msgspec.ValidationError, PayloadError) as exc:
                    log.warning("quarantined event %s cannot be replayed: %s", r[0], exc)
                    continue
                try:
                    try:
                        async with conn.transaction():  # a savepoint: one bad event skips alone
                            part = await write_ops(conn, built.ops)
                    except TRANSIENT_ERRORS:
                        async with conn.transaction():
                            part = await write_ops(conn, built.ops)
                except asyncpg.PostgresError as exc:
                    log.warning("quarantined event %s cannot be replayed: %s", r[0], exc)
                    continue
                committed.extend(part)
                ops_done.append(r["quarantine_id"])
            await conn.execute(db.q("delete_quarantine"), ops_done)
            total += len(ops_done)
    return ReplayResult(total, committed)


async def list_quarantine(
    conn: Any, limit: int = 100, retention_days: float = 14.0
) -> list[asyncpg.Record]:
    return list(await conn.fetch(db.q("list_quarantine"), limit, retention_days * 86400))
