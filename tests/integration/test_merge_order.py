"""Writes merge commutatively (README, "Scaling out"): the same events committed in any order
leave the same rows. Each event is its own commit here, as separate requests (or separate
processes) make them."""

from __future__ import annotations

import random
import uuid
from typing import Any

import asyncpg
import msgspec

from service import payloads
from service.events import build_ops
from service.ingest import write_ops
from service.resolve import Instance
from tests.integration.conftest import status_update, upsert

CHAT = "5511900000000@s.whatsapp.net"
MESSAGE_COLUMNS = (
    "message_id, has_content, chat_jid, chat_type, sender_jid, sender_phone, from_me,"
    " push_name, type, text, quoted_message_id, message_ts, status, edited_text, edit_ts,"
    " deleted, reactions::text, analysis_state"
)
CHAT_COLUMNS = "chat_jid, chat_type, name, unread, deleted, last_message_id, last_message_ts"


def edit(message_id: str, text: str, ms: int) -> dict[str, Any]:
    return {
        "event": "messages.edited",
        "instance": "i",
        "data": {
            "key": {"remoteJid": CHAT, "fromMe": False, "id": message_id},
            "type": "MESSAGE_EDIT",
            "editedMessage": {"conversation": text},
            "timestampMs": str(ms),
        },
    }


def react(reaction_id: str, target: str, emoji: str, seconds: int) -> dict[str, Any]:
    body = upsert("i", reaction_id, key={"remoteJid": "5511988887777@s.whatsapp.net"})
    body["data"]["message"] = {
        "reactionMessage": {
            "key": {"remoteJid": CHAT, "fromMe": False, "id": target},
            "text": emoji,
            "senderTimestampMs": {"low": seconds, "high": 0, "unsigned": False},
        }
    }
    body["data"]["messageType"] = "reactionMessage"
    return body


def delete(message_id: str) -> dict[str, Any]:
    return {
        "event": "messages.delete",
        "instance": "i",
        "data": {"remoteJid": CHAT, "fromMe": False, "id": message_id, "status": "DELETED"},
    }


async def deliver(conn: asyncpg.Connection, bodies: list[dict[str, Any]]) -> Instance:
    """Each body committed on its own, into a new instance (returned)."""
    instance = Instance(uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), "i", None)
    for body in bodies:
        envelope = payloads.envelope_decoder.decode(msgspec.json.encode(body))
        await write_ops(conn, build_ops(envelope, instance, 1_781_500_000_000).ops)
    return instance


async def state(conn: asyncpg.Connection, instance: Instance) -> dict[str, list[tuple[Any, ...]]]:
    return {
        "messages": [
            tuple(r)
            for r in await conn.fetch(
                f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE instance_id = $1 ORDER BY 1",
                instance.instance_id,
            )
        ],
        "chats": [
            tuple(r)
            for r in await conn.fetch(
                f"SELECT {CHAT_COLUMNS} FROM chats WHERE instance_id = $1 ORDER BY 1",
                instance.instance_id,
            )
        ],
    }


async def test_a_conversation_delivered_in_any_order_gives_the_in_order_rows(
    conn: asyncpg.Connection,
) -> None:
    history: list[dict[str, Any]] = []
    for k in range(3):
        mid = f"M{k}"
        history.append(
            upsert("i", mid, f"texto {k}", remote=CHAT, messageTimestamp=1_700_000_000 + k)
        )
        history += [status_update("i", mid, s) for s in ("SERVER_ACK", "DELIVERY_ACK", "READ")]
        history += [
            edit(mid, f"corrigido {k}", 1_700_000_000_001 + k),
            react(f"R{k}", mid, "👍", 1),
        ]
        history += [edit(mid, f"corrigido de novo {k}", 1_700_000_000_009 + k)]
        history += [react(f"S{k}", mid, "❤️", 2)]
    history.append(delete("M1"))
    expected = await state(conn, await deliver(conn, history))
    assert len(expected["messages"]) == 3 and len(expected["chats"]) == 1
    assert expected["chats"][0][5] == "M2"  # the newest message of the chat
    rng = random.Random(11)
    orders = [history[::-1]] + [rng.sample(history, len(history)) for _ in range(4)]
    for order in orders:
        assert await state(conn, await deliver(conn, order)) == expected


async def test_messages_of_the_same_second_give_one_last_message_whatever_the_order(
    conn: asyncpg.Connection,
) -> None:
    same_second = [
        upsert("i", mid, text, remote=CHAT, messageTimestamp=1_700_000_000)
        for mid, text in (("A1", "primeira"), ("A2", "segunda"))
    ]
    in_order = await state(conn, await deliver(conn, same_second))
    reversed_order = await state(conn, await deliver(conn, same_second[::-1]))
    assert in_order["messages"] == reversed_order["messages"]  # the messages agree ...
    assert in_order["chats"] == reversed_order["chats"]  # ... the chat's last message does not
