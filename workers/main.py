"""``sense worker``: Dramatiq worker processes for the index and enrichment queues.

Each process loads the analyzers once (``SENSE_AI_PROVIDER``), then runs:

- a Dramatiq ``Worker`` with one thread on the ``sense-index`` queue (search rows, then the
  hand-over to analysis), so that indexing never waits behind the analysis backlog;
- a Dramatiq ``Worker`` with ``threads`` threads on the ``sense-enrich`` queue (Redis broker);
- the query-embedding loop for semantic search (workers/query_embed.py), with the same
  ``embed`` as the messages use;
- the reconciler (workers/reconciler.py; one active at a time across processes).

SIGTERM / SIGINT stop it gracefully: messages in progress finish (or go back to the queue).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any

from service.contracts import (
    BACKFILL_QUEUE,
    INDEX_QUEUE,
    QUEUE,
    message_args,
    publish_analyzed,
    redis_broker,
)
from workers.store import Key

if TYPE_CHECKING:
    from service.settings import Settings

log = logging.getLogger("sense.worker")

WORKER_TIMEOUT_MS = 100  # how long an idle consumer waits between polls: bounds the latency
BROKER_SOCKET_TIMEOUT = 5.0
# a recovered batch waits this long while live work is queued, this many times at most (~10 min)
RECOVERED_DEFER_MS = 1000
RECOVERED_MAX_DEFERRALS = 600


class Frames:
    """``message.analyzed`` frames to the live stream, best effort (the wire format is in
    service/contracts.py)."""

    def __init__(self, redis_url: str) -> None:
        import redis

        self.client = redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=2)

    def publish(self, tenant_id: uuid.UUID, items: list[dict[str, Any]]) -> None:
        publish_analyzed(self.client, tenant_id, items)

    def close(self) -> None:
        self.client.close()


class WorkerProcess:
    """Everything one worker process runs; ``start()`` then ``stop()``."""

    def __init__(self, settings: Settings, threads: int, provider: Any = None) -> None:
        import dramatiq

        from workers.actors import (
            Enrichment,
            Indexing,
            declare,
            declare_index,
            declare_recovered,
            middleware,
        )
        from workers.provider import build_provider
        from workers.reconciler import Reconciler
        from workers.store import Store

        assert settings.database_url and settings.redis_url
        self.settings = settings
        self.stop_event = threading.Event()
        started = time.perf_counter()
        self.provider = provider or build_provider(settings)
        log.info(
            "analyzers loaded",
            extra={
                "provider": self.provider.name,
                "seconds": round(time.perf_counter() - started, 2),
            },
        )
        self.store = Store(settings.database_url, size=max(2, threads + 1)).start()
        self.frames = Frames(settings.redis_url)
        self.enrichment = Enrichment(self.store, self.provider, self.frames.publish)
        self.broker = redis_broker(
            settings.redis_url, BROKER_SOCKET_TIMEOUT, middleware(lambda: self.enrichment)
        )
        self.actor = declare(self.broker, self.enrichment, settings)
        self.indexing = Indexing(self.store, self.forward)
        self.index_actor = declare_index(self.broker, self.indexing, settings)
        # recovered by a backfill: indexed and analysed here, in order, once live work is done
        self.recovered = Indexing(self.store, self._analyze_recovered)
        self.recovered_actor = declare_recovered(self.broker, self._recovered, settings)
        self.worker = dramatiq.Worker(
            self.broker,
            queues={QUEUE},
            worker_threads=threads,
            worker_timeout=WORKER_TIMEOUT_MS,
        )
        # its own consumer and thread: indexing never waits behind the analysis backlog
        self.index_worker = dramatiq.Worker(
            self.broker, queues={INDEX_QUEUE}, worker_threads=1, worker_timeout=WORKER_TIMEOUT_MS
        )
        self.recovered_worker = dramatiq.Worker(
            self.broker, queues={BACKFILL_QUEUE}, worker_threads=1, worker_timeout=WORKER_TIMEOUT_MS
        )
        self.reconciler = Reconciler(
            self.store,
            self.send,
            age=settings.reconcile_age_seconds,
            max_age=settings.reconcile_max_age_seconds,
            interval=settings.reconcile_interval_seconds,
            batch_size=settings.enrich_batch_size,
            on_expired=self._expired,
        )
        from workers.fanout import Dispatcher

        self.fanout = Dispatcher(settings)  # deliveries to tenants' endpoints
        self._threads: list[threading.Thread] = []

    def send(self, keys: list[Key]) -> None:
        """The reconciler's way in: index (idempotent), then analyse what is pending."""
        self.index_actor.send(message_args(keys))

    def forward(self, keys: list[Key]) -> None:
        self.actor.send(message_args(keys))

    def _analyze_recovered(self, keys: list[Key]) -> None:
        self.enrichment.analyze(keys)

    def live_backlog(self) -> int:
        """Jobs waiting on the live queues (index and analysis)."""
        client = self.broker.client
        return sum(int(client.llen(f"{self.broker.namespace}:{q}")) for q in (INDEX_QUEUE, QUEUE))

    def _recovered(self, keys: list[list[str]], deferrals: int) -> None:
        """Recovered messages wait while live traffic is queued (at most
        ``RECOVERED_MAX_DEFERRALS`` times ``RECOVERED_DEFER_MS``), then are indexed and analysed
        in this thread."""
        if deferrals < RECOVERED_MAX_DEFERRALS and self.live_backlog():
            self.recovered_actor.send_with_options(
                args=(keys,), kwargs={"deferrals": deferrals + 1}, delay=RECOVERED_DEFER_MS
            )
            return
        self.recovered.index(keys)

    def _expired(self, keys: list[Key]) -> None:
        from workers.reconciler import EXPIRED_REASON

        self.enrichment.announce((k, {"state": "failed", "error": EXPIRED_REASON}) for k in keys)

    def start(self) -> None:
        from workers.query_embed import serve_query_embeddings

        assert self.settings.redis_url
        self.broker.emit_after("process_boot")  # starts TimeLimit's watchdog
        self.worker.start()
        self.index_worker.start()
        self.recovered_worker.start()
        for name, target, args in (
            (
                "sense-query-embed",
                serve_query_embeddings,
                (self.settings.redis_url, self.provider.embed, self.stop_event),
            ),
            ("sense-reconciler", self.reconciler.run_forever, (self.stop_event,)),
            ("sense-fanout", self.fanout.run_forever, (self.stop_event,)),
        ):
            thread = threading.Thread(target=target, args=args, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info(
            "worker ready",
            extra={
                "queues": [INDEX_QUEUE, QUEUE, BACKFILL_QUEUE],
                "threads": self.worker.worker_threads,
            },
        )

    def stop(self, timeout: float = 30.0) -> None:
        self.stop_event.set()
        self.index_worker.stop(timeout=int(timeout * 1000))
        self.recovered_worker.stop(timeout=int(timeout * 1000))
        self.worker.stop(timeout=int(timeout * 1000))
        for thread in self._threads:
            thread.join(5)
        self.store.close()
        self.frames.close()
        closer = getattr(self.provider, "close", None)
        if closer is not None:
            closer()
        self.broker.client.close()


def serve(settings: Settings, threads: int) -> int:
    """One worker process in the foreground, until SIGTERM / SIGINT."""
    from service import logs

    logs.configure(settings.log_level)
    if settings.worker_nice:
        # below the web processes: analysis may fall behind under a burst and catch up
        # after; ingest may not (its threads inherit this, numpy's included)
        os.nice(min(settings.worker_nice, 19))
    done = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    process = WorkerProcess(settings, threads)
    process.start()
    done.wait()
    log.info("worker stopping")
    process.stop()
    return 0


def _child(settings: Settings, threads: int) -> None:
    raise SystemExit(serve(settings, threads))


def serve_metrics(settings: Settings) -> None:
    """The workers' Prometheus samples (deliveries, fan-out backlog) on
    ``SENSE_METRICS_HOST``:``SENSE_WORKER_METRICS_PORT``, summed over the worker
    processes (multiprocess mode: set before prometheus-client is first imported). Under
    `sense run` the server's /metrics serves them instead."""
    import shutil

    assert settings.worker_metrics_port
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        folder = settings.data_path / f"worker-metrics-{os.getpid()}"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)
    start_http_server(settings.worker_metrics_port, settings.metrics_host, registry)
    log.info("worker metrics on %s:%d", settings.metrics_host, settings.worker_metrics_port)


def run_worker(settings: Settings, *, processes: int = 1, threads: int = 2) -> int:
    """``sense worker``: ``processes`` worker processes of ``threads`` threads each."""
    if not settings.redis_url:
        print("error: SENSE_REDIS_URL is required (or use `sense run`)", file=sys.stderr)
        return 2
    if not settings.database_url:
        print("error: SENSE_DATABASE_URL is required (or use `sense run`)", file=sys.stderr)
        return 2
    if settings.worker_metrics_port:
        serve_metrics(settings)
    if processes <= 1:
        return serve(settings, threads)
    # spawn, not fork: each child loads its own models and connections from scratch
    context = multiprocessing.get_context("spawn")
    children = [
        context.Process(target=_child, args=(settings, threads), name=f"sense-worker-{n}")
        for n in range(processes)
    ]
    for child in children:
        child.start()
    done = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while not done.wait(1.0):
        if any(not c.is_alive() for c in children):
            log.error("a worker process exited; stopping the others")
            break
    for child in children:
        if child.is_alive() and child.pid is not None:
            os.kill(child.pid, signal.SIGTERM)
    for child in children:
        child.join(40)
    return max((c.exitcode or 0) for c in children)
