"""Quarantine replay and redelivery are idempotent: whoever replays (the registering server,
every server at start-up, the admin route, the CLI), however often and at the same time, and
whatever Evolution sends twice, each event is filed once."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import msgspec

from service import admin
from service.app import create_app
from service.settings import load_settings
from tests.integration.conftest import ADMIN, Deployment, status_update, upsert


def _call(instance: str, call_id: str) -> dict[str, Any]:
    """A call offer (kept as received in ``events``), as 2.3.x sends it."""
    return {
        "event": "call",
        "instance": instance,
        "data": {
            "chatId": "5511987654321@s.whatsapp.net",
            "from": "5511987654321@s.whatsapp.net",
            "id": call_id,
            "date": "2026-06-15T05:07:40.000Z",
            "offline": False,
            "status": "offer",
            "isVideo": False,
            "isGroup": False,
        },
        "date_time": "2026-06-15T02:07:40.120-03:00",
        "apikey": None,
    }


async def test_an_event_kept_as_received_is_stored_once_however_often_it_arrives(
    deployment: Deployment, conn: asyncpg.Connection
) -> None:
    call = _call("acme-main", "CALL1")
    # the same event three times (Evolution's retry, the per-instance and global webhooks),
    # once with its keys in another order: one row
    for body in (call, call, {**call, "data": dict(reversed(list(call["data"].items())))}):
        r = await deployment.post(body)
        assert r.status_code == 200, r.text
    assert await conn.fetchval("SELECT count(*) FROM events WHERE event = 'call'") == 1
    # a different call is a different event
    assert (await deployment.post(_call("acme-main", "CALL2"))).status_code == 200
    assert await conn.fetchval("SELECT count(*) FROM events WHERE event = 'call'") == 2


async def test_concurrent_replays_file_each_quarantined_event_once(
    conn: asyncpg.Connection, database_url: str
) -> None:
    """Two servers starting (each replays everything registered), the admin route and the
    CLI's replay, all at once, over events quarantined before the instance was registered."""
    tenant = await admin.create_tenant(conn, "acme")
    source = await admin.create_source(conn, "evo")
    bodies = [upsert("late", f"R{n}", f"mensagem {n}") for n in range(300)]
    bodies += [status_update("late", f"R{n}", "READ") for n in range(0, 300, 3)]
    bodies += [_call("late", f"C{n}") for n in range(50)]
    await conn.copy_records_to_table(
        "quarantine",
        records=[
            (uuid.UUID(source.id), "late", b["event"], "unknown instance", msgspec.json.encode(b))
            for b in bodies
        ],
        columns=["source_id", "instance_name", "event", "reason", "body"],
    )
    await admin.add_instance(conn, tenant.name, source.name, "late")

    async def cli_replay() -> int:
        other = await asyncpg.connect(database_url)
        try:
            return (await admin.replay_quarantine(other, None, "late")).replayed
        finally:
            await other.close()

    async def server_start() -> None:
        app = create_app(load_settings({}, database_url=database_url, admin_token=ADMIN))
        async with app.router.lifespan_context(app):
            services = app.state.services
            for _ in range(200):
                if not services._tasks:
                    break
                await asyncio.sleep(0.05)

    await asyncio.gather(cli_replay(), cli_replay(), server_start(), server_start())
    assert await conn.fetchval("SELECT count(*) FROM quarantine") == 0
    # every event once: 300 messages (a third of them read), 50 calls
    assert await conn.fetchval("SELECT count(*) FROM messages") == 300
    assert await conn.fetchval("SELECT count(*) FROM messages WHERE status = 40") == 100
    assert await conn.fetchval("SELECT count(*) FROM events WHERE event = 'call'") == 50
