"""A backfill job outlives the server running it: `kill -9` of its process group in the middle
of a page, and the other server resumes it once its lease has run out, from the first page not
merged; every message is stored once."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from pathlib import Path

import asyncpg
import httpx

from tests.e2e.conftest import ADMIN, start_server
from tests.integration.polling import eventually_sync
from tests.integration.test_backfill import KEY, T0, FakeEvolution, stored


def test_a_job_survives_kill_9_of_its_server_and_runs_once(clean_db: str, tmp_path: Path) -> None:
    fake = FakeEvolution()
    threading.Thread(target=fake.server.serve_forever, daemon=True).start()
    ids = [f"K9{n}" for n in range(5)]
    fake.records["acme-main"] = [stored(m, T0 + 10 * n, m) for n, m in enumerate(ids)]
    settings = {
        "SENSE_BACKFILL_LEASE_SECONDS": "3",
        "SENSE_BACKFILL_POLL_SECONDS": "0.5",
        "SENSE_BACKFILL_PAGE_SIZE": "2",
    }
    first = start_server(clean_db, tmp_path, workers=1, **settings)
    second = None
    admin = {"Authorization": f"Bearer {ADMIN}"}
    try:
        with httpx.Client(base_url=first.url, headers=admin, timeout=10) as c:
            c.post("/api/admin/tenants", json={"name": "acme"}).raise_for_status()
            source = {"name": "evo", "evolution_url": fake.url, "evolution_apikey": KEY}
            c.post("/api/admin/sources", json=source).raise_for_status()
            instance = {"tenant": "acme", "source": "evo", "name": "acme-main"}
            c.post("/api/admin/instances", json=instance).raise_for_status()
            fake.hold_page = 2
            window = {"from": "2026-06-15T09:59:00Z", "to": "2026-06-15T10:10:00Z"}
            r = c.post("/api/admin/backfill", json={"instance": "acme-main", **window})
            assert r.status_code == 202, r.text
            job_id = r.json()["job_id"]
        assert fake.holding.wait(30), fake.calls  # page 1 merged, page 2 in flight
        second = start_server(clean_db, tmp_path, workers=1, **settings)
        os.killpg(first.process.pid, signal.SIGKILL)
        first.process.wait(10)
        asked = len(fake.calls)
        fake.release.set()
        with httpx.Client(base_url=second.url, headers=admin, timeout=10) as c:
            job = eventually_sync(
                lambda: c.get(f"/api/admin/backfill/{job_id}").json(),
                lambda j: j["state"] in ("done", "failed"),
                60,
            )
        assert (job["state"], job["pages"], job["found"], job["new"]) == ("done", 3, 5, 5)
        assert [call["page"] for call in fake.calls[asked:]] == [2, 3]

        async def counts() -> dict[str, int]:
            conn = await asyncpg.connect(clean_db)
            try:
                rows = await conn.fetch(
                    "SELECT message_id, count(*) AS n FROM messages GROUP BY message_id"
                )
            finally:
                await conn.close()
            return {r["message_id"]: r["n"] for r in rows}

        assert asyncio.run(counts()) == {m: 1 for m in ids}
    finally:
        fake.release.set()
        if second is not None:
            second.stop()
        first.stop(signal.SIGKILL)
        fake.server.shutdown()
        fake.server.server_close()
