"""The receive path against real Postgres: tenancy, durability, dedupe, order, auth, errors."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest

from service import metrics
from tests.conftest import database_down
from tests.integration.conftest import Deployment, running_app, status_update, upsert
from tests.integration.polling import eventually


async def test_message_is_filed_under_the_instance_tenant(deployment: Deployment) -> None:
    r = await deployment.post(upsert("globex-main", "MSG1", "Bom dia"), suffix="/messages-upsert")
    assert r.status_code == 200, r.text
    got = await deployment.message("globex", "globex-main", "MSG1")
    assert got.status_code == 200
    body = got.json()
    assert body["text"] == "Bom dia"
    assert body["instance"] == "globex-main"
    assert body["chat_jid"] == "5511999999999@s.whatsapp.net"
    assert body["sender_phone"] == "5511999999999"
    assert body["status"] == "delivered"
    assert body["timestamp"] == "2023-11-14T22:13:20Z"
    assert body["analysis"]["state"] == "pending"
    # the other tenant cannot see it, not even by naming the instance
    assert (await deployment.message("acme", "globex-main", "MSG1")).status_code == 404
    listing = await deployment.get("/api/v1/messages", "acme")
    assert listing.json()["items"] == []


async def test_plain_and_suffixed_urls_and_trailing_slash(deployment: Deployment) -> None:
    for i, suffix in enumerate(["", "/messages-upsert", "//messages-upsert", "/"]):
        r = await deployment.post(upsert("acme-main", f"URL{i}"), suffix=suffix)
        assert r.status_code == 200, (suffix, r.text)
        assert (await deployment.message("acme", "acme-main", f"URL{i}")).status_code == 200


async def test_duplicates_change_nothing(deployment: Deployment, conn: asyncpg.Connection) -> None:
    body = upsert("acme-main", "DUP1", "primeira")
    results = await asyncio.gather(*[deployment.post(body) for _ in range(5)])
    assert {r.status_code for r in results} == {200}
    await deployment.post(upsert("acme-main", "DUP1", "versão alterada num retry"))
    count = await conn.fetchval("SELECT count(*) FROM messages WHERE message_id = 'DUP1'")
    assert count == 1
    got = (await deployment.message("acme", "acme-main", "DUP1")).json()
    assert got["text"] == "primeira"


async def test_status_only_moves_forward(deployment: Deployment) -> None:
    await deployment.post(upsert("acme-main", "ST1"))
    for status, expected in [
        ("READ", "read"),
        ("SERVER_ACK", "read"),
        ("DELIVERY_ACK", "read"),
        ("PLAYED", "played"),
        ("ERROR", "played"),
        ("DELETED", "played"),
    ]:
        r = await deployment.post(status_update("acme-main", "ST1", status))
        assert r.status_code == 200
        got = (await deployment.message("acme", "acme-main", "ST1")).json()
        assert got["status"] == expected, status
        assert got["deleted"] is False


async def test_status_before_message_is_applied_when_it_lands(deployment: Deployment) -> None:
    r = await deployment.post(status_update("acme-main", "EARLY1", "READ"))
    assert r.status_code == 200
    # no stand-in message is visible before the message itself
    assert (await deployment.message("acme", "acme-main", "EARLY1")).status_code == 404
    listing = await deployment.get("/api/v1/messages", "acme")
    assert listing.json()["items"] == []
    await deployment.post(upsert("acme-main", "EARLY1", "cheguei depois"))
    got = (await deployment.message("acme", "acme-main", "EARLY1")).json()
    assert got["status"] == "read"
    assert got["text"] == "cheguei depois"


async def test_edit_delete_and_reaction_before_the_message(deployment: Deployment) -> None:
    edit = {
        "event": "messages.edited",
        "instance": "acme-main",
        "data": {
            "key": {"remoteJid": "5511900000001@s.whatsapp.net", "fromMe": True, "id": "E1"},
            "type": "MESSAGE_EDIT",
            "editedMessage": {"conversation": "texto corrigido"},
            "timestampMs": "1700000100000",
        },
    }
    reaction = upsert("acme-main", "R1", key={"remoteJid": "5511988887777@s.whatsapp.net"})
    reaction["data"]["message"] = {
        "reactionMessage": {
            "key": {"remoteJid": "5511999999999@s.whatsapp.net", "fromMe": True, "id": "E1"},
            "text": "👍",
            "senderTimestampMs": {"low": 1700000200, "high": 0, "unsigned": False},
        }
    }
    reaction["data"]["messageType"] = "reactionMessage"
    for body in (edit, reaction):
        assert (await deployment.post(body)).status_code == 200
    await deployment.post(upsert("acme-main", "E1", "texto original"))
    got = (await deployment.message("acme", "acme-main", "E1")).json()
    assert got["edited"] is True
    assert got["text"] == "texto corrigido"
    assert got["reactions"] == [{"by": "5511988887777@s.whatsapp.net", "emoji": "👍"}]
    # the reaction is an annotation, not a message
    assert (await deployment.message("acme", "acme-main", "R1")).status_code == 404
    delete = {
        "event": "messages.delete",
        "instance": "acme-main",
        "data": {
            "remoteJid": "5511999999999@s.whatsapp.net",
            "fromMe": False,
            "id": "E1",
            "status": "DELETED",
        },
    }
    assert (await deployment.post(delete)).status_code == 200
    assert (await deployment.message("acme", "acme-main", "E1")).json()["deleted"] is True


async def test_unknown_instance_is_quarantined_then_replayed(
    deployment: Deployment, conn: asyncpg.Connection
) -> None:
    r = await deployment.post(upsert("newcomer", "Q1", "antes do cadastro"))
    assert r.status_code == 202
    assert r.json()["status"] == "quarantined"
    assert await conn.fetchval("SELECT count(*) FROM quarantine") == 1
    assert await conn.fetchval("SELECT count(*) FROM messages") == 0
    created = await deployment.instance("acme", "evo", "newcomer")
    assert created.status_code == 201
    # registering replays it into the right tenant (in the background, within moments)
    for _ in range(100):
        if (await deployment.message("acme", "newcomer", "Q1")).status_code == 200:
            break
        await asyncio.sleep(0.05)
    got = await deployment.message("acme", "newcomer", "Q1")
    assert got.status_code == 200
    assert got.json()["text"] == "antes do cadastro"
    assert await conn.fetchval("SELECT count(*) FROM quarantine") == 0
    assert (await deployment.message("globex", "newcomer", "Q1")).status_code == 404


async def test_admin_replay_route(deployment: Deployment, conn: asyncpg.Connection) -> None:
    await deployment.post(upsert("later", "Q2"))
    # register behind the server's back, without the NOTIFY (triggers off for this transaction):
    # no reload, so no replay on registration, and the route is the only one to replay it
    tenant_id = await conn.fetchval("SELECT tenant_id FROM tenants WHERE name = 'globex'")
    source_id = await conn.fetchval("SELECT source_id FROM sources WHERE name = 'evo'")
    async with conn.transaction():
        await conn.execute("SET LOCAL session_replication_role = replica")
        await conn.execute(
            "INSERT INTO instances (tenant_id, instance_id, source_id, name) "
            "VALUES ($1, gen_random_uuid(), $2, 'later')",
            tenant_id,
            source_id,
        )
    r = await deployment.admin("/api/admin/quarantine/replay", {"instance": "later"})
    assert r.status_code == 200
    assert r.json() == {"replayed": 1}
    assert await conn.fetchval("SELECT count(*) FROM quarantine") == 0
    stored = await conn.fetch("SELECT tenant_id FROM messages WHERE message_id = 'Q2'")
    assert [r["tenant_id"] for r in stored] == [tenant_id]
    # nothing is left to replay: a second call files nothing again
    r = await deployment.admin("/api/admin/quarantine/replay", {"instance": "later"})
    assert r.json() == {"replayed": 0}
    assert await conn.fetchval("SELECT count(*) FROM messages WHERE message_id = 'Q2'") == 1


async def test_bad_secret_and_apikey(deployment: Deployment) -> None:
    r = await deployment.client.post("/api/webhooks/evolution/wrong", json=upsert("acme-main", "X"))
    assert r.status_code == 401
    assert (await deployment.instance("acme", "evo", "keyed", apikey="K-123")).status_code == 201
    body = upsert("keyed", "K1")
    body["apikey"] = "other"
    assert (await deployment.post(body)).status_code == 401
    body["apikey"] = "K-123"
    assert (await deployment.post(body)).status_code == 200
    body["apikey"] = None  # a null key is not checked (Evolution hides it by default)
    body["data"]["key"]["id"] = "K2"
    assert (await deployment.post(body)).status_code == 200


async def test_bad_input_gets_a_clear_400(deployment: Deployment) -> None:
    cases = [
        (b"not json", "invalid_json"),
        (b'{"event": "messages.upsert"', "invalid_json"),
        (b"[1, 2]", "invalid_envelope"),
        (b'{"instance": "acme-main", "data": {}}', "invalid_envelope"),
        (b'{"event": 5, "instance": "acme-main"}', "invalid_envelope"),
        (
            b'{"event": "messages.upsert", "instance": "acme-main", "data": {"key": 7}}',
            "invalid_data",
        ),
    ]
    for raw, code in cases:
        r = await deployment.post(None, raw=raw)
        assert r.status_code == 400, raw
        assert r.json()["error"] == code, r.text
        assert r.json()["detail"]
    r = await deployment.post(None, raw=b'{"instance": "acme-main"}')
    assert "event" in r.json()["detail"]
    r = await deployment.post(None, raw=cases[-1][0])
    assert "$.data.key" in r.json()["detail"]


async def test_body_limit(conn: asyncpg.Connection, database_url: str) -> None:
    async with running_app(database_url, admin_token="a", max_body_bytes=1000) as app:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t"
        ) as c:
            d_admin = {"Authorization": "Bearer a"}
            r = await c.post("/api/admin/sources", json={"name": "s"}, headers=d_admin)
            secret = r.json()["secret"]
            big = upsert("x", "BIG", "a" * 5000)
            r = await c.post(f"/api/webhooks/evolution/{secret}", content=msgspec.json.encode(big))
            assert r.status_code == 413
            assert "SENSE_MAX_BODY_BYTES" in r.json()["detail"]


async def test_inline_media_is_not_stored(deployment: Deployment, conn: asyncpg.Connection) -> None:
    body = upsert("acme-main", "IMG1")
    body["data"]["message"] = {
        "imageMessage": {"caption": "a foto", "mimetype": "image/jpeg"},
        "base64": "A" * 300_000,
    }
    body["data"]["messageType"] = "imageMessage"
    assert (await deployment.post(body)).status_code == 200
    got = (await deployment.message("acme", "acme-main", "IMG1")).json()
    assert got["type"] == "image" and got["text"] == "a foto"
    size = await conn.fetchval(
        "SELECT pg_column_size(m.*) FROM messages m WHERE message_id = 'IMG1'"
    )
    assert size < 5000


async def test_database_down_answers_503_and_the_retry_is_stored(
    deployment: Deployment, conn: asyncpg.Connection, database_url: str
) -> None:
    async with database_down(database_url):
        r = await deployment.post(upsert("acme-main", "DOWN1"))
        assert r.status_code == 503
        assert int(r.headers["retry-after"]) > 0
        assert r.json()["error"] == "unavailable"
    assert await conn.fetchval("SELECT count(*) FROM messages") == 0
    # Evolution retries a 5xx: once the database is back the same event is stored.
    for _ in range(50):
        r = await deployment.post(upsert("acme-main", "DOWN1"))
        if r.status_code == 200:
            break
        await asyncio.sleep(0.1)
    assert r.status_code == 200
    assert (await deployment.message("acme", "acme-main", "DOWN1")).status_code == 200


async def test_lid_chat_is_relinked_when_the_phone_is_learned(deployment: Deployment) -> None:
    lid = "123456789012345@lid"
    phone = "5511987654321@s.whatsapp.net"
    # <=2.3.0: an @lid chat with no phone anywhere
    await deployment.post(upsert("acme-main", "L1", "primeira", remote=lid))
    first = (await deployment.message("acme", "acme-main", "L1")).json()
    assert first["chat_jid"] == lid and first["chat_type"] == "lid"
    assert first["sender_phone"] is None
    # 2.3.5: the key carries both; from now on the pair is known
    await deployment.post(
        upsert("acme-main", "L2", "segunda", remote=lid, key={"remoteJidAlt": phone})
    )
    # a later lid-only payload is filed under the phone too
    await deployment.post(upsert("acme-main", "L3", "terceira", remote=lid + ""))
    for mid in ("L1", "L2", "L3"):
        got = (await deployment.message("acme", "acme-main", mid)).json()
        assert got["chat_jid"] == phone, mid
        assert got["chat_type"] == "user"
        assert got["sender_phone"] == "5511987654321"
    chats = (await deployment.get("/api/v1/chats", "acme")).json()["items"]
    assert [c["chat_jid"] for c in chats] == [phone]
    # the pair is per tenant: globex learned nothing
    await deployment.post(upsert("globex-main", "G1", remote=lid))
    assert (await deployment.message("globex", "globex-main", "G1")).json()["chat_type"] == "lid"


async def test_instances_show_state_and_qr(deployment: Deployment) -> None:
    qr = {
        "event": "qrcode.updated",
        "instance": "acme-main",
        "data": {
            "qrcode": {
                "instance": "acme-main",
                "pairingCode": "WZYEH1YY",
                "code": "2@abc",
                "base64": "data:image/png;base64,iVBORw0KGgo=",
            }
        },
    }
    assert (await deployment.post(qr)).status_code == 200
    items = (await deployment.get("/api/v1/instances", "acme")).json()["items"]
    assert items[0]["name"] == "acme-main"
    assert items[0]["qrcode"]["pairing_code"] == "WZYEH1YY"
    state = {
        "event": "connection.update",
        "instance": "acme-main",
        "data": {
            "instance": "acme-main",
            "state": "open",
            "statusReason": 200,
            "wuid": "5511900000001:3@s.whatsapp.net",
            "profileName": "Acme",
        },
    }
    assert (await deployment.post(state)).status_code == 200
    items = (await deployment.get("/api/v1/instances", "acme")).json()["items"]
    assert items[0]["state"] == "open"
    assert items[0]["owner_jid"] == "5511900000001@s.whatsapp.net"
    assert items[0]["qrcode"] is None  # paired: the QR is gone
    other = (await deployment.get("/api/v1/instances", "globex")).json()["items"]
    assert [i["name"] for i in other] == ["globex-main"] and other[0]["state"] is None


async def test_chats_list_last_message(deployment: Deployment) -> None:
    await deployment.post(upsert("acme-main", "C1", "antiga", messageTimestamp=1700000000))
    await deployment.post(upsert("acme-main", "C2", "nova", messageTimestamp=1700000500))
    await deployment.post(upsert("acme-main", "C0", "atrasada", messageTimestamp=1690000000))
    group = upsert(
        "acme-main",
        "C3",
        "no grupo",
        remote="120363025246125486@g.us",
        key={"participant": "5511911112222@s.whatsapp.net"},
        messageTimestamp=1700000100,
    )
    await deployment.post(group)
    chats = (await deployment.get("/api/v1/chats", "acme")).json()["items"]
    assert [(c["chat_jid"], c["last_message"]["message_id"]) for c in chats] == [
        ("5511999999999@s.whatsapp.net", "C2"),
        ("120363025246125486@g.us", "C3"),
    ]
    assert chats[1]["chat_type"] == "group"
    assert chats[1]["last_message"]["sender_jid"] == "5511911112222@s.whatsapp.net"
    assert (await deployment.get("/api/v1/chats", "globex")).json()["items"] == []


async def test_read_api_requires_a_token(deployment: Deployment) -> None:
    for path in (
        "/api/v1/messages",
        "/api/v1/chats",
        "/api/v1/instances",
        "/api/v1/messages/acme-main/X",
    ):
        assert (await deployment.client.get(path)).status_code == 401
        r = await deployment.client.get(path, headers={"Authorization": "Bearer nope"})
        assert r.status_code == 401
    r = await deployment.get("/api/v1/messages", "acme", before="garbage")
    assert r.status_code == 400


def sample(metrics: str, series: str) -> float:
    """The value of one series in a /metrics text (0 while it has never been counted)."""
    for line in metrics.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_metrics_and_openapi(
    deployment: Deployment, conn: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    # every test's tenants are new ids: room below the per-process label cap for this one's
    monkeypatch.setattr(metrics, "_tenant_labels", set())
    # the counters are process-wide (other tests count too): what this test adds is the delta
    stored = 'sense_webhook_requests_total{event="messagesupsert",outcome="stored"}'
    quarantined = 'sense_webhook_requests_total{event="messagesupsert",outcome="quarantined"}'
    acme = await conn.fetchval("SELECT tenant_id FROM tenants WHERE name = 'acme'")
    per_tenant = f'sense_tenant_messages_total{{tenant_id="{acme}"}}'
    series = (stored, quarantined, per_tenant)

    async def scrape() -> dict[str, float]:
        text = (await deployment.client.get("/metrics")).text
        return {s: sample(text, s) for s in series}

    before = await scrape()
    assert (await deployment.post(upsert("acme-main", "MET1"))).status_code == 200
    assert (await deployment.post(upsert("nobody", "MET2"))).status_code == 202
    # the per-tenant count is a post-commit hook: it runs after the answer
    after = await eventually(scrape, lambda now: now[per_tenant] - before[per_tenant] >= 1)
    assert {s: after[s] - before[s] for s in series} == {
        stored: 1,
        quarantined: 1,
        per_tenant: 1,
    }
    text = (await deployment.client.get("/metrics")).text
    assert sample(text, "sense_quarantine_events") == 1  # counted as it was kept
    assert "acme" not in text  # tenants are named by id only
    spec = (await deployment.client.get("/openapi.json")).json()
    assert "/api/v1/messages/{instance}/{message_id}" in spec["paths"]
    assert "Message" in spec["components"]["schemas"]


async def test_groups_object_or_array(deployment: Deployment, conn: asyncpg.Connection) -> None:
    one = {
        "id": "120363025246125486@g.us",
        "subject": "Vendas",
        "participants": [{"id": "5511911112222@s.whatsapp.net", "admin": "superadmin"}],
    }
    many = [{"id": "5511999999999-1600000000@g.us", "subject": "Legado"}]
    for data in (one, many):
        body = {"event": "groups.upsert", "instance": "acme-main", "data": data}
        assert (await deployment.post(body)).status_code == 200
    rows = await conn.fetch("SELECT group_jid, subject, metadata FROM groups ORDER BY subject")
    assert [(r[0], r[1]) for r in rows] == [
        ("5511999999999-1600000000@g.us", "Legado"),
        ("120363025246125486@g.us", "Vendas"),
    ]
    body = {"event": "groups.upsert", "instance": "acme-main", "data": "nope"}
    assert (await deployment.post(body)).status_code == 400


async def test_start_up_replays_what_was_registered_meanwhile(
    conn: asyncpg.Connection, database_url: str
) -> None:
    # No server runs: an event sits in quarantine, then its instance is registered.
    from service import admin

    tenant = await admin.create_tenant(conn, "acme")
    source = await admin.create_source(conn, "evo")
    body = msgspec.json.encode(upsert("offline-reg", "S1", "esperando"))
    await conn.execute(
        "INSERT INTO quarantine (source_id, instance_name, event, reason, body) "
        "VALUES ($1, 'offline-reg', 'messages.upsert', 'unknown instance', $2)",
        uuid.UUID(source.id),
        body,
    )
    await admin.add_instance(conn, tenant.name, source.name, "offline-reg")
    assert await conn.fetchval("SELECT count(*) FROM quarantine") == 1
    async with running_app(database_url):
        for _ in range(100):
            if await conn.fetchval("SELECT count(*) FROM quarantine") == 0:
                break
            await asyncio.sleep(0.05)
    assert await conn.fetchval("SELECT count(*) FROM quarantine") == 0
    assert await conn.fetchval("SELECT text FROM messages WHERE message_id = 'S1'") == "esperando"


async def test_replay_of_several_events_for_one_message(conn: asyncpg.Connection) -> None:
    """Replay writes event by event inside one transaction: each write must see only its own
    rows (staging rows used to pile up until COMMIT: "ON CONFLICT ... a second time")."""
    from service import admin

    tenant = await admin.create_tenant(conn, "acme")
    source = await admin.create_source(conn, "evo")
    for body in (
        upsert("late", "RP1", "conteúdo"),
        status_update("late", "RP1", "READ"),
        status_update("late", "RP1", "PLAYED"),
        upsert("late", "RP2", "outra"),
    ):
        await conn.execute(
            "INSERT INTO quarantine (source_id, instance_name, event, reason, body) "
            "VALUES ($1, 'late', $2, 'unknown instance', $3)",
            uuid.UUID(source.id),
            body["event"],
            msgspec.json.encode(body),
        )
    await admin.add_instance(conn, tenant.name, source.name, "late")
    result = await admin.replay_quarantine(conn, None, "late")
    assert result.replayed == 4
    rows = await conn.fetch("SELECT message_id, status FROM messages ORDER BY message_id")
    assert [(r[0], r[1]) for r in rows] == [("RP1", 50), ("RP2", 30)]
    assert await conn.fetchval("SELECT count(*) FROM quarantine") == 0


async def test_one_batch_merges_contacts_and_chats_like_consecutive_upserts(
    conn: asyncpg.Connection,
) -> None:
    from service.ingest import write_ops
    from service.rows import Ops

    t, i = uuid.uuid4(), uuid.uuid4()
    jid = "5511987654321@s.whatsapp.net"
    ops = Ops(
        contacts=[(t, i, jid, "Cliente", None), (t, i, jid, None, "https://pps.example/b.jpg")],
        chats=[
            (t, i, jid, "user", "Cliente", None, False),
            (t, i, jid, "user", None, 4, False),
            (t, i, "5511922223333@s.whatsapp.net", "user", "Some", None, False),
            (t, i, "5511922223333@s.whatsapp.net", "user", None, None, True),
        ],
    )
    await write_ops(conn, ops)
    contact = await conn.fetchrow("SELECT push_name, profile_pic_url FROM contacts")
    assert tuple(contact) == ("Cliente", "https://pps.example/b.jpg")
    chats = await conn.fetch("SELECT chat_jid, name, unread, deleted FROM chats ORDER BY chat_jid")
    assert [tuple(c) for c in chats] == [
        ("5511922223333@s.whatsapp.net", "Some", None, True),
        (jid, "Cliente", 4, False),
    ]


async def test_chat_without_messages_is_listed_with_its_jid(deployment: Deployment) -> None:
    body = {
        "event": "chats.upsert",
        "instance": "acme-main",
        "data": [{"remoteJid": "5511944445555@s.whatsapp.net", "name": "Ana", "unreadMessages": 2}],
    }
    assert (await deployment.post(body)).status_code == 200
    [chat] = (await deployment.get("/api/v1/chats", "acme")).json()["items"]
    assert chat["chat_jid"] == "5511944445555@s.whatsapp.net"
    assert chat["instance"] == "acme-main" and chat["chat_type"] == "user"
    assert (chat["name"], chat["unread"], chat["last_message"]) == ("Ana", 2, None)


async def test_group_sender_lid_is_relinked_and_lid_chats_file_under_the_phone(
    deployment: Deployment,
) -> None:
    group, lid, phone = "120363025246125486@g.us", "555666777888999@lid", "5511911112222"
    await deployment.post(upsert("acme-main", "GS1", remote=group, key={"participant": lid}))
    first = (await deployment.message("acme", "acme-main", "GS1")).json()
    assert (first["sender_jid"], first["sender_phone"]) == (lid, None)
    await deployment.post(
        upsert(
            "acme-main",
            "GS2",
            remote=lid,
            key={"remoteJidAlt": f"{phone}@s.whatsapp.net"},
        )
    )
    got = (await deployment.message("acme", "acme-main", "GS1")).json()
    assert (got["chat_jid"], got["chat_type"]) == (group, "group")
    assert (got["sender_jid"], got["sender_phone"]) == (f"{phone}@s.whatsapp.net", phone)
    # 2.3.7 chats.* still name the @lid: it is the phone's chat now
    body = {
        "event": "chats.update",
        "instance": "acme-main",
        "data": [{"remoteJid": lid, "unreadMessages": 3}],
    }
    assert (await deployment.post(body)).status_code == 200
    chats = (await deployment.get("/api/v1/chats", "acme")).json()["items"]
    assert sorted((c["chat_jid"], c["unread"]) for c in chats) == [
        (group, None),
        (f"{phone}@s.whatsapp.net", 3),
    ]


async def test_chats_for_an_unplaced_lid_only_update_an_existing_lid_chat(
    deployment: Deployment,
) -> None:
    lid = "777888999000111@lid"
    named = {
        "event": "chats.upsert",
        "instance": "acme-main",
        "data": [{"remoteJid": lid, "name": "Sem telefone", "unreadMessages": 1}],
    }
    assert (await deployment.post(named)).status_code == 200
    # 2.3.7 filed the messages under the phone: no empty second chat for the @lid
    assert (await deployment.get("/api/v1/chats", "acme")).json()["items"] == []
    await deployment.post(upsert("acme-main", "LC1", remote=lid))  # <=2.3.0: a lid chat
    assert (await deployment.post(named)).status_code == 200
    [chat] = (await deployment.get("/api/v1/chats", "acme")).json()["items"]
    assert (chat["chat_jid"], chat["chat_type"], chat["name"]) == (lid, "lid", "Sem telefone")


# --- one person, two number forms (§7: BR 9th digit, MX 1, AR 9) --------------------------


def sent(instance: str, message_id: str, remote: str, text: str = "Olá") -> dict[str, Any]:
    body = upsert(instance, message_id, text, remote=remote, key={"fromMe": True})
    body["event"] = "send.message"
    return body


async def test_one_person_in_two_number_forms_is_one_conversation(
    deployment: Deployment, conn: asyncpg.Connection
) -> None:
    short, long = "553198765432@s.whatsapp.net", "5531998765432@s.whatsapp.net"
    await deployment.post(sent("acme-main", "BAE5VAR1", short, "seu pedido saiu"))
    await deployment.post(upsert("acme-main", "VAR2", "obrigado", remote=long))
    await deployment.post(upsert("acme-main", "VAR2", "obrigado", remote=long))  # a retry
    await deployment.post(upsert("acme-main", "OTHER1", remote="553132345678@s.whatsapp.net"))
    reply = (await deployment.message("acme", "acme-main", "VAR2")).json()
    assert (reply["chat_jid"], reply["sender_jid"], reply["sender_phone"]) == (
        short,
        short,
        "553198765432",
    )
    chats = (await deployment.get("/api/v1/chats", "acme")).json()["items"]
    assert sorted(c["chat_jid"] for c in chats) == ["553132345678@s.whatsapp.net", short]
    # the read API finds the conversation by either form, @c.us or a device suffix
    for chat in (
        short,
        long,
        "5531998765432@c.us",
        "553198765432:7@s.whatsapp.net",
        " 5531998765432",
    ):
        listing = (await deployment.get("/api/v1/messages", "acme", chat=chat)).json()
        assert [m["message_id"] for m in listing["items"]] == ["VAR2", "BAE5VAR1"], chat
    assert (await deployment.get("/api/v1/messages", "acme", chat="João")).json()["items"] == []
    # chats.* and contacts.* naming the other form update that chat and contact
    for event, data in (
        ("chats.update", [{"remoteJid": long, "unreadMessages": 2}]),
        ("contacts.upsert", [{"remoteJid": long, "pushName": "Cliente"}]),
    ):
        body = {"event": event, "instance": "acme-main", "data": data}
        assert (await deployment.post(body)).status_code == 200
    chats = (await deployment.get("/api/v1/chats", "acme")).json()["items"]
    assert [(c["chat_jid"], c["unread"]) for c in chats if c["chat_jid"] != short] == [
        ("553132345678@s.whatsapp.net", None)
    ]
    assert [c["unread"] for c in chats if c["chat_jid"] == short] == [2]
    contacts = await conn.fetch("SELECT jid, push_name FROM contacts")
    assert [tuple(c) for c in contacts] == [(short, "Cliente")]


async def _write(conn: asyncpg.Connection, *bodies: dict[str, Any], instance: Any) -> None:
    """The bodies' rows in one transaction, as one group-commit batch writes them."""
    from service import payloads
    from service.events import build_ops
    from service.ingest import write_ops
    from service.rows import Ops

    ops = Ops()
    for body in bodies:
        envelope = payloads.envelope_decoder.decode(msgspec.json.encode(body))
        ops.extend(build_ops(envelope, instance, 1_781_500_000_000).ops)
    await write_ops(conn, ops)


