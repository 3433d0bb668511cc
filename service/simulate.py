"""Realistic synthetic Evolution traffic: what `sense simulate` posts and the load bench uses.

The mix follows a busy deployment: mostly ``messages.upsert``, then ``messages.update``
receipts, ``send.message``, ``contacts.upsert`` and ``presence.update``, with the value
encodings of recent Evolution versions and unique message ids.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from typing import Any

import msgspec

MIX = (
    ("messages.upsert", 0.60),
    ("messages.update", 0.20),
    ("send.message", 0.08),
    ("contacts.upsert", 0.06),
    ("presence.update", 0.06),
)

PHRASES = (
    "Olá, gostaria de saber sobre o meu pedido",
    "Adorei o atendimento, muito obrigado!",
    "O produto chegou quebrado, estou muito chateado",
    "Qual o horário de funcionamento?",
    "Não recebi o boleto ainda",
    "Perfeito, pode confirmar",
    "Isso é um absurdo, ninguém me responde",
    "Bom dia! Tudo bem?",
)


class TrafficGenerator:
    """Deterministic for a seed; remembers sent ids so receipts refer to real messages."""

    def __init__(self, instances: list[str], seed: int = 7, run_id: str | None = None) -> None:
        self.instances = instances
        self.rng = random.Random(seed)
        self.run = run_id or uuid.uuid4().hex[:8].upper()
        self.counter = 0
        self.sent: list[tuple[str, str, str]] = []  # (instance, message id, remote jid)

    def _phone(self) -> str:
        return f"55119{self.rng.randrange(10_000_000, 99_999_999)}"

    def _message_id(self) -> str:
        self.counter += 1
        return f"3EB0{self.run}{self.counter:012X}"

    def event(self) -> tuple[str, dict[str, Any]]:
        """(event name, envelope) of the next event."""
        roll = self.rng.random()
        acc = 0.0
        name = MIX[-1][0]
        for candidate, weight in MIX:
            acc += weight
            if roll < acc:
                name = candidate
                break
        instance = self.rng.choice(self.instances)
        builder = getattr(self, "_" + name.replace(".", "_"))
        data = builder(instance)
        if data is None:  # a receipt before any message: send a message instead
            name, data = "messages.upsert", self._messages_upsert(instance)
        envelope = {
            "event": name,
            "instance": instance,
            "data": data,
            "destination": "http://localhost/webhook",
            "date_time": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
            "sender": "5511900000001@s.whatsapp.net",
            "server_url": "http://evolution.local:8080",
            "apikey": None,
        }
        return name, envelope

    def _message(self, instance: str, from_me: bool, status: str) -> dict[str, Any]:
        phone = self._phone()
        message_id = self._message_id()
        self.sent.append((instance, message_id, f"{phone}@s.whatsapp.net"))
        return {
            "key": {
                "remoteJid": f"{phone}@s.whatsapp.net",
                "remoteJidAlt": f"{self.rng.randrange(10**14, 10**15)}@lid",
                "fromMe": from_me,
                "id": message_id,
                "participant": "",
                "addressingMode": "lid",
            },
            "pushName": "Você"
            if from_me
            else self.rng.choice(["Ana", "João Silva", "Maria", None]),
            "status": status,
            "message": {"conversation": self.rng.choice(PHRASES), "messageContextInfo": {}},
            "messageType": "conversation",
            "messageTimestamp": int(time.time()),
            "instanceId": str(uuid.UUID(int=self.rng.getrandbits(128))),
            "source": "android",
        }

    def _messages_upsert(self, instance: str) -> dict[str, Any]:
        return self._message(instance, False, "DELIVERY_ACK")

    def _send_message(self, instance: str) -> dict[str, Any]:
        return self._message(instance, True, "PENDING")

    def _messages_update(self, instance: str) -> dict[str, Any] | None:
        candidates = [s for s in self.sent[-200:] if s[0] == instance]
        if not candidates:
            return None
        _, message_id, jid = self.rng.choice(candidates)
        return {
            "keyId": message_id,
            "remoteJid": jid,
            "fromMe": True,
            "participant": jid,
            "status": self.rng.choice(["SERVER_ACK", "DELIVERY_ACK", "READ"]),
            "instanceId": "00000000-0000-0000-0000-000000000000",
        }

    def _contacts_upsert(self, instance: str) -> list[dict[str, Any]]:
        return [
            {
                "remoteJid": f"{self._phone()}@s.whatsapp.net",
                "pushName": self.rng.choice(["Ana", "Carlos", "Bia"]),
                "profilePicUrl": None,
                "instanceId": "00000000-0000-0000-0000-000000000000",
            }
        ]

    def _presence_update(self, instance: str) -> dict[str, Any]:
        jid = f"{self._phone()}@s.whatsapp.net"
        return {"id": jid, "presences": {jid: {"lastKnownPresence": "composing"}}}


async def simulate(
    base_url: str, secret: str, instances: list[str], rate: float, duration: float
) -> dict[str, Any]:
    """Post at ``rate`` requests/s for ``duration`` s (open loop); report status counts."""
    import httpx

    gen = TrafficGenerator(instances)
    url = f"{base_url.rstrip('/')}/api/webhooks/evolution/{secret}"
    statuses: dict[str, int] = {}
    latencies: list[float] = []
    errors = 0
    total = int(rate * duration)
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:

        async def one(name: str, body: bytes, due: float) -> None:
            nonlocal errors
            suffix = "/" + name.replace(".", "-")
            try:
                response = await client.post(
                    url + suffix, content=body, headers={"Content-Type": "application/json"}
                )
                key = str(response.status_code)
            except httpx.HTTPError as exc:
                key = exc.__class__.__name__
            latencies.append(time.perf_counter() - due)
            statuses[key] = statuses.get(key, 0) + 1
            if not key.startswith("2"):
                errors += 1

        start = time.perf_counter()
        tasks = []
        for i in range(total):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            name, envelope = gen.event()
            tasks.append(asyncio.create_task(one(name, msgspec.json.encode(envelope), due)))
        await asyncio.gather(*tasks)
    latencies.sort()

    def pct(q: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000, 2)

    return {
        "sent": total,
        "statuses": statuses,
        "errors": errors,
        "p50_ms": pct(0.50) if latencies else None,
        "p99_ms": pct(0.99) if latencies else None,
    }
