"""Fan-out through real `sense worker` processes: `kill -9` of the worker in the middle of a
delivery loses nothing (the event is sent again, same webhook-id, then the rest in order), and
a separate worker serves its delivery metrics on SENSE_WORKER_METRICS_PORT."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import httpx

from tests.e2e.conftest import free_port, start_server, start_worker, stop
from tests.e2e.test_stream import Live, uid
from tests.integration.conftest import upsert
from tests.integration.polling import eventually_sync
from tests.integration.test_fanout import Receiver


def test_kill_9_of_the_worker_mid_delivery_loses_nothing(
    clean_db: str, redis_url: str, tmp_path: Path
) -> None:
    release = threading.Event()
    hook = Receiver(hold_first=release)
    metrics_port = free_port()
    server = start_server(
        clean_db,
        tmp_path,
        workers=1,
        SENSE_REDIS_URL=redis_url,
        SENSE_FANOUT_ALLOW_PRIVATE="true",
        SENSE_FANOUT_LEASE_SECONDS="3",
        SENSE_WORKER_METRICS_PORT=str(metrics_port),
    )
    live = Live(server, clean_db, redis_url)
    first = second = None
    try:
        live.endpoint("acme", hook.url, events=["message.created"])
        ids = [uid("K") for _ in range(3)]
        for message_id in ids:
            live.post(upsert("acme-main", message_id, "x"))
        first = start_worker(server.env, tmp_path / "worker-1.log")
        eventually_sync(lambda: len(hook.got), lambda n: n >= 1, 60)  # the first, held
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(10)
        release.set()  # the dead worker's request is answered: nobody records it
        second = start_worker(server.env, tmp_path / "worker-2.log")
        eventually_sync(lambda: len(hook.accepted), lambda n: n >= 4, 60)
        sent = [got.doc["data"]["message_id"] for got in hook.accepted]
        assert sent == [ids[0], ids[0], ids[1], ids[2]]  # the first again, then the rest
        webhook_ids = [got.headers["webhook-id"] for got in hook.accepted]
        assert webhook_ids[0] == webhook_ids[1] and len(set(webhook_ids)) == 3
        scrape = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
        delivered = [
            float(line.split()[-1])
            for line in scrape.splitlines()
            if line.startswith("sense_fanout_deliveries_total{") and 'outcome="delivered"' in line
        ]
        assert delivered == [3.0]  # this worker's: the first event again, then the other two
        assert "sense_fanout_backlog{" in scrape
    finally:
        release.set()
        for worker in (first, second):
            if worker is not None:
                stop(worker)
        hook.close()
        server.stop()
