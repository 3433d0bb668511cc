"""Configuration: one frozen object read once from ``SENSE_*`` environment variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

PREFIX = "SENSE_"


class SettingsError(ValueError):
    """A ``SENSE_*`` variable has a value that cannot be used."""


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    database_url: str | None = None
    redis_url: str | None = None
    data_dir: str = ".sense"
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    public_url: str | None = None
    admin_token: str | None = None
    max_body_bytes: int = 64 * 1024 * 1024
    # connection-level defence (README, "Behind a proxy"): a request's headers must arrive within
    # header_timeout_seconds (also how long an idle keep-alive connection is kept), its whole
    # body within body_timeout_seconds (408 then); each server process holds at most
    # max_connections connections (more wait in the listen backlog)
    # /metrics: with a token, scrapes need it (Bearer); with a port, metrics are served there
    # (on metrics_host) and not on the main listener
    metrics_token: str | None = None
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = None
    worker_metrics_port: int | None = None  # `sense worker` serves its metrics here (if set)
    hsts: bool = False  # answer Strict-Transport-Security (set when reached over HTTPS)
    header_timeout_seconds: float = 10.0
    body_timeout_seconds: float = 30.0
    max_connections: int = 10_000
    # quarantine (service/quarantine.py): per source, past either cap that source's events of
    # unregistered instances get 503; rows older than the retention are deleted
    quarantine_max_events: int = 100_000
    quarantine_max_bytes: int = 1024 * 1024 * 1024
    quarantine_retention_days: float = 14.0
    # backfill (service/backfill.py): jobs run in every server process; a sweep every
    # backfill_sweep_seconds (0: none) over the last backfill_sweep_window_seconds; reconnect and
    # start-up windows start at the last message seen less a margin; no window is longer than
    # backfill_max_window_seconds
    backfill_enabled: bool = True
    backfill_sweep_seconds: float = 1800.0
    backfill_sweep_window_seconds: float = 21_600.0
    backfill_max_window_seconds: float = 31 * 86_400.0
    backfill_margin_seconds: float = 300.0
    backfill_reconnect_delay_seconds: float = 90.0  # after `open`, before the job looks
    # findMessages: records per page (its `offset`), requests per second per server and process
    backfill_page_size: int = 100
    backfill_pages_per_second: float = 5.0
    backfill_jobs_per_server: int = 1  # jobs running at once per Evolution server, all processes
    backfill_poll_seconds: float = 2.0
    backfill_lease_seconds: float = 60.0
    backfill_timeout_seconds: float = 30.0
    # fan-out (workers/fanout.py): endpoint URLs on loopback/private/link-local addresses are
    # refused unless allowed (`sense run` allows them, for local demos); each worker process
    # delivers to at most fanout_concurrency endpoints at once, one event at a time each
    fanout_allow_private: bool = False
    fanout_concurrency: int = 32
    fanout_timeout_seconds: float = 10.0
    fanout_poll_seconds: float = 0.5
    fanout_lease_seconds: float = 60.0
    fanout_disable_after_seconds: float = 3 * 86_400.0  # failing this long: disabled, kept
    fanout_retention_seconds: float = 7 * 86_400.0  # feed rows every endpoint is past
    # gauges that need a query (service/observe.py): how often; an instance open with no
    # message for silent_instance_seconds counts as silent (an alert: its webhooks may be lost)
    observe_seconds: float = 30.0
    silent_instance_seconds: float = 3600.0
    queue_max_requests: int = 20_000
    queue_max_bytes: int = 512 * 1024 * 1024  # bodies held by waiting requests, per process
    batch_max_rows: int = 5_000
    batch_max_requests: int = 2_000
    batch_max_bytes: int = 64 * 1024 * 1024
    batch_linger_seconds: float = 0.001  # under load, wait this long for a batch to fill
    flushers: int = 2  # concurrent group commits per process, each on its own connection:
    # one batch is written while the previous one waits for its WAL flush (bench/RESULTS.md)
    db_pool_size: int = 6
    db_timeout_seconds: float = 10.0
    retry_after_seconds: int = 2
    registry_refresh_seconds: float = 30.0
    log_level: str = "info"
    stream_buffer_frames: int = 5_000  # per live WebSocket client; past either limit it is
    stream_buffer_bytes: int = 2 * 1024 * 1024  # dropped (close 1013) and catches up later
    stream_max_unauthenticated: int = 1000  # sockets per process waiting for their token
    bench_routes: bool = False  # mount bench/'s null-ceiling and naive-baseline routes
    # enrichment (workers/): the analyzer provider and how work is queued
    ai_provider: str = "local"  # local (offline, packaged models) | openai (compatible HTTP API)
    ai_base_url: str | None = None  # e.g. https://api.openai.com/v1
    ai_api_key: str | None = None
    ai_chat_model: str = "gpt-4o-mini"
    ai_embedding_model: str = "text-embedding-3-small"
    ai_timeout_seconds: float = 10.0
    ai_max_retries: int = 2  # per HTTP call, on 429/5xx/timeouts, with backoff
    ai_batch_size: int = 20  # messages per chat-completion call
    ai_circuit_threshold: int = 5  # consecutive failures that open the circuit
    ai_circuit_cooldown_seconds: float = 30.0
    # Scheduling priority of `sense worker` processes (added to their nice value, 0-19): on a
    # box shared with `sense serve`, analysis yields the CPU to ingest and catches up after.
    worker_nice: int = 10
    enrich_batch_size: int = 256  # message ids per broker message / analyzer batch
    enrich_max_retries: int = 4
    enrich_min_backoff_seconds: float = 2.0
    enrich_max_backoff_seconds: float = 300.0
    enrich_time_limit_seconds: float = 120.0
    enqueue_timeout_seconds: float = 0.5
    enqueue_linger_seconds: float = 0.05  # gather small flushes into one broker message
    reconcile_age_seconds: float = 120.0  # pending this long: enqueue it again
    reconcile_interval_seconds: float = 30.0
    reconcile_max_age_seconds: float = 86_400.0  # pending this long: give up, mark failed

    @property
    def base_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser().resolve()

    def redacted(self) -> dict[str, Any]:
        """The settings with secrets blanked, for logs."""
        out = msgspec.structs.asdict(self)
        for name in ("admin_token", "database_url", "redis_url", "ai_api_key"):
            if out[name]:
                out[name] = "***"
        return out


_POSITIVE = {
    "port",
    "workers",
    "max_body_bytes",
    "header_timeout_seconds",
    "body_timeout_seconds",
    "max_connections",
    "queue_max_requests",
    "backfill_sweep_window_seconds",
    "backfill_max_window_seconds",
    "backfill_pages_per_second",
    "backfill_page_size",
    "backfill_jobs_per_server",
    "backfill_poll_seconds",
    "backfill_lease_seconds",
    "backfill_timeout_seconds",
    "fanout_concurrency",
    "observe_seconds",
    "silent_instance_seconds",
    "fanout_timeout_seconds",
    "fanout_poll_seconds",
    "fanout_lease_seconds",
    "fanout_disable_after_seconds",
    "fanout_retention_seconds",
    "quarantine_max_events",
    "quarantine_max_bytes",
    "quarantine_retention_days",
    "queue_max_bytes",
    "batch_max_bytes",
    "batch_max_rows",
    "batch_max_requests",
    "flushers",
    "db_pool_size",
    "retry_after_seconds",
    "stream_buffer_frames",
    "stream_buffer_bytes",
    "stream_max_unauthenticated",
    "ai_timeout_seconds",
    "ai_batch_size",
    "ai_circuit_threshold",
    "ai_circuit_cooldown_seconds",
    "enrich_batch_size",
    "enrich_min_backoff_seconds",
    "enrich_max_backoff_seconds",
    "enrich_time_limit_seconds",
    "enqueue_timeout_seconds",
    "reconcile_age_seconds",
    "reconcile_interval_seconds",
    "reconcile_max_age_seconds",
}
_NOT_NEGATIVE = {
    "backfill_sweep_seconds",
    "backfill_margin_seconds",
    "backfill_reconnect_delay_seconds",
    "ai_max_retries",
    "enrich_max_retries",
    "enqueue_linger_seconds",
    "worker_nice",
}
AI_PROVIDERS = ("local", "openai")


def load_settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    """Build the settings from the environment; a bad value fails naming its variable."""
    env = os.environ if environ is None else environ
    fields = {f.name: f for f in msgspec.structs.fields(Settings)}
    raw: dict[str, Any] = {}
    for name in fields:
        value = env.get(PREFIX + name.upper())
        if value is not None and value != "":
            raw[name] = value
    raw.update({k: v for k, v in overrides.items() if v is not None})
    try:
        settings = msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as exc:
        # "Expected `int`, got `str` - at `$.port`" -> name the variable.
        message = str(exc)
        for name in fields:
            if message.endswith(f"`$.{name}`"):
                raise SettingsError(f"{PREFIX}{name.upper()}: {message.split(' - ')[0]}") from None
        raise SettingsError(message) from None
    for name in _POSITIVE:
        if getattr(settings, name) <= 0:
            raise SettingsError(f"{PREFIX}{name.upper()}: must be greater than 0")
    for name in _NOT_NEGATIVE:
        if getattr(settings, name) < 0:
            raise SettingsError(f"{PREFIX}{name.upper()}: must be 0 or more")
    _check_enrichment(settings)
    if settings.header_timeout_seconds > 60:
        raise SettingsError(f"{PREFIX}HEADER_TIMEOUT_SECONDS: at most 60 (the HTTP server's limit)")
    if settings.log_level.lower() not in {"debug", "info", "warning", "error"}:
        raise SettingsError(f"{PREFIX}LOG_LEVEL: must be debug, info, warning or error")
    return settings


def _check_enrichment(settings: Settings) -> None:
    if settings.ai_provider not in AI_PROVIDERS:
        raise SettingsError(f"{PREFIX}AI_PROVIDER: must be one of {', '.join(AI_PROVIDERS)}")
    if settings.ai_provider == "openai":
        url = settings.ai_base_url or ""
        if not url.startswith(("http://", "https://")):
            raise SettingsError(
                f"{PREFIX}AI_BASE_URL: an http(s) URL is required when {PREFIX}AI_PROVIDER=openai"
            )
    if settings.enrich_min_backoff_seconds > settings.enrich_max_backoff_seconds:
        raise SettingsError(
            f"{PREFIX}ENRICH_MIN_BACKOFF_SECONDS: must not exceed "
            f"{PREFIX}ENRICH_MAX_BACKOFF_SECONDS"
        )
    if settings.reconcile_max_age_seconds <= settings.reconcile_age_seconds:
        raise SettingsError(
            f"{PREFIX}RECONCILE_MAX_AGE_SECONDS: must exceed {PREFIX}RECONCILE_AGE_SECONDS"
        )
