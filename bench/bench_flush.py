"""The physical limit of the write path: the flush statement alone, driven from Python without
HTTP, at several batch sizes, one writer and two writers side by side.

    .venv/bin/python -m bench.bench_flush              (what `make bench-flush` runs)

One embedded Postgres under bench/.run/flush (fresh each run, Postgres defaults), 20 tenants x
5 instances, the load bench's traffic (bench/traffic.py: the same event mix and shapes),
decoded and turned into rows by the service's own ``build_ops``; the table is first filled with
``--prefill`` events. Then for each batch size, batches of N consecutive events are built
first and then written with ``Writer.write`` (one ``sense_ingest`` call, committed) back to
back, by one writer or two at once: median and p90 ms per flush, events/s, and wall-clock µs
per event (1 / events/s). Every event is unique (ids from a
counter), as in the load bench. Prints one table line per row and writes
bench/.run/flush.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import time
import uuid
from pathlib import Path

import msgspec

from bench import traffic
from service import db, payloads
from service.embedded import EmbeddedPostgres
from service.events import build_ops
from service.ingest import Writer
from service.resolve import Instance
from service.rows import Ops

RUN = Path(__file__).resolve().parent / ".run"


def log(message: str) -> None:
    print(f"[flush] {message}", file=sys.stderr, flush=True)


async def deployment(dsn: str) -> list[Instance]:
    from service import admin

    conn = await db.connect(dsn)
    try:
        await db.migrate(conn)
        source = await admin.create_source(conn, "bench")
        out = []
        for t in range(20):
            tenant = await admin.create_tenant(conn, f"tenant-{t}")
            for i in range(5):
                name = f"tenant_{t}_inst_{i}"
                made = await admin.add_instance(conn, tenant.name, source.name, name, None)
                out.append(
                    Instance(
                        uuid.UUID(made.tenant),
                        uuid.UUID(made.id),
                        uuid.UUID(source.id),
                        name,
                        None,
                    )
                )
        return out
    finally:
        await conn.close()


class Events:
    """An endless stream of unique events' Ops, from the load bench's templates."""

    def __init__(self, instances: list[Instance]) -> None:
        fake = [
            traffic.Instance("s", i.name, str(i.instance_id), "5511900000000") for i in instances
        ]
        self.templates = traffic.Pool(fake).build(20_000)
        self.instances = instances
        self.counter = 0

    def take(self, n: int) -> list[Ops]:
        out = []
        while len(out) < n:
            template = self.templates[self.counter % len(self.templates)]
            body = traffic.expand(template.body, "F", 0, self.counter)
            self.counter += 1
            envelope = payloads.envelope_decoder.decode(body.encode())
            built = build_ops(envelope, self.instances[template.instance])
            if built.outcome == "stored":
                out.append(built.ops)
        return out


def batch(parts: list[Ops]) -> Ops:
    ops = Ops()
    for part in parts:
        ops.extend(part)
    return ops


async def run_size(writers: list[Writer], events: Events, size: int) -> dict[str, float]:
    """Write pre-built batches of ``size`` events back to back (``len(writers)`` at once)."""
    batches = [batch(events.take(size)) for _ in range(max(40, 6000 // size))]
    queue = iter(batches)
    times: list[float] = []

    async def loop(writer: Writer) -> None:
        for ops in queue:
            started = time.perf_counter()
            await writer.write(ops)
            times.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(loop(w) for w in writers))
    elapsed = time.perf_counter() - started
    times.sort()
    events_per_s = len(batches) * size / elapsed
    return {
        "writers": len(writers),
        "batch": size,
        "flushes": len(times),
        "median_ms": round(statistics.median(times) * 1000, 3),
        "p90_ms": round(times[int(len(times) * 0.9)] * 1000, 3),
        "events_per_s": round(events_per_s),
        "us_per_event": round(1e6 / events_per_s, 1),
    }


async def main(args: argparse.Namespace) -> None:
    folder = RUN / "flush"
    shutil.rmtree(folder, ignore_errors=True)
    postgres = EmbeddedPostgres(folder)
    try:
        instances = await deployment(postgres.url)
        events = Events(instances)
        writers = [Writer(postgres.url, 10.0) for _ in range(2)]
        log(f"prefilling {args.prefill} events")
        for _ in range(args.prefill // 500):
            await writers[0].write(batch(events.take(500)))
        results = []
        for n_writers, size in [(1, 1), (1, 10), (1, 20), (1, 100), (1, 1000), (2, 10), (2, 20)]:
            row = await run_size(writers[:n_writers], events, size)
            results.append(row)
            log(json.dumps(row))
        for writer in writers:
            await writer.close()
        RUN.mkdir(exist_ok=True)
        (RUN / "flush.json").write_bytes(msgspec.json.encode(results))
        print("| writers | batch | median ms / flush | p90 ms | events/s | µs per event |")
        print("|---:|---:|---:|---:|---:|---:|")
        for r in results:
            print(
                f"| {r['writers']} | {r['batch']} | {r['median_ms']} | {r['p90_ms']} "
                f"| {r['events_per_s']} | {r['us_per_event']} |"
            )
    finally:
        postgres.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prefill", type=int, default=20_000, help="events stored first")
    asyncio.run(main(parser.parse_args()))
