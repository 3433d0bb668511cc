"""The admin API's refusals, for every admin route: 401 without the right Bearer token, 403
while the admin API is off (no SENSE_ADMIN_TOKEN), 409 for a name that is taken."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from starlette.routing import Route

from service import admin_api
from tests.integration.conftest import ADMIN, Deployment, running_app

# every admin route, as the app serves it ({ref} and other path parameters named "x")
ADMIN_ROUTES = [
    (method, re.sub(r"\{[^}]+\}", "x", route.path))
    for route in admin_api.routes()
    if isinstance(route, Route)
    for method in sorted(route.methods or ())
    if method != "HEAD"
]
# a body each route would accept, so that only the authorization can refuse it
BODIES: dict[str, dict[str, Any]] = {
    "/api/admin/tenants": {"name": "intruso"},
    "/api/admin/sources": {"name": "intrusa"},
    "/api/admin/instances": {"tenant": "acme", "source": "evo", "name": "intrusa"},
}
REGISTRY_TABLES = ("tenants", "sources", "instances")


def test_the_admin_routes_are_all_here() -> None:
    paths = {path for _, path in ADMIN_ROUTES}
    assert {*BODIES, "/api/admin/quarantine/replay"} <= paths
    assert all(path.startswith("/api/admin/") for path in paths)


async def _counts(conn: asyncpg.Connection) -> dict[str, int]:
    return {t: await conn.fetchval(f"SELECT count(*) FROM {t}") for t in REGISTRY_TABLES}


WRONG = [
    None,  # no Authorization header
    f"Bearer {ADMIN}x",
    f"Bearer {ADMIN[:-1]}",
    "Bearer ",
    f"Basic {ADMIN}",
    ADMIN,  # no scheme
    f"Token {ADMIN}",
]


@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES)
async def test_every_admin_route_refuses_a_missing_or_wrong_token_with_401(
    deployment: Deployment, conn: asyncpg.Connection, method: str, path: str
) -> None:
    before = await _counts(conn)
    for authorization in WRONG:
        headers = {} if authorization is None else {"Authorization": authorization}
        r = await deployment.client.request(
            method, path, json=BODIES.get(path, {}), headers=headers
        )
        assert r.status_code == 401, (authorization, r.text)
        assert r.json()["error"] == "unauthorized"
        assert r.headers["www-authenticate"] == "Bearer"
    assert await _counts(conn) == before  # nothing was registered
    # the right token, as a control: the same request is not refused for its authorization
    r = await deployment.client.request(
        method, path, json=BODIES.get(path, {}), headers={"Authorization": f"bearer  {ADMIN} "}
    )
    assert r.status_code not in (401, 403), r.text


@pytest.fixture
async def admin_off(
    conn: asyncpg.Connection, database_url: str
) -> AsyncIterator[httpx.AsyncClient]:
    """The app without SENSE_ADMIN_TOKEN."""
    async with running_app(database_url, admin_token=None) as app:
        assert app.state.services.settings.admin_token is None
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES)
async def test_every_admin_route_is_403_while_the_admin_api_is_off(
    admin_off: httpx.AsyncClient, conn: asyncpg.Connection, method: str, path: str
) -> None:
    for authorization in (None, f"Bearer {ADMIN}", "Bearer ", "Bearer None"):
        headers = {} if authorization is None else {"Authorization": authorization}
        r = await admin_off.request(method, path, json=BODIES.get(path, {}), headers=headers)
        assert r.status_code == 403, (authorization, r.text)
        assert r.json()["error"] == "forbidden"
        assert "SENSE_ADMIN_TOKEN" in r.json()["detail"]
    assert await _counts(conn) == dict.fromkeys(REGISTRY_TABLES, 0)


async def test_a_taken_name_is_409_and_changes_nothing(
    deployment: Deployment, conn: asyncpg.Connection
) -> None:
    await deployment.source("evo-2")
    before = await _counts(conn)
    tokens = dict(deployment.tokens)
    taken = [
        ("/api/admin/tenants", {"name": "acme"}, "'acme'"),
        ("/api/admin/tenants", {"name": " acme "}, "'acme'"),  # names are trimmed
        ("/api/admin/sources", {"name": "evo"}, "'evo'"),
        # an instance name is unique per source (Evolution's) ...
        (
            "/api/admin/instances",
            {"tenant": "globex", "source": "evo", "name": "acme-main"},
            "'acme-main' is taken on that source",
        ),
        # ... and per tenant (the read API names an instance within its tenant)
        (
            "/api/admin/instances",
            {"tenant": "acme", "source": "evo-2", "name": "acme-main"},
            "'acme-main' is taken on that tenant",
        ),
    ]
    for path, body, detail in taken:
        r = await deployment.admin(path, body)
        assert r.status_code == 409, (path, body, r.text)
        assert r.json()["error"] == "conflict" and detail in r.json()["detail"], r.text
    assert await _counts(conn) == before
    # the existing ones still work as they did: same token, same routing
    assert deployment.tokens == tokens
    for tenant in ("acme", "globex"):
        assert (await deployment.get("/api/v1/instances", tenant)).status_code == 200
    rows = await conn.fetch(
        "SELECT t.name, s.name, i.name FROM instances i JOIN tenants t USING (tenant_id)"
        " JOIN sources s USING (source_id) ORDER BY i.name"
    )
    assert [tuple(r) for r in rows] == [
        ("acme", "evo", "acme-main"),
        ("globex", "evo", "globex-main"),
    ]
