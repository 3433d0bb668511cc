"""Enrichment benchmark: one `sense worker` process with the default offline analyzers.

1. Throughput: N pending messages with *unique* realistic texts (so no cache or in-batch
   de-duplication helps) are written to Postgres, the worker is started and waits until it is
   ready (models loaded), then every id is enqueued as the web process does (one broker message
   per ``SENSE_ENRICH_BATCH_SIZE`` ids). Messages/s = N / (time until the last row is done).
   Every row is checked afterwards: analysed, sentiment in [-1, 1], a 512-dim embedding.
2. Latency at nominal load: the real server (`sense serve`, 1 process) and the same worker;
   webhooks are posted at a fixed rate for a fixed time while a WebSocket client of the tenant
   records each ``message.analyzed`` frame. Latency = frame arrival - the moment the webhook
   was sent (so it includes ingest, enqueue, queueing, analysis, the UPDATE and the live relay).
   Every webhook must get 200 and every message its frame.

Run: .venv/bin/python bench/bench_enrich.py [--messages 20000] [--rate 100] [--duration 30]
Uses the embedded Postgres and Redis (or SENSE_DATABASE_URL / SENSE_REDIS_URL). Not collected
by the test run. Prints the machine, the method and the numbers as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service import admin, db  # noqa: E402
from service.contracts import INDEX_ACTOR, INDEX_QUEUE, message_args, redis_broker  # noqa: E402

BODIES = (
    "gostaria de saber sobre o meu pedido",
    "adorei o atendimento, muito obrigado!",
    "o produto chegou quebrado, estou muito chateado",
    "qual o horário de funcionamento?",
    "não recebi o boleto ainda, podem reenviar?",
    "perfeito, pode confirmar a entrega para amanhã",
    "isso é um absurdo, ninguém me responde há três dias",
    "vocês entregam em Campinas?",
    "segue o comprovante do pagamento",
    "quero cancelar a minha assinatura",
    "excelente, resolveu o meu problema. Nota 10!",
    "pode me passar o código de rastreio?",
    "o aplicativo não abre desde a atualização",
    "obrigada pela atenção 😊",
    "a entrega atrasou de novo, que decepção",
    "tem esse modelo em outra cor?",
)
OPENERS = ("", "Olá, ", "Bom dia, ", "Boa tarde! ", "Oi, ")
NAMES = ("Ana", "João", "Maria", "Carlos", "Bia", "Pedro", "Luiza")


def unique_text(rng: random.Random, n: int) -> str:
    text = rng.choice(OPENERS) + rng.choice(BODIES)
    tail = rng.random()
    if tail < 0.4:
        text += f" Pedido {100000 + n}."
    elif tail < 0.7:
        text += f" Sou {rng.choice(NAMES)}, protocolo {n}."
    else:
        text += f" ({n})"
    return text


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "load_average_at_start": os.getloadavg(),
    }


def cpu_seconds(group: int | None = None, command: str | None = None) -> float:
    """User + system CPU seconds of the live processes in process group ``group`` or named
    ``command`` (/proc; 0 where /proc is not there)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        fields = text[text.rindex(")") + 2 :].split()
        if (group is not None and int(fields[2]) == group) or name == command:
            total += int(fields[11]) + int(fields[12])
    return total / tick


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Services:
    def __init__(self, tmp: Path) -> None:
        self.pg: Any = None
        self.redis: Any = None
        self.admin_url = os.environ.get("SENSE_DATABASE_URL")
        self.redis_url = os.environ.get("SENSE_REDIS_URL")
        if not self.admin_url:
            from service.embedded import EmbeddedPostgres

            self.pg = EmbeddedPostgres(tmp)
            self.admin_url = self.pg.admin_url
        if not self.redis_url:
            from service.embedded import EmbeddedRedis

            self.redis = EmbeddedRedis(tmp).start()
            self.redis_url = self.redis.url
        self.name = f"sense_bench_{uuid.uuid4().hex[:8]}"
        from urllib.parse import urlsplit, urlunsplit

        self.url = urlunsplit(urlsplit(self.admin_url)._replace(path="/" + self.name))

    async def create(self) -> None:
        conn = await asyncpg.connect(self.admin_url)
        await conn.execute(f'CREATE DATABASE "{self.name}"')
        await conn.close()
        conn = await db.connect(self.url)
        await db.migrate(conn)
        await conn.close()

    async def drop(self) -> None:
        conn = await asyncpg.connect(self.admin_url)
        await conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        await conn.close()

    def close(self) -> None:
        if self.redis is not None:
            self.redis.stop()
        if self.pg is not None:
            self.pg.stop()


def start_worker(env: dict[str, str], log: Path, threads: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "service.cli",
            "worker",
            "--processes",
            "1",
            "--threads",
            str(threads),
        ],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=ROOT,
    )
    deadline = time.monotonic() + 120
    while b"worker ready" not in log.read_bytes():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("worker did not start:\n" + log.read_text()[-3000:])
        time.sleep(0.1)
    return process


