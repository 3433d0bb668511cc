"""The load bench: null ceiling, durable ingest and the naive baseline, side by side in one run.

    .venv/bin/python -m bench.load            (what `make bench` runs; bench/setup.sh first)

One embedded Postgres (and Redis, as in production: the live-stream hook publishes after each
commit), one `sense serve --workers N` with the bench routes mounted, many tenants, sources and
instances registered through the admin API, then:

1. warm-up, then each route at maximum rate with wrk + bench/traffic.lua (closed loop,
   ``--connections`` in flight): ``null`` (decode the envelope, answer 200), ``webhook`` (the
   real durable ingest), ``naive`` (one lookup query + one INSERT per request);
2. ingest at half of its own maximum rate, open loop, with bench/loadgen (latency counted from
   each request's scheduled send time);
3. after every run that stores messages: every message acknowledged with 2xx must be in the
   messages table, with its content, under the instance it was sent to (``lost``).

``--with-worker`` runs a `sense worker` beside the server, as `sense run` does (its CPU is
counted apart), and afterwards times how long the enrichment backlog takes to drain.

Progress goes to stderr, the numbers to bench/.run/results.json, and the last line on stdout is
the summary::

    bench: ingest_rps=.. null_rps=.. naive_rps=.. ratio_null=.. ratio_naive=..
           p50_ms=.. p99_ms=.. lost=..      (one line)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx

from bench import traffic

BENCH = Path(__file__).resolve().parent
RUN = BENCH / ".run"
TOOLS = BENCH / ".tools"
LOADGEN = TOOLS / "target" / "release" / "sense-loadgen"
ADMIN_TOKEN = "bench-admin-token"

# Acknowledged messages missing from the database: not stored with content under the instance
# the request named (instance names are unique in the bench deployment).
LOST_QUERY = """
SELECT count(*)
FROM unnest($1::text[], $2::text[]) AS acked(instance, message_id)
WHERE NOT EXISTS (
    SELECT 1
    FROM instances AS i
    JOIN messages AS m ON m.tenant_id = i.tenant_id AND m.instance_id = i.instance_id
    WHERE i.name = acked.instance AND m.message_id = acked.message_id AND m.has_content
)
"""


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# the server -----------------------------------------------------------------------------------


@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)  # the server's environment

    @property
    def address(self) -> str:
        return self.url.removeprefix("http://")

    def worker_pids(self) -> list[int]:
        out = subprocess.run(
            ["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True, check=False
        )
        return [int(p) for p in out.stdout.split()]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_server(
    database_url: str, data_dir: Path, workers: int, redis_url: str | None, **extra: str
) -> Server:
    port = free_port()
    env = {
        **os.environ,
        "SENSE_DATABASE_URL": database_url,
        "SENSE_ADMIN_TOKEN": ADMIN_TOKEN,
        "SENSE_PORT": str(port),
        "SENSE_WORKERS": str(workers),
        "SENSE_DATA_DIR": str(data_dir),
        "SENSE_BENCH_ROUTES": "1",
        "SENSE_LOG_LEVEL": "warning",
        **extra,
    }
    env.pop("SENSE_REDIS_URL", None)
    if redis_url:
        env["SENSE_REDIS_URL"] = redis_url
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / f"server-{port}.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve"],
        env=env,
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    server = Server(f"http://127.0.0.1:{port}", process, log_path, env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited:\n{log_path.read_text()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(server.url + "/readyz", timeout=1).status_code == 200:
                return server
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"server not ready:\n{log_path.read_text()}")


def register(
    url: str, tenants: int, instances_per_tenant: int, sources: int, admin: str = ADMIN_TOKEN
) -> list[traffic.Instance]:
    """Tenants, sources and instances through the admin API; instances spread over sources."""
    headers = {"Authorization": f"Bearer {admin}"}
    run = uuid.uuid4().hex[:6]
    out: list[traffic.Instance] = []
    with httpx.Client(base_url=url, headers=headers, timeout=30) as client:

        def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
            r = client.post(path, json=body)
            r.raise_for_status()
            return r.json()

        source_secrets = [
            (f"evo-{run}-{s}", post("/api/admin/sources", {"name": f"evo-{run}-{s}"})["secret"])
            for s in range(sources)
        ]
        n = 0
        for t in range(tenants):
            tenant = f"tenant-{run}-{t}"
            post("/api/admin/tenants", {"name": tenant})
            for i in range(instances_per_tenant):
                source, secret = source_secrets[n % sources]
                name = f"{tenant}-inst-{i}"
                post("/api/admin/instances", {"tenant": tenant, "source": source, "name": name})
                owner = f"55119{n:08d}@s.whatsapp.net"
                out.append(traffic.Instance(secret, name, str(uuid.uuid4()), owner))
                n += 1
    return out


async def subscribe_every_tenant(database_url: str) -> None:
    """One (disabled) endpoint per tenant: the ingest statement then writes a feed row for each
    of their changes, as for tenants with live endpoints (deliveries are the workers' cost)."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "INSERT INTO endpoints (tenant_id, url, events, mode, secret, enabled, position_xid)"
            " SELECT tenant_id, 'http://127.0.0.1:9/bench', ARRAY['message.created',"
            " 'message.updated', 'message.analyzed', 'instance.state', 'instance.qrcode'],"
            " 'sense', 'whsec_YmVuY2g=', false, pg_snapshot_xmin(pg_current_snapshot())"
            " FROM tenants"
        )
    finally:
        await conn.close()


