"""Postgres access: the connection pool, named queries and forward-only migrations."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from typing import Any

import asyncpg

MIGRATIONS_LOCK = 0x53454E5345  # advisory lock key: only one migrator at a time
REPLAY_LOCK = 0x53454E5352  # advisory lock key: one quarantine replay chunk at a time


class Unavailable(Exception):
    """The pool could not open a connection (server down, not accepting connections, refused
    our role...): the database is unavailable, whatever the server's reason."""


# Errors that mean "the database is not there right now" (answer 503, retry later), as opposed
# to errors in what we asked it to do.
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    Unavailable,
    OSError,
    TimeoutError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.InterfaceError,
    # a connection the server cut while idle can fail its next query this way (its state
    # machine saw the FATAL first): the connection is broken, the data is not
    asyncpg.exceptions.InternalClientError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.ReadOnlySQLTransactionError,
)

_NAME = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)


@cache
def queries() -> dict[str, str]:
    """The named queries of every ``sql/*.sql`` file (``-- name: x`` starts query ``x``);
    a name defined twice is an error."""
    found: dict[str, str] = {}
    folder = resources.files("service").joinpath("sql")
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".sql"):
            continue
        parts = _NAME.split(entry.read_text())
        for name, body in zip(parts[1::2], parts[2::2], strict=True):
            if name in found:
                raise ValueError(f"query {name!r} is defined twice (in {entry.name})")
            found[name] = body.strip()
    return found


def q(name: str) -> str:
    return queries()[name]


def migration_files() -> list[tuple[int, str, str]]:
    folder = resources.files("service").joinpath("sql/migrations")
    out = []
    for entry in folder.iterdir():
        match = re.match(r"^(\d{4})_(\w+)\.sql$", entry.name)
        if match:
            out.append((int(match.group(1)), entry.name, entry.read_text()))
    return sorted(out)


async def migrate(conn: asyncpg.Connection) -> list[str]:
    """Apply the migrations not applied yet, in order; returns the names applied."""
    applied: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", MIGRATIONS_LOCK)
    try:
        await conn.execute(q("create_migrations_table"))
        done = {r["version"] for r in await conn.fetch(q("applied_migrations"))}
        for version, name, sql in migration_files():
            if version in done:
                continue
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute(q("record_migration"), version, name)
            applied.append(name)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATIONS_LOCK)
    return applied


async def pending_migrations(conn: asyncpg.Connection) -> list[str]:
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    done = {r["version"] for r in await conn.fetch(q("applied_migrations"))} if exists else set()
    return [name for version, name, _ in migration_files() if version not in done]


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec(
        "jsonb", schema="pg_catalog", encoder=_encode_json, decoder=_decode_json, format="text"
    )


def _encode_json(value: Any) -> str:
    import msgspec

    if isinstance(value, str | bytes):
        return value.decode() if isinstance(value, bytes) else value
    return msgspec.json.encode(value).decode()


def _decode_json(value: str) -> Any:
    import msgspec

    return msgspec.json.decode(value)


async def connect(dsn: str, **kwargs: Any) -> asyncpg.Connection:
    conn = await asyncpg.connect(dsn, **kwargs)
    await _init_connection(conn)
    return conn


async def _pool_connect(*args: Any, **kwargs: Any) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(*args, **kwargs)
    except Exception as exc:
        raise Unavailable(f"cannot connect to the database: {exc.__class__.__name__}") from exc


async def create_pool(dsn: str, size: int, connect_timeout: float) -> asyncpg.Pool:
    """The pool of the read side and the bookkeeping; a connection it cannot open raises
    ``Unavailable`` (answered 503 + Retry-After, see service/http.py)."""
    pool = await asyncpg.create_pool(
        dsn,
        connect=_pool_connect,
        server_settings={"application_name": "sense-api"},
        min_size=1,
        max_size=size,
        init=_init_connection,
        timeout=connect_timeout,
        command_timeout=connect_timeout * 3,
        max_inactive_connection_lifetime=60.0,
    )
    assert pool is not None
    return pool
