"""The app in-process (real lifespan, real Postgres) driven through httpx."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import pytest
from starlette.applications import Starlette

from service.app import create_app
from service.resolve import Instance
from service.settings import load_settings

ADMIN = "admin-token-for-tests"


@contextlib.asynccontextmanager
async def running_app(database_url: str, **settings: Any) -> AsyncIterator[Starlette]:
    """The app with its lifespan running, on the test database (extra settings by name)."""
    application = create_app(
        load_settings({}, database_url=database_url, **{"admin_token": ADMIN, **settings})
    )
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def app(conn: asyncpg.Connection, database_url: str) -> AsyncIterator[Starlette]:
    async with running_app(database_url) as application:
        yield application


@pytest.fixture
async def client(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


@dataclass
class Deployment:
    """Tenants, sources and instances registered through the admin API."""

    client: httpx.AsyncClient
    tokens: dict[str, str] = field(default_factory=dict)  # tenant -> token
    secrets: dict[str, str] = field(default_factory=dict)  # source -> secret
    tenant_of: dict[str, str] = field(default_factory=dict)  # instance -> tenant

    async def admin(self, path: str, body: dict[str, Any]) -> httpx.Response:
        return await self.client.post(path, json=body, headers={"Authorization": f"Bearer {ADMIN}"})

    async def tenant(self, name: str) -> str:
        r = await self.admin("/api/admin/tenants", {"name": name})
        assert r.status_code == 201, r.text
        self.tokens[name] = r.json()["token"]
        return self.tokens[name]

    async def source(self, name: str) -> str:
        r = await self.admin("/api/admin/sources", {"name": name})
        assert r.status_code == 201, r.text
        self.secrets[name] = r.json()["secret"]
        return self.secrets[name]

    async def instance(
        self, tenant: str, source: str, name: str, apikey: str | None = None
    ) -> httpx.Response:
        r = await self.admin(
            "/api/admin/instances",
            {"tenant": tenant, "source": source, "name": name, "apikey": apikey},
        )
        if r.status_code == 201:
            self.tenant_of[name] = tenant
        return r

    async def post(
        self, body: Any, source: str = "evo", suffix: str = "", raw: bytes | None = None
    ) -> httpx.Response:
        url = f"/api/webhooks/evolution/{self.secrets[source]}{suffix}"
        if raw is not None:
            return await self.client.post(url, content=raw)
        return await self.client.post(url, json=body)

    async def get(self, path: str, tenant: str, **params: Any) -> httpx.Response:
        return await self.client.get(
            path, params=params, headers={"Authorization": f"Bearer {self.tokens[tenant]}"}
        )

    async def message(self, tenant: str, instance: str, message_id: str) -> httpx.Response:
        return await self.get(f"/api/v1/messages/{instance}/{message_id}", tenant)


@pytest.fixture
async def deployment(client: httpx.AsyncClient) -> Deployment:
    """Tenants acme and globex on one source "evo", with one instance each."""
    d = Deployment(client)
    await d.tenant("acme")
    await d.tenant("globex")
    await d.source("evo")
    assert (await d.instance("acme", "evo", "acme-main")).status_code == 201
    assert (await d.instance("globex", "evo", "globex-main")).status_code == 201
    return d


def upsert(
    instance: str,
    message_id: str,
    text: str = "Olá",
    remote: str = "5511999999999@s.whatsapp.net",
    **extra: Any,
) -> dict[str, Any]:
    """A 2.3.7-shaped messages.upsert envelope."""
    key = {"remoteJid": remote, "fromMe": False, "id": message_id, "participant": ""}
    key.update(extra.pop("key", {}))
    data = {
        "key": key,
        "pushName": "João Silva",
        "status": "DELIVERY_ACK",
        "message": {"conversation": text},
        "messageType": "conversation",
        "messageTimestamp": 1700000000,
        "instanceId": "5b0c7a52-0000-0000-0000-000000000000",
        "source": "android",
    }
    data.update(extra)
    return {
        "event": "messages.upsert",
        "instance": instance,
        "data": data,
        "destination": "https://hooks.example.com/evolution",
        "date_time": "2026-06-15T10:26:40.120Z",
        "sender": "5511900000001@s.whatsapp.net",
        "server_url": "https://evo.example.com",
        "apikey": None,
    }


def status_update(instance: str, message_id: str, status: str) -> dict[str, Any]:
    return {
        "event": "messages.update",
        "instance": instance,
        "data": {
            "keyId": message_id,
            "remoteJid": "123456789012345@lid",
            "fromMe": False,
            "participant": None,
            "status": status,
            "instanceId": "5b0c7a52-0000-0000-0000-000000000000",
        },
        "date_time": "2026-06-15T10:26:41.120Z",
        "sender": "5511900000001@s.whatsapp.net",
        "apikey": None,
    }


async def registered_instance(conn: asyncpg.Connection) -> Instance:
    """Tenant "t", source "s" and instance "i", written straight to the tables (no server)."""
    tenant, source, instance = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    await conn.execute(
        "INSERT INTO tenants (tenant_id, name, token_hash) VALUES ($1, 't', $2)", tenant, b"t"
    )
    await conn.execute(
        "INSERT INTO sources (source_id, name, secret_hash) VALUES ($1, 's', $2)", source, b"s"
    )
    await conn.execute(
        "INSERT INTO instances (tenant_id, instance_id, source_id, name) VALUES ($1, $2, $3, 'i')",
        tenant,
        instance,
        source,
    )
    return Instance(tenant, instance, source, "i", None)
