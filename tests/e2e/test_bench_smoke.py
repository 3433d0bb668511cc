"""A short run of the load bench against the real server: every message it acknowledged must
be in the database (0 lost). Correctness only; speed is `make bench`'s business (bench/)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from bench import load, traffic
from tests.e2e.conftest import ADMIN, start_server


@pytest.mark.parametrize("generator", ["wrk", "python"])
def test_every_acknowledged_message_is_stored(
    generator: str, clean_db: str, tmp_path: Path
) -> None:
    if generator == "wrk" and shutil.which("wrk") is None:
        pytest.skip("wrk is not installed (bench/setup.sh installs it)")
    server = start_server(clean_db, tmp_path, workers=2)
    try:
        instances = load.register(
            server.url, tenants=3, instances_per_tenant=3, sources=2, admin=ADMIN
        )
        files = (tmp_path / "deployment.tsv", tmp_path / "pool.tsv")
        traffic.write_deployment(files[0], instances)
        traffic.write_pool(files[1], traffic.Pool(instances).build(800))
        bench = load.Server(server.url, server.process, server.log)
        if generator == "wrk":
            run = load.run_wrk(bench, files, "webhook", 2, 16, 1, tmp_path)
        else:
            run = load.run_python_burst(bench, files, "webhook", 1200, 16, tmp_path)
    finally:
        server.stop()
    names, _ = run.acked_ids()
    assert run.ok > 100 and len(names) > 50, run.summary()
    # every answer a success: 200 stored, 202 for presence.update (ignored); no 4xx/5xx
    assert set(run.codes) <= {"200", "202"}, run.codes
    assert asyncio.run(load.count_lost(clean_db, run)) == 0
    # the check can fail: an acknowledgement the database does not hold counts as lost
    forged = tmp_path / "forged.tsv"
    forged.write_text(run.acked.read_text() + f"{names[0]}\t3EB0NEVERSENT0000000\n")
    run.acked = forged
    assert asyncio.run(load.count_lost(clean_db, run)) == 1
