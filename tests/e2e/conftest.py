"""The real server as a subprocess (`sense serve`), driven over HTTP."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest

ADMIN = "e2e-admin-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sense(*args: str, env: dict[str, str]) -> dict:  # type: ignore[type-arg]
    """Run the `sense` CLI; returns its JSON output."""
    out = subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)  # type: ignore[no-any-return]


# Every server a test starts; each test module checks at its end that none was left running
# (a leaked server keeps following the registry, and would replay the quarantine of the tests
# that come after it).
STARTED: list[Server] = []


@pytest.fixture(scope="module", autouse=True)
def no_server_left_running() -> Iterator[None]:
    yield
    left = [s for s in STARTED if s.process.poll() is None]
    for server in left:
        server.stop()
    assert not left, f"tests left {len(left)} server(s) running: {[s.url for s in left]}"


@dataclass
class Server:
    url: str
    env: dict[str, str]
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        return stop(self.process, timeout, sig)


def start_server(database_url: str, tmp: Path, workers: int = 2, **env_extra: str) -> Server:
    port = free_port()
    env = {
        **os.environ,
        "SENSE_DATABASE_URL": database_url,
        "SENSE_ADMIN_TOKEN": ADMIN,
        "SENSE_PORT": str(port),
        "SENSE_WORKERS": str(workers),
        "SENSE_DATA_DIR": str(tmp / "data"),
        **env_extra,
    }
    return launch(f"http://127.0.0.1:{port}", env, tmp / f"server-{port}.log")


def launch(url: str, env: dict[str, str], log: Path, *, append: bool = False) -> Server:
    """`sense serve` with ``env`` (which names its port), once it answers /readyz."""
    process = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve"],
        env=env,
        stdout=log.open("ab" if append else "wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    server = Server(url, env, process, log)
    STARTED.append(server)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited:\n{log.read_text()}")
        try:
            if httpx.get(server.url + "/readyz", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    server.stop(signal.SIGKILL)
    raise RuntimeError(f"server not ready:\n{log.read_text()}")


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """A real `sense worker` (one process) with a server's settings; stop it with stop()."""
    return subprocess.Popen(
        [sys.executable, "-m", "service.cli", "worker", "--processes", "1", "--threads", "2"],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop(process: subprocess.Popen[bytes], timeout: float = 30, sig: int = signal.SIGTERM) -> int:
    """``sig`` (SIGTERM), then SIGKILL after ``timeout``; the exit code. Whatever is left in
    the process's session is killed too: a Granian worker whose main was killed (or that
    outlived it) would go on serving, claiming backfill jobs and replaying the quarantine of
    the tests that come after."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    with contextlib.suppress(ProcessLookupError, PermissionError):  # its session (group)
        os.killpg(process.pid, signal.SIGKILL)
    return process.returncode


def embedding_dims(database_url: str) -> list[int]:
    """The dimensions of every stored message's embedding."""
    import asyncio

    async def fetch() -> list[int]:
        conn = await asyncpg.connect(database_url)
        try:
            rows = await conn.fetch("SELECT vector_dims(embedding) AS d FROM message_search")
        finally:
            await conn.close()
        return [r["d"] for r in rows]

    return asyncio.run(fetch())


@pytest.fixture
def clean_db(database_url: str) -> str:
    import asyncio

    from tests.conftest import DATA_TABLES

    async def truncate() -> None:
        conn = await asyncpg.connect(database_url)
        await conn.execute(f"TRUNCATE {', '.join(DATA_TABLES)} CASCADE")
        await conn.close()

    asyncio.run(truncate())
    return database_url


@pytest.fixture
def server(clean_db: str, tmp_path: Path) -> Iterator[Server]:
    s = start_server(clean_db, tmp_path)
    yield s
    s.stop()
