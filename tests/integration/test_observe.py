"""The gauges that need a query (service/observe.py): the enrichment backlog, instances by
state and those connected but silent; one process computes each round."""

from __future__ import annotations

import asyncpg
from prometheus_client import REGISTRY
from starlette.applications import Starlette

from service.observe import Observer
from service.settings import load_settings
from tests.integration.conftest import Deployment, upsert


def sample(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


async def test_backlog_states_and_silent_instances(
    app: Starlette, deployment: Deployment, conn: asyncpg.Connection, database_url: str
) -> None:
    for n in range(3):
        assert (await deployment.post(upsert("acme-main", f"OB{n}", "x"))).status_code == 200
    await conn.execute("UPDATE messages SET analysis_state = 'done' WHERE message_id = 'OB0'")
    await conn.execute("UPDATE messages SET content_at = now() - interval '10 minutes'")
    # acme-main: connected, its last message two hours ago; globex-main: connected, just now
    await conn.execute("UPDATE instances SET state = 'open', state_at = now() - interval '3 hours'")
    await conn.execute("UPDATE chats SET last_message_ts = now() - interval '2 hours'")
    await conn.execute("UPDATE instances SET state_at = now() WHERE name = 'globex-main'")
    pool = app.state.services.pool
    settings = load_settings({}, database_url=database_url, silent_instance_seconds=3600)
    observer = Observer(pool, settings, None)
    async with pool.acquire() as other, other.transaction():
        # another process holds this round: this one skips it
        assert await other.fetchval("SELECT pg_try_advisory_xact_lock(hashtext('sense_observe'))")
        assert await observer.once() is False
    assert await observer.once() is True
    assert sample("sense_enrich_pending") == 2
    assert 590 <= (sample("sense_enrich_oldest_pending_seconds") or 0) <= 700
    assert sample("sense_instances", state="open") == 2
    assert sample("sense_instances", state="close") == 0
    assert sample("sense_instances_silent") == 1