# load generators ------------------------------------------------------------------------------


@dataclass
class Run:
    """One load run: what was sent, what came back, and the acknowledged message ids."""

    route: str
    tag: str
    seconds: float
    codes: dict[str, int]
    acked: Path
    latency_ms: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    lost: int | None = None

    @property
    def ok(self) -> int:
        return sum(n for code, n in self.codes.items() if code.isdigit() and 200 <= int(code) < 300)

    @property
    def rps(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def acked_ids(self) -> tuple[list[str], list[str]]:
        names, ids = [], []
        for line in self.acked.read_text().splitlines():
            name, _, mid = line.partition("\t")
            names.append(name)
            ids.append(mid)
        return names, ids

    def cpu_us_per_ok(self) -> dict[str, float]:
        """Server and Postgres CPU per acknowledged request: what each request costs, whatever
        share of the machine the run got (a shared box gives less, not a different cost)."""
        cpu = self.extra.get("cpu_pct_of_one_core", {})
        if not self.rps:
            return {}
        return {k: round(cpu.get(k, 0.0) / 100 / self.rps * 1e6) for k in ("server", "postgres")}

    def summary(self) -> dict[str, Any]:
        return {
            "cpu_us_per_ok": self.cpu_us_per_ok(),
            "route": self.route,
            "tag": self.tag,
            "seconds": round(self.seconds, 3),
            "ok_rps": round(self.rps, 1),
            "codes": self.codes,
            "acked_messages": len(self.acked_ids()[0]),
            "lost": self.lost,
            "latency_ms": self.latency_ms,
            **self.extra,
        }


_tags: set[str] = set()


def new_tag() -> str:
    """Four hex digits in every message id of one run: runs of one bench never share ids."""
    while (tag := secrets.token_hex(2).upper()) in _tags:
        pass
    _tags.add(tag)
    return tag


def run_wrk(
    server: Server,
    files: tuple[Path, Path],
    route: str,
    seconds: float,
    connections: int,
    threads: int,
    out_dir: Path,
) -> Run:
    tag = new_tag()
    acked = out_dir / f"acked-{route}-{tag}.tsv"
    deployment, pool = files
    cmd = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(BENCH / "traffic.lua"),
        server.url,
        "--",
        str(deployment),
        str(pool),
        route,
        tag,
        str(acked),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    stats = json.loads(Path(str(acked) + ".stats").read_text())
    errors = stats["errors"]
    codes = {str(k): int(v) for k, v in stats["codes"].items()}
    failed = errors["connect"] + errors["read"] + errors["write"] + errors["timeout"]
    if failed:
        codes["error"] = failed
    lat = stats["latency_us"]
    return Run(
        route,
        tag,
        stats["duration_us"] / 1e6,
        codes,
        acked,
        latency_ms={k: round(v / 1000, 3) for k, v in lat.items()},
        extra={"generator": f"wrk -t{threads} -c{connections}", "sent": stats["sent"]},
    )


def run_loadgen(
    server: Server,
    files: tuple[Path, Path],
    route: str,
    rate: float,
    seconds: float,
    out_dir: Path,
    connections: int = 256,
) -> Run:
    tag = new_tag()
    acked = out_dir / f"acked-{route}-rate-{tag}.tsv"
    deployment, pool = files
    cmd = [
        str(LOADGEN),
        "--addr",
        server.address,
        "--deployment",
        str(deployment),
        "--pool",
        str(pool),
        "--route",
        route,
        "--tag",
        tag,
        "--rate",
        f"{rate:.1f}",
        "--duration",
        str(seconds),
        "--connections",
        str(connections),
        "--acked",
        str(acked),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 120, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"sense-loadgen failed ({done.returncode}):\n{done.stderr}")
    stats = json.loads(done.stdout)
    return Run(
        route,
        tag,
        stats["elapsed_s"],
        {str(k): int(v) for k, v in stats["codes"].items()},
        acked,
        latency_ms=stats["latency_ms"],
        extra={
            "generator": f"sense-loadgen open loop, {connections} connections",
            "target_rps": rate,
            "requests": stats["requests"],
        },
    )


def run_python_burst(
    server: Server,
    files: tuple[Path, Path],
    route: str,
    requests: int,
    concurrency: int,
    out_dir: Path,
) -> Run:
    """A bounded burst from Python, for where wrk is not installed (a correctness check: a
    Python client tops out at a few thousand requests/s and would measure itself)."""
    tag = new_tag()
    acked = out_dir / f"acked-{route}-py-{tag}.tsv"
    secrets_by_index = []
    names = []
    for line in files[0].read_text().splitlines():
        secret, name, _ = line.split("\t")
        secrets_by_index.append(secret)
        names.append(name)
    pool = traffic.read_pool(files[1])
    prefix = {"webhook": "/api/webhooks/evolution/", "null": "/bench/null/"}.get(
        route, "/bench/naive/"
    )
    codes: dict[str, int] = {}
    lines: list[str] = []
    thread = 0xE

    async def burst() -> None:
        counter = iter(range(requests))
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:

            async def worker() -> None:
                for n in counter:
                    t = pool[n % len(pool)]
                    own = traffic.message_id(tag, thread, n)
                    rid = f"{t.kind}.{t.instance}.{own}"  # what the server echoes as is
                    path = f"{prefix}{secrets_by_index[t.instance]}/{t.event.replace('.', '-')}"
                    body = traffic.expand(t.body, tag, thread, n)
                    try:
                        r = await client.post(
                            path,
                            content=body.encode(),
                            headers={"Content-Type": "application/json", "X-Request-Id": rid},
                        )
                    except httpx.HTTPError:
                        codes["error"] = codes.get("error", 0) + 1
                        continue
                    codes[str(r.status_code)] = codes.get(str(r.status_code), 0) + 1
                    echoed = r.headers.get("x-request-id")
                    if r.is_success and t.kind == "m" and echoed in (None, rid):
                        lines.append(f"{names[t.instance]}\t{own}")

            await asyncio.gather(*(worker() for _ in range(concurrency)))

    started = time.perf_counter()
    asyncio.run(burst())
    seconds = time.perf_counter() - started
    acked.write_text("".join(line + "\n" for line in lines))
    return Run(route, tag, seconds, codes, acked, extra={"generator": "python burst"})


async def count_lost(database_url: str, run: Run) -> int:
    names, ids = run.acked_ids()
    conn = await asyncpg.connect(database_url)
    try:
        return int(await conn.fetchval(LOST_QUERY, names, ids))
    finally:
        await conn.close()


async def checkpoint(database_url: str) -> None:
    """Start each run from the same place: dirty pages written, no checkpoint mid-run."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


# CPU accounting ---------------------------------------------------------------------------


def _process_table() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds used so far), from /proc."""
    hz = os.sysconf("SC_CLK_TCK")
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        out[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / hz)
    return out


class CpuMeter:
    """CPU used by the server (all its processes), Postgres (the postmaster's children:
    backends, WAL writer...), the load generator (our waited-for children) and everything else
    still running on the machine (other users of a shared box), over a run."""

    def __init__(self, roots: dict[str, int]) -> None:
        self.roots = roots
        self.before = _process_table()
        self.children = self._children()
        self.started = time.monotonic()

    @staticmethod
    def _children() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    def _group(self, pid: int, table: dict[int, tuple[int, float]]) -> str:
        seen = 0
        while pid > 1 and seen < 20:
            for name, root in self.roots.items():
                if pid == root:
                    return name
            pid = table.get(pid, (1, 0.0))[0]
            seen += 1
        return "other"

    def stop(self) -> dict[str, float]:
        after = _process_table()
        elapsed = time.monotonic() - self.started
        used: dict[str, float] = {}
        for pid, (_, cpu) in after.items():
            delta = cpu - self.before.get(pid, (0, 0.0))[1]
            if delta > 0:
                group = self._group(pid, after)
                used[group] = used.get(group, 0.0) + delta
        used["generator"] = self._children() - self.children
        # share of one core, over the run
        return {k: round(100 * v / elapsed, 1) for k, v in sorted(used.items())}


# profiling --------------------------------------------------------------------------------


@contextlib.contextmanager
def profiled(server: Server, seconds: float, out: Path) -> Iterator[None]:
    """py-spy on every Granian worker for the duration of the block (collapsed stacks)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    procs = []
    for pid in server.worker_pids():
        # blocking sampling (the process pauses ~0.1 ms per sample) tells idle threads apart:
        # only samples of threads doing work are kept
        cmd = [spy, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "100"]
        cmd += ["--format", "raw", "-o", str(out.with_suffix(f".{pid}.txt"))]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    try:
        yield
    finally:
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


# Leaves where a thread waits rather than works (py-spy cannot always tell): the event loop in
# epoll, an idle thread-pool worker, a native thread without Python frames.
IDLE_LEAVES = ("EpollSelector.select", "_worker (concurrent/futures/thread.py", "")


def top_frames(paths: list[Path], limit: int = 25) -> list[tuple[str, float, float]]:
    """(function, self %, inclusive %) from py-spy collapsed stacks, as shares of the samples
    that were doing work; the first row is the share of samples that were waiting."""
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = idle = 0
    for path in paths:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not count.isdigit():
                continue
            n = int(count)
            frames = stack.split(";")
            total += n
            leaf = frames[-1]
            if leaf == "" or any(leaf.startswith(x) for x in IDLE_LEAVES if x):
                idle += n
                continue
            own[leaf] = own.get(leaf, 0) + n
            for frame in set(frames):
                incl[frame] = incl.get(frame, 0) + n
    busy = total - idle
    if not busy:
        return []
    ranked = sorted(own.items(), key=lambda kv: -kv[1])[:limit]
    waiting = ("(waiting: epoll, idle threads; % of all samples)", 100 * idle / total, 0.0)
    return [waiting] + [(f, 100 * n / busy, 100 * incl[f] / busy) for f, n in ranked]


# the bench --------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.load", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15, help="each maximum-rate run")
    parser.add_argument("--rate-seconds", type=float, default=20, help="the half-rate run")
    parser.add_argument("--warmup", type=float, default=5)
    parser.add_argument("--workers", type=int, default=2, help="Granian worker processes")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--tenants", type=int, default=20)
    parser.add_argument("--instances", type=int, default=5, help="per tenant")
    parser.add_argument("--sources", type=int, default=2)
    parser.add_argument("--pool", type=int, default=20_000, help="distinct request templates")
    parser.add_argument("--no-redis", action="store_true", help="run without the live stream")
    parser.add_argument("--profile", action="store_true", help="py-spy the ingest max run")
    parser.add_argument(
        "--with-worker",
        action="store_true",
        help="run `sense worker` beside the server, as `sense run` does, and time the "
        "enrichment backlog's drain after the load",
    )
    parser.add_argument(
        "--routes", default="null,webhook,naive", help="maximum-rate runs, in this order"
    )
    parser.add_argument("--rate", type=float, help="fixed rate (default: half of ingest's max)")
    parser.add_argument(
        "--endpoints",
        action="store_true",
        help="every tenant has a fan-out endpoint: ingest writes the change feed for all of them"
        " (disabled endpoints, so nothing is delivered: the write path's own cost)",
    )
    args = parser.parse_args(argv)
    # stopped from outside (make interrupted, CI timeout): still stop the server and Postgres
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    for tool in ("wrk", str(LOADGEN)):
        if shutil.which(tool) is None:
            log(f"{tool} not found: run bench/setup.sh first")
            return 2

    from service.embedded import EmbeddedPostgres, EmbeddedRedis

    RUN.mkdir(exist_ok=True)
    for stale in [*RUN.glob("acked-*"), *RUN.glob("profile-*")]:
        stale.unlink()
    log("starting embedded Postgres")
    pg = EmbeddedPostgres(RUN)
    database_url = urlunsplit(urlsplit(pg.url)._replace(path="/sense_bench"))

    async def fresh_database() -> None:
        conn = await asyncpg.connect(pg.admin_url)
        try:
            await conn.execute("DROP DATABASE IF EXISTS sense_bench WITH (FORCE)")
            await conn.execute("CREATE DATABASE sense_bench")
        finally:
            await conn.close()

    asyncio.run(fresh_database())
    redis = None if args.no_redis else EmbeddedRedis(RUN).start()
    server = None
    worker: subprocess.Popen[bytes] | None = None
    drain: dict[str, Any] | None = None
    try:
        log(f"starting sense serve --workers {args.workers}")
        server = start_server(
            database_url, RUN / "data", args.workers, redis.url if redis else None
        )
        if args.with_worker:
            worker = subprocess.Popen(
                [sys.executable, "-m", "service.cli", "worker", "--processes", "1"],
                env=server.env,
                stdout=(RUN / "worker.log").open("wb"),
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        instances = register(server.url, args.tenants, args.instances, args.sources)
        if args.endpoints:
            asyncio.run(subscribe_every_tenant(database_url))
        files = (RUN / "deployment.tsv", RUN / "pool.tsv")
        traffic.write_deployment(files[0], instances)
        traffic.write_pool(files[1], traffic.Pool(instances).build(args.pool))
        log(
            f"{args.tenants} tenants, {len(instances)} instances on {args.sources} sources, "
            f"{args.pool} templates; warm-up {args.warmup:g} s"
        )
        wrk_opts = (args.connections, args.threads, RUN)
        run_wrk(server, files, "webhook", args.warmup, *wrk_opts)

        postmaster = int((pg.pgdata / "postmaster.pid").read_text().split()[0])
        roots = {"server": server.process.pid, "postgres": postmaster}
        if worker is not None:
            roots["worker"] = worker.pid
        runs: dict[str, Run] = {}
        for route in args.routes.split(","):
            asyncio.run(checkpoint(database_url))
            meter = CpuMeter(roots)
            if args.profile and route == "webhook":
                with profiled(server, args.seconds, RUN / "profile-webhook"):
                    run = run_wrk(server, files, route, args.seconds, *wrk_opts)
            else:
                run = run_wrk(server, files, route, args.seconds, *wrk_opts)
            run.extra["cpu_pct_of_one_core"] = meter.stop()
            if route != "null":
                run.lost = asyncio.run(count_lost(database_url, run))
            runs[route] = run
            log(
                f"{route:8s} max: {run.rps:8.0f} ok/s  codes {run.codes}  lost {run.lost}  "
                f"cpu % of a core {run.extra['cpu_pct_of_one_core']}  "
                f"cpu us/request {run.cpu_us_per_ok()}"
            )

        ingest = runs.get("webhook")
        rate = args.rate or (ingest.rps / 2 if ingest else 0)
        half = None
        if rate:
            asyncio.run(checkpoint(database_url))
            meter = CpuMeter(roots)
            half = run_loadgen(server, files, "webhook", rate, args.rate_seconds, RUN)
            half.extra["cpu_pct_of_one_core"] = meter.stop()
            half.lost = asyncio.run(count_lost(database_url, half))
            log(
                f"webhook @ {rate:.0f}/s open loop: p50 {half.latency_ms['p50']} ms, "
                f"p99 {half.latency_ms['p99']} ms, codes {half.codes}, lost {half.lost}, "
                f"cpu % of a core {half.extra['cpu_pct_of_one_core']}, "
                f"cpu us/request {half.cpu_us_per_ok()}"
            )
        drain = asyncio.run(drain_backlog(database_url)) if worker is not None else None
        if drain is not None:
            log(
                f"enrichment backlog after the load: {drain['backlog']} messages, analysed "
                f"{drain['seconds']} s later ({drain['left']} left); searchable by text after "
                f"{drain['searchable_after_s']} s; messages updates "
                f"{drain['messages_updates']}, HOT {drain['messages_hot_updates']}"
            )
        profile = sorted(RUN.glob("profile-webhook.*.txt"))
        top = top_frames(profile) if args.profile else []
        results = {
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": machine(),
            "settings": vars(args),
            "runs": [r.summary() for r in runs.values()] + ([half.summary()] if half else []),
            "enrichment_drain": drain,
            "profile_top_self": [
                {"frame": f, "self_pct": round(s, 1), "incl_pct": round(i, 1)} for f, s, i in top
            ],
        }
        (RUN / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        for f, s, i in top:
            log(f"  {s:5.1f}% self {i:5.1f}% incl  {f}")
    finally:
        if worker is not None and worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(40)
            except subprocess.TimeoutExpired:
                worker.kill()
        if server is not None:
            server.stop()
        if redis is not None:
            redis.stop()
        pg.stop()

    null, naive = runs.get("null"), runs.get("naive")
    ingest_rps = ingest.rps if ingest else 0.0
    lost = sum(r.lost or 0 for r in (ingest, half) if r is not None)
    print(
        "bench: "
        f"ingest_rps={ingest_rps:.0f} "
        f"null_rps={null.rps if null else 0:.0f} "
        f"naive_rps={naive.rps if naive else 0:.0f} "
        f"ratio_null={ingest_rps / null.rps if null and null.rps else 0:.2f} "
        f"ratio_naive={ingest_rps / naive.rps if naive and naive.rps else 0:.2f} "
        f"p50_ms={half.latency_ms['p50'] if half else 0:.2f} "
        f"p99_ms={half.latency_ms['p99'] if half else 0:.2f} "
        f"lost={lost}",
        flush=True,
    )
    return 0 if lost == 0 else 1


PENDING = "SELECT count(*) FROM messages WHERE has_content AND analysis_state = 'pending'"

# How long after its commit each message became searchable by text (its search row written by
# the index actor, migration 0009), and how many never were.
INDEX_LAG = """
SELECT percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY lag) AS p, max(lag) AS max,
       count(*) FILTER (WHERE lag IS NULL) AS unindexed
