"""The real server and a real `sense worker` as subprocesses, on real Postgres and Redis:
webhooks in, analyses and embeddings out, semantic search answered by the worker."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests.e2e.conftest import Server, embedding_dims, sense, start_server, stop
from tests.integration.conftest import upsert

WAIT = 60.0


@pytest.fixture
def stack(
    clean_db: str, redis_url: str, tmp_path: Path
) -> Iterator[tuple[Server, Path, subprocess.Popen[bytes]]]:
    server = start_server(clean_db, tmp_path, workers=1, SENSE_REDIS_URL=redis_url)
    log = tmp_path / "worker.log"
    worker = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "worker", "--processes", "1", "--threads", "2"],
        env=server.env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield server, log, worker
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            code = worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            code = worker.wait()
        server.stop()
    assert code == 0, log.read_text()[-3000:]


def test_webhook_to_analysis_and_semantic_search(
    stack: tuple[Server, Path, subprocess.Popen[bytes]], clean_db: str
) -> None:
    server, log, worker = stack
    tenant = sense("tenant", "create", "acme", env=server.env)
    source = sense("source", "create", "evo", env=server.env)
    sense("instance", "add", "--tenant", "acme", "--source", "evo", "acme-1", env=server.env)
    hook = server.url + source["webhook_path"]
    headers = {"Authorization": f"Bearer {tenant['token']}"}
    texts = {
        "W1": "Adorei o atendimento, muito obrigado!",
        "W2": "Meu pedido ainda não chegou, estou chateado",
        "W3": "Qual o horário de funcionamento da loja?",
    }
    for mid, text in texts.items():
        assert httpx.post(hook, json=upsert("acme-1", mid, text)).status_code == 200

    deadline = time.monotonic() + WAIT
    analyses: dict[str, dict[str, object]] = {}
    while time.monotonic() < deadline and len(analyses) < len(texts):
        for mid in texts:
            r = httpx.get(f"{server.url}/api/v1/messages/acme-1/{mid}", headers=headers)
            if r.status_code == 200 and r.json()["analysis"]["state"] == "done":
                analyses[mid] = r.json()["analysis"]
        time.sleep(0.2)
    assert len(analyses) == len(texts), log.read_text()[-3000:]
    assert analyses["W1"]["sentiment"] > 0.3 and analyses["W1"]["emotion"] == "gratidão"  # type: ignore[operator]
    assert analyses["W2"]["sentiment"] < 0  # type: ignore[operator]
    assert analyses["W3"]["emotion"] == "neutro"

    assert embedding_dims(clean_db) == [512, 512, 512]

    # the web process asks the worker for the query's embedding
    r = httpx.get(
        server.url + "/api/v1/search",
        headers=headers,
        params={"q": "que horas a loja abre", "mode": "semantic", "limit": 3},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    hits = r.json()["items"]
    assert hits[0]["message"]["message_id"] == "W3"
    assert hits[0]["score"] > hits[-1]["score"]

    r = httpx.get(server.url + "/api/v1/chats", headers=headers)
    assert sum(c["analyzed_messages"] for c in r.json()["items"]) == 3

    # it analysed at a lower priority than ingest: SENSE_WORKER_NICE (10) above this process's
    assert os.getpriority(os.PRIO_PROCESS, worker.pid) == min(
        os.getpriority(os.PRIO_PROCESS, 0) + 10, 19
    )

    # a newer analyzer: `sense reanalyze` re-scores what the old one scored, with its bar
    async def age(ids: tuple[str, ...]) -> None:
        conn = await asyncpg.connect(clean_db)
        await conn.execute(
            "UPDATE messages SET analyzer = 'local/rules-old+minilm-l6' WHERE message_id = ANY($1)",
            list(ids),
        )
        await conn.close()

    asyncio.run(age(("W1", "W2")))
    out = subprocess.run(
        # (no --since: the fixture's messages were sent in 2023)
        [sys.executable, "-m", "service.cli", "reanalyze", "--tenant", "acme"],
        env=server.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["marked"] == 2 and summary["left"] == 0
    assert summary["analyzer"].startswith("local/rules-")
    assert "reanalyze: re-scored [" in out.stderr and "2/2 (100%)" in out.stderr
    for mid in ("W1", "W2"):
        r = httpx.get(f"{server.url}/api/v1/messages/acme-1/{mid}", headers=headers)
        assert r.json()["analysis"]["analyzer"] == summary["analyzer"]
    # --no-wait queues and says how many are left: with the worker stopped, all of them
    assert stop(worker) == 0
    asyncio.run(age(("W3",)))
    out = subprocess.run(
        [sys.executable, "-m", "service.cli", "reanalyze", "--tenant", "acme", "--no-wait"],
        env=server.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["marked"] == json.loads(out.stdout)["left"] == 1
