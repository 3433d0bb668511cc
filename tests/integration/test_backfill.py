"""Backfill against a stand-in Evolution REST server (a real HTTP server in a thread) answering
findMessages as 2.3.7 does (evolution-rest.md §2): ISO window, page/offset paging newest first,
stored keys with @lid and remoteJidAlt, statuses in MessageUpdate[], 401, 404, LICENSE_REQUIRED."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from http.server import ThreadingHTTPServer
from typing import Any

import asyncpg
import pytest
from prometheus_client import REGISTRY
from starlette.applications import Starlette

from service import admin, backfill, db
from service.resolve import Instance
from service.resources import message_from_row
from service.rows import Committed
from service.settings import load_settings
from tests.integration import polling
from tests.integration.conftest import ADMIN, Deployment, running_app, upsert
from tests.integration.doubles import JsonHandler

KEY = "EVO-GLOBAL-KEY"
LOADING = "Cannot read properties of undefined (reading 'fetchMessages')"
T0 = 1_781_517_600  # 2026-06-15T10:00:00Z


class FakeEvolution:
    def __init__(self) -> None:
        self.records: dict[str, list[dict[str, Any]]] = {}
        self.license_required = False
        self.calls: list[dict[str, Any]] = []
        self.failures: list[int] = []  # statuses answered first, one per request (5xx...)
        self.loading = False  # a 500 says the instance is still loading (Evolution's boot)
        self.hold_page: int | None = None  # the next request for this page waits for release
        self.holding = threading.Event()  # set while that request waits
        self.release = threading.Event()
        self.slow: list[float] = []  # seconds before the answer, one per request
        fake = self

        class Handler(JsonHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.calls.append(body)
                if fake.hold_page is not None and body.get("page") == fake.hold_page:
                    fake.hold_page = None
                    fake.holding.set()
                    fake.release.wait(30)
                if fake.slow:
                    time.sleep(fake.slow.pop(0))
                if fake.failures:
                    status = fake.failures.pop(0)
                    message = LOADING if status == 500 and fake.loading else "Internal Server Error"
                    return self._send(
                        status,
                        {
                            "status": status,
                            "error": "Internal Server Error",
                            "response": {"message": message},
                        },
                    )
                if fake.license_required:
                    return self._send(
                        503, {"error": "service not activated", "code": "LICENSE_REQUIRED"}
                    )
                instance = self.path.rsplit("/", 1)[1]
                if instance not in fake.records:
                    message = [f'The "{instance}" instance does not exist']
                    return self._send(404, {"status": 404, "response": {"message": message}})
                if self.headers.get("apikey") != KEY:
                    return self._send(401, {"status": 401, "response": {"message": "Unauthorized"}})
                window = body["where"]["messageTimestamp"]
                lo, hi = (
                    int(datetime.fromisoformat(window[k].replace("Z", "+00:00")).timestamp())
                    for k in ("gte", "lte")
                )
                rows = [r for r in fake.records[instance] if lo <= r["messageTimestamp"] <= hi]
                rows.sort(key=lambda r: r["messageTimestamp"], reverse=True)
                page, offset = body.get("page", 1), body.get("offset", 50)
                chunk = rows[(page - 1) * offset : page * offset]
                pages = -(-len(rows) // offset)
                answer = {"total": len(rows), "pages": pages, "currentPage": page, "records": chunk}
                return self._send(200, {"messages": answer})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
async def app(conn: asyncpg.Connection, database_url: str) -> AsyncIterator[Starlette]:
    """The app with a short wait after a reconnect (90 s by default)."""
    async with running_app(database_url, backfill_reconnect_delay_seconds=1) as application:
        yield application


@pytest.fixture
def evolution() -> Iterator[FakeEvolution]:
    fake = FakeEvolution()
    thread = threading.Thread(target=fake.server.serve_forever, daemon=True)
    thread.start()
    yield fake
    fake.release.set()
    fake.server.shutdown()
    fake.server.server_close()


def stored(message_id: str, ts: int, text: str, **key: Any) -> dict[str, Any]:
    """A findMessages record as 2.3.7 keeps it (raw Baileys key)."""
    return {
        "id": f"cmbx{message_id.lower():0>21}",
        "key": {"remoteJid": "5511900000011@s.whatsapp.net", "fromMe": False, "id": message_id}
        | key,
        "pushName": "Cliente",
        "messageType": "conversation",
        "message": {"conversation": text},
        "messageTimestamp": ts,
        "instanceId": "5b0c7a52-0000-4000-8000-000000000001",
        "source": "android",
        "contextInfo": None,
        "MessageUpdate": [],
    }


async def _prepare(conn: asyncpg.Connection, evolution: FakeEvolution) -> Any:
    await admin.update_source(conn, "evo", evolution.url, KEY)
    instance, url, key = await backfill.instance_to_fill(conn, "acme-main", None)
    assert (url, key) == (evolution.url, KEY)
    return instance


async def _fill_first_minutes(
    conn: asyncpg.Connection, evolution: FakeEvolution
) -> backfill.Progress:
    """One run over [T0, T0 + 5 min] for acme-main, outside any job."""
    instance = await _prepare(conn, evolution)
    start = datetime.fromtimestamp(T0, UTC)
    client = backfill.Evolution(evolution.url, KEY)
    try:
        return await backfill.run(conn, client, instance, start, start + timedelta(minutes=5))
    finally:
        await client.aclose()


async def test_dropped_webhooks_are_recovered_once_with_tenant_chat_and_status(
    deployment: Deployment, conn: asyncpg.Connection, evolution: FakeEvolution
) -> None:
    lid = {"remoteJid": "100000000000022@lid", "remoteJidAlt": "5511900000022@s.whatsapp.net"}
    evolution.records["acme-main"] = [
        stored("BF1", T0 + 10, "primeira"),
        stored("BF2", T0 + 20, "segunda, perdida") | {"MessageUpdate": [{"status": "READ"}]},
        stored("BF3", T0 + 20, "terceira"),
        stored("BF4", T0 + 30, "quarta, perdida, via lid", **lid),
        stored("BF5", T0 + 40, "quinta, perdida"),
    ]
    # the webhooks of BF1 and BF3 arrived; the others were lost
    for mid, text, ts in (("BF1", "primeira", T0 + 10), ("BF3", "terceira", T0 + 20)):
        r = await deployment.post(
            upsert(
                "acme-main", mid, text, remote="5511900000011@s.whatsapp.net", messageTimestamp=ts
            )
        )
        assert r.status_code == 200
    instance = await _prepare(conn, evolution)
    start = datetime.fromtimestamp(T0, UTC)
    end = start + timedelta(minutes=5)
    client = backfill.Evolution(evolution.url, KEY)
    try:
        done = await backfill.run(conn, client, instance, start, end, page_size=2)
        assert (done.found, done.new, done.pages) == (5, 3, 3)
        again = await backfill.run(conn, client, instance, start, end, page_size=2)
        assert again.new == 0  # idempotent: a second run creates nothing
    finally:
        await client.aclose()
    sent = evolution.calls[0]["where"]["messageTimestamp"]
    assert sent == {"gte": "2026-06-15T10:00:00Z", "lte": "2026-06-15T10:05:00Z"}  # ISO, Z
    assert await conn.fetchval("SELECT count(*) FROM messages WHERE message_id LIKE 'BF%'") == 5
    lost = (await deployment.message("acme", "acme-main", "BF4")).json()
    assert lost["text"] == "quarta, perdida, via lid"
    assert lost["chat_jid"] == "5511900000022@s.whatsapp.net"  # the phone, not the @lid
    recovered = (await deployment.message("acme", "acme-main", "BF2")).json()
    assert recovered["status"] == "read" and recovered["origin"] == "backfill"
    assert (await deployment.message("acme", "acme-main", "BF1")).json()["origin"] == "webhook"
    assert (await deployment.message("globex", "acme-main", "BF2")).status_code == 404


async def test_evolution_refusals_end_the_run_clearly_and_merge_nothing(
    deployment: Deployment, conn: asyncpg.Connection, evolution: FakeEvolution
) -> None:
    evolution.records["acme-main"] = [stored("BX1", T0 + 10, "x")]
    instance = await _prepare(conn, evolution)
    start = datetime.fromtimestamp(T0, UTC)
    end = start + timedelta(minutes=5)
    for key, setup, expected in (
        ("WRONG", None, r"refused the key \(401\)"),
        (KEY, "license", "LICENSE_REQUIRED"),
    ):
        evolution.license_required = setup == "license"
        client = backfill.Evolution(evolution.url, key)
        try:
            with pytest.raises(backfill.BackfillError, match=expected):
                await backfill.run(conn, client, instance, start, end)
        finally:
            await client.aclose()
    evolution.license_required = False
    missing = backfill.Evolution(evolution.url, KEY)
    try:
        with pytest.raises(backfill.BackfillError, match="no instance"):
            await missing.find_messages("nobody", start, end, 1)
    finally:
        await missing.aclose()
    assert await conn.fetchval("SELECT count(*) FROM messages") == 0


async def test_the_cli_prints_the_summary_line(
    deployment: Deployment, conn: asyncpg.Connection, evolution: FakeEvolution, database_url: str
) -> None:
    evolution.records["acme-main"] = [stored("BC1", T0 + 10, "pelo terminal")]
    await _prepare(conn, evolution)
    env = {**os.environ, "SENSE_DATABASE_URL": database_url}
    env.pop("SENSE_REDIS_URL", None)
    window = ["--from", "2026-06-15T09:59:00Z", "--to", "2026-06-15T10:10:00Z"]

    def sense(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "service.cli", "backfill", *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)

    out = await asyncio.to_thread(sense, "--instance", "acme-main", *window)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "backfill: pages=1 found=1 new=1"
    r = await asyncio.to_thread(sense, "--instance", "nobody", "--since", "1h")
    assert r.returncode == 1 and "no registered instance 'nobody'" in r.stderr


# Jobs: durable, resumable, one per instance, triggered by the service itself ------------------


def recent(seconds_ago: int) -> int:
    return int(time.time()) - seconds_ago


async def _jobs_setup(conn: asyncpg.Connection, evolution: FakeEvolution) -> Instance:
    """Tenant acme, source evo (with its Evolution URL) and instance acme-main, no server."""
    await admin.create_tenant(conn, "acme")
    await admin.create_source(conn, "evo", False, evolution.url, KEY)
    await admin.add_instance(conn, "acme", "evo", "acme-main", None, None)
    instance, _, _ = await backfill.instance_to_fill(conn, "acme-main", None)
    return instance


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await db.create_pool(database_url, 4, 10)
    yield p
    await p.close()


def runner(
    pool: asyncpg.Pool, database_url: str, hooks: list[backfill.Hook] | None = None, **settings: Any
) -> backfill.Runner:
    return backfill.Runner(
        pool, load_settings({}, database_url=database_url, **settings), hooks or [], page_size=2
    )


async def _queued(
    conn: asyncpg.Connection, evolution: FakeEvolution, prefix: str, count: int
) -> tuple[list[str], uuid.UUID]:
    """Evolution holds ``count`` messages no webhook brought here; a job is asked for them."""
    instance = await _jobs_setup(conn, evolution)
    ids = [f"{prefix}{n}" for n in range(count)]
    evolution.records["acme-main"] = [stored(m, T0 + 10 * n, m) for n, m in enumerate(ids)]
    start = datetime.fromtimestamp(T0 - 60, UTC)
    return ids, await backfill.create(conn, instance, start, start + timedelta(minutes=5))


async def _job(conn: asyncpg.Connection, job_id: uuid.UUID) -> Any:
    return await conn.fetchrow("SELECT * FROM backfill_jobs WHERE job_id = $1", job_id)


async def _stored_once(conn: asyncpg.Connection, ids: list[str]) -> None:
    rows = await conn.fetch(
        "SELECT message_id, count(*) AS n FROM messages WHERE message_id = ANY($1)"
        " GROUP BY message_id",
        ids,
    )
    assert {r["message_id"]: r["n"] for r in rows} == {i: 1 for i in ids}


async def test_a_job_whose_runner_dies_is_resumed_from_its_last_page_by_another(
    conn: asyncpg.Connection, pool: asyncpg.Pool, database_url: str, evolution: FakeEvolution
) -> None:
    ids, job_id = await _queued(conn, evolution, "RS", 5)
    seen: list[Committed] = []  # what the live stream and the workers are handed

    async def hook(committed: Committed) -> None:
        seen.append(committed)

    first = runner(pool, database_url, [hook], backfill_lease_seconds=1)
    second = runner(pool, database_url, [hook], backfill_lease_seconds=1)
    claims = await asyncio.gather(first.claim(job_id), second.claim(job_id))
    assert sum(c is not None for c in claims) == 1  # one claim wins, whoever asks
    job = claims[0] or claims[1]
    holder, other = (first, second) if claims[0] else (second, first)
    evolution.hold_page = 2
    dying = asyncio.create_task(holder.execute(job))
    assert await asyncio.to_thread(evolution.holding.wait, 10)
    row = await _job(conn, job_id)
    assert (row["state"], row["pages"], row["new"]) == ("running", 1, 2)
    dying.cancel()  # the process dies with page 2 in flight; its lease is left to run out
    with contextlib.suppress(asyncio.CancelledError):
        await dying
    assert await other.claim(job_id) is None  # not while the lease holds
    # claimable once it has run out (polled: on a loaded machine a fixed 1.2 s sleep past the
    # 1 s lease was once not enough; a statement sent just before the cancel can still renew)
    resumed = await polling.eventually(lambda: other.claim(job_id), lambda j: j is not None)
    assert resumed is not None and resumed.cursor.page == 2 and resumed.done.pages == 1
    asked = len(evolution.calls)
    evolution.release.set()
    assert await other.execute(resumed) == "done"
    assert [c["page"] for c in evolution.calls[asked:]] == [2, 3]  # page 1 not asked again
    row = await _job(conn, job_id)
    assert (row["state"], row["pages"], row["found"], row["new"]) == ("done", 3, 5, 5)
    await _stored_once(conn, ids)
    created = sorted(k[2] for c in seen for k in c.created)
    assert created == sorted(ids)  # once each: the dead runner's page 2 was never committed
    frames = [message_from_row(r, "acme-main") for c in seen for r in c.messages]
    assert {m.message_id for m in frames} == set(ids)
    assert {m.origin for m in frames} == {"backfill"}  # message.created frames say so


async def test_a_runner_that_lost_its_lease_merges_nothing_more(
    conn: asyncpg.Connection, pool: asyncpg.Pool, database_url: str, evolution: FakeEvolution
) -> None:
    ids, job_id = await _queued(conn, evolution, "LL", 3)
    stalled, other = runner(pool, database_url), runner(pool, database_url)
    job = await stalled.claim(job_id)
    assert job is not None
    evolution.hold_page = 1
    late = asyncio.create_task(stalled.execute(job))
    assert await asyncio.to_thread(evolution.holding.wait, 10)
    # it stalled past its lease (a long GC pause, a frozen VM): another runner takes over
    await conn.execute("UPDATE backfill_jobs SET lease_until = now() - interval '1 second'")
    taken = await other.claim(job_id)
    assert taken is not None
    assert await other.execute(taken) == "done"
    evolution.release.set()
    assert await late == "lost"  # its page's merge and checkpoint were refused together
    row = await _job(conn, job_id)
    assert (row["state"], row["pages"], row["new"]) == ("done", 2, 3)
    await _stored_once(conn, ids)


async def test_job_errors_are_clear_and_transient_failures_are_retried(
    conn: asyncpg.Connection,
    pool: asyncpg.Pool,
    database_url: str,
    evolution: FakeEvolution,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(backfill, "BACKOFF", 0.01)
    instance = await _jobs_setup(conn, evolution)
    evolution.records["acme-main"] = [stored("ER1", T0, "ok")]
    start = datetime.fromtimestamp(T0 - 60, UTC)
    run = runner(pool, database_url, backfill_timeout_seconds=0.5)

    async def one() -> Any:
        job_id = await backfill.create(conn, instance, start, start + timedelta(minutes=5))
        job = await run.claim(job_id)
        assert job is not None
        await run.execute(job)
        return await _job(conn, job_id)

    evolution.failures = [503] * (backfill.RETRIES + 1)
    row = await one()
    assert row["state"] == "failed" and "answered 503 4 times" in row["error"]
    evolution.license_required = True
    row = await one()
    assert row["state"] == "failed" and "LICENSE_REQUIRED" in row["error"]
    assert "activate" in row["error"]
    evolution.license_required = False
    evolution.failures, evolution.loading = [500], True  # still loading the instance
    row = await one()
    assert (row["state"], row["new"]) == ("done", 1)
    evolution.loading = False
    await conn.execute("DELETE FROM messages")
    evolution.failures, evolution.slow = [500], [0.0, 1.0]  # a 5xx, then a page too slow
    row = await one()
    assert (row["state"], row["error"], row["new"]) == ("done", None, 1)
    assert await conn.fetchval("SELECT count(*) FROM messages") == 1


async def test_start_up_and_sweep_ask_once_per_instance(
    conn: asyncpg.Connection, pool: asyncpg.Pool, database_url: str, evolution: FakeEvolution
) -> None:
    instance = await _jobs_setup(conn, evolution)
    await admin.create_source(conn, "plain")  # no Evolution URL: never asked
    await admin.add_instance(conn, "acme", "plain", "acme-other", None, None)
    settings = load_settings({}, database_url=database_url)
    woken: list[int] = []
    triggers = backfill.Triggers(pool, settings, lambda: woken.append(1))
    await triggers.at_start()
    rows = await conn.fetch("SELECT * FROM backfill_jobs")
    assert [(r["instance_id"], r["reason"], r["state"]) for r in rows] == [
        (instance.instance_id, "startup", "queued")
    ]
    # nothing stored yet: as far back as a sweep looks
    reach = rows[0]["window_to"] - rows[0]["window_from"]
    assert reach == timedelta(seconds=settings.backfill_sweep_window_seconds)
    await triggers.sweep()  # the queued job is widened, not doubled
    await triggers.sweep()  # swept just now: not due
    assert await conn.fetchval("SELECT count(*) FROM backfill_jobs") == 1
    assert await conn.fetchval("SELECT count(*) FROM backfill_state") == 1
    assert woken == [1]


async def test_a_reconnect_recovers_what_was_dropped_exactly_once(
    deployment: Deployment, conn: asyncpg.Connection, evolution: FakeEvolution
) -> None:
    """Webhooks delivered with some dropped on purpose; the instance goes down and comes back:
    the service asks Evolution itself and every dropped message is stored once, under the
    right tenant, chat and status, and counted on the instance."""
    r = await deployment.client.patch(
        "/api/admin/sources/evo",
        json={"evolution_url": evolution.url, "evolution_apikey": KEY},
        headers={"Authorization": f"Bearer {ADMIN}"},
    )
    assert r.status_code == 200, r.text
    lid = {"remoteJid": "100000000000077@lid", "remoteJidAlt": "5511900000077@s.whatsapp.net"}
    kept = {"RC1": recent(200), "RC3": recent(120)}
    evolution.records["acme-main"] = [
        stored("RC1", kept["RC1"], "chegou"),
        stored("RC2", recent(150), "perdida") | {"MessageUpdate": [{"status": "READ"}]},
        stored("RC3", kept["RC3"], "chegou também"),
        stored("RC4", recent(90), "perdida, via lid", **lid),
        stored("RC5", recent(30), "perdida no fim"),
    ]
    for mid, ts in kept.items():
        body = upsert("acme-main", mid, "x", "5511900000011@s.whatsapp.net", messageTimestamp=ts)
        assert (await deployment.post(body)).status_code == 200

    def state(value: str) -> dict[str, Any]:
        data = {"instance": "acme-main", "state": value, "statusReason": 200}
        return {"event": "connection.update", "instance": "acme-main", "data": data}

    assert (await deployment.post(state("close"))).status_code == 200
    await polling.eventually(
        lambda: conn.fetchval("SELECT down_at IS NOT NULL FROM backfill_state"), bool, 15
    )
    assert (await deployment.post(state("open"))).status_code == 200
    queued = await polling.eventually(
        lambda: conn.fetchrow("SELECT * FROM backfill_jobs WHERE reason = 'reconnect'"),
        lambda row: row is not None,
        15,
    )
    # it waits for the offline queue to drain, and looks back from when the instance went down
    assert queued["not_before"] - queued["window_to"] == timedelta(seconds=1)
    assert queued["window_from"] < datetime.fromtimestamp(recent(200), UTC)

    async def finished() -> Any:
        r = await deployment.client.get(
            "/api/admin/backfill", headers={"Authorization": f"Bearer {ADMIN}"}
        )
        jobs = [j for j in r.json()["items"] if j["reason"] == "reconnect"]
        return jobs and jobs[0]["state"] in ("done", "failed") and jobs[0]

    job = await polling.eventually(finished, bool, 30)
    assert job["state"] == "done", job
    assert (job["instance"], job["new"]) == ("acme-main", 3)
    await _stored_once(conn, [f"RC{n}" for n in range(1, 6)])
    got = (await deployment.message("acme", "acme-main", "RC2")).json()
    assert (got["status"], got["origin"]) == ("read", "backfill")
    got = (await deployment.message("acme", "acme-main", "RC4")).json()
    assert got["chat_jid"] == "5511900000077@s.whatsapp.net"
    assert (await deployment.message("acme", "acme-main", "RC1")).json()["origin"] == "webhook"
    assert (await deployment.message("globex", "acme-main", "RC2")).status_code == 404
    items = (await deployment.get("/api/v1/instances", "acme")).json()["items"]
    assert items[0]["backfill"]["messages_recovered"] == 3
    assert items[0]["backfill"]["gaps_found"] == 1
    mine = (await deployment.get("/api/v1/backfill", "acme")).json()["items"]
    assert [j["job_id"] for j in mine] == [job["job_id"]]
    assert (await deployment.get("/api/v1/backfill", "globex")).json()["items"] == []


async def test_the_admin_api_asks_for_a_job_and_shows_its_progress(
    deployment: Deployment, conn: asyncpg.Connection, evolution: FakeEvolution
) -> None:
    auth = {"Authorization": f"Bearer {ADMIN}"}
    evolution.records["acme-main"] = [stored("AP1", T0 + 5, "pela api")]
    window = {"from": "2026-06-15T09:59:00Z", "to": "2026-06-15T10:10:00Z"}
    no_url = await deployment.admin("/api/admin/backfill", {"instance": "acme-main", **window})
    assert no_url.status_code == 422 and "evolution-url" in no_url.json()["detail"]
    await deployment.client.patch(
        "/api/admin/sources/evo",
        json={"evolution_url": evolution.url, "evolution_apikey": KEY},
        headers=auth,
    )
    nobody = await deployment.admin("/api/admin/backfill", {"instance": "nobody", **window})
    assert nobody.status_code == 404
    for start, end in (
        ("2026-05-01T00:00:00Z", "2026-06-15T00:00:00Z"),
        (window["to"], window["from"]),
    ):
        bad = await deployment.admin(
            "/api/admin/backfill", {"instance": "acme-main", "from": start, "to": end}
        )
        assert bad.status_code == 422 and "window" in bad.json()["detail"]
    evolution.hold_page = 1  # keep the job running while a second one is asked for
    r = await deployment.admin("/api/admin/backfill", {"instance": "acme-main", **window})
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    again = await deployment.admin("/api/admin/backfill", {"instance": "acme-main", **window})
    if again.status_code == 202:  # asked before a runner took the first: the same job
        assert again.json()["job_id"] == job_id
        await polling.eventually(
            lambda: _job(conn, uuid.UUID(job_id)), lambda r: r["state"] == "running", 20
        )
        again = await deployment.admin("/api/admin/backfill", {"instance": "acme-main", **window})
    assert again.status_code == 409 and job_id in again.json()["detail"]
    evolution.release.set()

    async def done() -> Any:
        got = (await deployment.client.get(f"/api/admin/backfill/{job_id}", headers=auth)).json()
        return got["state"] in ("done", "failed") and got

    job = await polling.eventually(done, bool, 30)
    assert {k: job[k] for k in ("job_id", "instance", "state", "pages", "found", "new")} == {
        "job_id": job_id,
        "instance": "acme-main",
        "state": "done",
        "pages": 1,
        "found": 1,
        "new": 1,
    }
    assert job["error"] is None
    for missing in ("00000000-0000-4000-8000-000000000000", "not-a-uuid"):
        r = await deployment.client.get(f"/api/admin/backfill/{missing}", headers=auth)
        assert r.status_code == 404
    bare = await deployment.client.get(f"/api/admin/backfill/{job_id}")
    assert bare.status_code == 401


def test_a_long_window_is_read_an_hour_at_a_time_oldest_first() -> None:
    start = datetime.fromtimestamp(T0, UTC)
    cursor = backfill.Cursor.over(start, start + timedelta(hours=2, minutes=30))
    read = []
    while cursor.windows:
        if cursor.next_slice():
            continue
        read.append(tuple(int(t - T0) for t in cursor.windows.pop()))
    assert read == [(0, 3600), (3600, 7200), (7200, 9000)]
    assert backfill.Cursor.load(cursor.dump()).windows == []


async def test_an_edit_and_a_delete_only_evolution_saw_are_applied(
    deployment: Deployment, conn: asyncpg.Connection, evolution: FakeEvolution
) -> None:
    """Edits made on WhatsApp Web fire no webhook: the stored row holds the new content and an
    EDITED update, re-timestamped to the edit."""
    for mid in ("ED1", "DL1"):
        body = upsert("acme-main", mid, "original", messageTimestamp=T0 + 10)
        assert (await deployment.post(body)).status_code == 200
    edited = stored("ED1", T0 + 90, "corrigido") | {"MessageUpdate": [{"status": "EDITED"}]}
    deleted = stored("DL1", T0 + 10, "original")
    deleted["key"]["deleted"] = True
    evolution.records["acme-main"] = [edited, deleted]
    done = await _fill_first_minutes(conn, evolution)
    assert done.new == 0
    row = await conn.fetchrow(
        "SELECT text, edited_text, edit_ts FROM messages WHERE message_id = 'ED1'"
    )
    assert (row["text"], row["edited_text"], row["edit_ts"]) == (
        "original",
        "corrigido",
        (T0 + 90) * 1000,
    )
    assert await conn.fetchval("SELECT deleted FROM messages WHERE message_id = 'DL1'")


async def test_a_sweep_reads_no_page_where_the_counts_agree(
    conn: asyncpg.Connection, pool: asyncpg.Pool, database_url: str, evolution: FakeEvolution
) -> None:
    instance = await _jobs_setup(conn, evolution)
    hour = 3600
    # first hour: both sides have SW1; second hour: Evolution has SW2 and SW3, we have SW2
    evolution.records["acme-main"] = [
        stored("SW1", T0 + 100, "um"),
        stored("SW2", T0 + hour + 100, "dois"),
        stored("SW3", T0 + hour + 200, "três, perdida"),
    ]
    start = datetime.fromtimestamp(T0, UTC)
    for mid, ts in (("SW1", T0 + 100), ("SW2", T0 + hour + 100)):
        record = stored(mid, ts, "x")
        await backfill.merge_page(conn, instance, [record], backfill.Progress())
    await conn.execute("UPDATE messages SET origin = NULL")
    await conn.execute(
        "INSERT INTO backfill_jobs (tenant_id, instance_id, source_id, reason, window_from,"
        " window_to) VALUES ($1, $2, $3, 'sweep', $4, $5)",
        instance.tenant_id,
        instance.instance_id,
        instance.source_id,
        start,
        start + timedelta(hours=2),
    )

    def sample(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = (
        sample("sense_backfill_messages_total", outcome="new"),
        sample("sense_backfill_messages_total", outcome="known"),
        sample("sense_backfill_jobs_total", result="done"),
    )
    run = runner(pool, database_url)
    job = await run.claim()
    assert job is not None and job.reason == "sweep"
    assert await run.execute(job) == "done"
    after = (
        sample("sense_backfill_messages_total", outcome="new"),
        sample("sense_backfill_messages_total", outcome="known"),
        sample("sense_backfill_jobs_total", result="done"),
    )
    assert [b - a for a, b in zip(before, after, strict=True)] == [1, 1, 1]
    asked = [(c["page"], c["offset"]) for c in evolution.calls]
    assert asked == [(1, 1), (1, 1), (1, 2)]  # hour 1: counted only; hour 2: counted, read
    await _stored_once(conn, ["SW1", "SW2", "SW3"])
    row = await _job(conn, job.job_id)
    assert (row["state"], row["new"]) == ("done", 1)
    state = await conn.fetchrow("SELECT * FROM backfill_state")
    assert (state["gaps_found"], state["recovered"]) == (1, 1)
    assert state["last_sweep_at"] is not None


LID, PHONE = "100000000000033@lid", "5511900000033@s.whatsapp.net"
# A stored record's key, version by version (evolution-rest.md §2.8), and the chat it belongs to.
STORED_KEYS = {
    "2.2.x": ({"remoteJid": LID}, LID),  # raw Baileys-6 key: no phone anywhere
    "2.3.2": ({"remoteJid": PHONE, "previousRemoteJid": LID}, PHONE),  # swapped before the write
    "2.3.4": ({"remoteJid": LID, "remoteJidAlt": PHONE}, PHONE),
    "2.3.7": ({"remoteJid": LID, "remoteJidAlt": PHONE, "addressingMode": "lid"}, PHONE),
    "2.4.0-rc": ({"remoteJid": LID, "remoteJidAlt": PHONE, "addressingMode": "lid"}, PHONE),
}


@pytest.mark.parametrize("version", sorted(STORED_KEYS))
async def test_stored_records_of_every_version_land_in_the_right_chat(
    version: str, deployment: Deployment, conn: asyncpg.Connection, evolution: FakeEvolution
) -> None:
    key, chat = STORED_KEYS[version]
    record = stored("VS1", T0 + 10, "oi", **key)
    if version == "2.4.0-rc":  # contextInfo is the device-list metadata; the text lost its quote
        device = {"deviceListMetadata": {"senderTimestamp": "1781517000"}}
        record["contextInfo"] = device
        record["message"] = {"conversation": "oi", "messageContextInfo": device}
    if version == "2.2.x":
        record["pushName"] = None  # returned as stored (2.3.0+ invents one)
    evolution.records["acme-main"] = [record]
    done = await _fill_first_minutes(conn, evolution)
    assert done.new == 1
    got = (await deployment.message("acme", "acme-main", "VS1")).json()
    assert (got["chat_jid"], got["text"], got["origin"]) == (chat, "oi", "backfill")


async def test_a_reconnect_during_a_running_job_is_asked_for_once_it_ends(
    conn: asyncpg.Connection, pool: asyncpg.Pool, database_url: str, evolution: FakeEvolution
) -> None:
    ids, job_id = await _queued(conn, evolution, "RR", 2)
    run = runner(pool, database_url)
    job = await run.claim(job_id)  # running
    assert job is not None
    settings = load_settings({}, database_url=database_url)
    triggers = backfill.Triggers(pool, settings, lambda: None)
    triggers._started = True  # this process started long ago (no start-up job here)
    instance_id = job.instance.instance_id
    await conn.execute("UPDATE instances SET state = 'close'")
    await triggers.states_changed([instance_id])
    down_at = await conn.fetchval("SELECT down_at FROM backfill_state")
    assert down_at is not None
    await conn.execute("UPDATE instances SET state = 'open'")
    await triggers.states_changed([instance_id])
    # a job is running: none is added, and when it went down is not forgotten
    assert await conn.fetchval("SELECT count(*) FROM backfill_jobs") == 1
    assert await conn.fetchval("SELECT down_at FROM backfill_state") == down_at
    assert triggers._changed == {instance_id}
    assert await run.execute(job) == "done"
    await triggers.tick()  # the next look
    rows = await conn.fetch("SELECT * FROM backfill_jobs WHERE state = 'queued'")
    margin = timedelta(seconds=settings.backfill_margin_seconds)
    # one job, covering the outage (the tick's first sweep may have widened it further back)
    assert [r["reason"] for r in rows] == ["reconnect"]
    assert rows[0]["window_from"] <= down_at - margin < down_at < rows[0]["window_to"]
    assert await conn.fetchval("SELECT down_at FROM backfill_state") is None
    await _stored_once(conn, ids)
