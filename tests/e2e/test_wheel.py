"""The wheel alone gives a working `sense worker`: built with maturin, installed into a fresh
venv (nothing from the development environment or the source tree), and that venv's worker
analyses a message that a real server enqueued, on real Postgres and Redis."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import embedding_dims, sense, start_server, stop
from tests.integration.conftest import upsert

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
WAIT = 120.0


def run(args: list[str | Path], *, timeout: float, cwd: Path | None = None) -> None:
    out = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{args}:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding the wheel and its dependencies, nothing else."""
    tmp = tmp_path_factory.mktemp("wheel")
    # cargo's usual target dir: after `make native` this only packages the compiled crate
    maturin = [sys.executable, "-m", "maturin", "build", "--release"]
    run([*maturin, "--interpreter", sys.executable, "--out", tmp / "dist"], cwd=ROOT, timeout=900)
    (wheel,) = (tmp / "dist").glob("*.whl")
    venv = tmp / "venv"
    run([sys.executable, "-m", "venv", venv], timeout=120)
    run(
        [venv / "bin/python", "-m", "pip", "install", "-q", "--no-compile", wheel],
        timeout=600,
    )
    return venv


def isolated(env: dict[str, str]) -> dict[str, str]:
    """``env`` without what would let the venv's Python see the development environment."""
    return {k: v for k, v in env.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def test_the_installed_worker_analyses_a_message(
    venv: Path, clean_db: str, redis_url: str, tmp_path: Path
) -> None:
    # run from outside the source tree, so only the installed packages can be imported
    where = subprocess.run(
        [venv / "bin/python", "-c", "import workers; print(workers.__file__)"],
        cwd=tmp_path,
        env=isolated(dict(os.environ)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stderr

    server = start_server(clean_db, tmp_path, workers=1, SENSE_REDIS_URL=redis_url)
    log = tmp_path / "worker.log"
    worker = subprocess.Popen(
        [venv / "bin/sense", "worker", "--processes", "1", "--threads", "1"],
        cwd=tmp_path,
        env=isolated(server.env),
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        tenant = sense("tenant", "create", "acme", env=server.env)
        source = sense("source", "create", "evo", env=server.env)
        sense("instance", "add", "--tenant", "acme", "--source", "evo", "acme-1", env=server.env)
        text = "Adorei o atendimento, muito obrigado!"
        r = httpx.post(server.url + source["webhook_path"], json=upsert("acme-1", "WHL1", text))
        assert r.status_code == 200, r.text

        url = f"{server.url}/api/v1/messages/acme-1/WHL1"
        headers = {"Authorization": f"Bearer {tenant['token']}"}
        analysis: dict[str, object] = {}
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline and worker.poll() is None:
            analysis = httpx.get(url, headers=headers).json()["analysis"]
            if analysis["state"] == "done":
                break
            time.sleep(0.2)
        assert analysis.get("state") == "done", log.read_text()[-3000:]
        assert analysis["emotion"] == "gratidão"
    finally:
        code = stop(worker)
        server.stop()
    assert code == 0, log.read_text()[-3000:]

    assert embedding_dims(clean_db) == [512]