async def test_both_forms_of_a_new_person_in_one_batch_meet_on_the_longer_one(
    conn: asyncpg.Connection,
) -> None:
    from service.resolve import Instance

    pairs = [
        ("553198765432@s.whatsapp.net", "5531998765432@s.whatsapp.net"),
        ("525512345678@s.whatsapp.net", "5215512345678@s.whatsapp.net"),
        ("541123456789@s.whatsapp.net", "5491123456789@s.whatsapp.net"),
    ]
    tenant = uuid.uuid4()
    for short, long in pairs:
        for first, second in ((short, long), (long, short)):
            inst = Instance(tenant, uuid.uuid4(), uuid.uuid4(), "x", None)
            bodies = (
                upsert("x", "B1", remote=first),
                sent("x", "B2", second),
                {"event": "chats.upsert", "instance": "x", "data": [{"remoteJid": short}]},
                {"event": "contacts.upsert", "instance": "x", "data": [{"remoteJid": second}]},
                {"event": "contacts.upsert", "instance": "x", "data": [{"remoteJid": first}]},
            )
            for _ in range(2):  # a replay of the batch changes nothing
                await _write(conn, *bodies, instance=inst)
                got = await conn.fetch(
                    "SELECT message_id, chat_jid FROM messages WHERE instance_id = $1 "
                    "ORDER BY message_id",
                    inst.instance_id,
                )
                assert [tuple(r) for r in got] == [("B1", long), ("B2", long)], (first, second)
                for query in (
                    "SELECT chat_jid FROM chats WHERE instance_id = $1",
                    "SELECT jid FROM contacts WHERE instance_id = $1",
                ):
                    assert [r[0] for r in await conn.fetch(query, inst.instance_id)] == [long]


