"""Unwrapping and text extraction (webhook doc §5)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from service import payloads as p
from service.content import describe, quoted_message_id, unwrap


def content(message: dict[str, Any]) -> p.MessageContent:
    return msgspec.convert(message, p.MessageContent)


@pytest.mark.parametrize(
    ("message", "kind", "text"),
    [
        ({"conversation": "Oi"}, "text", "Oi"),
        ({"extendedTextMessage": {"text": "link https://x"}}, "text", "link https://x"),
        ({"imageMessage": {"caption": "foto"}}, "image", "foto"),
        ({"imageMessage": {}}, "image", None),
        ({"videoMessage": {"caption": "v"}}, "video", "v"),
        ({"ptvMessage": {}}, "video", None),
        ({"audioMessage": {"ptt": True}}, "audio", None),
        ({"audioMessage": {"ptt": True}, "speechToText": "transcrito"}, "audio", "transcrito"),
        # Evolution prefixes its OpenAI transcript with a marker
        ({"audioMessage": {"ptt": True}, "speechToText": "[audio] oi tudo"}, "audio", "oi tudo"),
        ({"audioMessage": {"ptt": True}, "speechToText": "[audio] "}, "audio", None),
        ({"documentMessage": {"caption": "nota"}}, "document", "nota"),
        ({"stickerMessage": {}}, "sticker", None),
        ({"buttonsResponseMessage": {"selectedDisplayText": "Sim"}}, "button_response", "Sim"),
        ({"templateButtonReplyMessage": {"selectedDisplayText": "Ok"}}, "button_response", "Ok"),
        ({"listResponseMessage": {"title": "Plano B"}}, "list_response", "Plano B"),
        ({"interactiveResponseMessage": {"body": {"text": "Quero"}}}, "button_response", "Quero"),
        (
            {"interactiveResponseMessage": {"nativeFlowResponseMessage": {"paramsJson": "{}"}}},
            "button_response",
            "{}",
        ),
        ({"pollCreationMessageV3": {"name": "Sabor?", "options": []}}, "poll", "Sabor?"),
        # §5: name + options[].optionName, one per line, all three generations
        (
            {"pollCreationMessage": {"name": "Dia?", "options": [{"optionName": "Sáb"}, {}]}},
            "poll",
            "Dia?\nSáb",
        ),
        (
            {"pollCreationMessageV2": {"name": "", "options": [{"optionName": "Uva"}]}},
            "poll",
            "Uva",
        ),
        ({"locationMessage": {"degreesLatitude": -23.5, "name": "Loja"}}, "location", "Loja"),
        ({"liveLocationMessage": {"degreesLatitude": 1.0}}, "location", None),
        ({"liveLocationMessage": {"caption": "chegando"}}, "location", "chegando"),
        ({"locationMessage": {"address": "Rua A", "name": " "}}, "location", "Rua A"),
        ({"contactMessage": {"displayName": "Ana"}}, "contact", "Ana"),
        ({"contactsArrayMessage": {"contacts": [{"displayName": "Bia"}]}}, "contact", "Bia"),
        ({"reactionMessage": {"text": "❤"}}, "reaction", "❤"),
        ({"somethingNewMessage": {"x": 1}}, "other", None),
        ({"conversation": "nul\x00byte"}, "text", "nulbyte"),
        ({"conversation": "   "}, "text", None),
    ],
)
def test_describe(message: dict[str, Any], kind: str, text: str | None) -> None:
    m = content(message)
    assert describe(unwrap(m), m.speech_to_text) == (kind, text)


def test_wrappers_are_unwrapped() -> None:
    nested = {
        "ephemeralMessage": {
            "message": {
                "viewOnceMessageV2": {
                    "message": {
                        "documentWithCaptionMessage": {
                            "message": {"documentMessage": {"caption": "contrato"}}
                        }
                    }
                }
            }
        }
    }
    assert describe(unwrap(content(nested))) == ("document", "contrato")


def test_unwrap_stops_after_five_levels() -> None:
    m: dict[str, Any] = {"conversation": "fundo"}
    for _ in range(7):
        m = {"ephemeralMessage": {"message": m}}
    # a pathological nesting does not loop forever; it just stops peeling
    assert describe(unwrap(content(m)))[0] == "other"


def test_quoted_message_id_from_data_or_inner_context() -> None:
    data = msgspec.convert(
        {"contextInfo": {"stanzaId": "Q1"}, "message": {"conversation": "x"}}, p.MessageData
    )
    assert quoted_message_id(data, data.message) == "Q1"
    inner = msgspec.convert(
        {"message": {"extendedTextMessage": {"text": "x", "contextInfo": {"stanzaId": "Q2"}}}},
        p.MessageData,
    )
    assert quoted_message_id(inner, inner.message) == "Q2"


@pytest.mark.parametrize(
    "message",
    [
        {"contactMessage": {"displayName": "Ana", "contextInfo": {"stanzaId": "Q3"}}},
        {"contactsArrayMessage": {"contacts": [], "contextInfo": {"stanzaId": "Q3"}}},
        {"liveLocationMessage": {"contextInfo": {"stanzaId": "Q3"}}},
        {"pollCreationMessage": {"name": "x", "contextInfo": {"stanzaId": "Q3"}}},
        {"pollCreationMessageV2": {"name": "x", "contextInfo": {"stanzaId": "Q3"}}},
    ],
)
def test_quoted_message_id_of_every_kind_that_can_reply(message: dict[str, Any]) -> None:
    data = msgspec.convert({"message": message}, p.MessageData)
    assert data.message is not None
    assert quoted_message_id(data, unwrap(data.message)) == "Q3"
