"""Slow clients against the server's own connection defence (no proxy in front).

Run: ``.venv/bin/python -m bench.bench_slow`` (``make bench-slow``); ``--help`` for the knobs.

What runs, all on this machine: embedded Postgres and Redis, the real server (``sense serve``,
2 Granian workers) with the settings under test, and two client processes:

- an *attacker* that keeps ``--slow`` connections open for the whole run, half of them
  trickling their request headers (no secret needed) and half sending a valid webhook path and
  headers, then trickling the body, one byte per connection per second. Every connection the
  server cuts is opened again at once, so the server faces ``--slow`` slow clients all along;
- a *normal* webhook client: open loop, ``--rate`` webhooks per second, each on a fresh
  connection (as an Evolution server without keep-alive does), answer time measured from its
  due time, so waiting to be accepted counts.

The normal client runs ``--duration`` seconds alone (baseline), then again with the attacker's
connections all open. Reported: the normal client's p50/p99/max and failures in both phases,
how many slow connections were open, and how long the server let each kind live before
cutting it. ``--before`` runs the server with the settings it had before the defence (30 s
header timeout, no body deadline, Granian's default cap of backlog/workers connections).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.bench_ws import (
    OUT,
    machine,
    pct,
    register,
    start_server,
    start_services,
    stop_all,
)

BEFORE = {
    "SENSE_HEADER_TIMEOUT_SECONDS": "30",
    "SENSE_BODY_TIMEOUT_SECONDS": "86400",
    "SENSE_MAX_CONNECTIONS": "2048",  # Granian's default: backlog 4096 / 2 workers
}


def attacker(
    host: str, port: int, path: str, slow: int, ready: Any, stop: Any, result: Any
) -> None:
    """Hold ``slow`` trickling connections until ``stop``; report their lifetimes."""

    async def run() -> None:
        lived: dict[str, list[float]] = {"headers": [], "body": []}
        opened = 0
        open_now = 0
        all_open = asyncio.Event()

        async def trickle(writer: asyncio.StreamWriter, kind: str) -> None:
            while True:
                await asyncio.sleep(1.0)
                writer.write(b"X-Slow: y\r\n" if kind == "headers" else b" ")
                await writer.drain()

        async def one(kind: str) -> None:
            nonlocal opened, open_now
            while True:
                try:
                    reader, writer = await asyncio.open_connection(host, port)
                except OSError:
                    await asyncio.sleep(0.5)
                    continue
                opened += 1
                open_now += 1
                if open_now >= slow * 0.98:
                    all_open.set()
                started = time.monotonic()
                if kind == "headers":
                    writer.write(f"POST {path} HTTP/1.1\r\nHost: x\r\n".encode())
                else:
                    writer.write(
                        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                        "\r\nContent-Length: 100000\r\n\r\n{".encode()
                    )
                sender = asyncio.create_task(trickle(writer, kind))
                try:
                    await reader.read(1)  # the server answers (408) or closes: it cut us
                    lived[kind].append(time.monotonic() - started)
                except OSError:
                    lived[kind].append(time.monotonic() - started)
                finally:
                    open_now -= 1
                    sender.cancel()
                    writer.close()

        tasks = []
        for n in range(slow):
            tasks.append(asyncio.create_task(one("headers" if n % 2 == 0 else "body")))
            if n % 200 == 199:
                await asyncio.sleep(0.05)
        await all_open.wait()
        ready.set()
        samples = []
        while not stop.is_set():
            samples.append(open_now)
            await asyncio.sleep(0.5)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        result.put({"opened": opened, "open_samples": samples, "lived": lived})

    asyncio.run(run())


async def normal_client(hook: str, rate: float, seconds: float) -> dict[str, Any]:
    """Open loop: webhook n is due at start + n / rate, each on a fresh connection."""
    limits = httpx.Limits(max_keepalive_connections=0, max_connections=512)
    latencies: list[float] = []
    failures: dict[str, int] = {}
    async with httpx.AsyncClient(limits=limits, timeout=60) as http:

        async def one(n: int, due: float) -> None:
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            body = {
                "event": "messages.upsert",
                "instance": "bench-inst",
                "data": {
                    "key": {
                        "remoteJid": "5511999999999@s.whatsapp.net",
                        "fromMe": False,
                        "id": f"SLOW{time.time_ns()}{n}",
                    },
                    "message": {"conversation": "olá"},
                    "messageTimestamp": int(time.time()),
                },
            }
            try:
                r = await http.post(hook, json=body)
                if r.status_code != 200:
                    failures[str(r.status_code)] = failures.get(str(r.status_code), 0) + 1
                    return
            except httpx.HTTPError as exc:
                failures[exc.__class__.__name__] = failures.get(exc.__class__.__name__, 0) + 1
                return
            latencies.append((time.monotonic() - due) * 1000)

        start = time.monotonic() + 0.2
        total = int(rate * seconds)
        await asyncio.gather(*(one(n, start + n / rate) for n in range(total)))
    return {
        "sent": total,
        "ok": len(latencies),
        "failures": failures,
        "p50_ms": round(pct(latencies, 50), 2),
        "p99_ms": round(pct(latencies, 99), 2),
        "max_ms": round(max(latencies, default=float("nan")), 2),
    }


def summary(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    return {"n": len(values), "p50_s": round(pct(values, 50), 1), "max_s": round(max(values), 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slow", type=int, default=5000, help="slow connections held")
    parser.add_argument("--rate", type=float, default=50.0, help="normal webhooks per second")
    parser.add_argument("--duration", type=float, default=40.0, help="seconds per phase")
    parser.add_argument("--before", action="store_true", help="the settings before the defence")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    OUT.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="bench-slow-"))
    postgres, redis_server, database_url = start_services(tmp)
    extra = BEFORE if args.before else {}
    server, url = start_server(database_url, redis_server.url, tmp, 2, **extra)
    ctx = multiprocessing.get_context("spawn")
    proc = None
    try:
        hook, _, _ = register(url, 1)
        baseline = asyncio.run(normal_client(hook, args.rate, args.duration))
        print(f"baseline: {json.dumps(baseline)}", flush=True)
        ready, stop, result = ctx.Event(), ctx.Event(), ctx.Queue()
        host, port = url.removeprefix("http://").split(":")
        path = hook.removeprefix(url)
        proc = ctx.Process(
            target=attacker, args=(host, int(port), path, args.slow, ready, stop, result)
        )
        proc.start()
        if not ready.wait(120):
            print("the attacker could not open its connections in 120 s", flush=True)
        attacked = asyncio.run(normal_client(hook, args.rate, args.duration))
        print(f"under attack: {json.dumps(attacked)}", flush=True)
        stop.set()
        held = result.get(timeout=120)
    finally:
        if proc is not None:
            proc.join(30)
            if proc.is_alive():
                proc.kill()
        stop_all(server, redis_server, postgres)
        shutil.rmtree(tmp, ignore_errors=True)
    samples = held["open_samples"]
    report = {
        "settings": "before" if args.before else "defaults",
        "slow_target": args.slow,
        "slow_open": {
            "min": min(samples, default=0),
            "median": sorted(samples)[len(samples) // 2] if samples else 0,
        },
        "slow_opened_total": held["opened"],
        "slow_lifetime": {k: summary(v) for k, v in held["lived"].items()},
        "normal_rate": args.rate,
        "baseline": baseline,
        "under_attack": attacked,
        "machine": machine(load_before),
    }
    name = f"slow-{'before' if args.before else 'after'}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    (OUT / name).write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
