"""Two `sense serve` processes on one database, as when scaling out: a registration made through
one is routed by the other (NOTIFY), an apikey changed in the database is refused by both, and
the same messages delivered to both in opposite orders merge into exactly the rows an in-order
delivery gives."""

from __future__ import annotations

import asyncio
import collections
import functools
from collections.abc import Iterator
from typing import Any

import asyncpg
import httpx
import pytest

from tests.conftest import DATA_TABLES
from tests.e2e.conftest import ADMIN, Server, start_server
from tests.integration.conftest import status_update, upsert
from tests.integration.polling import eventually_sync
from tests.integration.test_registry import change_apikey


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _sql(database_url: str, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url)
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


def sql(database_url: str, query: str, *args: Any) -> list[asyncpg.Record]:
    return run(_sql(database_url, query, *args))


@pytest.fixture(scope="module")
def servers(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Server]]:
    """Two servers (one worker each) that learn registrations only by NOTIFY: their
    safety-net reload of the registry comes after an hour."""
    sql(database_url, f"TRUNCATE {', '.join(DATA_TABLES)} CASCADE")
    started: list[Server] = []
    try:
        for name in ("a", "b"):
            started.append(
                start_server(
                    database_url,
                    tmp_path_factory.mktemp(f"server-{name}"),
                    workers=1,
                    SENSE_REGISTRY_REFRESH_SECONDS="3600",
                )
            )
        yield started
    finally:
        for server in started:
            server.stop()


def admin(server: Server, path: str, body: dict[str, Any]) -> dict[str, Any]:
    r = httpx.post(
        server.url + path, json=body, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10
    )
    assert r.status_code == 201, r.text
    return r.json()


def register(server: Server, tenant: str, source: str, *instances: str) -> tuple[str, str]:
    """Tenant, source and instances through ``server``'s admin API: (token, webhook path)."""
    token = admin(server, "/api/admin/tenants", {"name": tenant})["token"]
    path = admin(server, "/api/admin/sources", {"name": source})["webhook_path"]
    for name in instances:
        admin(server, "/api/admin/instances", {"tenant": tenant, "source": source, "name": name})
    return token, path


def presence(instance: str) -> dict[str, Any]:
    """An event that is never stored: 202 "ignored" once the instance is routed."""
    return {"event": "presence.update", "instance": instance, "data": {"id": "x@s.whatsapp.net"}}


def routed(server: Server, path: str, instance: str) -> None:
    """Wait until ``server`` routes ``instance`` (before: 401 unknown secret, then 202
    quarantined while it knows the source but not the instance)."""

    def answer() -> tuple[int, str | None]:
        r = httpx.post(server.url + path, json=presence(instance), timeout=10)
        return r.status_code, r.json().get("status")

    eventually_sync(answer, lambda got: got == (202, "ignored"))


def test_a_registration_through_one_server_is_routed_by_the_other(servers: list[Server]) -> None:
    first, second = servers
    token, path = register(first, "notify-t", "notify-s", "notify-i")
    # the second server only hears of it by NOTIFY (its safety-net reload is an hour away)
    posted: list[str] = []

    def post() -> int:
        posted.append(f"N{len(posted)}")
        r = httpx.post(second.url + path, json=upsert("notify-i", posted[-1]), timeout=10)
        return r.status_code

    eventually_sync(post, lambda status: status == 200)
    headers = {"Authorization": f"Bearer {token}"}
    got = httpx.get(f"{second.url}/api/v1/messages/notify-i/{posted[-1]}", headers=headers)
    assert got.status_code == 200 and got.json()["instance"] == "notify-i"


def test_an_apikey_changed_in_the_database_is_refused_by_both_servers(
    servers: list[Server], database_url: str
) -> None:
    first, _ = servers
    token = admin(first, "/api/admin/tenants", {"name": "keyed-t"})["token"]
    path = admin(first, "/api/admin/sources", {"name": "keyed-s"})["webhook_path"]
    admin(
        first,
        "/api/admin/instances",
        {"tenant": "keyed-t", "source": "keyed-s", "name": "keyed-i", "apikey": "OLD"},
    )
    sent = iter(range(10_000))

    def post(server: Server, key: str) -> int:
        body = upsert("keyed-i", f"KEY{next(sent)}")
        body["apikey"] = key
        return httpx.post(server.url + path, json=body, timeout=10).status_code

    for server in servers:
        eventually_sync(functools.partial(post, server, "OLD"), (200).__eq__)
        assert post(server, "NEW") == 401
    run(_change_apikey(database_url, "keyed-i", "NEW"))
    for server in servers:
        eventually_sync(functools.partial(post, server, "OLD"), (401).__eq__)
        assert post(server, "NEW") == 200
        # the token of the tenant still reads what was stored through either server
        listing = httpx.get(
            server.url + "/api/v1/messages", headers={"Authorization": f"Bearer {token}"}
        )
        assert listing.status_code == 200 and listing.json()["items"]


