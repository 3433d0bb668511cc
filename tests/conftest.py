"""Shared fixtures: real Postgres (embedded, or SENSE_TEST_DATABASE_URL) and real Redis
(embedded, or SENSE_TEST_REDIS_URL). A service that cannot be started is an error, not a skip."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

from service import db

DATA_TABLES = [
    "messages",
    "message_search",
    "lid_map",
    "contacts",
    "chats",
    "groups",
    "events",
    "quarantine",
    "instances",
    "sources",
    "tenants",
]
TEST_CONNECTION = "sense-test"  # the application_name of the tests' own connections
# the reconciler's watermark (migration 0009) back before any test's messages
RESET_RECONCILER = "UPDATE sense_reconcile SET content_at = '2000-01-01', seq = 0"


@pytest.fixture(scope="session")
def services_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("services")


@pytest.fixture(scope="session")
def database_url(services_dir: Path) -> Iterator[str]:
    """A freshly created, migrated database for this test session."""
    external = os.environ.get("SENSE_TEST_DATABASE_URL")
    server = None
    if external:
        admin_url = external
    else:
        from service.embedded import EmbeddedPostgres

        server = EmbeddedPostgres(services_dir)
        admin_url = server.admin_url
    name = f"sense_test_{uuid.uuid4().hex[:10]}"

    async def create() -> str:
        conn = await asyncpg.connect(admin_url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        url = _with_database(admin_url, name)
        conn = await db.connect(url)
        try:
            await db.migrate(conn)
        finally:
            await conn.close()
        return url

    url = asyncio.run(create())
    yield url

    async def drop() -> None:
        conn = await asyncpg.connect(admin_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(drop())
    if server is not None:
        server.stop()


def _with_database(url: str, name: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


@pytest.fixture(scope="session")
def redis_server(services_dir: Path) -> Iterator[object]:
    external = os.environ.get("SENSE_TEST_REDIS_URL")
    if external:
        yield external
        return
    from service.embedded import EmbeddedRedis

    server = EmbeddedRedis(services_dir).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server: object) -> str:
    return redis_server if isinstance(redis_server, str) else redis_server.url  # type: ignore[attr-defined]


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to a clean database (all data tables emptied before the test)."""
    connection = await db.connect(
        database_url, server_settings={"application_name": TEST_CONNECTION}
    )
    await connection.execute(f"TRUNCATE {', '.join(DATA_TABLES)} CASCADE")
    await connection.execute(RESET_RECONCILER)
    try:
        yield connection
    finally:
        await connection.close()


@contextlib.asynccontextmanager
async def database_down(database_url: str) -> AsyncIterator[None]:
    """The test database unreachable, as it is to a server whose Postgres went away: it refuses
    new connections and every open one (except the test's own) is cut. Back on exit."""
    name = urlsplit(database_url).path.lstrip("/")
    admin = await asyncpg.connect(_with_database(database_url, "postgres"))
    try:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = $1 AND application_name <> $2",
            name,
            TEST_CONNECTION,
        )
        yield
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close()