FROM (SELECT extract(epoch FROM s.indexed_at - m.content_at)::float8 AS lag
      FROM messages AS m
      LEFT JOIN message_search AS s USING (tenant_id, instance_id, message_id)
      WHERE m.has_content) AS lags
"""

# Updates of messages rows (status, edits, analysis) done in place (HOT: no index entry).
UPDATES = "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'messages'"


async def drain_backlog(database_url: str, limit: float = 600.0) -> dict[str, Any]:
    """Wait until the worker has analysed every stored message (or ``limit`` seconds); then
    say how soon messages became searchable and how many updates were HOT."""
    conn = await asyncpg.connect(database_url)
    try:
        backlog = left = int(await conn.fetchval(PENDING))
        started = time.monotonic()
        while left and time.monotonic() - started < limit:
            await asyncio.sleep(1.0)
            left = int(await conn.fetchval(PENDING))
        seconds = round(time.monotonic() - started, 1)
        lag = await conn.fetchrow(INDEX_LAG)
        await asyncio.sleep(1.5)  # backends flush their statistics at most once a second
        updates = await conn.fetchrow(UPDATES)
        return {
            "backlog": backlog,
            "seconds": seconds,
            "left": left,
            "searchable_after_s": {
                "p50": round(lag["p"][0], 3) if lag["p"] else None,
                "p99": round(lag["p"][1], 3) if lag["p"] else None,
                "max": round(lag["max"], 3) if lag["max"] is not None else None,
                "never": lag["unindexed"],
            },
            "messages_updates": updates[0],
            "messages_hot_updates": updates[1],
        }
    finally:
        await conn.close()


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = 0
    with contextlib.suppress(OSError, ValueError):
        mem = int(Path("/proc/meminfo").read_text().split()[1]) // 1024
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_mib": mem,
        "load_avg_at_end": os.getloadavg(),
        "python": sys.version.split()[0],
    }


if __name__ == "__main__":
    sys.exit(main())
