"""The real server and CLI as subprocesses, over HTTP."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import asyncpg
import httpx

from tests.e2e.conftest import Server, free_port, sense, start_server
from tests.integration.conftest import upsert
from tests.integration.polling import eventually_sync


def test_cli_registration_and_routing_across_workers(server: Server) -> None:
    tenant = sense("tenant", "create", "acme", env=server.env)
    source = sense("source", "create", "evo-1", env=server.env)
    assert source["webhook_url"].endswith(source["webhook_path"])
    hook = server.url + source["webhook_path"]
    # before registration: quarantined, not guessed into any tenant
    r = httpx.post(hook + "/messages-upsert", json=upsert("acme-1", "BEFORE"))
    assert r.status_code == 202
    assert sense("quarantine", "list", env=server.env)["events"][0]["instance"] == "acme-1"
    # the CLI replays what waited for the instance, and so may the server (on NOTIFY):
    # whichever does, it is filed once (checked below)
    sense("instance", "add", "--tenant", "acme", "--source", "evo-1", "acme-1", env=server.env)
    # every worker process learns the new instance by NOTIFY: post, each on a fresh connection
    # (spread over the workers), until 20 in a row are stored
    statuses: list[int] = []
    deadline = time.monotonic() + 20
    while len(statuses) < 20 or set(statuses[-20:]) != {200}:
        assert time.monotonic() < deadline, statuses
        with httpx.Client(limits=httpx.Limits(max_keepalive_connections=0)) as c:
            statuses.append(c.post(hook, json=upsert("acme-1", f"M{len(statuses)}")).status_code)
    # a worker that had not heard of it yet kept the post in quarantine and replays it when it
    # does: in the end every post is filed once in the tenant, and the quarantine is empty
    assert set(statuses) <= {200, 202}, statuses
    eventually_sync(lambda: quarantined(server), lambda n: n == 0)
    headers = {"Authorization": f"Bearer {tenant['token']}"}
    got = httpx.get(server.url + "/api/v1/messages/acme-1/BEFORE", headers=headers)
    assert got.status_code == 200
    page = httpx.get(server.url + "/api/v1/messages", headers=headers, params={"limit": 5}).json()
    assert len(page["items"]) == 5 and page["next"]
    rest = httpx.get(
        server.url + "/api/v1/messages",
        headers=headers,
        params={"before": page["next"], "limit": 200},
    ).json()
    ids = [m["message_id"] for m in page["items"] + rest["items"]]
    assert sorted(ids) == sorted(["BEFORE", *(f"M{n}" for n in range(len(statuses)))])


def quarantined(server: Server) -> int:
    async def count() -> int:
        conn = await asyncpg.connect(server.env["SENSE_DATABASE_URL"])
        try:
            return int(await conn.fetchval("SELECT count(*) FROM quarantine"))
        finally:
            await conn.close()

    return asyncio.run(count())


def test_health_and_readiness(server: Server) -> None:
    assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(server.url + "/readyz").status_code == 200


def test_sigterm_answers_and_stores_every_request_it_holds(clean_db: str, tmp_path: Path) -> None:
    """Requests queued behind a commit that cannot finish yet (the test holds a lock the
    writer needs) when one SIGTERM arrives: each one is answered 200 and stored once the
    commit can go through, and the server then exits 0."""
    server = start_server(clean_db, tmp_path, workers=1)
    sense("tenant", "create", "t", env=server.env)
    source = sense("source", "create", "s", env=server.env)
    sense("instance", "add", "--tenant", "t", "--source", "s", "i", env=server.env)
    hook = server.url + source["webhook_path"]
    held = [f"H{n}" for n in range(40)]

    async def run() -> list[int]:
        blocker = await asyncpg.connect(clean_db)
        watcher = await asyncpg.connect(clean_db)
        lock = blocker.transaction()
        await lock.start()
        # every message write waits for this lock (ROW EXCLUSIVE conflicts with SHARE)
        await blocker.execute("LOCK TABLE messages IN SHARE MODE")
        async with httpx.AsyncClient(timeout=60) as client:
            posts = [asyncio.create_task(client.post(hook, json=upsert("i", mid))) for mid in held]
            # a flusher is stuck on the lock with a batch taken; what it did not take is queued
            for _ in range(200):
                # (not on the blocker: inside a transaction the activity view does not change)
                waiting = await watcher.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name ="
                    " 'sense-writer' AND wait_event_type = 'Lock'"
                )
                if waiting:
                    break
                await asyncio.sleep(0.05)
            assert waiting, "no writer ever waited on the lock"
            await asyncio.sleep(0.5)  # the last requests are read and queued too
            assert not any(p.done() for p in posts), "answered before the commit could run"
            server.process.send_signal(signal.SIGTERM)  # once: a second one stops at once
            await asyncio.sleep(1.0)
            assert server.process.poll() is None, "exited while holding requests"
            await lock.rollback()  # the commit can go through now
            answers = await asyncio.gather(*posts)
        await blocker.close()
        await watcher.close()
        return [r.status_code for r in answers]

    try:
        codes = asyncio.run(run())
        code = server.process.wait(60)
    finally:
        server.stop(signal.SIGKILL)
    assert codes == [200] * len(held), codes
    assert code == 0, server.log.read_text()[-3000:]

    async def stored() -> list[str]:
        conn = await asyncpg.connect(clean_db)
        rows = await conn.fetch("SELECT message_id FROM messages WHERE has_content")
        await conn.close()
        return sorted(r[0] for r in rows)

    assert asyncio.run(stored()) == sorted(held)


def test_metrics_add_up_over_worker_processes(server: Server) -> None:
    tenant_id = sense("tenant", "create", "m", env=server.env)["id"]
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
        assert f'sense_tenant_messages_total{{tenant_id="{tenant_id}"}} 30.0' in text


def test_metrics_behind_a_token_or_on_their_own_port(clean_db: str, tmp_path: Path) -> None:
    guarded = start_server(clean_db, tmp_path, workers=1, SENSE_METRICS_TOKEN="scrape-me")
    try:
        assert httpx.get(guarded.url + "/metrics").status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert httpx.get(guarded.url + "/metrics", headers=wrong).status_code == 401
        right = {"Authorization": "Bearer scrape-me"}
        r = httpx.get(guarded.url + "/metrics", headers=right)
        assert r.status_code == 200 and "sense_ingest_queue_depth" in r.text
    finally:
        guarded.stop()
    port = free_port()
    apart = start_server(clean_db, tmp_path, workers=2, SENSE_METRICS_PORT=str(port))
    try:
        assert httpx.get(apart.url + "/metrics").status_code == 404  # not on the main port
        r = httpx.get(f"http://127.0.0.1:{port}/metrics")
        assert r.status_code == 200 and "sense_ingest_queue_depth" in r.text
    finally:
        apart.stop()