async def test_a_person_already_split_in_two_chats_stays_put(conn: asyncpg.Connection) -> None:
    """Chats filed under both forms before variants were matched: each form keeps its own
    (nothing filed moves), and the later messages follow the form they name."""
    from service.resolve import Instance

    short, long = "553198765432@s.whatsapp.net", "5531998765432@s.whatsapp.net"
    inst = Instance(uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), "x", None)
    for jid in (short, long):
        await conn.execute(
            "INSERT INTO chats (tenant_id, instance_id, chat_jid, chat_type) "
            "VALUES ($1, $2, $3, 'user')",
            inst.tenant_id,
            inst.instance_id,
            jid,
        )
    await _write(
        conn, upsert("x", "S1", remote=short), upsert("x", "L1", remote=long), instance=inst
    )
    got = await conn.fetch("SELECT message_id, chat_jid FROM messages ORDER BY message_id")
    assert [tuple(r) for r in got] == [("L1", long), ("S1", short)]


async def test_sql_phone_variant_matches_the_native_one(conn: asyncpg.Connection) -> None:
    """chats.* and contacts.* place a number with sense_phone_variant (migration 0007), messages
    with the native phone_variant: the two must agree."""
    import random

    from service._native import phone_variant

    rng = random.Random(7)
    digits = [
        "".join(rng.choice("0123456789") for _ in range(rng.choice([10, 11, 12, 13, 14])))
        for _ in range(300)
    ]
    for prefix in ("55", "52", "521", "54", "549", "5511", "55319", "5531"):
        for _ in range(150):
            rest = 13 - len(prefix) - rng.choice([0, 1])
            digits.append(prefix + "".join(rng.choice("0123456789") for _ in range(rest)))
    jids = [d + "@s.whatsapp.net" for d in digits] + [d + "@lid" for d in digits[:50]]
    rows = await conn.fetch("SELECT j, sense_phone_variant(j) FROM unnest($1::text[]) AS j", jids)
    assert len(rows) == len(jids)
    mismatches = [(j, v, phone_variant(j)) for j, v in rows if v != phone_variant(j)]
    assert mismatches == []
    assert sum(v is not None for _, v in rows) > 300  # the samples do reach every rule


