"""What quarantine keeps (no apikey, only its hash), how much (a cap per source, then 503) and
for how long (a retention, then deleted)."""

from __future__ import annotations

import asyncio
import hashlib
from datetime import timedelta

import asyncpg
import httpx
import msgspec

from service import admin
from tests.integration.conftest import Deployment, running_app, upsert


async def test_the_apikey_is_not_kept_only_its_hash_and_the_replay_still_checks_it(
    deployment: Deployment, conn: asyncpg.Connection
) -> None:
    for message_id, key in (("QK1", "K-right"), ("QK2", "K-wrong"), ("QK3", None)):
        r = await deployment.post({**upsert("later", message_id), "apikey": key})
        assert r.status_code == 202, r.text
    rows = await conn.fetch("SELECT body, apikey_hash FROM quarantine ORDER BY quarantine_id")
    for row in rows:
        assert b"K-right" not in row["body"] and b"K-wrong" not in row["body"]
        assert "apikey" not in msgspec.json.decode(row["body"])
    assert bytes(rows[0]["apikey_hash"]) == hashlib.sha256(b"K-right").digest()
    assert rows[2]["apikey_hash"] is None
    assert (await deployment.instance("acme", "evo", "later", apikey="K-right")).status_code == 201

    async def filed() -> set[str]:
        return {r[0] for r in await conn.fetch("SELECT message_id FROM messages")}

    for _ in range(100):
        if await filed() == {"QK1", "QK3"}:
            break
        await asyncio.sleep(0.05)
    # the right key and no key are filed, as a live post would be; the wrong one never is
    assert await filed() == {"QK1", "QK3"}
    left = await conn.fetch("SELECT reason FROM quarantine")
    assert [r["reason"] for r in left] == [admin.REFUSED_APIKEY]


async def test_a_full_quarantine_answers_503_for_that_source_only(
    conn: asyncpg.Connection, database_url: str
) -> None:
    async with running_app(database_url, quarantine_max_events=3, retry_after_seconds=7) as app:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t"
        ) as client:
            d = Deployment(client)
            await d.tenant("acme")
            await d.source("evo")
            await d.source("other")
            codes = [(await d.post(upsert("nobody", f"F{n}"))).status_code for n in range(5)]
            assert codes == [202, 202, 202, 503, 503]
            r = await d.post(upsert("nobody", "F9"))
            assert r.headers["retry-after"] == "7" and r.json()["error"] == "quarantine_full"
            assert "SENSE_QUARANTINE_MAX_EVENTS" in r.json()["detail"]
            # another source is not held back by this one's backlog
            assert (await d.post(upsert("nobody", "G1"), source="other")).status_code == 202
            # registering the instance replays its events: the source has room again
            assert (await d.instance("acme", "evo", "nobody")).status_code == 201
            guard = app.state.services.quarantine
            evo = await conn.fetchval("SELECT source_id FROM sources WHERE name = 'evo'")
            for _ in range(100):
                await guard.refresh()
                if not guard.full(evo):
                    break
                await asyncio.sleep(0.05)
            assert (await d.post(upsert("somebody", "H1"))).status_code == 202
    held = await conn.fetch("SELECT instance_name FROM quarantine ORDER BY quarantine_id")
    assert [r[0] for r in held] == ["nobody", "somebody"]  # G1 of "other", H1 of evo


async def test_quarantined_events_expire_after_the_retention_and_the_list_says_when(
    deployment: Deployment, conn: asyncpg.Connection, database_url: str
) -> None:
    await deployment.post(upsert("gone", "OLD1"))
    await deployment.post(upsert("gone", "NEW1"))
    await conn.execute(
        "UPDATE quarantine SET received_at = now() - interval '15 days'"
        " WHERE convert_from(body, 'UTF8') LIKE '%OLD1%'"
    )
    rows = await admin.list_quarantine(conn, 10, retention_days=14)
    for r in rows:
        assert r["expires_at"] - r["received_at"] == timedelta(days=14)
    async with running_app(database_url, quarantine_retention_days=14) as app:
        await app.state.services.quarantine.sweep()  # (a server also sweeps when it starts)
    left = await conn.fetch("SELECT convert_from(body, 'UTF8') AS body FROM quarantine")
    assert len(left) == 1 and "NEW1" in left[0]["body"]
