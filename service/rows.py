"""The row model: what a batch writes, how two writes of one message merge, and what a commit
changed. Shared by the event reader (service/events.py), the writer (service/ingest.py), the
post-commit hooks and the read API; it does no I/O and knows no protocol.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    import asyncpg

# Status ranks: only ever move up. ERROR outranks PENDING only (a send that failed), so a
# late ERROR never hides a delivery that did happen.
STATUS_RANK = {
    "PENDING": 10,
    "ERROR": 15,
    "SERVER_ACK": 20,
    "DELIVERY_ACK": 30,
    "READ": 40,
    "PLAYED": 50,
}
STATUS_NAME = {
    10: "pending",
    15: "error",
    20: "server_ack",
    30: "delivered",
    40: "read",
    50: "played",
}


@dataclass(slots=True)
class MessageOp:
    tenant_id: uuid.UUID
    instance_id: uuid.UUID
    message_id: str
    has_content: bool = False
    chat_jid: str | None = None
    chat_type: str | None = None
    sender_jid: str | None = None
    sender_phone: str | None = None
    from_me: bool | None = None
    push_name: str | None = None
    type: str | None = None
    text: str | None = None
    quoted_message_id: str | None = None
    message_ts: datetime | None = None
    status: int | None = None
    edited_text: str | None = None
    edit_ts: int | None = None
    deleted: bool = False
    reactions: dict[str, dict[str, Any]] | None = None
    # The other form of a user chat's number (BR 9th digit, MX 1, AR 9): the upsert files the
    # message under the form this instance already has a chat for (sense_ingest, migration 0008).
    chat_variant: str | None = None

    @property
    def key(self) -> tuple[uuid.UUID, uuid.UUID, str]:
        return (self.tenant_id, self.instance_id, self.message_id)

    def record(self) -> tuple[Any, ...]:
        return (
            self.tenant_id,
            self.instance_id,
            self.message_id,
            self.has_content,
            self.chat_jid,
            self.chat_type,
            self.sender_jid,
            self.sender_phone,
            self.from_me,
            self.push_name,
            self.type,
            self.text,
            self.quoted_message_id,
            self.message_ts,
            self.status,
            self.edited_text,
            self.edit_ts,
            self.deleted,
            msgspec.json.encode(self.reactions).decode() if self.reactions else "{}",
            self.chat_variant,
        )


MESSAGE_COLUMNS = [
    "tenant_id",
    "instance_id",
    "message_id",
    "has_content",
    "chat_jid",
    "chat_type",
    "sender_jid",
    "sender_phone",
    "from_me",
    "push_name",
    "type",
    "text",
    "quoted_message_id",
    "message_ts",
    "status",
    "edited_text",
    "edit_ts",
    "deleted",
    "reactions",
    "chat_variant",
]


def _newer_reactions(
    a: dict[str, dict[str, Any]] | None, b: dict[str, dict[str, Any]] | None
) -> dict[str, dict[str, Any]] | None:
    if not a:
        return b
    if not b:
        return a
    out = dict(a)
    for by, reaction in b.items():
        current = out.get(by)
        if current is None or (reaction.get("ts") or 0) > (current.get("ts") or 0):
            out[by] = reaction
    return out


def merge_message_ops(a: MessageOp, b: MessageOp) -> MessageOp:
    """The merge the upsert does in SQL, for two ops on one key within a batch (a came first)."""
    merged = replace(a if a.has_content or not b.has_content else b)
    if a.status is not None or b.status is not None:
        merged.status = max(s for s in (a.status, b.status) if s is not None)
    merged.edit_ts, merged.edited_text = a.edit_ts, a.edited_text
    if b.edit_ts is not None and (
        a.edit_ts is None
        or b.edit_ts > a.edit_ts
        or (b.edit_ts == a.edit_ts and a.edited_text is None)
    ):
        merged.edit_ts, merged.edited_text = b.edit_ts, b.edited_text
    merged.deleted = a.deleted or b.deleted
    merged.reactions = _newer_reactions(a.reactions, b.reactions)
    return merged


@dataclass(slots=True)
class Ops:
    """Everything one request (or one batch) writes."""

    messages: list[MessageOp] = field(default_factory=list)
    lid_pairs: list[tuple[uuid.UUID, str, str]] = field(default_factory=list)
    contacts: list[tuple[Any, ...]] = field(default_factory=list)
    chats: list[tuple[Any, ...]] = field(default_factory=list)
    groups: list[tuple[Any, ...]] = field(default_factory=list)
    instance_states: list[tuple[Any, ...]] = field(default_factory=list)
    qrcodes: list[tuple[Any, ...]] = field(default_factory=list)
    events: list[tuple[Any, ...]] = field(default_factory=list)
    quarantine: list[tuple[Any, ...]] = field(default_factory=list)
    # (tenant_id, instance_id, message_id, type, envelope JSON): for `evolution` endpoints
    envelopes: list[tuple[Any, ...]] = field(default_factory=list)

    def row_count(self) -> int:
        return (
            len(self.messages)
            + len(self.lid_pairs)
            + len(self.contacts)
            + len(self.chats)
            + len(self.groups)
            + len(self.instance_states)
            + len(self.qrcodes)
            + len(self.events)
            + len(self.quarantine)
        )

    def extend(self, other: Ops) -> None:
        self.messages.extend(other.messages)
        self.lid_pairs.extend(other.lid_pairs)
        self.contacts.extend(other.contacts)
        self.chats.extend(other.chats)
        self.groups.extend(other.groups)
        self.instance_states.extend(other.instance_states)
        self.qrcodes.extend(other.qrcodes)
        self.events.extend(other.events)
        self.quarantine.extend(other.quarantine)
        self.envelopes.extend(other.envelopes)


@dataclass(slots=True)
class Committed:
    """What one transaction changed, for the post-commit hooks (enrichment, live stream).
    ``messages``: the stored rows created or changed, as the commit left them (the columns of
    the live stream's frames), so that no hook reads them back."""

    created: list[tuple[uuid.UUID, uuid.UUID, str]] = field(default_factory=list)
    instances: list[tuple[uuid.UUID, uuid.UUID, str]] = field(default_factory=list)
    messages: list[asyncpg.Record] = field(default_factory=list)
    rows: int = 0

    def extend(self, other: Committed) -> None:
        self.created.extend(other.created)
        self.instances.extend(other.instances)
        self.messages.extend(other.messages)
        self.rows += other.rows


def message_key(op: MessageOp) -> tuple[uuid.UUID, uuid.UUID, str]:
    return op.key


def merge_messages(ops: list[MessageOp]) -> list[MessageOp]:
    merged: dict[tuple[uuid.UUID, uuid.UUID, str], MessageOp] = {}
    for op in ops:
        current = merged.get(op.key)
        merged[op.key] = op if current is None else merge_message_ops(current, op)
    return list(merged.values())
