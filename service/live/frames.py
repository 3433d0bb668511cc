"""The live stream's frames (what a WebSocket client receives, see service/live/__init__.py),
the cursor of a catch-up position, and their encoding."""

from __future__ import annotations

import msgspec

from service.contracts import AnalyzedItem, Wire
from service.resources import Analysis, InstanceOut, Message, rounded_sentiment

BUFFER_FRAMES = 5000  # per client; past either limit the client is dropped (close 1013)
BUFFER_BYTES = 2 * 1024 * 1024
AUTH_TIMEOUT = 5.0  # a socket must send its token within this
HEARTBEAT_SECONDS = 25.0
CLOSE_UNAUTHORIZED = 4401
CLOSE_SLOW = 1013
CLOSE_GOING_AWAY = 1001

encoder = msgspec.json.Encoder()


class Created(msgspec.Struct, tag="message.created", tag_field="type"):
    cursor: str
    message: Message


class Updated(msgspec.Struct, tag="message.updated", tag_field="type"):
    message: Message


class Analyzed(msgspec.Struct, tag="message.analyzed", tag_field="type"):
    instance: str
    message_id: str
    analysis: Analysis


class InstanceState(msgspec.Struct, tag="instance.state", tag_field="type"):
    instance: InstanceOut


class InstanceQrCode(msgspec.Struct, tag="instance.qrcode", tag_field="type"):
    instance: InstanceOut


class Ready(msgspec.Struct, tag="ready", tag_field="type"):
    tenant: str
    cursor: str


wire_decoder = msgspec.json.Decoder(Wire)
HEARTBEAT = '{"type":"heartbeat"}'
PONG = '{"type":"pong"}'


def encode_position(content_xid: int, seq: int) -> str:
    return f"c{content_xid}.{seq}"


def decode_position(cursor: str) -> tuple[int, int]:
    xid, dot, seq = cursor.removeprefix("c").partition(".")
    try:
        if not cursor.startswith("c") or not dot:
            raise ValueError
        value = int(xid), int(seq)
    except ValueError:
        raise ValueError("after is not a cursor from this API (message.created or ready)") from None
    if not (0 <= value[0] < 2**64 and 0 <= value[1] < 2**63):  # an xid8 and a bigint
        raise ValueError("after is not a cursor from this API (message.created or ready)")
    return value


def wire(frames: list[bytes]) -> bytes:
    return b'{"frames":[' + b",".join(frames) + b"]}"


def analysis_of(item: AnalyzedItem) -> Analysis:
    return Analysis(
        state="done" if item.state == "skipped" else item.state,
        sentiment=rounded_sentiment(item.sentiment),
        emotion=item.emotion,
        satisfaction=item.satisfaction,
        analyzable=item.state != "skipped",
        error=item.error,
        analyzer=item.analyzer,
    )
