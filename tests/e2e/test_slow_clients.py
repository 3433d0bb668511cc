"""Connection-level defence of `sense serve` itself: a client that trickles its headers or its
body is cut at the deadline (408 for a body), and while slow clients hold connections a normal
webhook is still answered. The load figure (5,000 slow connections) is in bench/RESULTS.md."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.e2e.conftest import Server, sense, start_server
from tests.integration.conftest import upsert

DEADLINE = 1  # SENSE_HEADER_TIMEOUT_SECONDS and SENSE_BODY_TIMEOUT_SECONDS in these tests
CAP = 40  # SENSE_MAX_CONNECTIONS


@pytest.fixture(scope="module")
def strict(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(
        database_url,
        tmp_path_factory.mktemp("slow"),
        workers=1,
        SENSE_HEADER_TIMEOUT_SECONDS=str(DEADLINE),
        SENSE_BODY_TIMEOUT_SECONDS=str(DEADLINE),
        SENSE_MAX_CONNECTIONS=str(CAP),
    )
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def hook(strict: Server) -> str:
    tag = uuid.uuid4().hex[:8]
    sense("tenant", "create", f"slow-{tag}", env=strict.env)
    source = sense("source", "create", f"slow-src-{tag}", env=strict.env)
    sense(
        "instance",
        "add",
        "--tenant",
        f"slow-{tag}",
        "--source",
        f"slow-src-{tag}",
        "slow-i",
        env=strict.env,
    )
    return str(source["webhook_path"])


async def _trickle(server: Server, head: bytes, drip: bytes) -> bytes:
    """Send ``head``, then ``drip`` every 0.2 s until the server answers and closes; returns
    what it sent back. The client never stops by itself, so only the server's cut ends this
    (well within the read's 20-deadline timeout)."""
    host, port = server.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(head)

    async def drip_forever() -> None:
        while True:
            await asyncio.sleep(0.2)
            writer.write(drip)
            await writer.drain()

    dripping = asyncio.create_task(drip_forever())
    try:
        async with asyncio.timeout(20 * DEADLINE):
            answer = await reader.read()  # until the server closes the connection
    finally:
        dripping.cancel()
        writer.close()
    return answer


async def test_a_body_sent_byte_by_byte_is_cut_at_the_deadline_with_408(
    strict: Server, hook: str
) -> None:
    head = (
        f"POST {hook} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Content-Length: 5000\r\n\r\n{"
    ).encode()
    answer = await _trickle(strict, head, b" ")
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 408 Request Timeout", answer[:200]
    assert b"connection: close" in rest.lower()
    assert json.loads(rest.partition(b"\r\n\r\n")[2])["error"] == "body_timeout"


async def test_an_admin_body_sent_byte_by_byte_gets_408_too(strict: Server) -> None:
    head = (
        "POST /api/admin/tenants HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer {strict.env['SENSE_ADMIN_TOKEN']}\r\n"
        'Content-Length: 5000\r\n\r\n{"name": '
    ).encode()
    answer = await _trickle(strict, head, b" ")
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]


async def test_headers_sent_line_by_line_are_cut_at_the_deadline(strict: Server, hook: str) -> None:
    head = f"POST {hook} HTTP/1.1\r\nHost: x\r\n".encode()
    answer = await _trickle(strict, head, b"X-Slow: y\r\n")
    # the server gives up on the request: a 408 or just the connection closed, never a 2xx
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408 "), answer[:200]


async def test_slow_clients_filling_every_connection_slot_are_cut_and_a_webhook_gets_in(
    strict: Server, hook: str
) -> None:
    """More slow clients than the server holds connections (SENSE_MAX_CONNECTIONS): the
    deadlines free the slots, so a normal webhook queued behind them is still answered."""
    host, port = strict.url.removeprefix("http://").split(":")
    held = []
    for n in range(2 * CAP):  # half stuck in their headers, half in their body, forever
        _, writer = await asyncio.open_connection(host, int(port))
        if n % 2:
            writer.write(f"POST {hook} HTTP/1.1\r\nHost: x\r\n".encode())
        else:
            writer.write(
                f"POST {hook} HTTP/1.1\r\nHost: x\r\nContent-Length: 900\r\n\r\n{{".encode()
            )
        held.append(writer)
    try:
        async with httpx.AsyncClient(base_url=strict.url, timeout=15 * DEADLINE) as http:
            for n in range(5):
                r = await http.post(hook, json=upsert("slow-i", f"NORMAL{n}"))
                assert r.status_code == 200, r.text
    finally:
        for writer in held:
            writer.close()


def test_the_deadlines_are_settings_checked_at_start() -> None:
    from service.settings import SettingsError, load_settings

    with pytest.raises(SettingsError, match="SENSE_HEADER_TIMEOUT_SECONDS"):
        load_settings({"SENSE_HEADER_TIMEOUT_SECONDS": "120"})
    with pytest.raises(SettingsError, match="SENSE_BODY_TIMEOUT_SECONDS"):
        load_settings({"SENSE_BODY_TIMEOUT_SECONDS": "0"})
    with pytest.raises(SettingsError, match="SENSE_MAX_CONNECTIONS"):
        load_settings({"SENSE_MAX_CONNECTIONS": "-1"})