def start_server(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve"],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=ROOT,
    )


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()


async def throughput(svc: Services, env: dict[str, str], tmp: Path, n: int, threads: int) -> Any:
    conn = await db.connect(svc.url)
    tenant = await admin.create_tenant(conn, "bench-throughput")
    source = await admin.create_source(conn, "bench-throughput")
    inst = await admin.add_instance(conn, tenant.name, source.name, "bench-throughput-1")
    tenant_id = await conn.fetchval("SELECT tenant_id FROM tenants WHERE name = $1", tenant.name)
    instance_id = await conn.fetchval(
        "SELECT instance_id FROM instances WHERE name = $1", inst.name
    )
    rng = random.Random(7)
    texts = [unique_text(rng, i) for i in range(n)]
    assert len(set(texts)) == n
    ids = [f"BENCH{i:08d}" for i in range(n)]
    await conn.execute(
        """INSERT INTO messages (tenant_id, instance_id, message_id, has_content, content_at,
                                 chat_jid, chat_type, from_me, type, text, message_ts)
           SELECT $1, $2, m, true, now(), '5511' || (900000000 + ord) || '@s.whatsapp.net',
                  'user', false, 'text', t, now()
           FROM unnest($3::text[], $4::text[]) WITH ORDINALITY AS u(m, t, ord)""",
        tenant_id,
        instance_id,
        ids,
        texts,
    )
    worker = start_worker(env, tmp / "worker-throughput.log", threads)
    try:
        broker = redis_broker(svc.redis_url or "", 5.0)
        broker.declare_queue(INDEX_QUEUE)
        import dramatiq

        batch = int(env.get("SENSE_ENRICH_BATCH_SIZE", "256"))
        worker_cpu, postgres_cpu = cpu_seconds(group=worker.pid), cpu_seconds(command="postgres")
        started = time.perf_counter()
        keys = [(tenant_id, instance_id, m) for m in ids]
        for i in range(0, n, batch):
            broker.enqueue(
                dramatiq.Message(
                    # as the web process does: the index actor hands them on to analysis
                    queue_name=INDEX_QUEUE,
                    actor_name=INDEX_ACTOR,
                    args=(message_args(keys[i : i + batch]),),
                    kwargs={},
                    options={},
                )
            )
        enqueued = time.perf_counter() - started
        pending = "SELECT count(*) FROM messages WHERE analysis_state = 'pending'"
        while await conn.fetchval(pending):  # noqa: ASYNC110 - polling Postgres is the clock
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - started
        worker_cpu = cpu_seconds(group=worker.pid) - worker_cpu
        postgres_cpu = cpu_seconds(command="postgres") - postgres_cpu
    finally:
        stop(worker)
    bad = await conn.fetchval(
        """SELECT count(*) FROM messages AS m
           LEFT JOIN message_search AS s USING (tenant_id, instance_id, message_id)
           WHERE m.analysis_state <> 'done' OR m.sentiment NOT BETWEEN -1 AND 1
              OR m.emotion IS NULL OR m.satisfaction NOT BETWEEN 0 AND 100
              OR s.embedding IS NULL OR vector_dims(s.embedding) <> 512"""
    )
    span = await conn.fetchval(
        "SELECT extract(epoch FROM max(analyzed_at) - min(analyzed_at)) FROM messages"
    )
    await conn.close()
    assert bad == 0, f"{bad} rows not analysed correctly"
    return {
        "messages": n,
        "threads": threads,
        "batch_ids_per_broker_message": batch,
        "enqueue_seconds": round(enqueued, 3),
        "seconds": round(elapsed, 2),
        "messages_per_second": round(n / elapsed, 1),
        "analyzed_at_span_seconds": round(float(span), 2),
        # CPU time per message: what one core gives a worker (or Postgres) with the other
        # elsewhere is 1000 / these
        "worker_cpu_ms_per_message": round(1000 * worker_cpu / n, 3),
        "postgres_cpu_ms_per_message": round(1000 * postgres_cpu / n, 3),
    }