async def test_nul_and_out_of_range_parameters_get_a_clear_error(deployment: Deployment) -> None:
    # Postgres text cannot hold NUL and seq is a bigint: both must be client errors, not 500s
    for path, params in [
        ("/api/v1/messages", {"chat": "55119\x00@s.whatsapp.net"}),
        ("/api/v1/messages/acme-main/ID%00", {}),
        ("/api/v1/chats", {"instance": "acme\x00main"}),
    ]:
        r = await deployment.get(path, "acme", **params)
        assert r.status_code == 400, (path, r.text)
        assert r.json()["error"] == "invalid_parameter"
    r = await deployment.get("/api/v1/messages", "acme", before=f"1700000000000000.{2**63}")
    assert r.status_code == 400 and "cursor" in r.json()["detail"]
    r = await deployment.admin("/api/admin/tenants", {"name": "bad\x00name"})
    assert r.status_code == 422 and r.json()["error"] == "invalid_name"
    r = await deployment.admin("/api/admin/quarantine/replay", {"instance": "x\x00"})
    assert r.status_code == 422
    # and the API still works afterwards
    assert (await deployment.get("/api/v1/messages", "acme")).status_code == 200


async def test_a_full_queue_answers_503_with_retry_after_and_loses_nothing(
    conn: asyncpg.Connection, database_url: str
) -> None:
    async with running_app(
        database_url, admin_token="a", queue_max_requests=2, retry_after_seconds=3
    ) as app:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t"
        ) as c:
            admin = {"Authorization": "Bearer a"}
            await c.post("/api/admin/tenants", json={"name": "t"}, headers=admin)
            secret = (await c.post("/api/admin/sources", json={"name": "s"}, headers=admin)).json()[
                "secret"
            ]
            body = {"tenant": "t", "source": "s", "name": "burst"}
            assert (
                await c.post("/api/admin/instances", json=body, headers=admin)
            ).status_code == 201
            url = f"/api/webhooks/evolution/{secret}"
            answers = await asyncio.gather(
                *(c.post(url, json=upsert("burst", f"B{n}")) for n in range(60))
            )
    codes = [r.status_code for r in answers]
    assert set(codes) <= {200, 503} and 503 in codes and 200 in codes, codes
    for r in answers:
        if r.status_code == 503:
            assert r.headers["Retry-After"] == "3" and r.json()["error"] == "overloaded"
    stored = {r["message_id"] for r in await conn.fetch("SELECT message_id FROM messages")}
    acknowledged = {f"B{n}" for n, r in enumerate(answers) if r.status_code == 200}
    assert acknowledged <= stored  # every 200 was committed


