"""Prometheus metrics, correct across Granian worker processes.

`sense serve`/`sense run` point PROMETHEUS_MULTIPROC_DIR at a fresh folder before any worker
starts and before prometheus-client is first imported (it reads the variable at import; see
service.cli.prepare_metrics_dir); every process writes its samples there and
``/metrics`` aggregates them. Without that variable (tests, one process) the default registry
is used.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
MAX_TENANT_LABELS = 200  # beyond this many tenants per process, count under "_other"

WEBHOOK_REQUESTS = Counter(
    "sense_webhook_requests_total",
    "Webhook requests by event and outcome (stored, quarantined, ignored, rejected)",
    ["event", "outcome"],
)
WEBHOOK_SECONDS = Histogram(
    "sense_webhook_duration_seconds",
    "Webhook handling time, from routing to response (includes waiting for the commit)",
    ["event", "outcome"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
UNAVAILABLE = Counter(
    "sense_webhook_unavailable_total",
    "Webhooks answered 503 (reason: overloaded = queue full, database = database unavailable,"
    " quarantine_full = the source's quarantine is at its cap)",
    ["reason"],
)
API_UNAVAILABLE = Counter(
    "sense_api_unavailable_total",
    "Read, search and admin requests answered 503 (reason: database or redis unreachable)",
    ["reason"],
)
BATCH_ROWS = Histogram(
    "sense_batch_rows",
    "Rows written per group commit",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000),
)
FLUSH_SECONDS = Histogram(
    "sense_flush_duration_seconds",
    "Time to write one group commit (one sense_ingest statement, committed)",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
QUEUE_DEPTH = Gauge(
    "sense_ingest_queue_depth",
    "Requests waiting for their commit (summed over live processes)",
    multiprocess_mode="livesum",
)
TENANT_MESSAGES = Counter(
    "sense_tenant_messages_total",
    "Messages stored per tenant, by tenant id (never its name; bounded label set)",
    ["tenant_id"],
)
QUARANTINE_EVENTS = Gauge(
    "sense_quarantine_events",
    "Events waiting in quarantine (every source)",
    multiprocess_mode="livemax",
)
QUARANTINE_BYTES = Gauge(
    "sense_quarantine_bytes",
    "Bytes of the bodies waiting in quarantine (every source)",
    multiprocess_mode="livemax",
)

BACKFILL_MESSAGES = Counter(
    "sense_backfill_messages_total",
    "Messages read from Evolution by backfill (outcome: new = missing here and now stored,"
    " known = already stored)",
    ["outcome"],
)
BACKFILL_JOBS = Counter(
    "sense_backfill_jobs_total", "Backfill jobs finished, by result (done, failed)", ["result"]
)
BACKFILL_LAG = Gauge(
    "sense_backfill_lag_seconds",
    "Seconds since the oldest backfill job still queued or running was asked for (0: none)",
    multiprocess_mode="livemax",
)

BACKFILL_GAPS = Counter(
    "sense_backfill_gaps_total",
    "Backfill jobs that found messages missing here (each a gap filled), by reason (reconnect,"
    " startup, sweep, demand)",
    ["reason"],
)
STREAM_CLIENTS = Gauge(
    "sense_stream_clients",
    "Live WebSocket clients (summed over live processes)",
    multiprocess_mode="livesum",
)
# Computed every SENSE_OBSERVE_SECONDS by one server process (service/observe.py): a scrape
# runs no query.
ENRICH_PENDING = Gauge(
    "sense_enrich_pending",
    "Messages waiting for their analysis (counted over the oldest 200,000 not yet reconciled)",
    multiprocess_mode="livemostrecent",
)
ENRICH_OLDEST = Gauge(
    "sense_enrich_oldest_pending_seconds",
    "Age of the oldest message still waiting for its analysis (0: none)",
    multiprocess_mode="livemostrecent",
)
QUEUE_JOBS = Gauge(
    "sense_worker_queue_jobs",
    "Jobs waiting in the workers' queues (Dramatiq on Redis), by queue",
    ["queue"],
    multiprocess_mode="livemostrecent",
)
INSTANCES = Gauge(
    "sense_instances",
    "Registered instances by connection state as Evolution last reported it",
    ["state"],
    multiprocess_mode="livemostrecent",
)
INSTANCES_SILENT = Gauge(
    "sense_instances_silent",
    "Instances Evolution reports connected (open) with no message for"
    " SENSE_SILENT_INSTANCE_SECONDS",
    multiprocess_mode="livemostrecent",
)

# Label values known in advance start at 0, so that rates and alerts see them from the start.
for _reason in ("overloaded", "database", "quarantine_full"):
    UNAVAILABLE.labels(_reason)
for _reason in ("database", "redis"):
    API_UNAVAILABLE.labels(_reason)
for _outcome in ("new", "known"):
    BACKFILL_MESSAGES.labels(_outcome)
for _result in ("done", "failed"):
    BACKFILL_JOBS.labels(_result)
for _reason in ("reconnect", "startup", "sweep", "demand"):
    BACKFILL_GAPS.labels(_reason)

_tenant_labels: set[str] = set()
_webhook_series: dict[tuple[str, str], tuple[Any, Any]] = {}


def webhook_series(event: str, outcome: str) -> tuple[Any, Any]:
    """The request counter and duration histogram of (event, outcome), looked up once: both
    label sets are bounded, and ``labels()`` on every request showed in the profile."""
    series = _webhook_series.get((event, outcome))
    if series is None:
        series = _webhook_series[(event, outcome)] = (
            WEBHOOK_REQUESTS.labels(event, outcome),
            WEBHOOK_SECONDS.labels(event, outcome),
        )
    return series


def count_tenant_messages(tenant_id: str, n: int) -> None:
    if tenant_id not in _tenant_labels:
        if len(_tenant_labels) >= MAX_TENANT_LABELS:
            tenant_id = "_other"
        else:
            _tenant_labels.add(tenant_id)
    TENANT_MESSAGES.labels(tenant_id).inc(n)


def mark_process_dead(pid: int) -> None:
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)


def registry() -> CollectorRegistry:
    """What a scrape reads: every process's samples (multiprocess mode), or this process's."""
    if os.environ.get(MULTIPROC_ENV):
        aggregated = CollectorRegistry()
        MultiProcessCollector(aggregated)
        return aggregated
    return REGISTRY


def render() -> tuple[bytes, str]:
    return generate_latest(registry()), CONTENT_TYPE_LATEST


def set_quarantine(events: int, size: int) -> None:
    QUARANTINE_EVENTS.set(events)
    QUARANTINE_BYTES.set(size)


def count_api_unavailable(reason: str) -> None:
    API_UNAVAILABLE.labels(reason).inc()


def count_backfill(new: int, known: int) -> None:
    if new:
        BACKFILL_MESSAGES.labels("new").inc(new)
    if known:
        BACKFILL_MESSAGES.labels("known").inc(known)
