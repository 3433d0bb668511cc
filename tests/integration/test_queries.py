"""Every named query parses and plans against the migrated schema (procrastinate's habit): a
column renamed in a migration but not in a query fails here, not in production."""

from __future__ import annotations

import asyncpg
import pytest

from service import db

# Statements that are not single preparable queries: run them instead.
MULTI_STATEMENT = {"create_staging"}


def test_query_files_define_names() -> None:
    names = db.queries()
    assert "upsert_messages" in names and "stream_messages" in names
    assert all(body for body in names.values()), "a query name without a body"


@pytest.mark.parametrize("name", sorted(set(db.queries()) - MULTI_STATEMENT))
async def test_query_prepares(conn: asyncpg.Connection, name: str) -> None:
    async with conn.transaction():
        await conn.execute(db.q("create_staging"))  # the writer's temp tables
        try:
            await conn.prepare(db.q(name))
        except asyncpg.PostgresError as exc:
            pytest.fail(f"query {name!r} does not fit the schema: {exc}")


def test_migrations_are_numbered_forward() -> None:
    versions = [version for version, _, _ in db.migration_files()]
    assert versions == sorted(set(versions)), "two migrations share a number"
    assert versions[0] == 1
