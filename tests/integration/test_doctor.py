"""`sense doctor` against real Postgres and Redis and a stand-in Evolution server answering
`GET /` and `GET /instance/fetchInstances` as evolution-rest.md §1 shows them."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from typing import Any

import asyncpg
import pytest
import redis

from service import admin
from service.doctor import Doctor, Report, render
from service.settings import load_settings
from tests.integration.conftest import upsert
from tests.integration.doubles import JsonHandler

KEY = "GLOBAL-KEY"


class FakeEvolution:
    def __init__(self) -> None:
        self.instances: list[dict[str, Any]] = []
        fake = self

        class Handler(JsonHandler):
            def do_GET(self) -> None:
                if self.path == "/":
                    return self._send(200, {"status": 200, "version": "2.3.7"})
                if self.path.startswith("/instance/fetchInstances"):
                    if self.headers.get("apikey") != KEY:
                        return self._send(
                            401, {"status": 401, "response": {"message": "Unauthorized"}}
                        )
                    return self._send(200, fake.instances)
                return self._send(404, {"status": 404})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def evolution() -> Iterator[FakeEvolution]:
    fake = FakeEvolution()
    threading.Thread(target=fake.server.serve_forever, daemon=True).start()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


def instance(name: str, status: str = "open", stored: int = 10) -> dict[str, Any]:
    return {
        "id": f"id-{name}",
        "name": name,
        "connectionStatus": status,
        "_count": {"Message": stored},
    }


async def _setup(conn: asyncpg.Connection, evolution: FakeEvolution, key: str = KEY) -> None:
    await admin.create_tenant(conn, "acme")
    await admin.create_source(conn, "evo", False, evolution.url, key)
    await admin.add_instance(conn, "acme", "evo", "acme-main", None, None)
    tenant, inst = await conn.fetchrow("SELECT tenant_id, instance_id FROM instances")
    await conn.execute(
        "INSERT INTO chats (tenant_id, instance_id, chat_jid, chat_type, last_message_ts)"
        " VALUES ($1, $2, '5511900000001@s.whatsapp.net', 'user', now())",
        tenant,
        inst,
    )


async def diagnose(database_url: str, redis_url: str, wait: float = 10.0) -> Report:
    settings = load_settings({}, database_url=database_url, redis_url=redis_url)
    return await Doctor(settings, timeout=wait).run()


def checks(report: Report) -> dict[str, Any]:
    return {c.name: c for c in report.checks}


@pytest.fixture
def heartbeat(redis_url: str) -> Iterator[None]:
    """A worker polling the queues (Dramatiq's heartbeat set)."""
    client = redis.Redis.from_url(redis_url)
    client.zadd("dramatiq:__heartbeats__", {"test-worker": int(time.time() * 1000)})
    yield
    client.zrem("dramatiq:__heartbeats__", "test-worker")
    client.close()


async def test_a_healthy_install_is_all_green(
    conn: asyncpg.Connection,
    evolution: FakeEvolution,
    database_url: str,
    redis_url: str,
    heartbeat: None,
) -> None:
    await _setup(conn, evolution)
    evolution.instances = [instance("acme-main")]
    report = await diagnose(database_url, redis_url)
    assert report.ok, render(report)
    found = checks(report)
    assert found["evolution evo"].detail == "reachable, version 2.3.7"
    assert found["evolution evo stores messages"].ok
    assert render(report).endswith("all good")


@pytest.fixture
def no_worker(redis_url: str) -> None:
    """No worker polling (heartbeats other tests' workers left in the shared Redis, gone)."""
    client = redis.Redis.from_url(redis_url)
    client.delete("dramatiq:__heartbeats__")
    client.close()


async def test_each_problem_is_named_with_its_fix(
    conn: asyncpg.Connection,
    evolution: FakeEvolution,
    database_url: str,
    redis_url: str,
    no_worker: None,
) -> None:
    await _setup(conn, evolution)
    await conn.execute("UPDATE chats SET last_message_ts = now() - interval '3 hours'")
    evolution.instances = [instance("acme-main", stored=0), instance("stranger")]
    await conn.execute(
        "INSERT INTO quarantine (source_id, instance_name, event, reason, body)"
        " SELECT source_id, 'stranger', 'messages.upsert', 'unknown instance', $1::bytea"
        " FROM sources",
        json.dumps(upsert("stranger", "Q1")).encode(),
    )
    await conn.execute(
        "INSERT INTO endpoints (tenant_id, url, events, secret, position_xid, failing_since)"
        " SELECT tenant_id, 'https://crm.example.com/in', '{message.created}', 'whsec_x',"
        " '1'::xid8, now() - interval '2 hours' FROM tenants"
    )
    report = await diagnose(database_url, redis_url)
    assert not report.ok
    found = checks(report)
    problems = {c.name for c in report.checks if not c.ok}
    assert problems == {
        "workers",
        "quarantine",
        "fan-out endpoints",
        "evolution evo instances",
        "evolution evo stores messages",
        "evolution evo events",
    }, render(report)
    assert "sense worker" in (found["workers"].fix or "")
    assert "evo/stranger (1)" in found["quarantine"].detail
    assert "stranger" in found["evolution evo instances"].detail
    assert "DATABASE_SAVE_DATA_NEW_MESSAGE=true" in (
        found["evolution evo stores messages"].fix or ""
    )
    assert "acme-main" in found["evolution evo events"].detail
    assert "crm.example.com" in found["fan-out endpoints"].detail
    text = render(report)
    assert "✗ workers:" in text and "    fix: " in text and text.endswith("6 problem(s)")


async def test_a_wrong_key_and_an_unreachable_server(
    conn: asyncpg.Connection, evolution: FakeEvolution, database_url: str, redis_url: str
) -> None:
    await _setup(conn, evolution, key="WRONG")
    await admin.create_source(conn, "gone", False, "http://127.0.0.1:9", KEY)
    report = await diagnose(database_url, redis_url, wait=2)
    found = checks(report)
    assert not found["evolution evo key"].ok and "401" in found["evolution evo key"].detail
    assert "--evolution-apikey" in (found["evolution evo key"].fix or "")
    assert not found["evolution gone"].ok and "unreachable" in found["evolution gone"].detail


async def test_the_cli_exits_non_zero_on_a_problem_and_speaks_json(
    conn: asyncpg.Connection,
    evolution: FakeEvolution,
    database_url: str,
    redis_url: str,
    no_worker: None,
) -> None:
    await _setup(conn, evolution)
    evolution.instances = [instance("acme-main")]
    env = {**os.environ, "SENSE_DATABASE_URL": database_url, "SENSE_REDIS_URL": redis_url}

    def sense(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "service.cli", "doctor", *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)

    out = await asyncio.to_thread(sense, "--json")
    assert out.returncode == 1, out.stderr  # no worker is running
    doc = json.loads(out.stdout)
    assert doc["ok"] is False
    assert {"name", "ok", "detail", "fix"} <= set(doc["checks"][0])
    assert [c["name"] for c in doc["checks"] if not c["ok"]] == ["workers"]
    human = await asyncio.to_thread(sense)
    assert human.returncode == 1 and "✓ database: reachable" in human.stdout
