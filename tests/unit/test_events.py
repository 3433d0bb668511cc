"""From one envelope to its rows (service.events.build_ops), without I/O."""

from __future__ import annotations

import uuid
from typing import Any

import msgspec
import pytest

from service import payloads as p
from service.events import (
    UNTIMED_EDIT,
    Built,
    build_ops,
    status_rank,
)
from service.resolve import Instance
from service.rows import MESSAGE_COLUMNS, STATUS_RANK, MessageOp, merge_message_ops

INST = Instance(uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), "acme-main", None)
PHONE = "5511987654321@s.whatsapp.net"
LID = "555666777888999@lid"


def build(event: str, data: Any, sender: str | None = "5511900000001@s.whatsapp.net") -> Built:
    body = {"event": event, "instance": INST.name, "data": data, "sender": sender}
    return build_ops(p.envelope_decoder.decode(msgspec.json.encode(body)), INST, 1_781_500_000_000)


@pytest.mark.parametrize(
    ("value", "name"),
    [
        ("READ", "READ"),
        (" delivery_ack ", "DELIVERY_ACK"),
        (4, "READ"),
        (0, "ERROR"),
        ("4", "READ"),  # an enum number that went through a string
        ("2", "SERVER_ACK"),
    ],
)
def test_status_rank_by_name_number_or_numeric_string(value: str | int, name: str) -> None:
    assert status_rank(value) == STATUS_RANK[name]


@pytest.mark.parametrize("value", ["DELETED", "9", "-1", 6, -1, "", None, True])
def test_status_rank_of_what_is_no_receipt(value: Any) -> None:
    assert status_rank(value) is None


def test_secret_encrypted_edit_annotates_its_target() -> None:
    data = {
        "key": {"remoteJid": PHONE, "fromMe": False, "id": "NEW1"},
        "message": {
            "secretEncryptedMessage": {
                "targetMessageKey": {"remoteJid": PHONE, "fromMe": False, "id": "OLD1"},
                "encPayload": {"0": 1},
                "secretEncType": 2,
            }
        },
        "messageType": "secretEncryptedMessage",
        "messageTimestamp": 1781500100,
    }
    [op] = build("messages.upsert", data).ops.messages
    assert op.message_id == "OLD1"
    assert not op.has_content
    assert op.edit_ts == UNTIMED_EDIT and op.edited_text is None


def test_send_message_update_with_the_whole_sent_message() -> None:
    data = {
        "key": {"remoteJid": PHONE, "fromMe": True, "id": "WRAPPER"},
        "message": {
            "protocolMessage": {
                "key": {"remoteJid": PHONE, "fromMe": True, "id": "SENT1"},
                "type": 14,
                "editedMessage": {"conversation": "novo"},
                "timestampMs": "1781500095000",
            }
        },
        "messageTimestamp": 1781500095,
    }
    [op] = build("send.message.update", data).ops.messages
    assert (op.message_id, op.edited_text, op.edit_ts) == ("SENT1", "novo", 1781500095000)
    bare = {"key": {"id": "SENT2"}, "type": "MESSAGE_EDIT", "editedMessage": {"conversation": "x"}}
    [op] = build("send.message.update", bare).ops.messages
    assert op.message_id == "SENT2" and op.edited_text == "x"


def test_chats_v1_id_is_a_jid_a_cuid_is_not() -> None:
    ops = build(
        "chats.upsert",
        [
            {"id": "clx9k2f8h0003qz8r4v5t6y7u", "name": "Novo Nome"},
            {"id": PHONE, "unreadCount": 3, "name": "v1"},
            {"remoteJid": "120363025246125486@g.us", "unreadMessages": {"low": 2, "high": 0}},
        ],
    ).ops
    assert [(c[2], c[4], c[5]) for c in ops.chats] == [
        (PHONE, "v1", 3),
        ("120363025246125486@g.us", None, 2),
    ]


def test_group_participant_objects_teach_pairs_and_the_event_is_kept() -> None:
    data = {
        "id": "120363025246125486@g.us",
        "author": "999888777666555@lid",
        "authorPn": "5511900000001@s.whatsapp.net",
        "participants": [
            {"id": LID, "phoneNumber": "5511911112222@s.whatsapp.net", "admin": None},
            {"id": "5511933334444@s.whatsapp.net", "lid": "111222333444555@lid"},
            "5511955556666@s.whatsapp.net",
        ],
        "action": "add",
    }
    built = build("group-participants.update", data)
    assert built.outcome == "stored"
    assert [pair[1:] for pair in built.ops.lid_pairs] == [
        (LID, "5511911112222@s.whatsapp.net"),
        ("111222333444555@lid", "5511933334444@s.whatsapp.net"),
        ("999888777666555@lid", "5511900000001@s.whatsapp.net"),
    ]
    assert [e[2] for e in built.ops.events] == ["group-participants.update"]
    # a shape we do not know is still kept, not refused
    odd = build("group-participants.update", {"id": 5, "participants": [7]})
    assert odd.outcome == "stored" and len(odd.ops.events) == 1 and not odd.ops.lid_pairs


