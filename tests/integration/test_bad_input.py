"""Malformed input gets a 4xx that names the problem, never a 5xx, and stores nothing: invalid
UTF-8, nesting past any sane depth, numbers past Python's int-string limit, names and ids past
what the storage can key (issue: hardening, first cases)."""

from __future__ import annotations

import asyncio
import json
import random
import string
from typing import Any

import asyncpg
import pytest

from tests.integration.conftest import Deployment, upsert

# A JID no index can hold: random (so Postgres cannot compress it under the index row limit)
LONG_USER = "".join(random.Random(7).choices(string.ascii_letters + string.digits, k=10_000))


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


def _envelope(event: str, data: Any, instance: str = "acme-main") -> dict[str, Any]:
    return {"event": event, "instance": instance, "data": data, "apikey": None}


# Found by tests/integration/test_fuzz.py: each of these was answered 202 "quarantined" with
# a write failure (an index row past Postgres' limit, NUL in a text column), so the event sat
# in quarantine under a registered instance, where no replay could ever file it.


@pytest.mark.parametrize(
    ("body", "what"),
    [
        (upsert("acme-main", "J1", remote=LONG_USER + "@s.whatsapp.net"), "chat JID"),
        (
            upsert(
                "acme-main",
                "J2",
                remote="120363000000000001@g.us",
                key={"participant": LONG_USER + "@lid"},
            ),
            "sender JID",
        ),
        (_envelope("contacts.upsert", [{"id": LONG_USER + "@s.whatsapp.net"}]), "contact JID"),
        (_envelope("chats.upsert", [{"remoteJid": LONG_USER + "@g.us"}]), "chat JID"),
        (_envelope("groups.upsert", [{"id": LONG_USER + "@g.us", "subject": "x"}]), "group JID"),
        (
            _envelope(
                "connection.update", {"state": "open", "wuid": LONG_USER + "@s.whatsapp.net"}
            ),
            "wuid",
        ),
    ],
    ids=["message-chat", "message-sender", "contact", "chat", "group", "connection-wuid"],
)
async def test_a_jid_past_the_limit_is_422(
    deployment: Deployment, conn: asyncpg.Connection, body: dict[str, Any], what: str
) -> None:
    r = await deployment.post(body)
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "over_limit"
    assert r.json()["detail"] == f"{what} longer than 255 characters"
    assert await _stored(conn) == (0, 0, 0)


async def test_a_jid_past_the_limit_in_an_lid_pair_only_loses_the_pair(
    deployment: Deployment, conn: asyncpg.Connection
) -> None:
    contact = {"id": "123456789012345@lid", "phoneNumber": LONG_USER + "@s.whatsapp.net"}
    r = await deployment.post(_envelope("contacts.upsert", [contact]))
    assert r.status_code == 200, r.text
    assert await conn.fetchval("SELECT count(*) FROM contacts") == 1
    assert await conn.fetchval("SELECT count(*) FROM lid_map") == 0
    assert await conn.fetchval("SELECT count(*) FROM quarantine") == 0


@pytest.mark.parametrize(
    ("body", "what"),
    [
        (upsert("acme-main", "Z1", remote="\x00553198765432@s.whatsapp.net"), "chat JID"),
        (
            _envelope("contacts.upsert", {"remoteJid": "5511987654321\x00@s.whatsapp.net"}),
            "contact JID",
        ),
        (
            _envelope("chats.upsert", [{"remoteJid": "5511987654321@s.whatsapp.net\x00"}]),
            "chat JID",
        ),
        (
            _envelope("connection.update", {"state": "open", "wuid": "55119\x00@s.whatsapp.net"}),
            "wuid",
        ),
    ],
    ids=["message-chat", "contact", "chat", "connection-wuid"],
)
async def test_nul_in_a_jid_is_400(
    deployment: Deployment, conn: asyncpg.Connection, body: dict[str, Any], what: str
) -> None:
    r = await deployment.post(body)
    assert r.status_code == 400, r.text
    assert r.json() == {"error": "invalid_data", "detail": f"{what} contains NUL"}
    assert await _stored(conn) == (0, 0, 0)


async def test_a_message_id_of_nul_only_is_400(
    deployment: Deployment, conn: asyncpg.Connection
) -> None:
    r = await deployment.post(upsert("acme-main", "\x00\x00"))
    assert r.status_code == 400, r.text
    assert "message id is empty" in r.json()["detail"]
    receipt = _envelope("messages.update", {"keyId": "\x00", "status": "READ"})
    assert (await deployment.post(receipt)).status_code == 400
    assert await _stored(conn) == (0, 0, 0)


