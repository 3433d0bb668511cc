"""Decoding Evolution's messy value encodings (webhook doc §3, §5)."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from service import payloads as p


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'"1781500060"', 1781500060),  # <=2.3.2 protobuf JSON: int64 as string
        (b"1781500060", 1781500060),  # 2.3.3-2.3.4: number
        (b'{"low": 1781500060, "high": 0, "unsigned": false}', 1781500060),  # 2.3.5+: Long
        (b'{"low": -1, "high": 0, "unsigned": true}', 4294967295),
        (b'{"low": 0, "high": 1, "unsigned": false}', 4294967296),
        (b"1781500060.0", 1781500060),
        (b'"garbage"', None),
        (b"null", None),
    ],
)
def test_int64_encodings(raw: bytes, expected: int | None) -> None:
    assert p.as_int(msgspec.json.decode(raw, type=p.Int64)) == expected


@given(st.integers(min_value=-(2**63), max_value=2**63 - 1))
def test_long_roundtrip(value: int) -> None:
    low = value & 0xFFFFFFFF
    high = value >> 32
    signed_low = low - 2**32 if low >= 2**31 else low
    assert p.as_int(p.Long(low=signed_low, high=high, unsigned=False)) == value
    assert p.as_int(str(value)) == value


def test_envelope_requires_event_and_instance() -> None:
    with pytest.raises(msgspec.ValidationError, match="event"):
        p.envelope_decoder.decode(b'{"instance": "a"}')
    with pytest.raises(msgspec.ValidationError, match="instance"):
        p.envelope_decoder.decode(b'{"event": "x", "instance": null}')
    env = p.envelope_decoder.decode(
        b'{"event": "x", "instance": "a", "extra": [1], "isLatest": true}'
    )
    assert env.data == msgspec.Raw(b"null")


def test_message_data_ignores_unknown_fields_and_inline_media() -> None:
    raw = msgspec.json.encode(
        {
            "key": {"remoteJid": "1@s.whatsapp.net", "fromMe": "true", "id": "A", "new": 1},
            "message": {
                "imageMessage": {"caption": "x", "jpegThumbnail": {"0": 1}},
                "base64": "QUFB" * 10,
            },
            "messageTimestamp": {"low": 5, "high": 0, "unsigned": False},
            "somethingNew": {"deep": [1, 2]},
        }
    )
    data = p.decode_data(raw, p.MessageData)
    assert data.key is not None and p.as_bool(data.key.from_me) is True
    assert data.message is not None and data.message.image_message is not None
    assert not hasattr(data.message, "base64")


def test_contacts_object_or_array_and_chats_strings() -> None:
    one = p.decode_data(b'{"remoteJid": "1@s.whatsapp.net", "pushName": "A"}', p.Contacts)
    many = p.decode_data(b'[{"remoteJid": "1@s.whatsapp.net"}]', p.Contacts)
    assert len(p.as_list(one)) == 1 and len(p.as_list(many)) == 1
    chats = p.decode_data(b'["1@s.whatsapp.net", {"remoteJid": "2@g.us"}]', p.Chats)
    assert chats[0] == "1@s.whatsapp.net"


def test_wrong_type_error_names_the_path() -> None:
    with pytest.raises(msgspec.ValidationError, match=r"\$\.key"):
        p.decode_data(b'{"key": 7}', p.MessageData)


def test_without_inline_media_in_every_message_shape() -> None:
    media = "QUFB" * 50
    one = {"event": "messages.upsert", "instance": "a", "data": {"message": {"base64": media}}}
    many = {"event": "messages.set", "instance": "a", "data": [{"message": {"base64": media}}, 3]}
    v1 = {
        "event": "messages.upsert",
        "instance": "a",
        "data": {"messages": [{"key": {"id": "X"}, "message": {"base64": media}}], "type": "x"},
    }
    for body in (one, many, v1):
        out = p.without_inline_media(msgspec.json.encode(body))
        assert media.encode() not in out
        assert msgspec.json.decode(out)["event"] == body["event"]
    v1_out = msgspec.json.decode(p.without_inline_media(msgspec.json.encode(v1)))
    assert v1_out["data"]["messages"][0]["key"] == {"id": "X"}
    # nothing to strip: the very same bytes (not JSON, a QR code's base64, no base64 at all)
    for raw in (
        b'not json "base64"',
        b'{"event": "qrcode.updated", "data": {"qrcode": {"base64": "iVBOR"}}}',
        b'["base64"]',
        b'{"event": "x", "instance": "a"}',
    ):
        assert p.without_inline_media(raw) is raw
