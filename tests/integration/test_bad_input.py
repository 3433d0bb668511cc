"""Malformed input gets a 4xx that names the problem, never a 5xx, and stores nothing: invalid
UTF-8, nesting past any sane depth, numbers past Python's int-string limit, names and ids past
what the storage can key (issue: hardening, first cases)."""

from __future__ import annotations

import json

import asyncpg
import pytest

from tests.integration.conftest import Deployment, upsert


async def _stored(conn: asyncpg.Connection) -> tuple[int, int, int]:
    return (
        await conn.fetchval("SELECT count(*) FROM messages"),
        await conn.fetchval("SELECT count(*) FROM quarantine"),
        await conn.fetchval("SELECT count(*) FROM events"),
    )


@pytest.mark.parametrize(
    "raw",
    [
        # a raw \xff inside pushName (a Latin-1 proxy), and a whole Latin-1 body
        json.dumps(upsert("acme-main", "U1")).encode().replace(b"Jo\\u00e3o", b"Jo\xff"),
        json.dumps(upsert("acme-main", "U2", "ação"), ensure_ascii=False).encode("latin-1"),
        # an event kept as received (no table): its data goes into a text column
        b'{"event": "call", "instance": "acme-main", "data": {"from": "Jo\xff"}}',
    ],
    ids=["xff-in-pushname", "latin-1-body", "xff-in-a-kept-event"],
)
async def test_invalid_utf8_is_400(
    deployment: Deployment, conn: asyncpg.Connection, raw: bytes
) -> None:
    r = await deployment.post(None, raw=raw)
    assert r.status_code == 400, r.text
    assert "UTF-8" in r.json()["detail"] or "utf-8" in r.json()["detail"].lower()
    assert await _stored(conn) == (0, 0, 0)


@pytest.mark.parametrize("where", ["data", "envelope"])
async def test_deep_nesting_is_400(
    deployment: Deployment, conn: asyncpg.Connection, where: str
) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    body = json.dumps(upsert("acme-main", "N1"))
    if where == "data":
        raw = body.replace('"source": "android"', f'"source": "android", "x": {deep}')
    else:
        raw = body.replace('"apikey": null', f'"apikey": null, "x": {deep}')
    r = await deployment.post(None, raw=raw.encode())
    assert r.status_code == 400, r.text
    assert await _stored(conn) == (0, 0, 0)


async def test_a_status_of_thousands_of_digits_is_no_status(
    deployment: Deployment, conn: asyncpg.Connection
) -> None:
    assert (await deployment.post(upsert("acme-main", "S1"))).status_code == 200
    receipt = {
        "event": "messages.update",
        "instance": "acme-main",
        "data": {
            "keyId": "S1",
            "remoteJid": "5511999999999@s.whatsapp.net",
            "fromMe": False,
            "status": "9" * 5000,
        },
    }
    r = await deployment.post(receipt)
    assert r.status_code in (200, 202), r.text  # accepted, the unknown status changes nothing
    row = await (await deployment.message("acme", "acme-main", "S1")).aread()
    assert json.loads(row)["status"] == "delivered"


async def test_an_instance_name_past_the_limit_is_422(
    deployment: Deployment, conn: asyncpg.Connection
) -> None:
    r = await deployment.post(upsert("x" * 3000, "L1"))
    assert r.status_code == 422, r.text
    assert "255" in r.json()["detail"]
    assert await _stored(conn) == (0, 0, 0)


async def test_a_message_id_past_the_limit_is_422_not_an_unreadable_quarantine(
    deployment: Deployment, conn: asyncpg.Connection
) -> None:
    r = await deployment.post(upsert("acme-main", "K" * 3000))
    assert r.status_code == 422, r.text
    assert "message id" in r.json()["detail"] and "255" in r.json()["detail"]
    assert await _stored(conn) == (0, 0, 0)
    # at the limit it is stored and read back
    at_limit = "K" * 255
    assert (await deployment.post(upsert("acme-main", at_limit))).status_code == 200
    assert (await deployment.message("acme", "acme-main", at_limit)).status_code == 200


def test_the_contract_documents_every_refusal_above() -> None:
    from service import openapi

    paths = openapi.document()["paths"]
    for path in ("/api/webhooks/evolution/{secret}", "/api/webhooks/evolution/{secret}/{suffix}"):
        assert {"400", "422"} <= set(paths[path]["post"]["responses"]), path
