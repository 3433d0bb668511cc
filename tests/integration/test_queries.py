"""Every named query parses and plans against the migrated schema (procrastinate's habit): a
column renamed in a migration but not in a query fails here, not in production."""

from __future__ import annotations

import hashlib

import asyncpg
import pytest

from service import db


def test_query_files_define_names() -> None:
    names = db.queries()
    assert "ingest" in names and "stream_instances" in names
    assert all(body for body in names.values()), "a query name without a body"


@pytest.mark.parametrize("name", sorted(db.queries()))
async def test_query_prepares(conn: asyncpg.Connection, name: str) -> None:
    try:
        await conn.prepare(db.q(name))
    except asyncpg.PostgresError as exc:
        pytest.fail(f"query {name!r} does not fit the schema: {exc}")


# Released migrations, as deployed databases ran them: never edited again (a deployed database
# would not run the change), only followed by new ones. 2 and 5 were never used.
RELEASED = {
    1: "6304aff6e3c9e716823b3320f514561ce3198ea4dc83df7d257bc29fdb05ea63",
    3: "f4e969727f8d9a2b04a527113c084a89b35cc7b4d375dbf0ad3c4bec1cdec632",
    4: "41f7a7956d721b9989b08452befa61d5c86d78543c22b301c27f39aeeb248b78",
    6: "03b222552d9f2e7d664110b47e23488273519ba648ee7f6f90a590fcccf046a6",
    7: "de7ec92a77f083433efe9088fc20e2852c0b71ebe3501b45e6ec1b0b6b89a88a",
    8: "fc2b925b67beb7daef5d7e027a1f0a37b2f948e62befe1a1822ccd05992dcefa",
    9: "3f63784722a86aa51b0ab4876b234f94887e65086c74d2153a9fb6f60397fe80",
}


def test_migrations_are_numbered_forward_without_gaps() -> None:
    versions = [version for version, _, _ in db.migration_files()]
    assert versions == sorted(set(versions)), "two migrations share a number"
    last_released = max(RELEASED)
    assert [v for v in versions if v <= last_released] == sorted(RELEASED)
    new = [v for v in versions if v > last_released]
    assert new == list(range(last_released + 1, last_released + 1 + len(new))), (
        "a gap in the migration numbers"
    )


def test_released_migrations_are_never_edited() -> None:
    for version, name, sql in db.migration_files():
        if version in RELEASED:
            digest = hashlib.sha256(sql.encode()).hexdigest()
            assert digest == RELEASED[version], f"{name} changed after its release"