async def test_nul_in_a_connection_state_or_qr_code_is_removed(
    deployment: Deployment, conn: asyncpg.Connection
) -> None:
    qr = {
        "qrcode": {
            "code": "2@abc\x00def",
            "base64": "data:image/png;base64,\x00AA",
            "pairingCode": "\x00",
        }
    }
    assert (await deployment.post(_envelope("qrcode.updated", qr))).status_code == 200
    row = await conn.fetchrow(
        "SELECT qr_code, qr_base64, pairing_code FROM instances WHERE name = 'acme-main'"
    )
    assert tuple(row) == ("2@abcdef", "data:image/png;base64,AA", "")
    state = {"state": "connecting\x00", "statusReason": 200}
    assert (await deployment.post(_envelope("connection.update", state))).status_code == 200
    assert (
        await conn.fetchval("SELECT state FROM instances WHERE name = 'acme-main'") == "connecting"
    )
    assert await conn.fetchval("SELECT count(*) FROM quarantine") == 0


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (json.dumps(upsert("nobody-yet", "K" * 3000)).encode(), 422),
        (b'{"event": "call", "instance": "nobody-yet", "data": {"from": "Jo\xff"}}', 400),
        (json.dumps(_envelope("messages.upsert", {"key": "3EB0"}, "nobody-yet")).encode(), 400),
    ],
    ids=["id-past-the-limit", "invalid-utf8-in-a-kept-event", "data-of-the-wrong-shape"],
)
async def test_an_unknown_instance_gets_the_refusal_a_registered_one_would(
    deployment: Deployment, conn: asyncpg.Connection, raw: bytes, status: int
) -> None:
    """Kept in quarantine, it could never be replayed: it is refused now, like a live post."""
    r = await deployment.post(None, raw=raw)
    assert r.status_code == status, r.text
    assert r.json()["detail"]
    assert await _stored(conn) == (0, 0, 0)
    # what a registered instance takes is still kept for the unknown one
    assert (await deployment.post(upsert("nobody-yet", "K1"))).status_code == 202


async def test_an_event_name_with_nul_is_replayed_from_quarantine(
    deployment: Deployment, conn: asyncpg.Connection
) -> None:
    r = await deployment.post(
        _envelope("call\x00", {"from": "5511987654321@s.whatsapp.net"}, "late")
    )
    assert r.status_code == 202, r.text
    assert (await deployment.instance("acme", "evo", "late")).status_code == 201
    for _ in range(200):
        if await conn.fetchval("SELECT count(*) FROM quarantine") == 0:
            break
        await asyncio.sleep(0.025)
    assert await conn.fetchval("SELECT count(*) FROM quarantine") == 0
    assert await conn.fetchval("SELECT event FROM events") == "call\ufffd"


async def test_invalid_utf8_no_decoder_reads_beside_inline_media_is_no_500(
    deployment: Deployment, conn: asyncpg.Connection
) -> None:
    """Found by the fuzzer: the quarantine copy, stripped of inline media, decoded the whole
    body, and a \\xff in a field nobody reads made that a 500."""
    media = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo="
    body = upsert("nobody-yet", "M1", extra_field="@@")
    body["data"]["message"]["base64"] = media
    raw = json.dumps(body).encode().replace(b'"@@"', b'"Jo\xffo"')
    r = await deployment.post(None, raw=raw)
    assert r.status_code == 202, r.text
    kept = await conn.fetchval("SELECT body FROM quarantine")
    assert media.encode() not in kept
    assert b"\xef\xbf\xbd" in kept  # the undecodable byte, as U+FFFD


@pytest.mark.parametrize("message_id", ["3EB0\n1234", "3EB0\t1234", "\x7f3EB0"])
async def test_a_message_id_with_a_control_character_is_400(
    deployment: Deployment, conn: asyncpg.Connection, message_id: str
) -> None:
    """Found by the fuzzer: an id with a line break was stored, and the read API, which names
    it in a URL path, could not find it."""
    r = await deployment.post(upsert("acme-main", message_id))
    assert r.status_code == 400, r.text
    assert r.json()["detail"] == "message id contains a control character"
    assert await _stored(conn) == (0, 0, 0)


async def test_a_text_past_the_limit_is_422_not_an_unindexable_edit(
    deployment: Deployment, conn: asyncpg.Connection
) -> None:
    """An edit's text is indexed as it is written: one whose tsvector would pass Postgres' 1 MB
    was a write failure, kept in quarantine where no replay could file it. Past WhatsApp's own
    limit, a text is refused, a message's like an edit's."""
    rnd = random.Random(1)
    words = " ".join("".join(rnd.choices(string.ascii_lowercase, k=12)) for _ in range(150_000))
    assert (await deployment.post(upsert("acme-main", "T1"))).status_code == 200
    edit = _envelope(
        "messages.edited",
        {"key": {"id": "T1"}, "type": "MESSAGE_EDIT", "editedMessage": {"conversation": words}},
    )
    for body in (edit, upsert("acme-main", "T2", words)):
        r = await deployment.post(body)
        assert r.status_code == 422, r.text
        assert r.json()["detail"] == "message text longer than 65536 characters"
    assert await _stored(conn) == (1, 0, 0)
    assert (await deployment.message("acme", "acme-main", "T1")).json()["edited"] is False
    # at the limit: stored, indexed and read back
    assert (await deployment.post(upsert("acme-main", "T3", words[:65_536]))).status_code == 200
    assert len((await deployment.message("acme", "acme-main", "T3")).json()["text"]) == 65_536


def test_the_contract_documents_every_refusal_above() -> None:
    from service import openapi

    paths = openapi.document()["paths"]
    for path in ("/api/webhooks/evolution/{secret}", "/api/webhooks/evolution/{secret}/{suffix}"):
        assert {"400", "422"} <= set(paths[path]["post"]["responses"]), path
