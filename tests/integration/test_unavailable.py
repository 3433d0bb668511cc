"""The database going away: every route answers 503 + Retry-After (never a 500) for the whole
outage, and all of them answer normally again, by themselves, once it is back."""

from __future__ import annotations

import asyncio
import itertools

import asyncpg
import httpx

from service import metrics
from tests.conftest import database_down
from tests.integration.conftest import ADMIN, Deployment, upsert

_names = itertools.count()


async def _routes(d: Deployment) -> dict[str, httpx.Response]:
    admin = {"Authorization": f"Bearer {ADMIN}"}
    new = f"new-{next(_names)}"
    return {
        "messages": await d.get("/api/v1/messages", "acme"),
        "message": await d.message("acme", "acme-main", "UP1"),
        "chats": await d.get("/api/v1/chats", "acme"),
        "instances": await d.get("/api/v1/instances", "acme"),
        "search": await d.get("/api/v1/search", "acme", q="pedido", mode="text"),
        "catch-up": await d.get("/api/v1/messages", "acme", after="c1.0"),
        "admin": await d.client.post("/api/admin/tenants", json={"name": new}, headers=admin),
        "webhook": await d.post(upsert("acme-main", "DOWN1", "pedido")),
    }


async def test_every_route_answers_503_while_the_database_is_down_and_recovers(
    deployment: Deployment, conn: asyncpg.Connection, database_url: str
) -> None:
    assert (await deployment.post(upsert("acme-main", "UP1", "pedido"))).status_code == 200
    before = metrics.API_UNAVAILABLE.labels("database")._value.get()
    async with database_down(database_url):
        # twice: the first request of each kind meets a pooled connection that was cut, the
        # second one a pool that cannot open a new one
        for _ in range(2):
            answers = await _routes(deployment)
            for route, r in answers.items():
                assert r.status_code == 503, (route, r.status_code, r.text)
                assert r.headers["retry-after"] == "2", route
                assert r.json()["error"] == "unavailable", route
    assert metrics.API_UNAVAILABLE.labels("database")._value.get() - before == 2 * 7
    # back: no restart, the pool and the writer reconnect on their own
    for _ in range(50):
        answers = await _routes(deployment)
        if all(r.status_code < 500 for r in answers.values()):
            break
        await asyncio.sleep(0.1)
    codes = {route: r.status_code for route, r in answers.items()}
    assert codes == {
        "messages": 200,
        "message": 200,
        "chats": 200,
        "instances": 200,
        "search": 200,
        "catch-up": 200,
        "admin": 201,
        "webhook": 200,
    }
    texts = [m["text"] for m in answers["search"].json()["items"]]
    assert texts == ["pedido"] or texts == []  # indexing is the worker's: no result is fine
    stored = {r["message_id"] for r in await conn.fetch("SELECT message_id FROM messages")}
    assert stored == {"UP1", "DOWN1"}
