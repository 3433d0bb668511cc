"""What a WhatsApp message says: unwrap, classify, extract the human text (webhook doc §5)."""

from __future__ import annotations

from service.payloads import ContextInfo, MessageContent, MessageData

_WRAPPERS = (
    "ephemeral_message",
    "view_once_message",
    "view_once_message_v2",
    "view_once_message_v2_extension",
    "document_with_caption_message",
    "edited_message",
)


def unwrap(message: MessageContent) -> MessageContent:
    """Peel ephemeral / view-once / document-with-caption / edited wrappers (at most 5 deep)."""
    for _ in range(5):
        for name in _WRAPPERS:
            wrapper = getattr(message, name)
            if wrapper is not None and wrapper.message is not None:
                message = wrapper.message
                break
        else:
            return message
    return message


def _clean(text: str | None) -> str | None:
    if text is None:
        return None
    text = text.replace("\x00", "")
    return text if text.strip() else None


def _transcript(text: str | None) -> str | None:
    """Evolution's OpenAI speech-to-text is ``"[audio] <transcript>"``: the marker is not what
    the person said."""
    text = _clean(text)
    if text is not None and text.startswith("[audio]"):
        text = _clean(text[len("[audio]") :].lstrip())
    return text


def describe(m: MessageContent, speech_to_text: str | None = None) -> tuple[str, str | None]:
    """(type, text) of an unwrapped message, following the extraction order of §5."""
    if m.conversation is not None:
        return "text", _clean(m.conversation)
    if m.extended_text_message is not None:
        return "text", _clean(m.extended_text_message.text)
    if m.image_message is not None:
        return "image", _clean(m.image_message.caption)
    if m.video_message is not None:
        return "video", _clean(m.video_message.caption)
    if m.ptv_message is not None:
        return "video", _clean(m.ptv_message.caption)
    if m.document_message is not None:
        return "document", _clean(m.document_message.caption)
    if m.audio_message is not None:
        return "audio", _transcript(speech_to_text or m.speech_to_text)
    if m.sticker_message is not None:
        return "sticker", None
    if m.buttons_response_message is not None:
        return "button_response", _clean(m.buttons_response_message.selected_display_text)
    if m.template_button_reply_message is not None:
        return "button_response", _clean(m.template_button_reply_message.selected_display_text)
    if m.list_response_message is not None:
        return "list_response", _clean(m.list_response_message.title)
    if m.interactive_response_message is not None:
        r = m.interactive_response_message
        text = r.body.text if r.body is not None else None
        if not text and r.native_flow_response_message is not None:
            text = r.native_flow_response_message.params_json
        return "button_response", _clean(text)
    poll = m.poll_creation_message_v3 or m.poll_creation_message_v2 or m.poll_creation_message
    if poll is not None:
        # the question, then one option per line (§5: name + options[].optionName)
        lines = [poll.name, *(o.option_name for o in poll.options or [])]
        return "poll", _clean("\n".join(line for line in lines if line and line.strip()))
    location = m.location_message or m.live_location_message
    if location is not None:
        return "location", (
            _clean(location.name) or _clean(location.address) or _clean(location.caption)
        )
    if m.contact_message is not None:
        return "contact", _clean(m.contact_message.display_name)
    if m.contacts_array_message is not None:
        arr = m.contacts_array_message
        name = arr.display_name
        if not name and arr.contacts:
            name = arr.contacts[0].display_name
        return "contact", _clean(name)
    if m.reaction_message is not None:
        return "reaction", _clean(m.reaction_message.text)
    return "other", _transcript(speech_to_text or m.speech_to_text)


def _context_of(m: MessageContent) -> ContextInfo | None:
    for part in (
        m.extended_text_message,
        m.image_message,
        m.video_message,
        m.ptv_message,
        m.document_message,
        m.audio_message,
        m.sticker_message,
        m.buttons_response_message,
        m.template_button_reply_message,
        m.list_response_message,
        m.interactive_response_message,
        m.location_message,
        m.live_location_message,
        m.contact_message,
        m.contacts_array_message,
        m.poll_creation_message_v3,
        m.poll_creation_message_v2,
        m.poll_creation_message,
    ):
        if part is not None and part.context_info is not None:
            return part.context_info
    return None


def quoted_message_id(data: MessageData, m: MessageContent | None) -> str | None:
    """The id of the message this one replies to (``contextInfo.stanzaId``), if any."""
    ctx = data.context_info
    if (ctx is None or not ctx.stanza_id) and m is not None:
        ctx = _context_of(m)
    if ctx is None or not ctx.stanza_id:
        return None
    return ctx.stanza_id
