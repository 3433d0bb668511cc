"""Realistic mixed Evolution global-webhook traffic, generated up front as a pool of templates.

Every load generator of the bench (wrk + bench/traffic.lua at maximum rate, bench/loadgen at
a fixed rate, the Python burst of the CI smoke test) sends the same pool, cycling through it.
A template is one line::

    kind <TAB> instance index <TAB> event <TAB> body

``kind`` is ``m`` (a message: messages.upsert / send.message), ``u`` (a receipt), ``c``
(contacts) or ``p`` (presence). In ``body``, ``@R<n>@`` stands for the message id of the request
sent ``n`` requests earlier (``@R0@``: the request's own; receipts and quotes refer back to real
messages); the generator fills them in per request from a per-thread counter, so every
request carries a message id that was never sent before, however long the run. The mix and the
shapes follow Evolution 2.3.7 (see shared/evolution-webhooks.md): mostly ``messages.upsert``
with phone / @lid / group addressing, text, replies, images with their inline thumbnail and
voice notes; ``messages.update`` receipts; ``send.message``; ``contacts.upsert``;
``presence.update``.
"""

from __future__ import annotations

import base64
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from service.simulate import MIX  # the same event mix as `sense simulate`

KIND = {
    "messages.upsert": "m",
    "send.message": "m",
    "messages.update": "u",
    "contacts.upsert": "c",
    "presence.update": "p",
}
PHRASES = (
    "Olá, gostaria de saber sobre o meu pedido",
    "Adorei o atendimento, muito obrigado!",
    "O produto chegou quebrado, estou muito chateado",
    "Qual o horário de funcionamento?",
    "Não recebi o boleto ainda, podem reenviar?",
    "Perfeito, pode confirmar a entrega para amanhã",
    "Isso é um absurdo, ninguém me responde há três dias",
    "Bom dia! Tudo bem?",
    "Vocês entregam em Campinas?",
    "Segue o comprovante do pagamento",
    "Quero cancelar a minha assinatura",
    "Excelente, resolveu o meu problema. Nota 10!",
    "Pode me passar o código de rastreio?",
    "O aplicativo não abre desde a atualização",
    "Obrigada pela atenção 😊",
    "Tem desconto para pagamento à vista?",
)
NAMES = ("Ana", "João Silva", "Maria Oliveira", "Carlos", "Bia 🌸", "Pedro Henrique", None)
ID_PREFIX = "3EB0"
_MARK = re.compile(r"@M(\d+)@")
_SLOT = re.compile(r"@R(\d+)@")


@dataclass(frozen=True, slots=True)
class Instance:
    secret: str
    name: str
    uuid: str
    owner: str  # the instance's own number (envelope `sender`)


@dataclass(frozen=True, slots=True)
class Template:
    kind: str
    instance: int  # index into the deployment's instances
    event: str
    body: str

    def line(self) -> str:
        return f"{self.kind}\t{self.instance}\t{self.event}\t{self.body}"


def message_id(tag: str, thread: int, counter: int) -> str:
    """The id of request ``counter`` of generator thread ``thread`` in the run tagged ``tag``:
    20 upper-case hex characters, like the ids WhatsApp Web gives (3EB0...)."""
    return f"{ID_PREFIX}{tag}{thread:X}{counter:011X}"


def expand(body: str, tag: str, thread: int, counter: int) -> str:
    """The body of request ``counter`` (0-based) from its template."""

    def fill(match: re.Match[str]) -> str:
        return message_id(tag, thread, counter - int(match.group(1)))

    return _SLOT.sub(fill, body)


def _suffix(event: str) -> str:
    return event.replace(".", "-")


