"""Secrets that can be rotated and revoked, instance keys kept as hashes and optionally
required, and the admin API's own edges (issue: security)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable

import asyncpg
import httpx

from tests.integration.conftest import ADMIN, Deployment, upsert


async def eventually(call: Callable[[], Awaitable[int]], expected: int) -> bool:
    """Whether ``call()`` answers ``expected`` within a few seconds."""
    for _ in range(100):
        if await call() == expected:
            return True
        await asyncio.sleep(0.05)
    return False


async def test_a_rotated_tenant_token_stops_working_at_once_and_a_revoked_one_too(
    deployment: Deployment,
) -> None:
    old = deployment.tokens["acme"]
    r = await deployment.admin("/api/admin/tenants/acme/rotate-token", {})
    assert r.status_code == 200, r.text
    new = r.json()["token"]
    assert new != old and new.startswith("st_")

    async def status(token: str) -> int:
        headers = {"Authorization": f"Bearer {token}"}
        return (await deployment.client.get("/api/v1/messages", headers=headers)).status_code

    assert await status(old) == 401
    assert await status(new) == 200
    assert await status(deployment.tokens["globex"]) == 200  # other tenants untouched
    r = await deployment.admin("/api/admin/tenants/acme/revoke-token", {})
    assert r.status_code == 200 and r.json() == {"revoked": True}
    assert await status(new) == 401
    r = await deployment.admin("/api/admin/tenants/acme/rotate-token", {})
    assert await status(r.json()["token"]) == 200
    r = await deployment.admin("/api/admin/tenants/nobody/rotate-token", {})
    assert r.status_code == 404


async def test_a_rotated_source_secret_overlaps_then_expires_and_revoke_stops_both(
    deployment: Deployment, conn: asyncpg.Connection
) -> None:
    old = deployment.secrets["evo"]
    r = await deployment.admin("/api/admin/sources/evo/rotate-secret", {"overlap_seconds": 3600})
    assert r.status_code == 200, r.text
    rotated = r.json()
    assert rotated["webhook_path"] == "/api/webhooks/evolution/" + rotated["secret"]
    assert rotated["old_valid_until"] is not None

    async def post(secret: str, message_id: str) -> int:
        url = f"/api/webhooks/evolution/{secret}"
        return (await deployment.client.post(url, json=upsert("acme-main", message_id))).status_code

    assert await post(old, "ROT1") == 200  # Evolution not reconfigured yet: nothing lost
    assert await post(rotated["secret"], "ROT2") == 200
    # the overlap ends (moved into the past rather than waited for; servers reload on NOTIFY)
    await conn.execute("UPDATE sources SET old_secret_until = now() - interval '1 second'")
    assert await eventually(lambda: post(old, "ROT3"), 401)
    assert await post(rotated["secret"], "ROT4") == 200
    # a rotation without overlap drops the current secret at once
    r = await deployment.admin("/api/admin/sources/evo/rotate-secret", {"overlap_seconds": 0})
    assert r.json()["old_valid_until"] is None
    assert await post(rotated["secret"], "ROT5") == 401
    newest = r.json()["secret"]
    assert await post(newest, "ROT6") == 200
    r = await deployment.admin("/api/admin/sources/evo/revoke-secret", {})
    assert r.status_code == 200
    assert await post(newest, "ROT7") == 401
    r = await deployment.admin("/api/admin/sources/evo/rotate-secret", {"overlap_seconds": -1})
    assert r.status_code == 422


async def test_require_apikey_refuses_envelopes_without_the_key_and_keys_are_hashed(
    deployment: Deployment, conn: asyncpg.Connection
) -> None:
    r = await deployment.admin(
        "/api/admin/instances",
        {
            "tenant": "acme",
            "source": "evo",
            "name": "strict",
            "apikey": "K-123",
            "require_apikey": True,
        },
    )
    assert r.status_code == 201, r.text
    assert (await deployment.instance("acme", "evo", "lenient", apikey="K-456")).status_code == 201
    for instance, apikey, expected in [
        ("strict", None, 401),
        ("strict", "Apikey not found", 401),
        ("strict", "K-wrong", 401),
        ("strict", "K-123", 200),
        ("lenient", None, 200),  # Evolution's default: the key is not exposed
        ("lenient", "K-wrong", 401),
        ("lenient", "K-456", 200),
    ]:
        r = await deployment.post({**upsert(instance, f"AK-{instance}-{apikey}"), "apikey": apikey})
        assert r.status_code == expected, (instance, apikey, r.text)
    stored = await conn.fetchrow("SELECT * FROM instances WHERE name = 'strict'")
    assert "apikey" not in stored.keys()
    assert bytes(stored["apikey_hash"]) == hashlib.sha256(b"K-123").digest()
    r = await deployment.admin(
        "/api/admin/instances",
        {"tenant": "acme", "source": "evo", "name": "nokey", "require_apikey": True},
    )
    assert r.status_code == 422 and "apikey" in r.json()["detail"]


async def test_a_source_can_require_apikeys_for_all_its_instances(
    deployment: Deployment,
) -> None:
    r = await deployment.admin("/api/admin/sources", {"name": "strict-evo", "require_apikey": True})
    secret = r.json()["secret"]
    deployment.secrets["strict-evo"] = secret
    assert (await deployment.instance("acme", "strict-evo", "s1", apikey="K1")).status_code == 201
    r = await deployment.admin(
        "/api/admin/instances",
        {"tenant": "acme", "source": "strict-evo", "name": "s2", "require_apikey": False},
    )
    assert r.status_code == 201  # the instance's own choice wins over the source's default
    assert (await deployment.post(upsert("s1", "SRC1"), source="strict-evo")).status_code == 401
    body = {**upsert("s1", "SRC2"), "apikey": "K1"}
    assert (await deployment.post(body, source="strict-evo")).status_code == 200
    assert (await deployment.post(upsert("s2", "SRC3"), source="strict-evo")).status_code == 200


async def test_admin_edges_answer_4xx_never_500(client: httpx.AsyncClient) -> None:
    for token in ("tökén", "\u00ff" * 10, ""):
        r = await client.post(
            "/api/admin/tenants",
            json={"name": "x"},
            headers={"Authorization": ("Bearer " + token).encode()},
        )
        assert r.status_code == 401, (token, r.status_code)
    r = await client.post(
        "/api/admin/tenants",
        content=b'{"name": "' + b"x" * 70_000 + b'"}',
        headers={"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"},
    )
    assert r.status_code == 413 and r.json()["error"] == "payload_too_large"


async def test_an_instance_apikey_is_replaced_and_the_old_one_refused_at_once(
    deployment: Deployment,
) -> None:
    assert (await deployment.instance("acme", "evo", "rekey", apikey="K-OLD")).status_code == 201
    assert (await deployment.post({**upsert("rekey", "RK1"), "apikey": "K-OLD"})).status_code == 200
    r = await deployment.admin(
        "/api/admin/sources/evo/instances/rekey/apikey", {"apikey": "K-NEW", "require_apikey": True}
    )
    assert r.status_code == 200, r.text
    assert r.json() == {
        "instance": "rekey",
        "source": r.json()["source"],
        "has_apikey": True,
        "require_apikey": True,
    }
    for key, expected in (("K-OLD", 401), (None, 401), ("K-NEW", 200)):
        r = await deployment.post({**upsert("rekey", f"RK-{key}"), "apikey": key})
        assert r.status_code == expected, (key, r.text)
    r = await deployment.admin("/api/admin/sources/evo/instances/nobody/apikey", {"apikey": "x"})
    assert r.status_code == 404
