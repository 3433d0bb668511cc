"""The real server and CLI as subprocesses, over HTTP."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import asyncpg
import httpx

from tests.e2e.conftest import Server, sense, start_server
from tests.integration.conftest import upsert


def test_cli_registration_and_routing_across_workers(server: Server) -> None:
    tenant = sense("tenant", "create", "acme", env=server.env)
    source = sense("source", "create", "evo-1", env=server.env)
    assert source["webhook_url"].endswith(source["webhook_path"])
    hook = server.url + source["webhook_path"]
    # before registration: quarantined, not guessed into any tenant
    r = httpx.post(hook + "/messages-upsert", json=upsert("acme-1", "BEFORE"))
    assert r.status_code == 202
    assert sense("quarantine", "list", env=server.env)[0]["instance"] == "acme-1"
    added = sense(
        "instance", "add", "--tenant", "acme", "--source", "evo-1", "acme-1", env=server.env
    )
    assert added["replayed"] in (0, 1)  # the server may have replayed it first (on NOTIFY)
    registered_at = time.monotonic()
    # every worker process must route the new instance within a second; fresh connections
    # spread the requests over the workers
    statuses = []
    while time.monotonic() - registered_at < 1.0 or len(statuses) < 20:
        with httpx.Client(limits=httpx.Limits(max_keepalive_connections=0)) as c:
            statuses.append(c.post(hook, json=upsert("acme-1", f"M{len(statuses)}")).status_code)
        if len(statuses) >= 40:
            break
    late = [s for s in statuses[10:] if s != 200]
    assert not late, statuses
    headers = {"Authorization": f"Bearer {tenant['token']}"}
    got = httpx.get(server.url + "/api/v1/messages/acme-1/BEFORE", headers=headers)
    assert got.status_code == 200
    page = httpx.get(server.url + "/api/v1/messages", headers=headers, params={"limit": 5}).json()
    assert len(page["items"]) == 5 and page["next"]
    rest = httpx.get(
        server.url + "/api/v1/messages", headers=headers, params={"before": page["next"]}
    ).json()
    ids = [m["message_id"] for m in page["items"] + rest["items"]]
    assert len(ids) == len(set(ids)) == sum(1 for s in statuses if s == 200) + 1


def test_health_and_readiness(server: Server) -> None:
    assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(server.url + "/readyz").status_code == 200


def test_sigterm_flushes_everything_acknowledged(clean_db: str, tmp_path: Path) -> None:
    server = start_server(clean_db, tmp_path, workers=1)
    tenant = sense("tenant", "create", "t", env=server.env)
    source = sense("source", "create", "s", env=server.env)
    sense("instance", "add", "--tenant", "t", "--source", "s", "i", env=server.env)
    hook = server.url + source["webhook_path"]
    del tenant

    async def flood() -> list[tuple[str, int]]:
        """Eight clients post back to back; SIGTERM lands once traffic is flowing."""
        results: list[tuple[str, int]] = []
        signalled = asyncio.Event()

        async def client_loop(c: int) -> None:
            async with httpx.AsyncClient(timeout=10) as client:
                for n in range(2000):
                    mid = f"T{c}-{n}"
                    try:
                        r = await client.post(hook, json=upsert("i", mid))
                    except httpx.HTTPError:
                        results.append((mid, 0))
                        return  # the server is gone
                    results.append((mid, r.status_code))
                    if len(results) >= 200 and not signalled.is_set():
                        signalled.set()
                        server.process.send_signal(signal.SIGTERM)

        await asyncio.gather(*(client_loop(c) for c in range(8)))
        return results

    results = asyncio.run(flood())
    # One SIGTERM only: a second one (Server.stop) stops Granian at once, mid-drain.
    try:
        code = server.process.wait(60)
    finally:
        server.stop(signal.SIGKILL)
    assert code == 0, server.log.read_text()[-3000:]
    acked = {mid for mid, status in results if status == 200}
    assert acked, "nothing was acknowledged before shutdown"

    async def stored() -> set[str]:
        conn = await asyncpg.connect(clean_db)
        rows = await conn.fetch("SELECT message_id FROM messages WHERE has_content")
        await conn.close()
        return {r[0] for r in rows}

    assert acked <= asyncio.run(stored())


def test_metrics_add_up_over_worker_processes(server: Server) -> None:
    sense("tenant", "create", "m", env=server.env)
    source = sense("source", "create", "ms", env=server.env)
    sense("instance", "add", "--tenant", "m", "--source", "ms", "mi", env=server.env)
    hook = server.url + source["webhook_path"]
    for n in range(30):
        # a fresh connection each time, so both workers serve some
        with httpx.Client(limits=httpx.Limits(max_keepalive_connections=0)) as c:
            assert c.post(hook, json=upsert("mi", f"P{n}")).status_code == 200
    for _ in range(3):  # whichever worker answers the scrape, the totals are the same
        text = httpx.get(server.url + "/metrics").text
        line = next(
            x
            for x in text.splitlines()
            if x.startswith('sense_webhook_requests_total{event="messagesupsert",outcome="stored"}')
        )
        assert float(line.split()[-1]) == 30.0
        assert 'sense_tenant_messages_total{tenant="m"} 30.0' in text