async def test_replay_checks_the_apikey_like_a_live_post(
    deployment: Deployment, conn: asyncpg.Connection
) -> None:
    # quarantined before the instance existed: a forged key and the right one
    forged = upsert("keyed", "F1", "forjada")
    forged["apikey"] = "WRONG-KEY"
    honest = upsert("keyed", "H1", "verdadeira")
    honest["apikey"] = "REAL-KEY"
    for body in (forged, honest):
        assert (await deployment.post(body)).status_code == 202
    assert (await deployment.instance("acme", "evo", "keyed", apikey="REAL-KEY")).status_code == 201
    r = await deployment.admin("/api/admin/quarantine/replay", {"instance": "keyed"})
    assert r.status_code == 200
    for _ in range(100):  # registration also replays, in the background
        if (await deployment.message("acme", "keyed", "H1")).status_code == 200:
            break
        await asyncio.sleep(0.05)
    assert (await deployment.message("acme", "keyed", "H1")).status_code == 200
    # what a live post would get 401 for is never filed; it stays, marked, in quarantine
    assert (await deployment.message("acme", "keyed", "F1")).status_code == 404
    assert (await deployment.post(forged)).status_code == 401
    reasons = [r["reason"] for r in await conn.fetch("SELECT reason FROM quarantine")]
    assert len(reasons) == 1 and reasons[0].startswith("refused: apikey")
    r = await deployment.admin("/api/admin/quarantine/replay", {})
    assert r.json() == {"replayed": 0}


