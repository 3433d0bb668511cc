"""Backfill against a stand-in Evolution REST server (a real HTTP server in a thread) answering
findMessages as 2.3.7 does (evolution-rest.md §2): ISO window, page/offset paging newest first,
stored keys with @lid and remoteJidAlt, statuses in MessageUpdate[], 401, 404, LICENSE_REQUIRED."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import asyncpg
import pytest

from service import admin, backfill
from tests.integration.conftest import Deployment, upsert

KEY = "EVO-GLOBAL-KEY"
T0 = 1_781_517_600  # 2026-06-15T10:00:00Z


class FakeEvolution:
    def __init__(self) -> None:
        self.records: dict[str, list[dict[str, Any]]] = {}
        self.license_required = False
        self.calls: list[dict[str, Any]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.calls.append(body)
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

            def _send(self, status: int, doc: Any) -> None:
                raw = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def evolution() -> Iterator[FakeEvolution]:
    fake = FakeEvolution()
    thread = threading.Thread(target=fake.server.serve_forever, daemon=True)
    thread.start()
    yield fake
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
