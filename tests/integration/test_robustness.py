"""No input makes the receiver fail: any JSON in `data` of any event gets 200/202/400."""

from __future__ import annotations

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.events import EVENTS, IGNORED, KEPT_AS_EVENTS
from tests.integration.conftest import Deployment

EVENT_NAMES = sorted(
    {
        "messages.upsert",
        "messages.update",
        "messages.delete",
        "messages.edited",
        "send.message",
        "send.message.update",
        "messages.set",
        "connection.update",
        "qrcode.updated",
        "contacts.upsert",
        "contacts.update",
        "chats.upsert",
        "chats.update",
        "chats.delete",
        "chats.set",
        "groups.upsert",
        "group-participants.update",
        "call",
        "presence.update",
        "labels.edit",
        "future.event",
    }
)
assert {e.replace(".", "").replace("-", "") for e in EVENT_NAMES} - set(EVENTS) - IGNORED - (
    KEPT_AS_EVENTS
) == {"futureevent"}

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64),
    st.floats(allow_nan=False),
    st.text(max_size=30),
    st.sampled_from(["5511999999999@s.whatsapp.net", "1@lid", "x@g.us", "", "\x00", ":1@"]),
)
keys = st.sampled_from(
    [
        "key",
        "id",
        "remoteJid",
        "fromMe",
        "message",
        "conversation",
        "status",
        "keyId",
        "messageTimestamp",
        "low",
        "high",
        "unsigned",
        "editedMessage",
        "type",
        "pushName",
        "qrcode",
        "state",
        "reactionMessage",
        "text",
        "participant",
        "extendedTextMessage",
        "imageMessage",
        "caption",
        "messages",
        "remoteJidAlt",
        "base64",
        "contextInfo",
    ]
) | st.text(max_size=8)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=6),
    max_leaves=25,
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(event=st.sampled_from(EVENT_NAMES), data=json_values)
async def test_any_data_is_answered_without_a_server_error(
    deployment: Deployment, event: str, data: object
) -> None:
    body = {"event": event, "instance": "acme-main", "data": data, "apikey": None}
    r = await deployment.post(None, raw=msgspec.json.encode(body))
    assert r.status_code in (200, 202, 400), r.text
    if r.status_code == 400:
        assert r.json()["detail"]
