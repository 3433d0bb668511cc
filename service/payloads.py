"""msgspec types of the Evolution webhook: the envelope and the ``data`` of each event.

Decoding is tolerant on purpose (see ../shared/evolution-webhooks.md): unknown fields are
ignored, every field is optional, and values that Evolution encodes differently by version
(int64 as "4409" / 4409 / {low, high, unsigned}; enums as names or numbers; ``data`` as one
object or an array) accept every form. Only the envelope itself is strict: a body without a
string ``event`` and ``instance`` is not an Evolution webhook.
"""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import Raw, Struct


class Long(Struct):
    """protobuf.js Long, as 2.3.5+ serialises int64."""

    low: int = 0
    high: int = 0
    unsigned: bool = False


Int64 = int | float | str | Long | None
Flag = bool | int | str | None


def as_int(value: Int64) -> int | None:
    """An int64 in any of Evolution's encodings, or None when there is none."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        try:
            return int(value)
        except (ValueError, OverflowError):  # nan, inf
            return None
    if isinstance(value, Long):
        low = value.low & 0xFFFFFFFF
        result = (value.high << 32) | low if value.unsigned else (value.high << 32) + low
        return result
    text = value.strip()
    try:
        return int(text)
    except ValueError:
        try:
            return int(float(text))
        except (ValueError, OverflowError):  # "abc", "Infinity", "1e400"
            return None


def as_int32(value: Int64) -> int | None:
    """``as_int`` for an ``integer`` column: out of range is no value (never a failed write)."""
    n = as_int(value)
    return n if n is not None and -(2**31) <= n < 2**31 else None


def as_int64(value: Int64) -> int | None:
    """``as_int`` for a ``bigint`` column."""
    n = as_int(value)
    return n if n is not None and -(2**63) <= n < 2**63 else None


def as_bool(value: Flag) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in {"true", "1", "yes"}
    return bool(value)


class Envelope(Struct):
    event: str
    instance: str
    data: Raw = Raw(b"null")
    date_time: str | None = None
    sender: str | None = None
    server_url: str | None = None
    apikey: str | None = None


# --- message content --------------------------------------------------------------------


class ContextInfo(Struct, rename="camel"):
    stanza_id: str | None = None
    participant: str | None = None
    mentioned_jid: list[str] | None = None


class ExtendedText(Struct, rename="camel"):
    text: str | None = None
    context_info: ContextInfo | None = None


class Media(Struct, rename="camel"):
    caption: str | None = None
    mimetype: str | None = None
    file_name: str | None = None
    ptt: Flag = None
    context_info: ContextInfo | None = None


class MessageKey(Struct, rename="camel"):
    remote_jid: str | None = None
    remote_jid_alt: str | None = None
    from_me: Flag = None
    id: str | None = None
    participant: str | None = None
    participant_alt: str | None = None
    participant_pn: str | None = None
    participant_lid: str | None = None
    sender_pn: str | None = None
    sender_lid: str | None = None
    previous_remote_jid: str | None = None
    addressing_mode: str | None = None


class Reaction(Struct, rename="camel"):
    key: MessageKey | None = None
    text: str | None = None
    sender_timestamp_ms: Int64 = None


class Location(Struct, rename="camel"):
    degrees_latitude: float | str | None = None
    degrees_longitude: float | str | None = None
    name: str | None = None
    address: str | None = None
    caption: str | None = None  # liveLocationMessage
    context_info: ContextInfo | None = None


class Contact(Struct, rename="camel"):
    display_name: str | None = None
    vcard: str | None = None
    context_info: ContextInfo | None = None


class ContactsArray(Struct, rename="camel"):
    display_name: str | None = None
    contacts: list[Contact] | None = None
    context_info: ContextInfo | None = None


class ButtonsResponse(Struct, rename="camel"):
    selected_display_text: str | None = None
    selected_button_id: str | None = None
    context_info: ContextInfo | None = None


class TemplateButtonReply(Struct, rename="camel"):
    selected_display_text: str | None = None
    selected_id: str | None = None
    context_info: ContextInfo | None = None


class SingleSelectReply(Struct, rename="camel"):
    selected_row_id: str | None = None


class ListResponse(Struct, rename="camel"):
    title: str | None = None
    single_select_reply: SingleSelectReply | None = None
    context_info: ContextInfo | None = None


class InteractiveBody(Struct):
    text: str | None = None


class NativeFlowResponse(Struct, rename="camel"):
    name: str | None = None
    params_json: str | None = None


class InteractiveResponse(Struct, rename="camel"):
    body: InteractiveBody | None = None
    native_flow_response_message: NativeFlowResponse | None = None
    context_info: ContextInfo | None = None


class PollOption(Struct, rename="camel"):
    option_name: str | None = None


class PollCreation(Struct, rename="camel"):
    name: str | None = None
    options: list[PollOption] | None = None
    context_info: ContextInfo | None = None


class ProtocolMessage(Struct, rename="camel"):
    key: MessageKey | None = None
    type: int | str | None = None
    edited_message: MessageContent | None = None
    timestamp_ms: Int64 = None
    # send.message.update may carry the whole sent message ({key, message: {protocolMessage}})
    # rather than the bare protocolMessage
    message: MessageContent | None = None


class SecretEncrypted(Struct, rename="camel"):
    """An edit (or event edit) new clients encrypt; Evolution 2.3.7 does not decrypt it."""

    target_message_key: MessageKey | None = None
    secret_enc_type: int | str | None = None


class Wrapper(Struct):
    message: MessageContent | None = None


class MessageContent(Struct, rename="camel"):
    """``data.message``; ``base64`` (inline media, possibly many MB) is deliberately absent."""

    conversation: str | None = None
    extended_text_message: ExtendedText | None = None
    image_message: Media | None = None
    video_message: Media | None = None
    ptv_message: Media | None = None
    audio_message: Media | None = None
    document_message: Media | None = None
    sticker_message: Media | None = None
    reaction_message: Reaction | None = None
    location_message: Location | None = None
    live_location_message: Location | None = None
    contact_message: Contact | None = None
    contacts_array_message: ContactsArray | None = None
    buttons_response_message: ButtonsResponse | None = None
    template_button_reply_message: TemplateButtonReply | None = None
    list_response_message: ListResponse | None = None
    interactive_response_message: InteractiveResponse | None = None
    poll_creation_message: PollCreation | None = None
    poll_creation_message_v2: PollCreation | None = None
    poll_creation_message_v3: PollCreation | None = None
    poll_update_message: dict[str, Any] | None = None
    protocol_message: ProtocolMessage | None = None
    secret_encrypted_message: SecretEncrypted | None = None
    ephemeral_message: Wrapper | None = None
    view_once_message: Wrapper | None = None
    view_once_message_v2: Wrapper | None = None
    view_once_message_v2_extension: Wrapper | None = None
    document_with_caption_message: Wrapper | None = None
    edited_message: Wrapper | None = None
    speech_to_text: str | None = None


class MessageData(Struct, rename="camel"):
    """One message of ``messages.upsert`` / ``send.message`` / ``messages.set``."""

    key: MessageKey | None = None
    push_name: str | None = None
    status: str | int | None = None
    message: MessageContent | None = None
    context_info: ContextInfo | None = None
    message_type: str | None = None
    message_timestamp: Int64 = None
    instance_id: str | None = None
    owner: str | None = None
    source: str | None = None
    # v1 wrapped the messages in {"messages": [...], "type": "notify"}
    messages: list[MessageData] | None = None


class MessageUpdate(Struct, rename="camel"):
    """``messages.update``: a receipt, or (2.3.7) an edit carrying the new message."""

    key_id: str | None = None
    remote_jid: str | None = None
    from_me: Flag = None
    participant: str | None = None
    status: str | int | None = None
    message: MessageContent | None = None
    message_id: str | None = None
    instance_id: str | None = None
    # Baileys' own shape {key, update: {status}} (v1)
    key: MessageKey | None = None
    update: UpdateBody | None = None


class UpdateBody(Struct):
    status: str | int | None = None
    message: MessageContent | None = None


class MessageDelete(Struct, rename="camel"):
    """``messages.delete``: a Baileys key (+status), or an API delete's DB record ``{id, key}``."""

    id: str | None = None
    remote_jid: str | None = None
    from_me: Flag = None
    participant: str | None = None
    status: str | int | None = None
    key: MessageKey | None = None
    keys: list[MessageKey] | None = None


