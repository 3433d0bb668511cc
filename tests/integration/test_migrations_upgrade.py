"""Upgrading: a database migrated at an older release (with data in it), then migrated to head,
has exactly the schema of a database migrated from scratch — compared catalog by catalog
(tables, columns, indexes, constraints, triggers, functions, types, sequences, views, text
search configurations, extensions), not by pg_dump."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from service import db
from tests.integration.test_queries import RELEASED

# what is ours in the public schema: not the extensions' (vector, unaccent, btree_gin) objects
NOT_EXTENSIONS = (
    "NOT EXISTS (SELECT 1 FROM pg_depend dep WHERE dep.classid = {catalog}::regclass"
    " AND dep.objid = {oid} AND dep.deptype = 'e')"
)


def _ours(catalog: str, oid: str) -> str:
    return NOT_EXTENSIONS.format(catalog=f"'{catalog}'", oid=oid)


CATALOG: dict[str, str] = {
    "extensions": "SELECT extname, extversion FROM pg_extension ORDER BY 1",
    "relations": f"""
        SELECT c.relname, c.relkind::text, c.relpersistence::text, c.relrowsecurity, c.reloptions,
               am.amname, c.relispartition
        FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_am am ON am.oid = c.relam
        WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f', 'c', 'i')
          AND {_ours("pg_class", "c.oid")}
        ORDER BY 1""",
    "columns": f"""
        SELECT c.relname,
               row_number() OVER (PARTITION BY c.oid ORDER BY a.attnum) AS position,
               a.attname, format_type(a.atttypid, a.atttypmod) AS type, a.attnotnull,
               pg_get_expr(d.adbin, d.adrelid) AS default, a.attidentity::text,
               a.attgenerated::text,
               co.collname, a.attstattarget, a.attstorage::text, a.attcompression::text
        FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        LEFT JOIN pg_collation co ON co.oid = a.attcollation AND a.attcollation <> 100
        WHERE n.nspname = 'public' AND a.attnum > 0 AND NOT a.attisdropped
          AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'c')
          AND {_ours("pg_class", "c.oid")}
        ORDER BY 1, 2""",
    "indexes": """
        SELECT tablename, indexname, indexdef FROM pg_indexes
        WHERE schemaname = 'public' ORDER BY 1, 2""",
    "constraints": f"""
        SELECT coalesce(c.relname, t.typname) AS owner, k.conname, k.contype::text,
               pg_get_constraintdef(k.oid) AS definition, k.condeferrable, k.condeferred,
               k.convalidated
        FROM pg_constraint k
        JOIN pg_namespace n ON n.oid = k.connamespace
        LEFT JOIN pg_class c ON c.oid = k.conrelid
        LEFT JOIN pg_type t ON t.oid = k.contypid
        WHERE n.nspname = 'public' AND {_ours("pg_constraint", "k.oid")}
        ORDER BY 1, 2""",
    "triggers": """
        SELECT c.relname, t.tgname, pg_get_triggerdef(t.oid) AS definition, t.tgenabled::text
        FROM pg_trigger t
        JOIN pg_class c ON c.oid = t.tgrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' AND NOT t.tgisinternal
        ORDER BY 1, 2""",
    "functions": f"""
        SELECT p.proname, pg_get_function_identity_arguments(p.oid) AS arguments, p.prokind::text,
               CASE WHEN p.prokind <> 'a' THEN pg_get_functiondef(p.oid) END AS definition
        FROM pg_proc p
        JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = 'public' AND {_ours("pg_proc", "p.oid")}
        ORDER BY 1, 2""",
    "types": f"""
        SELECT t.typname, t.typtype::text, format_type(t.typbasetype, t.typtypmod) AS base,
               t.typnotnull, t.typdefault,
               (SELECT array_agg(e.enumlabel ORDER BY e.enumsortorder)
                FROM pg_enum e WHERE e.enumtypid = t.oid) AS labels
        FROM pg_type t
        JOIN pg_namespace n ON n.oid = t.typnamespace
        LEFT JOIN pg_class c ON c.oid = t.typrelid
        WHERE n.nspname = 'public' AND (c.oid IS NULL OR c.relkind = 'c')
          AND NOT (t.typcategory = 'A' AND t.typelem <> 0)
          AND {_ours("pg_type", "t.oid")}
        ORDER BY 1""",
    "sequences": """
        SELECT sequencename, data_type::text, start_value, min_value, max_value,
               increment_by, cycle, cache_size
        FROM pg_sequences WHERE schemaname = 'public' ORDER BY 1""",
    "views": """
        SELECT viewname, definition FROM pg_views WHERE schemaname = 'public' ORDER BY 1""",
    "text search": """
        SELECT c.cfgname, p.prsname, tt.alias,
               array_agg(d.dictname::text ORDER BY m.mapseqno) AS dictionaries
        FROM pg_ts_config c
        JOIN pg_namespace n ON n.oid = c.cfgnamespace
        JOIN pg_ts_parser p ON p.oid = c.cfgparser
        JOIN pg_ts_config_map m ON m.mapcfg = c.oid
        JOIN pg_ts_dict d ON d.oid = m.mapdict
        JOIN ts_token_type(c.cfgparser) tt ON tt.tokid = m.maptokentype
        WHERE n.nspname = 'public'
        GROUP BY 1, 2, 3 ORDER BY 1, 3""",
    "dictionaries": f"""
        SELECT d.dictname, t.tmplname, d.dictinitoption
        FROM pg_ts_dict d
        JOIN pg_namespace n ON n.oid = d.dictnamespace
        JOIN pg_ts_template t ON t.oid = d.dicttemplate
        WHERE n.nspname = 'public' AND {_ours("pg_ts_dict", "d.oid")}
        ORDER BY 1""",
    "policies": """
        SELECT c.relname, p.polname, p.polcmd::text, p.polpermissive,
               pg_get_expr(p.polqual, p.polrelid), pg_get_expr(p.polwithcheck, p.polrelid)
        FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid ORDER BY 1, 2""",
    "statistics": """
        SELECT s.stxname, pg_get_statisticsobjdef(s.oid)
        FROM pg_statistic_ext s JOIN pg_namespace n ON n.oid = s.stxnamespace
        WHERE n.nspname = 'public' ORDER BY 1""",
    "migrations": "SELECT version, name FROM schema_migrations ORDER BY 1",
}


async def catalog(conn: asyncpg.Connection) -> dict[str, list[tuple[Any, ...]]]:
    return {part: [tuple(r) for r in await conn.fetch(query)] for part, query in CATALOG.items()}


def _database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


Use = Callable[[asyncpg.Connection], Coroutine[Any, Any, Any]]


async def in_new_database(database_url: str, use: Use) -> Any:
    """``use(conn)`` on a new, empty database (dropped after)."""
    name = f"sense_upgrade_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(_database(database_url, "postgres"))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        try:
            conn = await db.connect(_database(database_url, name))
            try:
                return await use(conn)
            finally:
                await conn.close()
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def migrate_up_to(conn: asyncpg.Connection, last: int) -> list[str]:
    """What ``db.migrate`` did at the release whose newest migration was ``last``."""
    await conn.execute(db.q("create_migrations_table"))
    applied = []
    for version, name, sql in db.migration_files():
        if version <= last:
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute(db.q("record_migration"), version, name)
            applied.append(name)
    return applied


TENANT, SOURCE, INSTANCE = (uuid.UUID(int=n) for n in (1, 2, 3))


async def some_data(conn: asyncpg.Connection) -> None:
    """A little of everything, in columns every release has had."""
    await conn.execute(
        "INSERT INTO tenants (tenant_id, name, token_hash) VALUES ($1, 'acme', '\\x01')", TENANT
    )
    await conn.execute(
        "INSERT INTO sources (source_id, name, secret_hash) VALUES ($1, 'evo', '\\x02')", SOURCE
    )
    await conn.execute(
        "INSERT INTO instances (tenant_id, instance_id, source_id, name)"
        " VALUES ($1, $2, $3, 'acme-main')",
        TENANT,
        INSTANCE,
        SOURCE,
    )
    for n, text in enumerate(["Olá, tudo bem?", "Não recebi meu pedido", None]):
        await conn.execute(
            "INSERT INTO messages (tenant_id, instance_id, message_id, has_content, chat_jid,"
            " chat_type, sender_jid, type, text, message_ts, status, edited_text, edit_ts)"
            " VALUES ($1, $2, $3, $4, '5511999999999@s.whatsapp.net', 'user',"
            " '5511999999999@s.whatsapp.net', 'conversation', $5, now(), 20, $6, $7)",
            TENANT,
            INSTANCE,
            f"M{n}",
            text is not None,
            text,
            "editada" if n == 1 else None,
            1_700_000_000_000 if n == 1 else None,
        )
    await conn.execute(
        "INSERT INTO chats (tenant_id, instance_id, chat_jid, chat_type)"
        " VALUES ($1, $2, '5511999999999@s.whatsapp.net', 'user')",
        TENANT,
        INSTANCE,
    )
    for _ in range(2):  # the same event twice (a redelivery)
        await conn.execute(
            "INSERT INTO events (tenant_id, instance_id, event, data)"
            " VALUES ($1, $2, 'call', '{\"id\": \"C1\"}')",
            TENANT,
            INSTANCE,
        )
    await conn.execute(
        "INSERT INTO quarantine (source_id, instance_name, event, reason, body)"
        " VALUES ($1, 'newcomer', 'messages.upsert', 'unknown instance', '\\x7b7d')",
        SOURCE,
    )


@pytest.fixture(scope="module")
async def fresh(database_url: str) -> dict[str, list[tuple[Any, ...]]]:
    """The catalog of a database migrated from scratch to head."""

    async def migrated(conn: asyncpg.Connection) -> dict[str, list[tuple[Any, ...]]]:
        await db.migrate(conn)
        return await catalog(conn)

    return await in_new_database(database_url, migrated)


def test_the_catalog_covers_the_schema(fresh: dict[str, list[tuple[Any, ...]]]) -> None:
    """The dump sees what the migrations made (an empty part would compare equal to anything)."""
    tables = {r[0] for r in fresh["relations"] if r[1] == "r"}
    assert {"messages", "tenants", "instances", "quarantine", "schema_migrations"} <= tables
    assert {"sense_ingest", "sense_registry_notify"} <= {r[0] for r in fresh["functions"]}
    assert "messages_content_arrived" in {r[1] for r in fresh["triggers"]}
    assert "sense_message_in" in {r[0] for r in fresh["types"]}
    assert "message_seq" in {r[0] for r in fresh["sequences"]}
    assert "sense_pt" in {r[0] for r in fresh["text search"]}
    assert {"vector", "unaccent", "btree_gin"} <= {r[0] for r in fresh["extensions"]}
    assert any(r[0] == "messages" and r[1] == "messages_pkey" for r in fresh["constraints"])
    assert any(r[1] == "messages_pkey" for r in fresh["indexes"])
    # extensions' own functions and types are left out: they are not the migrations'
    assert "vector_dims" not in {r[0] for r in fresh["functions"]}
    assert "vector" not in {r[0] for r in fresh["types"]}
    assert [r[0] for r in fresh["migrations"]] == [v for v, _, _ in db.migration_files()]


@pytest.mark.parametrize("release", sorted(v for v in RELEASED if v < db.migration_files()[-1][0]))
async def test_upgrading_from_a_release_gives_the_schema_of_a_fresh_database(
    database_url: str, fresh: dict[str, list[tuple[Any, ...]]], release: int
) -> None:
    async def upgraded(conn: asyncpg.Connection) -> dict[str, Any]:
        await migrate_up_to(conn, release)
        await some_data(conn)
        applied = await db.migrate(conn)
        assert applied == [name for v, name, _ in db.migration_files() if v > release]
        assert await db.migrate(conn) == []  # and a second run applies nothing
        assert await db.pending_migrations(conn) == []
        texts = await conn.fetch(
            "SELECT message_id, coalesce(edited_text, text) FROM messages ORDER BY 1"
        )
        return {
            "catalog": await catalog(conn),
            "texts": [tuple(r) for r in texts],
            "instances": await conn.fetchval("SELECT count(*) FROM instances"),
            "quarantine": await conn.fetchval("SELECT count(*) FROM quarantine"),
        }

    got = await in_new_database(database_url, upgraded)
    for part, rows in fresh.items():
        assert got["catalog"][part] == rows, part
    # and the data written at that release is all there
    assert got["texts"] == [("M0", "Olá, tudo bem?"), ("M1", "editada"), ("M2", None)]
    assert got["instances"] == 1 and got["quarantine"] == 1