async def test_several_edits_by_messages_update_keep_the_newest(deployment: Deployment) -> None:
    def edit(message_id: str, text: str, ms: int) -> dict[str, object]:
        body = status_update("acme-main", message_id, "SERVER_ACK")
        body["data"]["message"] = {  # type: ignore[index]
            "editedMessage": {
                "message": {
                    "protocolMessage": {
                        "key": {"id": message_id, "fromMe": False},
                        "type": "MESSAGE_EDIT",
                        "editedMessage": {"conversation": text},
                        "timestampMs": str(ms),
                    }
                }
            }
        }
        return body

    # in order, and the newer edit first with the older one late: the newest wins both times
    for message_id, edits in (
        ("ED1", [("v1", 1781500070000), ("v2", 1781500080000)]),
        ("ED2", [("v2", 1781500080000), ("v1", 1781500070000)]),
    ):
        assert (await deployment.post(upsert("acme-main", message_id, "v0"))).status_code == 200
        for text, ms in edits:
            assert (await deployment.post(edit(message_id, text, ms))).status_code == 200
        got = (await deployment.message("acme", "acme-main", message_id)).json()
        assert got["text"] == "v2" and got["edited"] is True, (message_id, got["text"])


async def test_numbers_out_of_range_are_no_value_not_a_failed_write(
    deployment: Deployment, conn: asyncpg.Connection
) -> None:
    bodies = [
        upsert("acme-main", "INF1", "sem hora", messageTimestamp="Infinity"),
        {
            "event": "connection.update",
            "instance": "acme-main",
            "data": {"instance": "acme-main", "state": "close", "statusReason": 99999999999},
        },
        {
            "event": "chats.upsert",
            "instance": "acme-main",
            "data": [{"remoteJid": "5511988887777@s.whatsapp.net", "unreadMessages": 99999999999}],
        },
        {
            "event": "messages.edited",
            "instance": "acme-main",
            "data": {
                "key": {"id": "INF1"},
                "type": "MESSAGE_EDIT",
                "editedMessage": {"conversation": "editada"},
                "timestampMs": "99999999999999999999",
            },
        },
    ]
    for body in bodies:
        r = await deployment.post(body)
        assert r.status_code == 200, r.text  # stored, not quarantined
    assert await conn.fetchval("SELECT count(*) FROM quarantine") == 0
    got = (await deployment.message("acme", "acme-main", "INF1")).json()
    assert got["text"] == "editada" and got["timestamp"] is not None  # filed at arrival
    r = await deployment.get("/api/v1/messages", "acme", after="c99999999999999999999999.0")
    assert r.status_code == 400 and r.json()["error"] == "invalid_parameter"
    r = await deployment.get("/api/v1/messages", "acme", after="c1.99999999999999999999")
    assert r.status_code == 400


