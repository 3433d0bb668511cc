"""The registry of one process following changes made elsewhere (by NOTIFY): its LISTEN
connection cut and back, an instance's apikey changed, one instance name on two sources."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
from starlette.applications import Starlette

from service import admin
from tests.integration.conftest import Deployment, running_app, upsert
from tests.integration.polling import eventually

# the registry's LISTEN connection, as pg_stat_activity shows it (its last statement)
LISTENERS = (
    "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
    " AND query LIKE 'LISTEN %sense_registry%' ORDER BY pid"
)


async def change_apikey(conn: asyncpg.Connection, instance: str, key: str) -> None:
    """There is no admin route or CLI command to change an instance's key: an operator updates
    its row (the key itself, or its hash where keys are kept hashed), and the registry trigger
    notifies every process."""
    hashed = await conn.fetchval(
        "SELECT count(*) FROM information_schema.columns"
        " WHERE table_name = 'instances' AND column_name = 'apikey_hash'"
    )
    if hashed:
        await conn.execute(
            "UPDATE instances SET apikey_hash = sha256(convert_to($2, 'UTF8')) WHERE name = $1",
            instance,
            key,
        )
    else:
        await conn.execute("UPDATE instances SET apikey = $2 WHERE name = $1", instance, key)


async def listeners(conn: asyncpg.Connection) -> list[int]:
    return [r["pid"] for r in await conn.fetch(LISTENERS)]


@contextlib.asynccontextmanager
async def deployment_of(app: Starlette) -> AsyncIterator[Deployment]:
    """Tenant acme and source evo, registered through ``app``'s admin API."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        d = Deployment(client)
        await d.tenant("acme")
        await d.source("evo")
        yield d


async def own_listener(app: Starlette) -> int | None:
    """The backend pid of ``app``'s registry LISTEN connection (None while it has none): the
    test database is shared, so another process's listener may be seen there too."""
    listener = app.state.services.registry._listener
    return None if listener is None or listener.is_closed() else listener.get_server_pid()


async def _idle_listener(app: Starlette, conn: asyncpg.Connection) -> int:
    """The pid of the registry's LISTEN connection, once the process is not reloading its
    registry (no pool connection in use): cut then, it is cut while waiting for a NOTIFY."""
    pool: asyncpg.Pool = app.state.services.pool
    pid = await eventually(lambda: own_listener(app), lambda p: p is not None)
    await eventually(lambda: listeners(conn), lambda p: pid in p)  # it has LISTENed

    async def in_use() -> int:
        await conn.fetchval("SELECT 1")  # a round trip: the reload after LISTEN has begun
        return pool.get_size() - pool.get_idle_size()

    await eventually(in_use, lambda n: n == 0)
    return pid


async def test_a_cut_registry_listener_is_replaced_and_later_registrations_are_routed(
    conn: asyncpg.Connection, database_url: str
) -> None:
    # registered before the process starts: no NOTIFY is on its way when the listener is cut
    d = Deployment(httpx.AsyncClient())
    d.tokens["acme"] = (await admin.create_tenant(conn, "acme")).token
    d.secrets["evo"] = (await admin.create_source(conn, "evo")).secret
    # a safety-net refresh that never comes during the test: only NOTIFY can tell the process
    async with running_app(database_url, registry_refresh_seconds=3600) as app:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            d.client = client
            before = await _idle_listener(app, conn)
            assert await conn.fetchval("SELECT pg_terminate_backend($1)", before)
            # the process follows the registry again: a new LISTEN connection, the cut one gone
            after = await eventually(lambda: own_listener(app), lambda p: p not in (None, before))
            await eventually(lambda: listeners(conn), lambda p: after in p and before not in p)
            # registered behind this process's back (as the CLI or another server does): only
            # the NOTIFY tells it
            await admin.add_instance(conn, "acme", "evo", "late-comer")
            posted: list[str] = []

            async def post() -> int:
                posted.append(f"LC{len(posted)}")
                return (await d.post(upsert("late-comer", posted[-1]))).status_code

            await eventually(post, lambda status: status == 200)
            assert (await d.message("acme", "late-comer", posted[-1])).status_code == 200


async def test_a_changed_apikey_refuses_the_old_key(
    conn: asyncpg.Connection, database_url: str
) -> None:
    async with running_app(database_url) as app:  # safety-net refresh 30 s: NOTIFY it is
        async with deployment_of(app) as d:
            assert (await d.instance("acme", "evo", "keyed", apikey="OLD-KEY")).status_code == 201
            seen: list[str] = []

            def keyed(key: str | None) -> dict[str, Any]:
                body = upsert("keyed", f"K{len(seen)}")
                body["apikey"] = key
                seen.append(body["data"]["key"]["id"])
                return body

            assert (await d.post(keyed("OLD-KEY"))).status_code == 200
            assert (await d.post(keyed("NEW-KEY"))).status_code == 401
            await change_apikey(conn, "keyed", "NEW-KEY")

            async def old_key() -> int:
                return (await d.post(keyed("OLD-KEY"))).status_code

            await eventually(old_key, lambda status: status == 401)
            assert (await d.post(keyed("NEW-KEY"))).status_code == 200
            assert (await d.post(keyed(None))).status_code == 200  # no key presented: not checked
            assert (await d.post(keyed("OLD-KEY"))).status_code == 401
            # the refused posts left nothing behind
            assert await conn.fetchval("SELECT count(*) FROM quarantine") == 0
            stored = await conn.fetchval("SELECT count(*) FROM messages")
            accepted = await conn.fetchval(
                "SELECT count(*) FROM messages WHERE message_id = ANY($1::text[])",
                [seen[0], seen[-3], seen[-2]],
            )
            assert accepted == 3
            # the polls with the old key that were accepted before the change reached the
            # process are stored too, nothing else is
            assert stored == accepted + (len(seen) - 6)


async def test_one_instance_name_on_two_sources_goes_to_each_sources_tenant(
    deployment: Deployment, conn: asyncpg.Connection
) -> None:
    await deployment.source("evo-2")
    # before either registration: quarantined, per source
    early = upsert("shared", "EARLY", "antes, pela evo-2")
    assert (await deployment.post(early, source="evo-2")).status_code == 202
    assert (await deployment.instance("acme", "evo", "shared")).status_code == 201
    assert (await deployment.instance("globex", "evo-2", "shared")).status_code == 201
    for source, text in (("evo", "pela evo"), ("evo-2", "pela evo-2")):
        r = await deployment.post(upsert("shared", "SAME-ID", text), source=source)
        assert r.status_code == 200, r.text
    acme = (await deployment.message("acme", "shared", "SAME-ID")).json()
    globex = (await deployment.message("globex", "shared", "SAME-ID")).json()
    assert acme["text"] == "pela evo" and globex["text"] == "pela evo-2"

    # the quarantined event went home to evo-2's tenant only (replayed on registration)
    async def early_at_globex() -> int:
        return (await deployment.message("globex", "shared", "EARLY")).status_code

    await eventually(early_at_globex, lambda status: status == 200)
    assert (await deployment.message("acme", "shared", "EARLY")).status_code == 404
    rows = await conn.fetch(
        "SELECT t.name, m.message_id FROM messages m JOIN tenants t USING (tenant_id)"
        " ORDER BY t.name, m.message_id"
    )
    assert [tuple(r) for r in rows] == [
        ("acme", "SAME-ID"),
        ("globex", "EARLY"),
        ("globex", "SAME-ID"),
    ]
