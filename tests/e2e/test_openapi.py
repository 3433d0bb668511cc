"""schemathesis against the real server's /openapi.json: every documented route, with real
credentials (a registered webhook secret and instance, a tenant token, the admin token), must
answer without 5xx and as its schema says."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error, positive_data_acceptance

from service import openapi
from tests.e2e.conftest import ADMIN, Server, start_server
from tests.integration.conftest import status_update, upsert


@dataclass
class Credentials:
    url: str
    secret: str
    token: str
    instance: str


@pytest.fixture(scope="module")
def live(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Credentials]:
    """One server for the whole run, with a tenant, a source, an instance and a few messages."""
    import asyncio

    import asyncpg

    from tests.conftest import DATA_TABLES

    async def truncate() -> None:
        conn = await asyncpg.connect(database_url)
        await conn.execute(f"TRUNCATE {', '.join(DATA_TABLES)} CASCADE")
        await conn.close()

    asyncio.run(truncate())
    server: Server = start_server(database_url, tmp_path_factory.mktemp("openapi"), workers=1)
    admin = {"Authorization": f"Bearer {ADMIN}"}
    try:
        with httpx.Client(base_url=server.url, headers=admin, timeout=10) as c:
            token = c.post("/api/admin/tenants", json={"name": "acme"}).json()["token"]
            secret = c.post("/api/admin/sources", json={"name": "evo"}).json()["secret"]
            c.post(
                "/api/admin/instances", json={"tenant": "acme", "source": "evo", "name": "acme-1"}
            ).raise_for_status()
            hook = f"/api/webhooks/evolution/{secret}"
            for i in range(3):
                c.post(
                    hook, json=upsert("acme-1", f"MSG{i}", text=f"pedido {i}")
                ).raise_for_status()
            c.post(hook, json=status_update("acme-1", "MSG0", "READ")).raise_for_status()
        yield Credentials(server.url, secret, token, "acme-1")
    finally:
        server.stop()


DOCUMENT = openapi.document()
SCHEMA = schemathesis.openapi.from_dict(DOCUMENT)
# The WebSocket is documented for completeness; plain HTTP cannot exercise it
# (tests/e2e/test_stream.py does).
OPERATIONS = [
    (method.upper(), path)
    for path, item in DOCUMENT["paths"].items()
    for method in item
    if path != "/api/v1/stream"
]


def _negatable(method: str, path: str) -> bool:
    """A body or a query parameter that can be wrong (any string is a valid path segment)."""
    operation = DOCUMENT["paths"][path][method.lower()]
    queries = [p for p in operation.get("parameters", []) if p["in"] == "query"]
    return bool(queries or operation.get("requestBody"))


CASES = [
    (method, path, mode)
    for method, path in OPERATIONS
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode == GenerationMode.POSITIVE or _negatable(method, path)
]


@pytest.mark.parametrize(
    ("method", "path", "mode"), CASES, ids=[f"{m} {p} {mode.value}" for m, p, mode in CASES]
)
def test_route_conforms_to_the_schema(
    method: str, path: str, mode: GenerationMode, live: Credentials
) -> None:
    headers: dict[str, str] = {}
    if path.startswith("/api/admin/"):
        headers["Authorization"] = f"Bearer {ADMIN}"
    elif path.startswith("/api/v1/"):
        headers["Authorization"] = f"Bearer {live.token}"
    webhook = path.startswith("/api/webhooks/")
    path_parameters = {"secret": live.secret} if webhook else None
    operation = SCHEMA[path][method]
    strategy = operation.as_strategy(mode, path_parameters=path_parameters, headers=headers)
    # An event for an unknown instance is kept in quarantine whatever its data (design.md:
    # nothing lost), so schema-violating webhook bodies are only checked for "no 5xx".
    checks = [not_a_server_error] if webhook and mode == GenerationMode.NEGATIVE else None
    # Whether a backfill can be asked for depends on what the schema cannot say: the source must
    # have an Evolution URL (422 otherwise, as design.md has it) and `to` must follow `from`.
    # Nor can it say which URLs resolve, and to an allowed address (endpoints).
    refusable = path == "/api/admin/backfill" or (
        path.startswith("/api/v1/endpoints") and method in ("POST", "PATCH")
    )
    excluded = [positive_data_acceptance] if refusable else None

    @given(strategy)
    @settings(
        max_examples=15,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def check(case: Any) -> None:
        body = case.body
        if isinstance(body, dict) and isinstance(body.get("instance"), str):
            # half the time an instance that exists, so the event reaches the real ingest path
            if len(body["instance"]) % 2 == 0:
                body["instance"] = live.instance
        params = case.path_parameters
        if params and "message_id" in params and len(params["message_id"]) % 2 == 0:
            params.update(instance=live.instance, message_id="MSG0")
        query = case.query
        if query and query.get("mode") == "semantic":
            # this server runs without Redis and a worker: semantic search answers its documented
            # 503 (tests/integration/test_search.py runs it with both)
            query["mode"] = "text"
        if mode == GenerationMode.POSITIVE and query and query.get("after") and "before" in query:
            del query["before"]  # exclusive (a 400 says so); OpenAPI cannot express it
        case.call_and_validate(base_url=live.url, checks=checks, excluded_checks=excluded)

    check()


def test_nul_in_event_and_instance_names_is_kept_not_an_error(live: Credentials) -> None:
    """Found by the run above: Postgres text cannot hold NUL, and the names end up in text
    columns (quarantine, events)."""
    hook = f"{live.url}/api/webhooks/evolution/{live.secret}"
    unknown = httpx.post(
        hook, json={"event": "messages.upsert", "instance": "a\u0000b", "data": {}}
    )
    assert unknown.status_code == 202 and unknown.json() == {"status": "quarantined"}
    odd = httpx.post(hook, json={"event": "x\u0000", "instance": live.instance, "data": {}})
    assert odd.status_code == 202 and odd.json()["status"] == "kept"