async def test_webhook_route_answers_other_methods_405_and_keeps_the_request_id(
    deployment: Deployment,
) -> None:
    url = f"/api/webhooks/evolution/{deployment.secrets['evo']}/messages-upsert"
    r = await deployment.client.get(url)
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    assert r.json()["error"] == "method_not_allowed"
    r = await deployment.client.post(
        url, json=upsert("acme-main", "RID1", "oi"), headers={"X-Request-Id": "abc-123"}
    )
    assert r.status_code == 200 and r.headers["x-request-id"] == "abc-123"
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"status": "stored"}
    assert (await deployment.client.post("/api/webhooks/evolution/")).status_code == 404


async def test_a_client_gone_before_its_body_arrived_is_not_answered_and_nothing_is_stored(
    app: Any, deployment: Deployment, conn: asyncpg.Connection
) -> None:
    body = msgspec.json.encode(upsert("acme-main", "GONE1", "meio corpo"))
    parts: list[dict[str, Any]] = [
        {"type": "http.request", "body": body[:20], "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return parts.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    path = f"/api/webhooks/evolution/{deployment.secrets['evo']}"
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"content-type", b"application/json")],
        "client": ("127.0.0.1", 50000),
        "server": ("test", 80),
    }
    await app(scope, receive, send)
    assert sent == []
    assert await conn.fetchval("SELECT count(*) FROM messages WHERE message_id = 'GONE1'") == 0
