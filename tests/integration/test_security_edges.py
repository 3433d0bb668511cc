"""The smaller security findings: request ids, what /readyz tells, response headers, the
dashboard's CSP, the per-tenant query-embedding cache (unauthenticated WebSockets: in
tests/e2e/test_stream.py)."""

from __future__ import annotations

import re
import uuid

import httpx
import pytest

from service.search import EmbeddingUnavailable, QueryEmbedder
from tests.conftest import database_down
from tests.integration.conftest import Deployment, running_app, upsert


async def test_a_request_id_is_echoed_only_when_it_is_plain_and_short(
    deployment: Deployment,
) -> None:
    url = f"/api/webhooks/evolution/{deployment.secrets['evo']}"
    for given, kept in [
        ("abc-123.X_9", True),
        ("x" * 64, True),
        ("x" * 65, False),
        ("a b", False),
        ("<script>", False),
        ("é", False),
    ]:
        r = await deployment.client.post(
            url,
            json=upsert("acme-main", f"RID-{uuid.uuid4().hex[:8]}"),
            headers={"X-Request-Id": given.encode()},
        )
        assert r.status_code == 200
        echoed = r.headers["x-request-id"]
        if kept:
            assert echoed == given
        else:
            assert re.fullmatch(r"[0-9a-f]{16}", echoed), echoed  # one of ours instead


async def test_readyz_says_only_ready_or_not(client: httpx.AsyncClient, database_url: str) -> None:
    assert (await client.get("/readyz")).json() == {"status": "ready"}
    async with database_down(database_url):
        r = await client.get("/readyz")
    assert r.status_code == 503
    assert r.json() == {"error": "not_ready", "detail": "not ready"}  # no class, no names


async def test_every_answer_carries_the_security_headers(
    deployment: Deployment, database_url: str
) -> None:
    answers = [
        await deployment.post(upsert("acme-main", "HDR1")),
        await deployment.get("/api/v1/messages", "acme"),
        await deployment.client.get("/"),
        await deployment.client.get("/readyz"),
        await deployment.client.get("/api/v1/chats"),  # 401
    ]
    for r in answers:
        assert r.headers["x-content-type-options"] == "nosniff", r.url
        assert r.headers["referrer-policy"] == "no-referrer", r.url
        assert "strict-transport-security" not in r.headers
    async with running_app(database_url, hsts=True) as app:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="https://t") as c:
            for path in ("/readyz", "/api/webhooks/evolution/unknown"):
                r = await c.request("GET" if path == "/readyz" else "POST", path)
                assert r.headers["strict-transport-security"] == "max-age=31536000", path


async def test_the_dashboard_may_open_websockets_to_its_own_host_only(
    client: httpx.AsyncClient,
) -> None:
    r = await client.get("/", headers={"Host": "sense.example.com:8443"})
    policy = dict(
        part.strip().split(" ", 1) for part in r.headers["content-security-policy"].split(";")
    )
    assert policy["connect-src"] == (
        "'self' ws://sense.example.com:8443 wss://sense.example.com:8443"
    )
    r = await client.get("/", headers={"Host": 'evil" wss://x'})
    assert "wss://x" not in r.headers["content-security-policy"]


async def test_the_query_embedding_cache_is_per_tenant() -> None:
    embedder = QueryEmbedder(None)  # no Redis: a miss cannot be embedded
    a, b = uuid.uuid4(), uuid.uuid4()
    embedder._cache[(a, "frete grátis")] = [0.1] * 512
    assert await embedder.embed(a, "frete grátis") == [0.1] * 512
    with pytest.raises(EmbeddingUnavailable):
        await embedder.embed(b, "frete grátis")  # another tenant never hits a's entry
