"""``sense doctor``: what an operator checks when something is off, checked in one go, each with
a ✓ or a ✗ and, for a ✗, the fix. The database and its schema, Redis, the workers; for each
source that knows its Evolution server (its REST URL and key): the server reachable, its
version, the key accepted, which instances Evolution has that no tenant owns here (and the
other way round), whether Evolution stores messages (backfill needs it), and whether an
instance Evolution calls connected sends anything; the quarantine and the fan-out endpoints.
The Evolution calls follow ../shared/evolution-rest.md §1 (``GET /``, ``fetchInstances``)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import asyncpg
import httpx
import msgspec

from service import db
from service.contracts import INDEX_QUEUE, QUEUE

if TYPE_CHECKING:
    from service.settings import Settings

EXTENSIONS = ("vector", "unaccent", "btree_gin")
HEARTBEAT_SECONDS = 60  # a Dramatiq consumer polls every 100 ms; silent this long: gone
ANALYSIS_LATE_SECONDS = 600


class Check(msgspec.Struct):
    name: str
    ok: bool
    detail: str
    fix: str | None = None


class Report(msgspec.Struct):
    ok: bool
    checks: list[Check]


@dataclass
class Doctor:
    settings: Settings
    timeout: float = 10.0

    async def run(self) -> Report:
        checks: list[Check] = []
        s = self.settings
        assert s.database_url
        try:
            conn = await db.connect(s.database_url)
        except Exception as exc:
            checks.append(
                Check(
                    "database",
                    False,
                    f"cannot connect: {exc.__class__.__name__}: {exc}"[:300],
                    "check SENSE_DATABASE_URL and that Postgres is up",
                )
            )
            checks += await self.redis_checks()
            return Report(False, checks)
        try:
            version = await conn.fetchval("SHOW server_version")
            checks.append(Check("database", True, f"reachable (PostgreSQL {version})"))
            checks += await self.schema_checks(conn)
            schema_ok = all(c.ok for c in checks)
            checks += await self.redis_checks(conn if schema_ok else None)
            if schema_ok:
                checks += await self.quarantine_checks(conn)
                checks += await self.endpoint_checks(conn)
                checks += await self.evolution_checks(conn)
        finally:
            await conn.close()
        return Report(all(c.ok for c in checks), checks)

    async def schema_checks(self, conn: asyncpg.Connection) -> list[Check]:
        pending = await db.pending_migrations(conn)
        out = [
            Check("migrations", True, "current")
            if not pending
            else Check(
                "migrations",
                False,
                f"{len(pending)} pending: {', '.join(pending)}",
                "sense migrate (every server also migrates at start)",
            )
        ]
        present = {r["extname"] for r in await conn.fetch("SELECT extname FROM pg_extension")}
        missing = [e for e in EXTENSIONS if e not in present]
        out.append(
            Check("extensions", True, ", ".join(EXTENSIONS) + " present")
            if not missing
            else Check(
                "extensions",
                False,
                f"missing: {', '.join(missing)}",
                "use a Postgres with pgvector (e.g. the pgvector/pgvector image), then sense"
                " migrate",
            )
        )
        return out

    async def redis_checks(self, conn: asyncpg.Connection | None = None) -> list[Check]:
        s = self.settings
        if not s.redis_url:
            return [
                Check(
                    "redis",
                    False,
                    "SENSE_REDIS_URL is not set: nothing is analysed, the live stream stays"
                    " in each process",
                    "set SENSE_REDIS_URL (or use sense run)",
                )
            ]
        import redis

        client = redis.Redis.from_url(s.redis_url, socket_timeout=self.timeout)
        try:
            client.ping()
        except redis.RedisError as exc:
            return [
                Check(
                    "redis",
                    False,
                    f"cannot reach it: {exc.__class__.__name__}: {exc}"[:300],
                    "check SENSE_REDIS_URL and that Redis is up",
                )
            ]
        try:
            out = [Check("redis", True, f"reachable (Redis {client.info()['redis_version']})")]
            now_ms = int(time.time() * 1000)
            alive = client.zcount(
                "dramatiq:__heartbeats__", now_ms - HEARTBEAT_SECONDS * 1000, "+inf"
            )
            queued = {q: int(client.llen(f"dramatiq:{q}")) for q in (INDEX_QUEUE, QUEUE)}
        finally:
            client.close()
        out.append(
            Check("workers", True, f"{alive} consumer(s) polling the queues")
            if alive
            else Check(
                "workers",
                False,
                f"no worker has polled Redis for {HEARTBEAT_SECONDS} s; queued: {queued}",
                "start one: sense worker (same SENSE_DATABASE_URL and SENSE_REDIS_URL)",
            )
        )
        if conn is not None:
            row = await conn.fetchrow(db.q("observe_enrichment"), 200_000)
            late = row["oldest_seconds"] > ANALYSIS_LATE_SECONDS
            oldest = row["oldest_seconds"]
            detail = f"{row['pending']} message(s) waiting, the oldest for {oldest:.0f} s;"
            detail += f" queued jobs: {queued}"
            out.append(
                Check(
                    "queue draining",
                    not late,
                    detail,
                    "more worker processes or threads (sense worker --processes N), or a faster"
                    " analyzer"
                    if late
                    else None,
                )
            )
        return out

    async def quarantine_checks(self, conn: asyncpg.Connection) -> list[Check]:
        rows = await conn.fetch(db.q("doctor_quarantine"))
        if not rows:
            return [Check("quarantine", True, "empty")]
        names = ", ".join(f"{r['source']}/{r['instance_name']} ({r['events']})" for r in rows[:10])
        more = f" and {len(rows) - 10} more" if len(rows) > 10 else ""
        return [
            Check(
                "quarantine",
                False,
                f"{sum(r['events'] for r in rows)} event(s) of unregistered instances:"
                f" {names}{more}",
                "register each: sense instance add --tenant T --source S NAME (its events replay"
                " at once)",
            )
        ]

    async def endpoint_checks(self, conn: asyncpg.Connection) -> list[Check]:
        rows = await conn.fetch(db.q("doctor_endpoints"))
        if not rows:
            return [Check("fan-out endpoints", True, "none failing")]
        listed = "; ".join(
            f"{r['tenant']} {r['url']} ("
            + (
                f"disabled: {r['disabled_reason']}"
                if not r["enabled"]
                else f"failing since {r['failing_since'].isoformat()}"
            )
            + ")"
            for r in rows[:10]
        )
        return [
            Check(
                "fan-out endpoints",
                False,
                listed,
                "see GET /api/v1/endpoints/{id}/attempts; once the receiver is back, PATCH"
                ' {"enabled": true} delivers the backlog',
            )
        ]

    async def evolution_checks(self, conn: asyncpg.Connection) -> list[Check]:
        out: list[Check] = []
        sources = await conn.fetch(db.q("doctor_sources"))
        without = [r["name"] for r in sources if not r["evolution_url"]]
        if without:
            out.append(
                Check(
                    "evolution servers",
                    True,
                    f"no REST URL for {', '.join(without)}: backfill is off and they are not"
                    " checked (sense source update NAME --evolution-url … --evolution-apikey …)",
                )
            )
        async with httpx.AsyncClient(timeout=httpx.Timeout(self.timeout, connect=5.0)) as client:
            for source in sources:
                if source["evolution_url"] and source["evolution_apikey"]:
                    out += await self.one_server(conn, client, source)
        return out

    async def one_server(
        self, conn: asyncpg.Connection, client: httpx.AsyncClient, source: Any
    ) -> list[Check]:
        name = f"evolution {source['name']}"
        base = source["evolution_url"].rstrip("/")
        try:
            root = await client.get(base + "/")
            doc = (
                root.json()
                if root.headers.get("content-type", "").startswith("application/json")
                else {}
            )
        except (httpx.HTTPError, ValueError) as exc:
            return [
                Check(
                    name,
                    False,
                    f"{base} unreachable: {exc.__class__.__name__}",
                    "check the source's evolution_url and that this host can reach it",
                )
            ]
        if not isinstance(doc, dict) or "version" not in doc:
            return [
                Check(
                    name,
                    False,
                    f"{base}/ answered {root.status_code} without Evolution's version",
                    "the URL must be the Evolution API's base URL (its / answers its version)",
                )
            ]
        out = [Check(name, True, f"reachable, version {doc['version']}")]
        key = {"apikey": source["evolution_apikey"]}
        try:
            listed = await client.get(base + "/instance/fetchInstances", headers=key)
        except httpx.HTTPError as exc:
            return [*out, Check(f"{name} key", False, f"fetchInstances failed: {exc}", None)]
        body = _json(listed)
        if listed.status_code == 503 and isinstance(body, dict):
            if body.get("code") == "LICENSE_REQUIRED":
                return [
                    *out,
                    Check(
                        f"{name} licence",
                        False,
                        "503 LICENSE_REQUIRED: every REST call is refused (webhooks still flow)",
                        "activate the server in its /manager",
                    ),
                ]
        if listed.status_code == 401:
            return [
                *out,
                Check(
                    f"{name} key",
                    False,
                    "refused (401)",
                    "sense source update NAME --evolution-apikey <AUTHENTICATION_API_KEY>",
                ),
            ]
        if listed.status_code != 200 or not isinstance(body, list):
            return [
                *out,
                Check(f"{name} key", False, f"fetchInstances answered {listed.status_code}", None),
            ]
        out.append(Check(f"{name} key", True, f"accepted; {len(body)} instance(s) listed"))
        theirs = {str(i["name"]): i for i in body if isinstance(i, dict) and i.get("name")}
        ours = {
            r["name"]: r for r in await conn.fetch(db.q("doctor_instances"), source["source_id"])
        }
        unregistered = sorted(n for n in theirs if n not in ours)
        unknown = sorted(n for n in ours if n not in theirs)
        out.append(
            Check(f"{name} instances", True, f"all {len(ours)} registered here")
            if not unregistered
            else Check(
                f"{name} instances",
                False,
                f"Evolution has {len(unregistered)} no tenant owns here:"
                f" {', '.join(unregistered[:20])}",
                f"sense instance add --tenant T --source {source['name']} NAME (until then their"
                " events wait in quarantine)",
            )
        )
        if unknown:
            out.append(
                Check(
                    f"{name} instances",
                    False,
                    f"registered here, unknown to Evolution: {', '.join(unknown[:20])}",
                    "a renamed or deleted instance: register the new name, or ignore if it is gone",
                )
            )
        # Does Evolution keep messages (DATABASE_SAVE_DATA_NEW_MESSAGE)? Its count of stored rows
        # for instances that did send us messages.
        counted = [
            (n, theirs[n].get("_count", {}).get("Message"))
            for n, r in ours.items()
            if n in theirs and r["last_message_ts"] is not None
        ]
        empty = [n for n, c in counted if c == 0]
        if counted:
            out.append(
                Check(f"{name} stores messages", True, "yes (backfill can recover gaps)")
                if not empty
                else Check(
                    f"{name} stores messages",
                    False,
                    f"it has no stored message for {', '.join(empty[:10])} though webhooks"
                    " brought some",
                    "set DATABASE_SAVE_DATA_NEW_MESSAGE=true (and DATABASE_SAVE_MESSAGE_UPDATE="
                    "true) on the Evolution server: backfill needs what it stores",
                )
            )
        silent = []
        cutoff = datetime.now(UTC) - timedelta(seconds=self.settings.silent_instance_seconds)
        for n, r in ours.items():
            evo = theirs.get(n)
            if evo is None or evo.get("connectionStatus") != "open":
                continue
            last = r["last_message_ts"]
            if last is None or last < cutoff:
                silent.append(f"{n} (last message {last.isoformat() if last else 'never'})")
        out.append(
            Check(f"{name} events", True, "every connected instance sends events")
            if not silent
            else Check(
                f"{name} events",
                False,
                f"connected in Evolution, nothing received lately: {', '.join(silent[:10])}",
                "check Evolution's WEBHOOK_GLOBAL_URL (or the instance's webhook) points at this"
                " source's webhook URL; a quiet line is also possible",
            )
        )
        return out


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def render(report: Report) -> str:
    lines = []
    for c in report.checks:
        lines.append(f"{'✓' if c.ok else '✗'} {c.name}: {c.detail}")
        if not c.ok and c.fix:
            lines.append(f"    fix: {c.fix}")
    lines.append("all good" if report.ok else f"{sum(not c.ok for c in report.checks)} problem(s)")
    return "\n".join(lines)
