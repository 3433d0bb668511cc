"""Every captured-shape fixture in tests/fixtures/evolution, posted through the real app.

Each fixture lists its requests (posted in order) and what must hold afterwards; the format is
in the README beside the fixtures. Every instance a fixture registers gets a tenant of its own.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.integration.conftest import Deployment

FOLDER = Path(__file__).parent.parent / "fixtures" / "evolution"
FIXTURES = sorted(FOLDER.glob("*.json"))
LOADED = {p.stem: json.loads(p.read_text()) for p in FIXTURES}

FIXTURE_KEYS = {
    "about",
    "covers",
    "order_free",
    "instances",
    "register_after",
    "requests",
    "expect",
}
REQUEST_KEYS = {"body", "raw_body", "path_suffix", "headers", "expect_status", "expect_json"}
EXPECT_KEYS = {
    "messages",
    "absent",
    "message_count",
    "chats",
    "chat_list",
    "instances",
    "events",
    "contacts",
    "groups",
    "quarantine",
    "db_excludes",
}
# Rows that could hold a message body: inline media must reach none of them.
DB_EXCLUDES_QUERY = """
SELECT (SELECT count(*) FROM messages AS m WHERE strpos(m::text, $1) > 0)
     + (SELECT count(*) FROM events AS e WHERE strpos(e::text, $1) > 0)
     + (SELECT count(*) FROM quarantine AS q
        WHERE strpos(q::text, $1) > 0 OR position(convert_to($1, 'UTF8') IN q.body) > 0)
"""


def test_the_corpus_is_there() -> None:
    assert len(FIXTURES) >= 60
    assert (FOLDER / "README.md").is_file()


@pytest.mark.parametrize("name", sorted(LOADED))
def test_fixture_is_well_formed(name: str) -> None:
    """A typo in a fixture must not turn an expectation into one that is never checked."""
    fixture = LOADED[name]
    assert set(fixture) <= FIXTURE_KEYS, set(fixture) - FIXTURE_KEYS
    assert fixture["requests"] and fixture.get("about") and fixture.get("covers")
    assert isinstance(fixture["order_free"], bool)
    assert not (fixture["order_free"] and fixture.get("register_after"))
    for request in fixture["requests"]:
        assert set(request) <= REQUEST_KEYS, set(request) - REQUEST_KEYS
        assert ("body" in request) != ("raw_body" in request)
        assert isinstance(request["expect_status"], int)
    expect = fixture["expect"]
    assert expect and set(expect) <= EXPECT_KEYS, set(expect) - EXPECT_KEYS


def _instance_spec(entry: str | dict[str, Any]) -> tuple[str, str | None]:
    if isinstance(entry, str):
        return entry, None
    return entry["name"], entry.get("apikey")


def _mismatches(wanted: Any, got: Any, path: str = "") -> list[str]:
    """Where ``got`` differs from ``wanted``; dicts are compared on wanted's keys only."""
    if isinstance(wanted, dict) and isinstance(got, dict):
        out: list[str] = []
        for k, v in wanted.items():
            if k not in got:
                out.append(f"{path}.{k}: missing (expected {v!r})")
            else:
                out.extend(_mismatches(v, got[k], f"{path}.{k}"))
        return out
    if wanted != got:
        return [f"{path or '$'}: expected {wanted!r}, got {got!r}"]
    return []


async def _register(d: Deployment, entry: str | dict[str, Any]) -> None:
    name, apikey = _instance_spec(entry)
    await d.tenant(f"tenant-of-{name}")
    r = await d.instance(f"tenant-of-{name}", "evo", name, apikey=apikey)
    assert r.status_code == 201, r.text


async def _wait_replayed(conn: asyncpg.Connection, name: str) -> None:
    """Registration replays quarantine in the background; wait until it has."""
    for _ in range(200):
        left = await conn.fetchval("SELECT count(*) FROM quarantine WHERE instance_name = $1", name)
        if left == 0:
            return
        await asyncio.sleep(0.025)
    raise AssertionError(f"quarantine of {name} was not replayed")


async def _post(d: Deployment, n: int, request: dict[str, Any]) -> None:
    raw = request.get("raw_body")
    url = f"/api/webhooks/evolution/{d.secrets['evo']}{request.get('path_suffix', '')}"
    headers = request.get("headers", {})
    if raw is not None:
        r = await d.client.post(url, content=raw.encode(), headers=headers)
    else:
        r = await d.client.post(url, json=request["body"], headers=headers)
    assert r.status_code == request["expect_status"], f"request {n}: {r.text}"
    if r.status_code >= 400:
        assert r.json()["error"] and r.json()["detail"]
    if "expect_json" in request:
        problems = _mismatches(request["expect_json"], r.json())
        assert not problems, f"request {n}: {problems}"


@pytest.mark.parametrize("name", sorted(LOADED))
async def test_fixture(name: str, client: Any, conn: asyncpg.Connection) -> None:
    """The requests one after the other, in the order captured."""
    await _run(LOADED[name], client, conn, in_one_batch=False)


ORDER_FREE = sorted(n for n, f in LOADED.items() if f["order_free"])


@pytest.mark.parametrize("name", ORDER_FREE)
async def test_fixture_reversed_and_concurrent(
    name: str, client: Any, conn: asyncpg.Connection
) -> None:
    """Evolution keeps no order and retries on its own timers: the same requests, last first and
    all at once (so the group commit merges them into shared transactions), give the same
    result."""
    await _run(LOADED[name], client, conn, in_one_batch=True)