async def _change_apikey(database_url: str, instance: str, key: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await change_apikey(conn, instance, key)
    finally:
        await conn.close()


# opposite orders -------------------------------------------------------------------------

MESSAGES = 30


def edited(instance: str, message_id: str, text: str, ms: int) -> dict[str, Any]:
    return {
        "event": "messages.edited",
        "instance": instance,
        "data": {
            "key": {"remoteJid": chat(0), "fromMe": False, "id": message_id},
            "type": "MESSAGE_EDIT",
            "editedMessage": {"conversation": text},
            "timestampMs": str(ms),
        },
    }


def reaction(instance: str, message_id: str, target: str, emoji: str, seconds: int) -> Any:
    body = upsert(instance, message_id, key={"remoteJid": "5511988887777@s.whatsapp.net"})
    body["data"]["message"] = {
        "reactionMessage": {
            "key": {"remoteJid": chat(0), "fromMe": False, "id": target},
            "text": emoji,
            "senderTimestampMs": {"low": seconds, "high": 0, "unsigned": False},
        }
    }
    body["data"]["messageType"] = "reactionMessage"
    return body


def deleted(instance: str, message_id: str) -> dict[str, Any]:
    return {
        "event": "messages.delete",
        "instance": instance,
        "data": {"remoteJid": chat(0), "fromMe": False, "id": message_id, "status": "DELETED"},
    }


def chat(n: int) -> str:
    return f"55119{n:08d}@s.whatsapp.net"


def history(instance: str) -> list[dict[str, Any]]:
    """Every event of MESSAGES messages in four chats, in the order they happened. (Each
    message has its own second: for messages of the same second see
    tests/integration/test_merge_order.py.)"""
    events: list[dict[str, Any]] = []
    for k in range(MESSAGES):
        mid = f"K{k}"
        events.append(
            upsert(
                instance, mid, f"texto {k}", remote=chat(k % 4), messageTimestamp=1_700_000_000 + k
            )
        )
        events += [status_update(instance, mid, s) for s in ("SERVER_ACK", "DELIVERY_ACK", "READ")]
        base = 1_700_000_000_000 + k * 1000
        events += [
            edited(instance, mid, f"texto {k} corrigido", base + 1),
            edited(instance, mid, f"texto {k} corrigido de novo", base + 2),
            reaction(instance, f"R{k}a", mid, "👍", 1_700_000_100 + k),
            reaction(instance, f"R{k}b", mid, "❤️", 1_700_000_200 + k),
        ]
        if k % 7 == 0:
            events.append(deleted(instance, mid))
    return events


async def deliver(url: str, events: list[dict[str, Any]], clients: int = 4) -> list[int]:
    """Post ``events`` in this order, ``clients`` requests in flight at a time."""
    queue = collections.deque(events)
    statuses: list[int] = []

    async def client_loop() -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            while queue:
                statuses.append((await client.post(url, json=queue.popleft())).status_code)

    await asyncio.gather(*(client_loop() for _ in range(clients)))
    return statuses


# columns that say when or by which transaction a row was written, not what it holds
WHEN = {"tenant_id", "instance_id", "seq", "content_at", "content_xid", "received_at"}
WHEN |= {"updated_at", "created_at", "indexed_at", "analyzed_at"}


def rows(database_url: str, table: str, key: str, instance: str) -> list[tuple[Any, ...]]:
    columns = [
        r["column_name"]
        for r in sql(
            database_url,
            "SELECT column_name FROM information_schema.columns"
            " WHERE table_schema = 'public' AND table_name = $1 ORDER BY ordinal_position",
            table,
        )
        if r["column_name"] not in WHEN
    ]
    found = sql(
        database_url,
        f"SELECT {', '.join('t.' + c for c in columns)} FROM {table} t"
        f" JOIN instances i USING (instance_id) WHERE i.name = $1 ORDER BY t.{key}",
        instance,
    )
    return [tuple(r) for r in found]


def test_opposite_orders_on_two_servers_merge_into_the_in_order_rows(
    servers: list[Server], database_url: str
) -> None:
    first, second = servers
    _, path = register(first, "merge-t", "merge-s", "merge-x", "merge-ref")
    for server in servers:
        routed(server, path, "merge-x")
    # the reference: every event once, in order, one at a time
    reference = history("merge-ref")
    assert run(deliver(first.url + path, reference, clients=1)) == [200] * len(reference)
    # the same events twice: in order through one server and reversed through the other, at
    # the same time
    events = history("merge-x")

    async def both() -> list[list[int]]:
        return list(
            await asyncio.gather(
                deliver(first.url + path, events), deliver(second.url + path, events[::-1])
            )
        )

    for statuses in run(both()):
        assert statuses == [200] * len(events)  # no 5xx, nothing quarantined
    for table, key, count in (
        ("messages", "message_id", MESSAGES),  # the reactions annotate, they are no messages
        ("chats", "chat_jid", 4),
        ("message_search", "message_id", MESSAGES),  # every message was edited: re-indexed
    ):
        merged = rows(database_url, table, key, "merge-x")
        assert len(merged) == count, table
        assert merged == rows(database_url, table, key, "merge-ref"), table
    # and the reference itself is what the events say
    got = {
        r["message_id"]: r
        for r in sql(
            database_url,
            "SELECT m.message_id, m.status, m.edited_text, m.deleted, m.reactions::text"
            " FROM messages m JOIN instances i USING (instance_id) WHERE i.name = 'merge-ref'",
        )
    }
    assert sorted(got) == sorted(f"K{k}" for k in range(MESSAGES))
    for k, row in ((k, got[f"K{k}"]) for k in range(MESSAGES)):
        assert row["status"] == 40 and row["edited_text"] == f"texto {k} corrigido de novo"
        assert row["deleted"] is (k % 7 == 0)
        assert "❤️" in row["reactions"] and "👍" not in row["reactions"]
