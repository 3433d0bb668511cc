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
    queue_max_requests: int = 20_000
    batch_max_rows: int = 5_000
    batch_max_requests: int = 2_000
    db_pool_size: int = 6
    db_timeout_seconds: float = 10.0
    retry_after_seconds: int = 2
    registry_refresh_seconds: float = 30.0
    log_level: str = "info"
    bench_routes: bool = False  # mount bench/'s null-ceiling and naive-baseline routes

    @property
    def base_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser().resolve()

    def redacted(self) -> dict[str, Any]:
        """The settings with secrets blanked, for logs."""
        out = msgspec.structs.asdict(self)
        for name in ("admin_token", "database_url", "redis_url"):
            if out[name]:
                out[name] = "***"
        return out


_POSITIVE = {
    "port",
    "workers",
    "max_body_bytes",
    "queue_max_requests",
    "batch_max_rows",
    "batch_max_requests",
    "db_pool_size",
    "retry_after_seconds",
}


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
    if settings.log_level.lower() not in {"debug", "info", "warning", "error"}:
        raise SettingsError(f"{PREFIX}LOG_LEVEL: must be debug, info, warning or error")
    return settings
