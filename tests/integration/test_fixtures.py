"""Every captured-shape fixture in tests/fixtures/evolution, posted through the real app.

Each fixture lists its requests (posted in order) and what must hold afterwards; see the
README beside the fixtures. Every instance a fixture registers gets a tenant of its own.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Deployment

FIXTURES = sorted((Path(__file__).parent.parent / "fixtures" / "evolution").glob("*.json"))
LOADED = {p.stem: json.loads(p.read_text()) for p in FIXTURES}


def test_the_corpus_is_there() -> None:
    assert len(FIXTURES) >= 40


@pytest.mark.parametrize("name", sorted(LOADED))
async def test_fixture(name: str, client: Any) -> None:
    fixture = LOADED[name]
    d = Deployment(client)
    await d.source("evo")
    for name in fixture.get("instances", []):
        await d.tenant(f"tenant-of-{name}")
        r = await d.instance(f"tenant-of-{name}", "evo", name)
        assert r.status_code == 201, r.text
    for n, request in enumerate(fixture["requests"]):
        raw = request.get("raw_body")
        r = await d.post(
            request.get("body"),
            suffix=request.get("path_suffix", ""),
            raw=raw.encode() if raw is not None else None,
        )
        assert r.status_code == request["expect_status"], f"request {n}: {r.text}"
        if r.status_code >= 400:
            assert r.json()["error"] and r.json()["detail"]
    expect = fixture.get("expect", {})
    for wanted in expect.get("messages", []):
        tenant = d.tenant_of[wanted["instance"]]
        got = await d.message(tenant, wanted["instance"], wanted["message_id"])
        assert got.status_code == 200, f"{wanted['message_id']}: {got.text}"
        body = got.json()
        mismatched = {k: (v, body.get(k)) for k, v in wanted.items() if body.get(k) != v}
        assert not mismatched, f"{wanted['message_id']}: (expected, got) {mismatched}"
        # a tenant sees only its own data
        for other in d.tokens:
            if other != tenant:
                r = await d.message(other, wanted["instance"], wanted["message_id"])
                assert r.status_code == 404
    for gone in expect.get("absent", []):
        tenant = d.tenant_of.get(gone["instance"])
        if tenant is None:  # an unregistered instance: nothing is filed under any tenant
            for t in d.tokens:
                r = await d.message(t, gone["instance"], gone["message_id"])
                assert r.status_code == 404
            continue
        r = await d.message(tenant, gone["instance"], gone["message_id"])
        assert r.status_code == 404, f"{gone['message_id']} should be absent: {r.text}"