def test_groups_upsert_participants_teach_pairs() -> None:
    group = {
        "id": "120363025246125486@g.us",
        "subject": "Vendas",
        "participants": [{"id": LID, "phoneNumber": PHONE, "admin": "admin"}, "x@s.whatsapp.net"],
    }
    ops = build("groups.upsert", [group]).ops
    assert [pair[1:] for pair in ops.lid_pairs] == [(LID, PHONE)]
    assert [g[2:4] for g in ops.groups] == [("120363025246125486@g.us", "Vendas")]


def test_from_me_upsert_swapped_to_the_owner_files_under_the_contact() -> None:
    data = {
        "key": {
            "remoteJid": "5511900000001@s.whatsapp.net",
            "fromMe": True,
            "id": "ME1",
            "senderPn": "5511900000001@s.whatsapp.net",
            "previousRemoteJid": "987654321098765@lid",
        },
        "message": {"conversation": "oi"},
        "messageTimestamp": 1781500000,
    }
    built = build("messages.upsert", data, sender="5511900000001:17@s.whatsapp.net")
    [op] = built.ops.messages
    assert (op.chat_jid, op.chat_type) == ("987654321098765@lid", "lid")
    assert op.sender_jid == "5511900000001@s.whatsapp.net"
    assert built.ops.lid_pairs == []  # never "the contact's LID is the owner"


def test_poll_vote_is_kept_as_an_event_not_a_message() -> None:
    data = {
        "key": {"remoteJid": PHONE, "fromMe": False, "id": "VOTE1"},
        "message": {
            "pollUpdateMessage": {
                "pollCreationMessageKey": {"remoteJid": PHONE, "fromMe": True, "id": "POLL1"},
                "vote": {"encPayload": "AAE=", "encIv": "AAE="},
            }
        },
        "messageType": "pollUpdateMessage",
        "messageTimestamp": 1781500200,
    }
    ops = build("messages.upsert", data).ops
    assert ops.messages == []
    [event] = ops.events
    assert event[2] == "messages.upsert"
    kept = msgspec.json.decode(event[3])
    assert kept["key"]["id"] == "VOTE1"
    assert kept["pollUpdateMessage"]["pollCreationMessageKey"]["id"] == "POLL1"


def _text(remote: str, message_id: str = "V1", **key: Any) -> dict[str, Any]:
    return {
        "key": {"remoteJid": remote, "fromMe": False, "id": message_id, **key},
        "message": {"conversation": "oi"},
        "messageTimestamp": 1781500100,
    }


@pytest.mark.parametrize(
    ("remote", "key", "chat", "variant"),
    [
        # §7: one person's number in its other form (BR 9th digit, MX 1, AR 9)
        ("553198765432@s.whatsapp.net", {}, "553198765432", "5531998765432"),
        ("5531998765432:3@c.us", {}, "5531998765432", "553198765432"),
        ("5215512345678@s.whatsapp.net", {}, "5215512345678", "525512345678"),
        ("541123456789@s.whatsapp.net", {}, "541123456789", "5491123456789"),
        # a LID told its phone by remoteJidAlt: the phone's chat, and its other form
        (LID, {"remoteJidAlt": "553198765432@s.whatsapp.net"}, "553198765432", "5531998765432"),
        # no second form: a landline, another country, a group, a LID without phone
        ("553132345678@s.whatsapp.net", {}, "553132345678", None),
        ("14155550100@s.whatsapp.net", {}, "14155550100", None),
        (
            "5531998765432-1600000000@g.us",
            {"participant": "553198765432@s.whatsapp.net"},
            None,
            None,
        ),
        (LID, {}, None, None),
    ],
)
def test_a_user_chat_carries_the_other_form_of_its_number(
    remote: str, key: dict[str, Any], chat: str | None, variant: str | None
) -> None:
    [op] = build("messages.upsert", _text(remote, **key)).ops.messages
    if chat is not None:
        assert (op.chat_jid, op.chat_type) == (f"{chat}@s.whatsapp.net", "user")
    assert op.chat_variant == (None if variant is None else f"{variant}@s.whatsapp.net")
    # the row carries it in the field sense_ingest reads
    record = dict(zip(MESSAGE_COLUMNS, op.record(), strict=True))
    assert record["chat_variant"] == op.chat_variant
    assert record["chat_jid"] == op.chat_jid


def test_an_annotation_names_no_chat_and_no_variant() -> None:
    receipt = {"keyId": "V1", "remoteJid": "553198765432@s.whatsapp.net", "status": "READ"}
    [op] = build("messages.update", receipt).ops.messages
    assert (op.chat_jid, op.chat_variant, op.has_content) == (None, None, False)


def test_the_variant_goes_with_the_content_when_ops_merge() -> None:
    [content] = build("messages.upsert", _text("553198765432@s.whatsapp.net")).ops.messages
    receipt = MessageOp(content.tenant_id, content.instance_id, "V1", status=STATUS_RANK["READ"])
    for merged in (merge_message_ops(content, receipt), merge_message_ops(receipt, content)):
        assert merged.chat_variant == "5531998765432@s.whatsapp.net"
        assert merged.chat_jid == "553198765432@s.whatsapp.net"
        assert merged.status == STATUS_RANK["READ"]
