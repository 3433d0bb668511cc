"""The resources the read API, the live stream and search answer with (design.md, "The message
resource"), and how a stored row becomes one. No I/O."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec

from service.rows import STATUS_NAME


class Reaction(msgspec.Struct):
    by: str
    emoji: str


class Analysis(msgspec.Struct):
    state: str  # pending | done | failed
    sentiment: float | None = None
    emotion: str | None = None
    satisfaction: int | None = None
    analyzable: bool = True
    error: str | None = None
    analyzer: str | None = None  # what produced it, e.g. "local/rules-2026.12+clf-1bba0e8d+use-m3"


class Message(msgspec.Struct):
    """The message resource of design.md."""

    instance: str
    message_id: str
    chat_jid: str | None
    chat_type: str | None
    sender_jid: str | None
    sender_phone: str | None
    from_me: bool
    push_name: str | None
    type: str
    text: str | None
    status: str | None
    edited: bool
    deleted: bool
    reactions: list[Reaction]
    quoted_message_id: str | None
    timestamp: str | None
    analysis: Analysis
    origin: str = "webhook"  # webhook | backfill (recovered from Evolution's REST API)


class MessagePage(msgspec.Struct):
    items: list[Message]
    next: str | None


class Chat(msgspec.Struct):
    instance: str
    chat_jid: str
    chat_type: str
    name: str | None
    unread: int | None
    last_message_at: str | None
    last_message: Message | None
    sentiment: float | None = None
    satisfaction: float | None = None
    analyzed_messages: int = 0


class QrCode(msgspec.Struct):
    code: str | None
    base64: str | None
    pairing_code: str | None
    updated_at: str | None


class BackfillOut(msgspec.Struct):
    """What the gap checks found for an instance (service/backfill.py)."""

    last_message_at: str | None  # the newest message stored for it
    last_sweep_at: str | None
    gaps_found: int  # backfill jobs that found messages missing here
    messages_recovered: int
    last_gap_at: str | None


class InstanceOut(msgspec.Struct):
    name: str
    state: str | None
    state_reason: int | None
    owner_jid: str | None
    profile_name: str | None
    state_updated_at: str | None
    qrcode: QrCode | None
    # in GET /api/v1/instances (not in instance.* frames)
    backfill: BackfillOut | msgspec.UnsetType = msgspec.UNSET


def iso(ts: datetime | None) -> str | None:
    if ts is None:
        return None
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _reactions(raw: Any) -> list[Reaction]:
    data = msgspec.json.decode(raw) if isinstance(raw, str | bytes) else (raw or {})
    items = sorted(data.items(), key=lambda kv: (kv[1].get("ts") or 0, kv[0]))
    return [Reaction(by, r["emoji"]) for by, r in items if r.get("emoji")]


def rounded_sentiment(value: float | None) -> float | None:
    """Four decimals: the column is a real (0.636 reads back as 0.6359999775886536), and the
    live frame and the resource must say the same."""
    return None if value is None else round(value, 4)


def message_from_row(r: Any, instance_name: str) -> Message:
    state = r["analysis_state"]
    analysis = Analysis(
        state="done" if state == "skipped" else state,
        sentiment=rounded_sentiment(r["sentiment"]),
        emotion=r["emotion"],
        satisfaction=r["satisfaction"],
        analyzable=state != "skipped",
        error=r["analysis_error"],
        analyzer=r.get("analyzer"),  # (the rows a commit returns do not carry it: not yet)
    )
    edited_text = r["edited_text"]
    return Message(
        instance=instance_name,
        message_id=r["message_id"],
        chat_jid=r["chat_jid"],
        chat_type=r["chat_type"],
        sender_jid=r["sender_jid"],
        sender_phone=r["sender_phone"],
        from_me=bool(r["from_me"]),
        push_name=r["push_name"],
        type=r["type"] or "other",
        text=edited_text if edited_text is not None else r["text"],
        status=STATUS_NAME.get(r["status"]) if r["status"] is not None else None,
        edited=r["edit_ts"] is not None,
        deleted=r["deleted"],
        reactions=_reactions(r["reactions"]),
        quoted_message_id=r["quoted_message_id"],
        timestamp=iso(r["message_ts"]),
        analysis=analysis,
        origin=r.get("origin") or "webhook",  # (the rows a commit returns: a webhook's)
    )


def instance_from_row(r: Any) -> InstanceOut:
    qr = None
    if r["qr_code"] or r["qr_base64"] or r["pairing_code"]:
        qr = QrCode(r["qr_code"], r["qr_base64"], r["pairing_code"], iso(r["qr_at"]))
    return InstanceOut(
        name=r["name"],
        state=r["state"],
        state_reason=r["state_reason"],
        owner_jid=r["owner_jid"],
        profile_name=r["profile_name"],
        state_updated_at=iso(r["state_at"]),
        qrcode=qr,
        backfill=BackfillOut(
            iso(r["last_message_ts"]),
            iso(r["last_sweep_at"]),
            r["gaps_found"] or 0,
            r["recovered"] or 0,
            iso(r["last_gap_at"]),
        )
        if "gaps_found" in r.keys()
        else msgspec.UNSET,
    )


class BackfillJob(msgspec.Struct):
    """A backfill job as the admin and read APIs show it (service/backfill.py)."""

    job_id: str
    instance: str
    source: str
    reason: str  # demand | reconnect | startup | sweep
    state: str  # queued | running | done | failed
    start: str = msgspec.field(name="from")
    end: str = msgspec.field(name="to")
    pages: int = 0
    found: int = 0  # records Evolution has for the window
    new: int = 0  # of them, missing here and now stored
    error: str | None = None
    created_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None


def job_from_row(r: Any) -> BackfillJob:
    return BackfillJob(
        job_id=str(r["job_id"]),
        instance=r["instance"],
        source=r["source"],
        reason=r["reason"],
        state=r["state"],
        start=iso(r["window_from"]) or "",
        end=iso(r["window_to"]) or "",
        pages=r["pages"],
        found=r["found"],
        new=r["new"],
        error=r["error"],
        created_at=iso(r["created_at"]),
        started_at=iso(r["started_at"]),
        finished_at=iso(r["finished_at"]),
    )


class ItemsOfJobs(msgspec.Struct):
    items: list[BackfillJob]


class JobCreated(msgspec.Struct):
    job_id: str