async def latency(
    svc: Services, env: dict[str, str], tmp: Path, rate: float, duration: float, threads: int
) -> Any:
    import websockets

    port = free_port()
    server_env = {**env, "SENSE_PORT": str(port), "SENSE_WORKERS": "1"}
    server = start_server(server_env, tmp / "server.log")
    base = f"http://127.0.0.1:{port}"
    worker = start_worker(env, tmp / "worker-latency.log", threads)
    sent: dict[str, float] = {}
    arrived: dict[str, float] = {}
    statuses: list[int] = []
    try:
        async with httpx.AsyncClient(base_url=base, timeout=10) as client:
            for _ in range(300):
                try:
                    if (await client.get("/readyz")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.1)
            admin_headers = {"Authorization": f"Bearer {env['SENSE_ADMIN_TOKEN']}"}
            tenant = (
                await client.post(
                    "/api/admin/tenants", json={"name": "bench"}, headers=admin_headers
                )
            ).json()
            source = (
                await client.post(
                    "/api/admin/sources", json={"name": "bench"}, headers=admin_headers
                )
            ).json()
            await client.post(
                "/api/admin/instances",
                json={"tenant": "bench", "source": "bench", "name": "bench-1"},
                headers=admin_headers,
            )
            ws_url = f"ws://127.0.0.1:{port}/api/v1/stream?token={tenant['token']}"
            async with websockets.connect(ws_url, max_queue=None) as ws:
                ready = json.loads(await ws.recv())
                assert ready["type"] == "ready"

                async def listen() -> None:
                    async for raw in ws:
                        frame = json.loads(raw)
                        if frame["type"] == "message.analyzed":
                            arrived.setdefault(frame["message_id"], time.perf_counter())

                listener = asyncio.create_task(listen())
                rng = random.Random(11)
                hook = f"/api/webhooks/evolution/{source['secret']}/messages-upsert"
                total = int(rate * duration)
                start = time.perf_counter()
                tasks = []

                async def post(i: int) -> None:
                    mid = f"LAT{i:08d}"
                    body = {
                        "event": "messages.upsert",
                        "instance": "bench-1",
                        "data": {
                            "key": {
                                "remoteJid": f"5511{900000000 + i % 500}@s.whatsapp.net",
                                "fromMe": False,
                                "id": mid,
                            },
                            "pushName": "Cliente",
                            "message": {"conversation": unique_text(rng, i)},
                            "messageType": "conversation",
                            "messageTimestamp": int(time.time()),
                        },
                        "sender": "5511900000001@s.whatsapp.net",
                        "apikey": None,
                    }
                    sent[mid] = time.perf_counter()
                    r = await client.post(hook, json=body)
                    statuses.append(r.status_code)

                for i in range(total):
                    target = start + i / rate
                    delay = target - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    tasks.append(asyncio.create_task(post(i)))
                await asyncio.gather(*tasks)
                send_seconds = time.perf_counter() - start
                deadline = time.perf_counter() + 60
                while len(arrived) < total and time.perf_counter() < deadline:  # noqa: ASYNC110
                    await asyncio.sleep(0.1)
                listener.cancel()
    finally:
        stop(worker)
        stop(server)
    assert statuses.count(200) == len(statuses), f"non-200: {set(statuses)}"
    missing = [m for m in sent if m not in arrived]
    assert not missing, f"{len(missing)} messages never announced as analysed"
    lat = sorted((arrived[m] - sent[m]) * 1000 for m in sent)
    quantiles = statistics.quantiles(lat, n=100)
    conn = await db.connect(svc.url)
    stored = await conn.fetch(
        """SELECT extract(epoch FROM analyzed_at - content_at) * 1000 AS ms FROM messages
           WHERE message_id LIKE 'LAT%' AND analysis_state = 'done' ORDER BY 1"""
    )
    await conn.close()
    in_db = statistics.quantiles([float(r["ms"]) for r in stored], n=100)
    return {
        "rate_per_second": rate,
        "duration_seconds": duration,
        "achieved_rate": round(len(sent) / send_seconds, 1),
        "messages": len(sent),
        "webhook_to_analyzed_frame_ms": {
            "p50": round(quantiles[49], 1),
            "p95": round(quantiles[94], 1),
            "p99": round(quantiles[98], 1),
            "max": round(lat[-1], 1),
        },
        # commit of the webhook's transaction -> start of the analysis UPDATE's transaction
        "commit_to_analysis_commit_ms": {"p50": round(in_db[49], 1), "p95": round(in_db[94], 1)},
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=100.0, help="webhooks/s for the latency run")
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-latency", action="store_true")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="sense-bench-enrich-"))
    svc = Services(tmp)
    await svc.create()
    env = {
        **os.environ,
        "SENSE_DATABASE_URL": svc.url,
        "SENSE_REDIS_URL": svc.redis_url or "",
        "SENSE_DATA_DIR": str(tmp / "data"),
        "SENSE_ADMIN_TOKEN": "bench-admin",
        "SENSE_LOG_LEVEL": "info",
    }
    out: dict[str, Any] = {"machine": machine(), "method": __doc__}
    try:
        out["throughput"] = await throughput(svc, env, tmp, args.messages, args.threads)
        print(json.dumps(out["throughput"]), flush=True)
        if not args.skip_latency:
            out["latency"] = await latency(svc, env, tmp, args.rate, args.duration, args.threads)
            print(json.dumps(out["latency"]), flush=True)
    finally:
        await svc.drop()
        svc.close()
    out["machine"]["load_average_at_end"] = os.getloadavg()
    print(json.dumps({k: v for k, v in out.items() if k != "method"}, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
