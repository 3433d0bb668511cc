"""Who is who: source secret -> source, (source, instance name) -> tenant, token -> tenant.

Every server process keeps the whole registry in memory (it is small: tenants, sources,
instances) and reloads it when Postgres notifies ``sense_registry`` (a trigger on the
registry tables fires it), on reconnect, and every ``registry_refresh_seconds`` as a safety
net. Steady-state requests never query the database to find their tenant.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType

import asyncpg

from service import db, tasks

log = logging.getLogger("sense.resolve")

CHANNEL = "sense_registry"
_NO_NAMES: Mapping[uuid.UUID, str] = MappingProxyType({})


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


@dataclass(frozen=True, slots=True)
class Source:
    source_id: uuid.UUID
    name: str
    secret_hash: bytes
    # set on the entry of the secret before a rotation: accepted until then (wall clock)
    valid_until: datetime | None = None


@dataclass(frozen=True, slots=True)
class Tenant:
    tenant_id: uuid.UUID
    name: str


@dataclass(frozen=True, slots=True)
class Instance:
    tenant_id: uuid.UUID
    instance_id: uuid.UUID
    source_id: uuid.UUID
    name: str
    apikey_hash: bytes | None = None  # sha256 of the instance's registered apikey
    require_apikey: bool = False  # refuse envelopes that present no key

    def apikey_matches(self, presented: str | None) -> bool:
        """Whether the envelope's ``apikey`` lets this event in.

        Evolution sends ``null`` when AUTHENTICATION_EXPOSE_IN_FETCH_INSTANCES is off and the
        literal "Apikey not found" when it has none: both mean "no key presented", accepted
        unless the instance requires a key. A presented key must match the registered one.
        """
        if presented is None or presented == "Apikey not found":
            return self.presented_hash_matches(None)
        return self.presented_hash_matches(digest(presented))

    def presented_hash_matches(self, presented: bytes | None) -> bool:
        """``apikey_matches`` for the sha256 of the presented key (None: no key presented),
        as quarantine keeps it."""
        if presented is None or self.apikey_hash is None:
            return not self.require_apikey
        return hmac.compare_digest(self.apikey_hash, presented)


@dataclass(slots=True)
class Snapshot:
    sources: dict[bytes, Source] = field(default_factory=dict)
    tenants_by_token: dict[bytes, Tenant] = field(default_factory=dict)
    tenants: dict[uuid.UUID, Tenant] = field(default_factory=dict)
    instances: dict[tuple[uuid.UUID, str], Instance] = field(default_factory=dict)
    instances_by_tenant: dict[tuple[uuid.UUID, str], Instance] = field(default_factory=dict)
    # tenant -> {instance id: name}: the stream and the read API name rows with it per flush
    # and per request, so it must not cost a scan of every tenant's instances
    names_by_tenant: dict[uuid.UUID, dict[uuid.UUID, str]] = field(default_factory=dict)
    # tenants with an endpoint in `evolution` mode: their message webhooks are kept as received
    envelope_tenants: frozenset[uuid.UUID] = frozenset()


class Registry:
    """The in-memory registry of one process."""

    def __init__(self) -> None:
        self.snapshot = Snapshot()
        self.loaded = False
        self._listener: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._dirty = asyncio.Event()
        # One load at a time: a load that began before a change committed (a NOTIFY's) must not
        # finish after, and overwrite, one that began after it (the admin call's own).
        self._loading = asyncio.Lock()
        self._on_new_instances: list[Callable[[list[Instance]], None]] = []
        self._on_tokens_changed: list[Callable[[list[uuid.UUID]], None]] = []

    # lookups (no I/O) -------------------------------------------------------------------

    def source_for_secret(self, secret: str) -> Source | None:
        wanted = digest(secret)
        source = self.snapshot.sources.get(wanted)
        # Looked up by hash, so timing says nothing about the secret; compare in constant time.
        if source is None or not hmac.compare_digest(source.secret_hash, wanted):
            return None
        if source.valid_until is not None and datetime.now(UTC) >= source.valid_until:
            return None  # the secret before a rotation, past its overlap
        return source

    def instance(self, source_id: uuid.UUID, name: str) -> Instance | None:
        return self.snapshot.instances.get((source_id, name))

    def tenant_for_token(self, token: str) -> Tenant | None:
        wanted = digest(token)
        tenant = self.snapshot.tenants_by_token.get(wanted)
        if tenant is None:
            return None
        return tenant

    def tenant_instance(self, tenant_id: uuid.UUID, name: str) -> Instance | None:
        return self.snapshot.instances_by_tenant.get((tenant_id, name))

    def keeps_envelopes(self, tenant_id: uuid.UUID) -> bool:
        return tenant_id in self.snapshot.envelope_tenants

    def instance_names(self, tenant_id: uuid.UUID) -> Mapping[uuid.UUID, str]:
        """{instance id: name} of one tenant's instances (shared: do not modify)."""
        return self.snapshot.names_by_tenant.get(tenant_id, _NO_NAMES)

    def on_new_instances(self, callback: Callable[[list[Instance]], None]) -> None:
        self._on_new_instances.append(callback)

    def on_tokens_changed(self, callback: Callable[[list[uuid.UUID]], None]) -> None:
        """``callback(tenant_ids)`` after a reload in which their token was rotated or revoked
        (or the tenant removed)."""
        self._on_tokens_changed.append(callback)

    # loading ----------------------------------------------------------------------------

    async def load(self, conn: asyncpg.Connection | asyncpg.Pool) -> None:
        async with self._loading:
            await self._load(conn)

    async def _load(self, conn: asyncpg.Connection | asyncpg.Pool) -> None:
        sources = await conn.fetch(db.q("registry_sources"))
        tenants = await conn.fetch(db.q("registry_tenants"))
        instances = await conn.fetch(db.q("registry_instances"))
        envelopes = await conn.fetch(db.q("registry_envelope_tenants"))
        snap = Snapshot(envelope_tenants=frozenset(r["tenant_id"] for r in envelopes))
        for r in sources:
            old, until = r["old_secret_hash"], r["old_secret_until"]
            if old is not None and until is not None:
                snap.sources[bytes(old)] = Source(r["source_id"], r["name"], bytes(old), until)
            if r["secret_hash"] is not None:  # NULL: revoked
                snap.sources[bytes(r["secret_hash"])] = Source(
                    r["source_id"], r["name"], bytes(r["secret_hash"])
                )
        for r in tenants:
            tenant = Tenant(r["tenant_id"], r["name"])
            snap.tenants[tenant.tenant_id] = tenant
            if r["token_hash"] is not None:  # NULL: revoked
                snap.tenants_by_token[bytes(r["token_hash"])] = tenant
        for r in instances:
            inst = Instance(
                r["tenant_id"],
                r["instance_id"],
                r["source_id"],
                r["name"],
                bytes(r["apikey_hash"]) if r["apikey_hash"] is not None else None,
                bool(r["require_apikey"]),
            )
            snap.instances[(inst.source_id, inst.name)] = inst
            snap.instances_by_tenant[(inst.tenant_id, inst.name)] = inst
            snap.names_by_tenant.setdefault(inst.tenant_id, {})[inst.instance_id] = inst.name
        before = self.snapshot.instances
        added = [i for k, i in snap.instances.items() if before.get(k) != i]
        # tenants whose token changed (rotated, revoked) or that are gone: their live sessions
        # were opened with a token that no longer works
        tokens = {t.tenant_id: h for h, t in snap.tenants_by_token.items()}
        changed = [
            tenant_id
            for h, t in self.snapshot.tenants_by_token.items()
            if tokens.get(tenant_id := t.tenant_id) != h
        ]
        self.snapshot = snap
        if self.loaded and added:
            for callback in self._on_new_instances:
                callback(added)
        if self.loaded and changed:
            for on_changed in self._on_tokens_changed:
                on_changed(changed)
        self.loaded = True

    async def start(self, dsn: str, pool: asyncpg.Pool, refresh_seconds: float) -> None:
        await self.load(pool)
        self._task = asyncio.create_task(self._follow(dsn, pool, refresh_seconds))

    async def stop(self) -> None:
        await tasks.stop(self._task)
        if self._listener is not None and not self._listener.is_closed():
            await self._listener.close()

    def _notified(self, *_: object) -> None:
        self._dirty.set()

    async def _follow(self, dsn: str, pool: asyncpg.Pool, refresh_seconds: float) -> None:
        """LISTEN for registry changes; reload on each (coalesced), on reconnect, and on a timer."""
        while True:
            try:
                if self._listener is None or self._listener.is_closed():
                    self._listener = await asyncpg.connect(
                        dsn, server_settings={"application_name": "sense-registry"}
                    )
                    await self._listener.add_listener(CHANNEL, self._notified)
                    # lost (server restart, a cut connection): wake up, reconnect and reload at
                    # once, not at the next safety-net refresh
                    self._listener.add_termination_listener(self._notified)
                    self._dirty.set()  # changes may have happened while we were not listening
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._dirty.wait(), timeout=refresh_seconds)
                self._dirty.clear()
                await self.load(pool)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep following whatever happens; lookups use the last map
                log.warning("registry refresh failed: %s", exc.__class__.__name__)
                if self._listener is not None:
                    with contextlib.suppress(Exception):
                        self._listener.terminate()
                    self._listener = None
                await asyncio.sleep(1.0)