class ConnectionUpdate(Struct, rename="camel"):
    instance: str | None = None
    state: str | None = None
    status_reason: Int64 = None
    wuid: str | None = None
    profile_name: str | None = None
    profile_picture_url: str | None = None


class QrCode(Struct, rename="camel"):
    instance: str | None = None
    pairing_code: str | None = None
    code: str | None = None
    base64: str | None = None


class QrUpdate(Struct, rename="camel"):
    qrcode: QrCode | None = None
    message: str | None = None
    status_code: Int64 = None


class ContactData(Struct, rename="camel"):
    remote_jid: str | None = None
    id: str | None = None
    push_name: str | None = None
    name: str | None = None
    profile_pic_url: str | None = None
    lid: str | None = None
    phone_number: str | None = None
    jid: str | None = None


class ChatData(Struct, rename="camel"):
    remote_jid: str | None = None
    # 2.3.x: Evolution's db cuid (pushName changes); v1 / Baileys: the chat JID itself
    id: str | None = None
    name: str | None = None
    unread_messages: Int64 = None
    unread_count: Int64 = None  # v1 (Baileys Chat)

    def jid(self) -> str | None:
        if self.remote_jid:
            return self.remote_jid
        return self.id if self.id and "@" in self.id else None


class GroupParticipant(Struct, rename="camel"):
    id: str | None = None
    phone_number: str | None = None
    lid: str | None = None
    jid: str | None = None
    admin: str | None = None


