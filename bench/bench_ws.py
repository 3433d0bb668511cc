"""Live-stream latency: from a webhook POST to its ``message.created`` frame on a WebSocket.

Run: ``.venv/bin/python bench/bench_ws.py`` (``make bench-ws``); ``--help`` for the knobs.

What runs, all on this machine:

- embedded Postgres 18 and embedded Redis (under a temporary directory), the real server
  (``sense serve``, 2 Granian workers, so most frames cross processes through Redis);
- an *idle* process holding ``--idle`` WebSocket clients (1,000 by default), each of its own
  tenant: the many open dashboards of a multi-tenant deployment. They stay subscribed (1,000
  channels spread over both workers) and must receive nothing. ``--idle-tenant same`` puts them
  on the measured tenant instead: then every event is fanned out to all of them as well;
- a *load* process posting `sense simulate`'s mix of webhooks at a steady open-loop ``--rate``
  over 32 connections, each message carrying its due time (``time.monotonic_ns``, one clock for
  every process of the machine), so a late send counts against the latency;
- this process, with ``--observers`` WebSockets of the measured tenant, timing each frame.

Reported: ``post_to_frame_ms`` (due time to frame: the number asked for), ``ack_to_frame_ms``
(the stream's own share, from the webhook's 200 to the frame), the webhook answer times, how
late the load process sent, and the load average before the run (the box may be shared).

Before any number is printed it checks that every acknowledged message reached every observer
exactly once and, with idle clients of other tenants, that none of them received a message.
Numbers cover the ``--duration`` after a ``--warmup``; the JSON goes to bench/out/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import suppress
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from websockets.asyncio.client import ClientConnection, connect

ADMIN = "bench-admin-token"
ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
MESSAGE_EVENTS = ("messages.upsert", "send.message")  # the ones that make message.created
CONNECTIONS = 32  # the load process's HTTP connections (as many senders)


# set-up -----------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_services(tmp: Path) -> tuple[Any, Any, str]:
    import asyncpg

    from service import db
    from service.embedded import EmbeddedPostgres, EmbeddedRedis

    postgres = EmbeddedPostgres(tmp)
    redis_server = EmbeddedRedis(tmp).start()

    async def prepare() -> str:
        name = "sense_bench_ws"
        conn = await asyncpg.connect(postgres.admin_url)
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
        await conn.close()
        url = urlunsplit(urlsplit(postgres.admin_url)._replace(path="/" + name))
        conn = await db.connect(url)
        await db.migrate(conn)
        await conn.close()
        return url

    return postgres, redis_server, asyncio.run(prepare())


def start_server(
    database_url: str, redis_url: str, tmp: Path, workers: int, **extra: str
) -> tuple[Any, str]:
    port = free_port()
    env = {
        **os.environ,
        "SENSE_DATABASE_URL": database_url,
        "SENSE_REDIS_URL": redis_url,
        "SENSE_ADMIN_TOKEN": ADMIN,
        "SENSE_PORT": str(port),
        "SENSE_WORKERS": str(workers),
        "SENSE_DATA_DIR": str(tmp / "data"),
        "SENSE_LOG_LEVEL": "warning",
        **extra,
    }
    log = (tmp / "server.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve"],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited:\n{(tmp / 'server.log').read_text()}")
        with suppress(httpx.HTTPError):
            if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                return process, url
        time.sleep(0.1)
    raise SystemExit("server not ready in 60 s")


def stop_all(server: Any, redis_server: Any, postgres: Any) -> None:
    """SIGTERM the server (SIGKILL after 30 s), then stop Redis and Postgres."""
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            server.wait(30)
        if server.poll() is None:
            server.kill()
    redis_server.stop()
    postgres.stop()


def register(url: str, tenants: int) -> tuple[str, list[str], str]:
    """Tenant 0 is measured; the others host the idle clients. Returns (hook, tokens, token0)."""
    admin = {"Authorization": f"Bearer {ADMIN}"}
    tokens = []
    with httpx.Client(base_url=url, headers=admin, timeout=30) as http:
        source = http.post("/api/admin/sources", json={"name": "evo"}).json()
        for n in range(tenants):
            r = http.post("/api/admin/tenants", json={"name": f"tenant-{n}"})
            r.raise_for_status()
            tokens.append(r.json()["token"])
        body = {"tenant": "tenant-0", "source": "evo", "name": "bench-inst"}
        http.post("/api/admin/instances", json=body).raise_for_status()
    return url + source["webhook_path"], tokens, tokens[0]


# the idle clients and the load (each in its own process) ----------------------------------------


def idle_clients(ws_url: str, tokens: list[str], ready: Any, stop: Any, result: Any) -> None:
    async def run() -> None:
        sockets: list[ClientConnection] = []
        message_frames = 0

        async def hold(ws: ClientConnection) -> None:
            nonlocal message_frames
            with suppress(Exception):
                async for raw in ws:
                    if '"message.' in str(raw):
                        message_frames += 1

        for n, token in enumerate(tokens):
            ws = await connect(f"{ws_url}?token={token}", open_timeout=60, max_queue=4)
            first = json.loads(await ws.recv())
            assert first["type"] == "ready", first
            sockets.append(ws)
            if n % 100 == 99:
                await asyncio.sleep(0)
        tasks = [asyncio.create_task(hold(ws)) for ws in sockets]
        ready.set()
        await asyncio.get_running_loop().run_in_executor(None, stop.wait)
        open_now = sum(1 for ws in sockets if ws.close_code is None)
        result.put({"connected": len(sockets), "still_open": open_now, "frames": message_frames})
        for ws in sockets:
            with suppress(Exception):
                await ws.close()
        for t in tasks:
            t.cancel()

    asyncio.run(run())


def load(hook: str, rate: float, seconds: float, go: Any, result: Any) -> None:
    """Open loop: the n-th webhook is due at start + n / rate, whatever the answers do; bodies
    are built beforehand, each message carrying its due time (``time.monotonic_ns``, one clock
    for every process of the machine). ``CONNECTIONS`` senders take the next due webhook, so a
    slow answer delays the senders, never the schedule: the latency counts from the due time."""
    import msgspec

    from service.simulate import TrafficGenerator

    gen = TrafficGenerator(["bench-inst"], seed=11)
    total = int(rate * seconds)
    events = [gen.event() for _ in range(total)]

    async def run() -> None:
        acked: dict[str, int] = {}  # message id -> when its 200 arrived (monotonic ns)
        messages: list[str] = []
        late_ms: list[float] = []
        answer_ms: list[float] = []  # from the actual send to the answer
        failed = 0
        go.wait()
        start = time.monotonic_ns() + 500_000_000
        step = 1e9 / rate
        bodies: list[tuple[int, str | None, bytes]] = []
        for n, (event, body) in enumerate(events):
            due = start + round(n * step)
            message_id = None
            if event in MESSAGE_EVENTS:
                message_id = body["data"]["key"]["id"]
                body["data"]["message"]["conversation"] = f"t={due} {n}"
                messages.append(message_id)
            bodies.append((due, message_id, msgspec.json.encode(body)))
        queue = iter(bodies)
        limits = httpx.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS)
        headers = {"Content-Type": "application/json"}
        async with httpx.AsyncClient(limits=limits, timeout=30) as http:

            async def sender() -> None:
                nonlocal failed
                for due, message_id, body in queue:
                    delay = (due - time.monotonic_ns()) / 1e9
                    if delay > 0:
                        await asyncio.sleep(delay)
                    sent = time.monotonic_ns()
                    late_ms.append((sent - due) / 1e6)
                    try:
                        r = await http.post(hook, content=body, headers=headers)
                    except httpx.HTTPError:
                        failed += 1
                        continue
                    if r.status_code not in (200, 202):  # 202: an event type not kept
                        failed += 1
                    else:
                        answer_ms.append((time.monotonic_ns() - sent) / 1e6)
                        if message_id is not None:
                            assert r.status_code == 200, r.text
                            acked[message_id] = time.monotonic_ns()

            await asyncio.gather(*(sender() for _ in range(CONNECTIONS)))
        result.put(
            {
                "posted": total,
                "messages": messages,
                "acked": acked,
                "due": {mid: bodies_due for bodies_due, mid, _ in bodies if mid},
                "failed": failed,
                "late_ms": late_ms,
                "answer_ms": answer_ms,
                "seconds": (time.monotonic_ns() - start) / 1e9,
            }
        )

    asyncio.run(run())


# measuring ----------------------------------------------------------------------------------------


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


async def observe(
    ws_url: str, token: str, observers: int, done: asyncio.Event, arrived: asyncio.Event
) -> list[Any]:
    seen: list[dict[str, tuple[int, int]]] = [{} for _ in range(observers)]  # id -> sent, got
    dupes = [0] * observers
    sockets = []
    for _ in range(observers):
        ws = await connect(ws_url, open_timeout=30, max_size=None)
        await ws.send(json.dumps({"token": token}))
        assert json.loads(await ws.recv())["type"] == "ready"
        sockets.append(ws)

    async def read(i: int, ws: ClientConnection) -> None:
        while not done.is_set():
            try:
                raw = await asyncio.wait_for(ws.recv(), 0.5)
            except TimeoutError:
                continue
            now = time.monotonic_ns()
            frame = json.loads(raw)
            if frame["type"] != "message.created":
                continue
            m = frame["message"]
            if not (m["text"] or "").startswith("t="):
                continue
            sent = int(m["text"].split()[0].removeprefix("t="))
            if m["message_id"] in seen[i]:
                dupes[i] += 1
            seen[i][m["message_id"]] = (sent, now)
            arrived.set()

    readers = [asyncio.create_task(read(i, ws)) for i, ws in enumerate(sockets)]
    return [readers, sockets, seen, dupes]


def machine(load_before: float) -> dict[str, Any]:
    cpu = platform.processor() or "?"
    with suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import granian

    return {
        # 1-minute load average before the run: other work on the box skews every number
        "load_average_before": round(load_before, 2),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "granian": granian.__version__,
        "kernel": platform.release(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=200.0, help="webhooks per second")
    parser.add_argument("--duration", type=float, default=30.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds before measuring")
    parser.add_argument("--idle", type=int, default=1000, help="idle WebSocket clients")
    parser.add_argument("--idle-tenant", choices=["other", "same"], default="other")
    parser.add_argument("--observers", type=int, default=2, help="timed WebSockets")
    parser.add_argument("--workers", type=int, default=2, help="Granian workers")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]

    OUT.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-ws-"))
    postgres, redis_server, database_url = start_services(tmp)
    server, url = start_server(database_url, redis_server.url, tmp, args.workers)
    ctx = multiprocessing.get_context("spawn")
    procs: list[Any] = []
    try:
        others = args.idle if args.idle_tenant == "other" else 0
        hook, tokens, token = register(url, 1 + others)
        ws_url = url.replace("http://", "ws://") + "/api/v1/stream"
        idle_tokens = tokens[1:] if args.idle_tenant == "other" else [token] * args.idle
        ready, stop, idle_result = ctx.Event(), ctx.Event(), ctx.Queue()
        if args.idle:
            procs.append(
                ctx.Process(
                    target=idle_clients, args=(ws_url, idle_tokens, ready, stop, idle_result)
                )
            )
            procs[-1].start()
            if not ready.wait(180):
                raise SystemExit("idle clients did not connect in 180 s")
        print(f"{args.idle} idle clients connected ({args.idle_tenant} tenant)", flush=True)

        async def measure() -> dict[str, Any]:
            done = asyncio.Event()
            arrived = asyncio.Event()
            readers, sockets, seen, dupes = await observe(
                ws_url, token, args.observers, done, arrived
            )
            go, load_result = ctx.Event(), ctx.Queue()
            total = args.warmup + args.duration
            loader = ctx.Process(target=load, args=(hook, args.rate, total, go, load_result))
            procs.append(loader)
            loader.start()
            await asyncio.sleep(1.0)  # the loader process has imported and connected
            go.set()
            got = await asyncio.get_running_loop().run_in_executor(
                None, load_result.get, True, total + 120
            )
            # every acknowledged message must reach every observer: wait for stragglers
            with suppress(TimeoutError):
                async with asyncio.timeout(30):
                    while any(len(s) < len(got["acked"]) for s in seen):
                        arrived.clear()
                        await arrived.wait()
            done.set()
            await asyncio.gather(*readers)
            for ws in sockets:
                await ws.close()
            return {"load": got, "seen": seen, "dupes": dupes}

        measured = asyncio.run(measure())
        stop.set()
        idle = idle_result.get(timeout=60) if args.idle else None
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
        stop_all(server, redis_server, postgres)
        deadlocks = 0
        with suppress(OSError):
            deadlocks = (tmp / "pg" / "log").read_text(errors="replace").count("deadlock detected")
        shutil.rmtree(tmp, ignore_errors=True)

    got = measured["load"]
    acked: dict[str, int] = got["acked"]
    errors = []
    for i, s in enumerate(measured["seen"]):
        missing = [m for m in acked if m not in s]
        if missing:
            errors.append(f"observer {i}: {len(missing)} acknowledged messages never arrived")
        if measured["dupes"][i]:
            errors.append(f"observer {i}: {measured['dupes'][i]} duplicate frames")
    if got["failed"]:
        errors.append(f"{got['failed']} webhooks not acknowledged")
    if idle is not None:
        if idle["still_open"] != args.idle:
            errors.append(f"only {idle['still_open']} of {args.idle} idle clients still open")
        if args.idle_tenant == "other" and idle["frames"]:
            errors.append(f"idle clients of other tenants got {idle['frames']} message frames")
    if errors:
        print("FAILED:\n  " + "\n  ".join(errors))
        return 1

    # measured window: messages sent after the warm-up
    skip = round(args.warmup / (args.warmup + args.duration) * len(got["messages"]))
    window = set(got["messages"][skip:])
    latencies = [
        (got_ns - sent_ns) / 1e6
        for s in measured["seen"]
        for mid, (sent_ns, got_ns) in s.items()
        if mid in window
    ]
    # the stream's own share: from the webhook's 200 (after COMMIT) to the frame; can be a
    # little below 0: the frame may overtake the HTTP answer
    after_ack = [
        (got_ns - acked[mid]) / 1e6
        for s in measured["seen"]
        for mid, (_, got_ns) in s.items()
        if mid in window
    ]
    due: dict[str, int] = got["due"]
    acks = [(acked[mid] - due[mid]) / 1e6 for mid in window if mid in acked]
    late = got["late_ms"][round(args.warmup * args.rate) :]
    report = {
        "method": {
            "webhooks_per_s": args.rate,
            "mix": "sense simulate (60% messages.upsert, 8% send.message, receipts, contacts,"
            " presence)",
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "idle_clients": args.idle,
            "idle_tenant": args.idle_tenant,
            "observers": args.observers,
            "workers": args.workers,
        },
        "machine": machine(load_before),
        "achieved_webhooks_per_s": round(got["posted"] / got["seconds"], 1),  # incl. the tail
        "messages_per_s": round(len(got["messages"]) / got["seconds"], 1),
        "samples": len(latencies),
        "post_to_frame_ms": {
            "p50": round(pct(latencies, 50), 2),
            "p90": round(pct(latencies, 90), 2),
            "p99": round(pct(latencies, 99), 2),
            "max": round(max(latencies), 2),
            "mean": round(statistics.fmean(latencies), 2),
        },
        "ack_to_frame_ms": {
            "p50": round(pct(after_ack, 50), 2),
            "p90": round(pct(after_ack, 90), 2),
            "p99": round(pct(after_ack, 99), 2),
            "max": round(max(after_ack), 2),
        },
        "post_to_ack_ms": {"p50": round(pct(acks, 50), 2), "p99": round(pct(acks, 99), 2)},
        # the server's answer time, from the actual send
        "answer_ms": {
            "p50": round(pct(got["answer_ms"], 50), 2),
            "p99": round(pct(got["answer_ms"], 99), 2),
        },
        # how late the load process sent against its schedule (it shares the CPU too)
        "send_lateness_ms": {"p50": round(pct(late, 50), 2), "p99": round(pct(late, 99), 2)},
        "postgres_deadlocks": deadlocks,
    }
    if idle is not None and args.idle_tenant == "same":
        report["idle_frames_received"] = idle["frames"]
    name = OUT / f"ws-{args.idle_tenant}-{int(args.rate)}-{time.strftime('%Y%m%dT%H%M%S')}.json"
    name.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print(f"written to {name.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