class Pool:
    """Builds ``size`` templates for ``instances`` (deterministic for a seed)."""

    def __init__(
        self, instances: list[Instance], seed: int = 7, contacts: int = 300, groups: int = 10
    ) -> None:
        self.instances = instances
        self.rng = random.Random(seed)
        # Each instance talks to its own customers again and again (a phone and its @lid),
        # a few of them in groups: chats and the @lid map grow like a real deployment's.
        self.people = [
            [(f"{self._phone()}@s.whatsapp.net", self._lid()) for _ in range(contacts)]
            for _ in instances
        ]
        self.groups = [
            [f"1203630{self.rng.randrange(10**11):011d}@g.us" for _ in range(groups)]
            for _ in instances
        ]
        self.sent: list[tuple[int, int, str]] = []  # (line, instance index, remote jid)
        thumb = bytes(self.rng.getrandbits(8) for _ in range(2100))
        self.thumbnail = "/9j/4AAQSkZJRgABAQAAAQABAAD" + base64.b64encode(thumb).decode()

    def _phone(self) -> str:
        return f"5511{self.rng.randrange(6, 10)}{self.rng.randrange(10**8):08d}"

    def _lid(self) -> str:
        return f"{self.rng.randrange(100_000, 300_000)}{self.rng.randrange(10**9):09d}@lid"

    def _envelope(self, event: str, inst: Instance, data: Any, line: int) -> dict[str, Any]:
        return {
            "event": event,
            "instance": inst.name,
            "data": data,
            "destination": f"https://hooks.example.com/evolution/{_suffix(event)}",
            "date_time": f"2026-06-15T10:{line // 60 % 60:02d}:{line % 60:02d}."
            f"{self.rng.randrange(1000):03d}Z",
            "sender": inst.owner,
            "server_url": "https://evo.example.com",
            "apikey": None,
        }

    def _message(self, line: int, ii: int, from_me: bool) -> dict[str, Any]:
        inst = self.instances[ii]
        rng = self.rng
        mid = f"@M{line}@"
        pn, lid = rng.choice(self.people[ii])
        roll = rng.random()
        if roll < 0.50:  # phone addressing, the @lid as alt
            remote = pn
            key = {"remoteJid": pn, "remoteJidAlt": lid, "fromMe": from_me, "id": mid}
            key |= {"participant": "", "addressingMode": "pn"}
        elif roll < 0.80:  # @lid addressing, the phone as alt
            remote = lid
            key = {"remoteJid": remote, "remoteJidAlt": pn, "fromMe": from_me, "id": mid}
            key |= {"participant": "", "addressingMode": "lid"}
        elif roll < 0.92:  # an older sender: no alt
            remote = pn
            key = {"remoteJid": pn, "fromMe": from_me, "id": mid}
        else:  # a group
            remote = rng.choice(self.groups[ii])
            key = {"remoteJid": remote, "fromMe": from_me, "id": mid, "participant": lid}
            key |= {"participantAlt": pn, "addressingMode": "lid"}
        text = rng.choice(PHRASES)
        ts = 1781500000 + line
        data: dict[str, Any] = {
            "key": key,
            "pushName": "Você" if from_me else rng.choice(NAMES),
            "status": "PENDING" if from_me else "DELIVERY_ACK",
        }
        kind = rng.random()
        if kind < 0.72:
            data["message"] = {
                "conversation": text,
                "messageContextInfo": {
                    "deviceListMetadata": {
                        "senderKeyHash": "k0Vx1rJ1bA==",
                        "senderTimestamp": str(ts - 86400),
                    },
                    "deviceListMetadataVersion": 2,
                },
            }
            data["messageType"] = "conversation"
        elif kind < 0.84 and self.sent:
            quoted_line, _, quoted_remote = rng.choice(self.sent[-200:])
            data["message"] = {"conversation": text, "messageContextInfo": {}}
            data["contextInfo"] = {
                "stanzaId": f"@M{quoted_line}@",
                "participant": quoted_remote,
                "quotedMessage": {"conversation": rng.choice(PHRASES)},
            }
            data["messageType"] = "conversation"
        elif kind < 0.94:
            path = f"/o1/v/t62.7118-24/f1/m231/{mid}.enc"
            data["message"] = {
                "imageMessage": {
                    "url": "https://mmg.whatsapp.net" + path,
                    "mimetype": "image/jpeg",
                    "caption": text,
                    "fileSha256": "n3S7kY5cJ8pNQ2x6m1L0aQw4Vb9rT2zH8uE5yK3dF1c=",
                    "fileLength": {
                        "low": rng.randrange(40_000, 400_000),
                        "high": 0,
                        "unsigned": True,
                    },
                    "height": 1280,
                    "width": 960,
                    "mediaKey": "qZ8m4Xr2vLp0N6s1T9c3B7e5H2k4J8w0Y6u1O3i5P7a=",
                    "fileEncSha256": "c1F3dK5yE8uH2zT9rV4wQa0L1m6xQ2Np8Jc5Yk7S3n=",
                    "directPath": path,
                    "mediaKeyTimestamp": {"low": ts, "high": 0, "unsigned": False},
                    "jpegThumbnail": self.thumbnail,
                },
                "messageContextInfo": {},
            }
            data["messageType"] = "imageMessage"
        else:
            path = f"/v/t62.7117-24/{mid}.enc"
            data["message"] = {
                "audioMessage": {
                    "url": "https://mmg.whatsapp.net" + path,
                    "mimetype": "audio/ogg; codecs=opus",
                    "fileLength": {"low": rng.randrange(4000, 90_000), "high": 0, "unsigned": True},
                    "seconds": rng.randrange(1, 60),
                    "ptt": True,
                    "mediaKey": "xQ1w2E3r4T5y6U7i8O9p0A1s2D3f4G5h6J7k8L9z0X=",
                    "directPath": path,
                },
                "messageContextInfo": {},
            }
            data["messageType"] = "audioMessage"
        data["messageTimestamp"] = ts
        data["instanceId"] = inst.uuid
        data["source"] = rng.choice(("android", "ios", "web", "desktop"))
        self.sent.append((line, ii, remote))
        return data

    def _receipt(self, line: int) -> tuple[int, dict[str, Any]]:
        target, ii, remote = self.rng.choice(self.sent[-200:])
        return ii, {
            "keyId": f"@M{target}@",
            "remoteJid": remote,
            "fromMe": True,
            "participant": None,
            "status": self.rng.choice(("SERVER_ACK", "DELIVERY_ACK", "READ", "READ")),
            "instanceId": self.instances[ii].uuid,
            "messageId": f"cm{self.rng.getrandbits(64):016x}",
        }

    def template(self, line: int) -> Template:
        roll = self.rng.random()
        event = MIX[-1][0]
        acc = 0.0
        for name, weight in MIX:
            acc += weight
            if roll < acc:
                event = name
                break
        if event == "messages.update" and not self.sent:
            event = "messages.upsert"
        ii = self.rng.randrange(len(self.instances))
        data: Any
        if event == "messages.upsert":
            data = self._message(line, ii, from_me=False)
        elif event == "send.message":
            data = self._message(line, ii, from_me=True)
        elif event == "messages.update":
            ii, data = self._receipt(line)
        elif event == "contacts.upsert":
            data = {
                "remoteJid": self.rng.choice(self.people[ii])[0],
                "pushName": self.rng.choice(NAMES),
                "profilePicUrl": None,
                "instanceId": self.instances[ii].uuid,
            }
        else:
            jid = self.rng.choice(self.people[ii])[0]
            data = {"id": jid, "presences": {jid: {"lastKnownPresence": "composing"}}}
        body = msgspec.json.encode(self._envelope(event, self.instances[ii], data, line)).decode()

        def relative(match: re.Match[str]) -> str:
            return f"@R{line - int(match.group(1))}@"

        return Template(KIND[event], ii, event, _MARK.sub(relative, body))

    def build(self, size: int) -> list[Template]:
        return [self.template(line) for line in range(size)]


def write_deployment(path: Path, instances: list[Instance]) -> None:
    path.write_text("".join(f"{i.secret}\t{i.name}\t{i.uuid}\n" for i in instances))


def write_pool(path: Path, templates: list[Template]) -> None:
    path.write_text("".join(t.line() + "\n" for t in templates))


def read_pool(path: Path) -> list[Template]:
    out = []
    for line in path.read_text().splitlines():
        kind, ii, event, body = line.split("\t", 3)
        out.append(Template(kind, int(ii), event, body))
    return out
