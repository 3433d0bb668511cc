"""From one decoded Evolution event to the rows it writes (no I/O).

``build_ops`` turns an envelope into an ``Ops``: message upserts and annotations (status,
edit, delete, reaction, all keyed by the target message id), contacts, the @lid -> phone pairs
learned, chats, groups, instance state / QR, and other events kept as received.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec

from service import payloads as p
from service._native import jid_kind, normalize_jid, phone_variant, resolve_addresses
from service.content import describe, quoted_message_id, unwrap
from service.resolve import Instance
from service.rows import STATUS_RANK, MessageOp, Ops

# renderStatus numbering (src/utils/renderStatus.ts)
_STATUS_BY_NUMBER = ["ERROR", "PENDING", "SERVER_ACK", "DELIVERY_ACK", "READ", "PLAYED"]

# protocolMessage.type (WAProto): REVOKE = 0, MESSAGE_EDIT = 14
_REVOKE = {"0", "REVOKE"}
_EDIT = {"14", "MESSAGE_EDIT"}
# An edit without its own timestamp ranks below every timestamped one.
UNTIMED_EDIT = 1


def edit_time(value: p.Int64) -> int:
    """An edit's rank: its timestampMs, or UNTIMED_EDIT (below every timed edit) when it has
    none or one that does not fit a bigint."""
    when = p.as_int64(value)
    return when if when is not None and when > UNTIMED_EDIT else UNTIMED_EDIT


class PayloadError(ValueError):
    """The body is not a usable Evolution webhook (answered 400)."""


class OverLimit(PayloadError):
    """A value is past a limit the storage can keep and read back (answered 422, the limit
    named). WhatsApp's own ids and Evolution's instance names are far below them."""


MAX_ID_CHARS = 255  # message ids (key.id): WhatsApp's are 16-40 characters
MAX_NAME_CHARS = 255  # instance names, as they are keyed in the registry and quarantine
# JIDs key chats, contacts, groups and the @lid map and are indexed on messages: past a few
# thousand bytes no index can hold them. WhatsApp's are under 50 characters.
MAX_JID_CHARS = 255
# A message's text (or an edit's) is indexed for search, and a tsvector holds at most 1 MB:
# WhatsApp's own limit on a message keeps every text far below that (a few hundred KB at worst).
MAX_TEXT_CHARS = 65_536
# no message id has one, and the read API, which names the id in a URL path, cannot route a
# line break
_CONTROL = re.compile("[\x01-\x1f\x7f]")


def _jid(jid: str | None, what: str) -> str | None:
    """A JID as a row keeps it: OverLimit past MAX_JID_CHARS, PayloadError with NUL (which
    Postgres text cannot hold, and which no JID has: removing it would name someone else)."""
    if jid is not None:
        if len(jid) > MAX_JID_CHARS:
            raise OverLimit(f"{what} longer than {MAX_JID_CHARS} characters")
        if "\x00" in jid:
            raise PayloadError(f"{what} contains NUL")
    return jid


def _pair_fits(lid: str, phone: str) -> bool:
    """An @lid <-> phone pair is a bonus: one with a JID that could not be kept is not
    learned (see ``_jid``)."""
    return (
        len(lid) <= MAX_JID_CHARS
        and len(phone) <= MAX_JID_CHARS
        and "\x00" not in lid
        and "\x00" not in phone
    )


def status_rank(value: str | int | None) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str):
        text = value.strip().upper()
        if not text.isdigit():
            return STATUS_RANK.get(text)
        if len(text) > 2:
            return None  # no status has a number that long (and int() of 5000 digits raises)
        value = int(text)  # an enum number that went through a string
    if 0 <= value < len(_STATUS_BY_NUMBER):
        return STATUS_RANK[_STATUS_BY_NUMBER[value]]
    return None


def _clean(text: str | None) -> str | None:
    """Postgres text cannot hold NUL."""
    if text is None:
        return None
    return text.replace("\x00", "") if "\x00" in text else text


def _text(text: str | None) -> str | None:
    """A message's or an edit's text as stored: OverLimit past MAX_TEXT_CHARS, NUL removed."""
    if text is not None and len(text) > MAX_TEXT_CHARS:
        raise OverLimit(f"message text longer than {MAX_TEXT_CHARS} characters")
    return _clean(text)


def _timestamp(value: p.Int64) -> datetime | None:
    seconds = p.as_int(value)
    if seconds is None or seconds <= 0:
        return None
    if seconds > 100_000_000_000:  # milliseconds
        seconds //= 1000
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def _str(value: str | None) -> str | None:
    return value if value else None


class EventBuilder:
    """Builds the Ops of one envelope for one registered instance."""

    def __init__(self, instance: Instance, envelope: p.Envelope, received_ms: int) -> None:
        self.inst = instance
        self.env = envelope
        self.received_ms = received_ms
        self.owner = normalize_jid(envelope.sender)
        self.ops = Ops()

    # messages ---------------------------------------------------------------------------

    def _addresses(self, key: p.MessageKey, from_me: bool) -> tuple[Any, ...]:
        chat_jid, chat_type, sender_jid, sender_phone, pairs = resolve_addresses(
            _str(key.remote_jid),
            _str(key.remote_jid_alt),
            _str(key.sender_pn),
            _str(key.sender_lid),
            _str(key.previous_remote_jid),
            _str(key.participant),
            _str(key.participant_alt),
            _str(key.participant_pn),
            _str(key.participant_lid),
            from_me,
            self.owner,
        )
        _jid(chat_jid, "chat JID")
        _jid(sender_jid, "sender JID")
        for lid, phone in pairs:
            if _pair_fits(lid, phone):
                self.ops.lid_pairs.append((self.inst.tenant_id, lid, phone))
        return chat_jid, chat_type, sender_jid, sender_phone

    def _op(self, message_id: str) -> MessageOp:
        if len(message_id) > MAX_ID_CHARS:
            raise OverLimit(f"message id longer than {MAX_ID_CHARS} characters")
        message_id = _clean(message_id) or ""
        if not message_id:  # it was NUL only: nothing could read it back
            raise PayloadError("message id is empty once its NUL characters are removed")
        if _CONTROL.search(message_id):  # the read API names it in a URL path
            raise PayloadError("message id contains a control character")
        op = MessageOp(self.inst.tenant_id, self.inst.instance_id, message_id)
        self.ops.messages.append(op)
        return op

    def message(self, data: p.MessageData, raw_id: Callable[[], str]) -> None:
        if data.messages:
            for inner in data.messages:
                self.message(inner, raw_id)
            if data.key is None:
                return
        key = data.key or p.MessageKey()
        from_me = p.as_bool(key.from_me)
        chat_jid, chat_type, sender_jid, sender_phone = self._addresses(key, from_me)
        content = data.message
        m = unwrap(content) if content is not None else None
        ts = _timestamp(data.message_timestamp)
        if m is not None and m.protocol_message is not None:
            self.protocol(m.protocol_message)
            return
        if m is not None and m.poll_update_message is not None:
            # A poll vote (its poll is the message): no chat message of its own, kept as received.
            vote = {"key": key, "pollUpdateMessage": m.poll_update_message}
            self.ops.events.append(
                (
                    self.inst.tenant_id,
                    self.inst.instance_id,
                    self.env.event,
                    sanitize_json(msgspec.json.encode(vote)).decode(),
                )
            )
            return
        if m is not None and m.secret_encrypted_message is not None:
            secret = m.secret_encrypted_message
            target = secret.target_message_key.id if secret.target_message_key else None
            if target:
                # An encrypted edit: no new message, and no text we could show. The target is
                # edited; its text stays the last readable one (an untimed edit never hides a
                # timed, readable one).
                self._op(target).edit_ts = UNTIMED_EDIT
                return
        if m is not None and m.reaction_message is not None:
            reaction = m.reaction_message
            target = reaction.key.id if reaction.key is not None else None
            if target and sender_jid:
                when = p.as_int64(reaction.sender_timestamp_ms)
                if when is None:
                    when = int(ts.timestamp() * 1000) if ts else self.received_ms
                op = self._op(target)
                op.reactions = {sender_jid: {"emoji": _clean(reaction.text) or "", "ts": when}}
            return
        kind, text = ("other", None)
        if content is not None and m is not None:
            kind, text = describe(m, content.speech_to_text)
        op = self._op(key.id or raw_id())
        op.has_content = True
        op.chat_jid, op.chat_type = chat_jid, chat_type
        if chat_type == "user":
            op.chat_variant = phone_variant(chat_jid)
        op.sender_jid, op.sender_phone = sender_jid, sender_phone
        op.from_me = from_me
        op.push_name = _clean(_str(data.push_name))
        op.type = kind
        op.text = _text(text)
        op.quoted_message_id = _clean(quoted_message_id(data, m))
        # no timestamp at all: file it at arrival time, so it still sorts
        op.message_ts = ts or datetime.fromtimestamp(self.received_ms / 1000, UTC)
        op.status = status_rank(data.status)

    def protocol(self, proto: p.ProtocolMessage) -> None:
        """messages.edited / send.message.update: edits and revokes, keyed by the target id."""
        if proto.type is None and proto.message is not None:
            # the whole sent message ({key, message: {protocolMessage}}), not its protocolMessage
            inner = unwrap(proto.message)
            if inner.protocol_message is not None:
                self.protocol(inner.protocol_message)
            return
        kind = str(proto.type).upper() if proto.type is not None else ""
        target = proto.key.id if proto.key is not None else None
        if not target:
            return  # EPHEMERAL_SETTING and friends carry no key: nothing to annotate
        if kind in _REVOKE:
            self._op(target).deleted = True
        elif kind in _EDIT:
            op = self._op(target)
            op.edit_ts = edit_time(proto.timestamp_ms)
            if proto.edited_message is not None:
                op.edited_text = _text(describe(unwrap(proto.edited_message))[1])

    def update(self, upd: p.MessageUpdate) -> None:
        target = upd.key_id or (upd.key.id if upd.key is not None else None)
        if not target:
            return
        status = upd.status
        message = upd.message
        if upd.update is not None:
            status = status if status is not None else upd.update.status
            message = message if message is not None else upd.update.message
        if message is not None:
            # 2.3.7: an edit arrives as SERVER_ACK + {editedMessage: {message: ...}}
            inner = unwrap(message)
            when: p.Int64 = None
            if inner.protocol_message is not None and inner.protocol_message.edited_message:
                # its timestampMs orders several edits of one message (the newest wins)
                when = inner.protocol_message.timestamp_ms
                inner = unwrap(inner.protocol_message.edited_message)
            text = describe(inner)[1]
            if text is not None:
                op = self._op(target)
                op.edit_ts, op.edited_text = edit_time(when), _text(text)
                return
        rank = status_rank(status)
        # "DELETED" here is how 2.3.0-2.3.4 report an edit (#2010); real deletes come as
        # messages.delete. Unknown statuses change nothing.
        if rank is not None:
            self._op(target).status = rank

    def delete(self, d: p.MessageDelete) -> None:
        keys = list(d.keys or [])
        if d.key is not None:
            keys.append(d.key)
        elif d.id:
            keys.append(p.MessageKey(id=d.id))
        for key in keys:
            if key.id:
                self._op(key.id).deleted = True

    # the rest ---------------------------------------------------------------------------

    def contact(self, c: p.ContactData) -> None:
        jid = _jid(normalize_jid(c.remote_jid or c.jid or c.id), "contact JID")
        if jid is None:
            return
        kind = jid_kind(jid)
        phone = normalize_jid(c.phone_number)
        lid = normalize_jid(c.lid)
        if kind == "lid" and phone and jid_kind(phone) == "user" and _pair_fits(jid, phone):
            self.ops.lid_pairs.append((self.inst.tenant_id, jid, phone))
        elif kind == "user" and lid and jid_kind(lid) == "lid" and _pair_fits(lid, jid):
            self.ops.lid_pairs.append((self.inst.tenant_id, lid, jid))
        self.ops.contacts.append(
            (
                self.inst.tenant_id,
                self.inst.instance_id,
                jid,
                _clean(_str(c.push_name) or _str(c.name)),
                _clean(_str(c.profile_pic_url)),
            )
        )

    def chat(self, c: p.ChatData | str, deleted: bool) -> None:
        if isinstance(c, str):
            jid, name, unread = normalize_jid(c), None, None
        else:
            # on a pushName change 2.3.x sends [{id: <Evolution's db id>, name}]: no JID to file
            jid, name = normalize_jid(c.jid()), c.name
            unread = p.as_int32(c.unread_messages)
            if unread is None:
                unread = p.as_int32(c.unread_count)
        if _jid(jid, "chat JID") is None:
            return
        self.ops.chats.append(
            (
                self.inst.tenant_id,
                self.inst.instance_id,
                jid,
                jid_kind(jid),
                _clean(_str(name)),
                unread,
                deleted,
            )
        )

    def learn(self, candidates: list[str | None], phones: list[str | None]) -> None:
        """Keep the @lid <-> phone pair one object names (a participant, an author)."""
        lid = next((j for j in map(normalize_jid, candidates) if jid_kind(j) == "lid"), None)
        phone = next((j for j in map(normalize_jid, phones) if jid_kind(j) == "user"), None)
        if lid is not None and phone is not None and _pair_fits(lid, phone):
            self.ops.lid_pairs.append((self.inst.tenant_id, lid, phone))

    def participants(self, people: list[p.GroupParticipant | str] | None) -> None:
        for person in people or []:
            if not isinstance(person, str):
                ids = [person.id, person.lid, person.jid]
                self.learn(ids, [person.phone_number, person.id, person.jid])

    def participants_update(self, raw: msgspec.Raw) -> None:
        """Kept as received; the pairs are a bonus, so a shape we do not know is no error."""
        try:
            upd = p.decode_data(raw, p.ParticipantsUpdate)
        except msgspec.ValidationError:
            upd = p.ParticipantsUpdate()
        self.participants(upd.participants)
        self.learn([upd.author], [upd.author_pn])
        self.event(raw)

    def group(self, raw: msgspec.Raw) -> None:
        meta = p.decode_data(raw, p.GroupMetadata)
        self.participants(meta.participants)
        jid = _jid(normalize_jid(meta.id), "group JID")
        if jid is None:
            return
        self.ops.groups.append(
            (
                self.inst.tenant_id,
                self.inst.instance_id,
                jid,
                _clean(_str(meta.subject)),
                sanitize_json(bytes(raw)).decode(),
            )
        )

    def connection(self, c: p.ConnectionUpdate) -> None:
        state = _clean(c.state)
        if not state:
            return
        reason = p.as_int32(c.status_reason)
        self.ops.instance_states.append(
            (
                self.inst.tenant_id,
                self.inst.instance_id,
                state,
                reason,
                _jid(normalize_jid(c.wuid), "wuid"),
                _clean(_str(c.profile_name)),
            )
        )

    def qrcode(self, q: p.QrUpdate, raw: msgspec.Raw) -> None:
        if q.qrcode is None:  # {message, statusCode: 500}: the QR limit was reached
            self.event(raw)
            return
        qr = q.qrcode
        self.ops.qrcodes.append(
            (
                self.inst.tenant_id,
                self.inst.instance_id,
                _clean(qr.code),
                _clean(qr.base64),
                _clean(qr.pairing_code),
            )
        )

    def event(self, raw: msgspec.Raw) -> None:
        self.ops.events.append(
            (
                self.inst.tenant_id,
                self.inst.instance_id,
                self.env.event,
                sanitize_json(bytes(raw)).decode(),
            )
        )


def sanitize_json(raw: bytes) -> bytes:
    """jsonb rejects the \\u0000 escape; replace it (and guard against an odd backslash run)."""
    if b"\\u0000" not in raw:
        return raw
    return raw.replace(b"\\u0000", b"\\ufffd")


def canonical_event(name: str) -> str:
    """`messages.upsert`, `MESSAGES_UPSERT` and `messages-upsert` are the same event."""
    return "".join(ch for ch in name.lower() if ch.isalnum())


# event -> (data type, handler); the handler gets (builder, decoded data, raw data)
Handler = Callable[[EventBuilder, Any, msgspec.Raw], None]


def _messages(b: EventBuilder, data: Any, raw: msgspec.Raw) -> None:
    items = p.as_list(data)
    for index, item in enumerate(items):

        def raw_id(index: int = index) -> str:
            # No key.id: a stable id from the bytes, so a retry dedupes like any message.
            digest = hashlib.sha256(bytes(raw)).hexdigest()[:24]
            return f"sense-{digest}-{index}"

        b.message(item, raw_id)


def _for_each(method: Callable[[EventBuilder, Any], None]) -> Handler:
    def handler(b: EventBuilder, data: Any, raw: msgspec.Raw) -> None:
        for item in p.as_list(data):
            method(b, item)

    return handler


def _chats(deleted: bool) -> Handler:
    def handler(b: EventBuilder, data: Any, raw: msgspec.Raw) -> None:
        for item in p.as_list(data):
            b.chat(item, deleted)

    return handler


def _groups(b: EventBuilder, data: Any, raw: msgspec.Raw) -> None:
    # one GroupMetadata or an array of them; each kept as received (msgspec.Raw cannot sit
    # in a union, so look at the first byte)
    text = bytes(raw).lstrip()
    if text.startswith(b"["):
        items = p.decode_data(raw, list[msgspec.Raw])
    elif text.startswith(b"{"):
        items = [raw]
    else:
        raise msgspec.ValidationError("Expected `object | array`, got something else - at `$`")
    for item in items:
        b.group(item)


def _event(b: EventBuilder, data: Any, raw: msgspec.Raw) -> None:
    b.event(raw)


# The event table: each event Evolution sends that we read, by the name Evolution documents, with
# the type its `data` decodes into (msgspec.Raw: read from the raw JSON) and its handler.
EVENT_TABLE: dict[str, tuple[Any, Handler]] = {
    "messages.upsert": (p.Upserts, _messages),
    "send.message": (p.Upserts, _messages),
    "messages.set": (p.Upserts, _messages),
    "messages.update": (p.Updates, _for_each(EventBuilder.update)),
    "messages.delete": (p.Deletes, _for_each(EventBuilder.delete)),
    "messages.edited": (p.Protocols, _for_each(EventBuilder.protocol)),
    "send.message.update": (p.Protocols, _for_each(EventBuilder.protocol)),
    "connection.update": (p.ConnectionUpdate, _for_each(EventBuilder.connection)),
    "qrcode.updated": (p.QrUpdate, lambda b, data, raw: b.qrcode(data, raw)),
    "contacts.upsert": (p.Contacts, _for_each(EventBuilder.contact)),
    "contacts.update": (p.Contacts, _for_each(EventBuilder.contact)),
    "contacts.set": (p.Contacts, _for_each(EventBuilder.contact)),
    "chats.upsert": (p.Chats, _chats(deleted=False)),
    "chats.update": (p.Chats, _chats(deleted=False)),
    "chats.set": (p.Chats, _chats(deleted=False)),
    "chats.delete": (p.Chats, _chats(deleted=True)),
    "groups.upsert": (msgspec.Raw, _groups),
    "groups.update": (msgspec.Raw, _groups),
    # kept as received, and the participants' @lid <-> phone pairs learned (Baileys 7)
    "group-participants.update": (msgspec.Raw, lambda b, data, raw: b.participants_update(raw)),
}
# Looked up by canonical name: `messages.upsert`, `MESSAGES_UPSERT`, `messages-upsert` are one.
EVENTS: dict[str, tuple[Any, Handler]] = {
    canonical_event(name): spec for name, spec in EVENT_TABLE.items()
}

# Consciously acknowledged without storing: ephemeral or chatbot-internal (answered 202).
IGNORED = {
    "presenceupdate",
    "typebotstart",
    "typebotchangestatus",
    "applicationstartup",
}


@dataclass(slots=True)
class Built:
    ops: Ops
    outcome: str  # "stored" | "ignored" | "unrecognized"


def build_ops(envelope: p.Envelope, instance: Instance, received_ms: int | None = None) -> Built:
    """The rows one envelope writes under ``instance``; PayloadError if ``data`` is unusable."""
    if "\x00" in envelope.event:
        # kept events keep their name as text, which cannot hold NUL (as the webhook does, so
        # a replayed event and a live one carry the same name)
        envelope.event = envelope.event.replace("\x00", "\ufffd")
    event = canonical_event(envelope.event)
    builder = EventBuilder(instance, envelope, received_ms or int(time.time() * 1000))
    if event in IGNORED:
        return Built(builder.ops, "ignored")
    try:
        return _build(builder, event, envelope.data)
    except msgspec.ValidationError as exc:
        raise PayloadError(_at_data(str(exc))) from None
    except msgspec.DecodeError as exc:
        raise PayloadError(f"data: {exc}") from None
    except UnicodeDecodeError:
        raise PayloadError("data is not UTF-8") from None
    except RecursionError:
        raise PayloadError("data: nested too deeply") from None


def _build(builder: EventBuilder, event: str, raw: msgspec.Raw) -> Built:
    spec = EVENTS.get(event)
    if spec is None:
        # Known-but-tableless (calls, labels, instance lifecycle) and unknown future events
        # are kept as received.
        builder.event(raw)
        known = event in KEPT_AS_EVENTS
        return Built(builder.ops, "stored" if known else "unrecognized")
    kind, handler = spec
    handler(builder, p.decode_data(raw, kind), raw)
    return Built(builder.ops, "stored")


KEPT_AS_EVENTS = {
    "call",
    "labelsedit",
    "labelsassociation",
    "instancecreate",
    "instancedelete",
    "logoutinstance",
    "removeinstance",
    "statusinstance",
}


def _at_data(message: str) -> str:
    return message.replace("`$", "`$.data", 1)