class GroupMetadata(Struct, rename="camel"):
    id: str | None = None
    subject: str | None = None
    # Baileys 7 objects name the @lid and the phone; older ones a JID only
    participants: list[GroupParticipant | str] | None = None


class ParticipantsUpdate(Struct, rename="camel"):
    """``group-participants.update``: participants are strings <=2.3.2, objects with Baileys 7."""

    id: str | None = None
    author: str | None = None
    author_pn: str | None = None
    participants: list[GroupParticipant | str] | None = None
    action: str | None = None


Contacts = list[ContactData] | ContactData
Chats = list[ChatData | str] | ChatData
Groups = list[GroupMetadata] | GroupMetadata
Upserts = list[MessageData] | MessageData
Updates = list[MessageUpdate] | MessageUpdate
Deletes = list[MessageDelete] | MessageDelete
Protocols = list[ProtocolMessage] | ProtocolMessage


def as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def lenient_document(body: bytes) -> Any:
    """``body`` as plain JSON values for a copy kept aside (quarantine), or None if it is not
    JSON. Invalid UTF-8 in a field no decoder reads (where one reads, the event was refused
    before it got here) becomes U+FFFD."""
    try:
        try:
            return msgspec.json.decode(body)
        except UnicodeDecodeError:
            return msgspec.json.decode(body.decode("utf-8", "replace"))
    except (msgspec.DecodeError, RecursionError):
        return None


def without_inline_media(body: bytes) -> bytes:
    """``body`` with the inline media of every message it carries set to null
    (``message.base64`` of ``data``, of each item of an array ``data`` such as messages.set, and
    of v1's ``{"messages": [...]}``), for the copies kept in quarantine; anything else as is."""
    if b'"base64"' not in body:
        return body
    doc = lenient_document(body)
    if doc is None:
        return body
    data = doc.get("data") if isinstance(doc, dict) else None
    items = list(data) if isinstance(data, list) else [data]
    if isinstance(data, dict) and isinstance(data.get("messages"), list):
        items.extend(data["messages"])
    stripped = False
    for item in items:
        message = item.get("message") if isinstance(item, dict) else None
        if isinstance(message, dict) and message.get("base64") is not None:
            message["base64"] = None
            stripped = True
    return msgspec.json.encode(doc) if stripped else body


_decoders: dict[Any, msgspec.json.Decoder[Any]] = {}


def decode_data(raw: Raw | bytes, kind: Any) -> Any:
    """Decode an event's ``data`` into ``kind``; raises msgspec.ValidationError naming the path."""
    decoder = _decoders.get(kind)
    if decoder is None:
        decoder = _decoders[kind] = msgspec.json.Decoder(kind)
    return decoder.decode(raw)


envelope_decoder = msgspec.json.Decoder(Envelope)