async def _run(
    fixture: dict[str, Any], client: Any, conn: asyncpg.Connection, in_one_batch: bool
) -> None:
    d = Deployment(client)
    await d.source("evo")
    for entry in fixture.get("instances", []):
        await _register(d, entry)
    requests = list(enumerate(fixture["requests"]))
    if in_one_batch:
        await asyncio.gather(*(_post(d, n, r) for n, r in reversed(requests)))
    else:
        for n, request in requests:
            await _post(d, n, request)
    for entry in fixture.get("register_after", []):
        await _register(d, entry)
        await _wait_replayed(conn, _instance_spec(entry)[0])
    expect = fixture["expect"]
    await _check_messages(d, expect)
    await _check_chats(d, expect)
    await _check_instances(d, expect)
    await _check_tables(d, conn, expect)


async def _check_messages(d: Deployment, expect: dict[str, Any]) -> None:
    for wanted in expect.get("messages", []):
        tenant = d.tenant_of[wanted["instance"]]
        got = await d.message(tenant, wanted["instance"], wanted["message_id"])
        assert got.status_code == 200, f"{wanted['message_id']}: {got.text}"
        problems = _mismatches(wanted, got.json())
        assert not problems, f"{wanted['message_id']}: {problems}"
        # a tenant sees only its own data
        for other in d.tokens:
            if other != tenant:
                r = await d.message(other, wanted["instance"], wanted["message_id"])
                assert r.status_code == 404
    for gone in expect.get("absent", []):
        tenant = d.tenant_of.get(gone["instance"])
        if tenant is None:  # an unregistered instance: nothing is filed under any tenant
            for t in d.tokens:
                r = await d.message(t, gone["instance"], gone["message_id"])
                assert r.status_code == 404
            continue
        r = await d.message(tenant, gone["instance"], gone["message_id"])
        assert r.status_code == 404, f"{gone['message_id']} should be absent: {r.text}"
        listing = await d.get("/api/v1/messages", tenant, instance=gone["instance"], limit=500)
        ids = [m["message_id"] for m in listing.json()["items"]]
        assert gone["message_id"] not in ids
    for instance, count in expect.get("message_count", {}).items():
        tenant = d.tenant_of[instance]
        listing = await d.get("/api/v1/messages", tenant, instance=instance, limit=500)
        items = listing.json()["items"]
        assert len(items) == count, [m["message_id"] for m in items]


async def _check_chats(d: Deployment, expect: dict[str, Any]) -> None:
    listed: dict[str, list[dict[str, Any]]] = {}
    for instance in {c["instance"] for c in expect.get("chats", [])} | set(
        expect.get("chat_list", {})
    ):
        r = await d.get("/api/v1/chats", d.tenant_of[instance], instance=instance)
        assert r.status_code == 200, r.text
        listed[instance] = r.json()["items"]
    for wanted in expect.get("chats", []):
        found = [c for c in listed[wanted["instance"]] if c["chat_jid"] == wanted["chat_jid"]]
        assert len(found) == 1, (
            wanted["chat_jid"],
            [c["chat_jid"] for c in listed[wanted["instance"]]],
        )
        problems = _mismatches(wanted, found[0])
        assert not problems, f"chat {wanted['chat_jid']}: {problems}"
    for instance, jids in expect.get("chat_list", {}).items():
        assert sorted(c["chat_jid"] for c in listed[instance]) == sorted(jids)


async def _check_instances(d: Deployment, expect: dict[str, Any]) -> None:
    for wanted in expect.get("instances", []):
        r = await d.get("/api/v1/instances", d.tenant_of[wanted["name"]])
        found = [i for i in r.json()["items"] if i["name"] == wanted["name"]]
        assert len(found) == 1
        problems = _mismatches(wanted, found[0])
        assert not problems, f"instance {wanted['name']}: {problems}"


async def _instance_id(conn: asyncpg.Connection, name: str) -> Any:
    return await conn.fetchval("SELECT instance_id FROM instances WHERE name = $1", name)


async def _check_tables(d: Deployment, conn: asyncpg.Connection, expect: dict[str, Any]) -> None:
    """What has no read route of its own (kept events, contacts, groups, quarantine)."""
    for wanted in expect.get("events", []):
        rows = await conn.fetch(
            "SELECT data FROM events WHERE instance_id = $1 AND event = $2",
            await _instance_id(conn, wanted["instance"]),
            wanted["event"],
        )
        assert len(rows) == wanted["count"], (wanted, len(rows))
        if "data" in wanted:
            assert rows, wanted
            data = rows[0]["data"]
            problems = _mismatches(
                wanted["data"], json.loads(data) if isinstance(data, str) else data
            )
            assert not problems, f"event {wanted['event']}: {problems}"
    for wanted in expect.get("contacts", []):
        row = await conn.fetchrow(
            "SELECT jid, push_name, profile_pic_url FROM contacts "
            "WHERE instance_id = $1 AND jid = $2",
            await _instance_id(conn, wanted["instance"]),
            wanted["jid"],
        )
        assert row is not None, wanted
        problems = _mismatches({k: v for k, v in wanted.items() if k != "instance"}, dict(row))
        assert not problems, f"contact {wanted['jid']}: {problems}"
    for wanted in expect.get("groups", []):
        row = await conn.fetchrow(
            "SELECT group_jid, subject FROM groups WHERE instance_id = $1 AND group_jid = $2",
            await _instance_id(conn, wanted["instance"]),
            wanted["group_jid"],
        )
        assert row is not None, wanted
        problems = _mismatches({k: v for k, v in wanted.items() if k != "instance"}, dict(row))
        assert not problems, f"group {wanted['group_jid']}: {problems}"
    if "quarantine" in expect:
        assert await conn.fetchval("SELECT count(*) FROM quarantine") == expect["quarantine"]
    for text in expect.get("db_excludes", []):
        assert len(text) >= 16, "too short to mean anything"
        assert await conn.fetchval(DB_EXCLUDES_QUERY, text) == 0, f"{text[:30]}... is stored"
