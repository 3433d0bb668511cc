"""Outbound deliveries (fan-out): which endpoint URLs are allowed, how a delivery is signed
(Standard Webhooks), what its body is, and when a failed one is tried again. Shared by the
tenant API (service/endpoints.py) and the workers' dispatcher (workers/fanout.py); no I/O but
DNS."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import random
import secrets
import socket
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import msgspec
from standardwebhooks.webhooks import Webhook

from service.resources import InstanceOut, Message

# What a tenant can subscribe to, in `sense` mode; in `evolution` mode the envelope of each
# message webhook as received, named by the event it stands for here.
EVENT_TYPES = (
    "message.created",
    "message.updated",
    "message.analyzed",
    "instance.state",
    "instance.qrcode",
)
MESSAGE_TYPES = frozenset(t for t in EVENT_TYPES if t.startswith("message."))
ENVELOPE_TYPES = {
    "messages.upsert": "message.created",
    "send.message": "message.created",
    "messages.update": "message.updated",
    "messages.delete": "message.updated",
    "messages.edited": "message.updated",
    "send.message.update": "message.updated",
}
MODES = ("sense", "evolution")

# Seconds before each retry of a failed delivery (then the last one, again and again), each
# moved by up to a fifth either way: most receiver outages are a restart.
RETRY_SCHEDULE = (5, 30, 120, 600, 3_600, 3 * 3_600, 6 * 3_600, 12 * 3_600)
MAX_URL_CHARS = 2_000
RESPONSE_SNIPPET = 512  # bytes of an answer kept with the attempt


class UrlRefused(ValueError):
    """An endpoint URL that may not be called; the message says why."""


class Filters(msgspec.Struct, omit_defaults=True, forbid_unknown_fields=True):
    """Which message events an endpoint wants: ``from_me`` true/false (null: both), ``groups``
    false to leave group chats out, ``instances``: only these instance names."""

    from_me: bool | None = None
    groups: bool | None = None
    instances: list[str] | None = None


class Delivery(msgspec.Struct):
    """The body of a `sense` delivery."""

    type: str
    timestamp: str
    data: Message | InstanceOut


def check_url(url: str) -> tuple[str, int]:
    """The host and port of an http(s) URL; ``UrlRefused`` otherwise."""
    if len(url) > MAX_URL_CHARS:
        raise UrlRefused(f"URL longer than {MAX_URL_CHARS} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UrlRefused(f"not a URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UrlRefused("only http:// and https:// URLs with a host")
    if parts.username or parts.password:
        raise UrlRefused("no credentials in the URL (sign with the endpoint's secret instead)")
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


def refusal(address: str) -> str | None:
    """Why an address may not be called (loopback, link-local, private...), or None."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address):  # an IPv4 address inside (mapped, 6to4, Teredo)
        inner = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if inner is not None:
            ip = inner
    for test, name in (
        (ip.is_loopback, "loopback"),
        (ip.is_unspecified, "unspecified"),
        (ip.is_link_local, "link-local"),
        (ip.is_private, "private"),
        (ip.is_multicast, "multicast"),
        (ip.is_reserved, "reserved"),
        (not ip.is_global, "non-public"),  # e.g. 100.64.0.0/10 (CGNAT, a cloud's metadata)
    ):
        if test:
            return name
    return None


async def resolve(url: str, allow_private: bool) -> list[str]:
    """The addresses ``url``'s host resolves to, every one of them allowed: checked when the
    endpoint is saved and again before each delivery (a name may be re-pointed later)."""
    host, port = check_url(url)
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise UrlRefused(f"{host} does not resolve ({exc.strerror or exc})") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not allow_private:
        for address in addresses:
            why = refusal(address)
            if why is not None:
                raise UrlRefused(
                    f"{host} resolves to a {why} address ({address}); set"
                    " SENSE_FANOUT_ALLOW_PRIVATE=true to allow it"
                )
    return addresses


def pinned(url: str, address: str) -> tuple[str, dict[str, str], dict[str, Any]]:
    """``url`` sent to ``address`` (the one checked): the URL, the Host header and the TLS
    server name, so that the name cannot be resolved again to something else."""
    parts = urlsplit(url)
    host = (parts.hostname or "").encode("idna").decode("ascii")  # an IDN as the wire has it
    literal = f"[{address}]" if ":" in address else address
    netloc = literal if parts.port is None else f"{literal}:{parts.port}"
    target = parts._replace(netloc=netloc).geturl()
    header = host if parts.port is None else f"{host}:{parts.port}"
    extensions = {"sni_hostname": host} if parts.scheme == "https" else {}
    return target, {"host": header}, extensions


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def webhook_id(xid: int, seq: int) -> str:
    """One event's id, the same on every retry and replay (receivers deduplicate on it)."""
    return f"msg_{xid}_{seq}"


def signature(keys: list[str], msg_id: str, at: datetime, body: bytes) -> str:
    """``webhook-signature``: one ``v1,<base64>`` per secret (two while a rotated one is still
    honoured), space-separated, as Standard Webhooks has it."""
    return " ".join(Webhook(key).sign(msg_id, at, body) for key in keys)


def retry_delay(attempts: int, retry_after: float | None = None) -> float:
    """Seconds before try number ``attempts + 1``: the schedule with jitter, or the receiver's
    Retry-After when it asks for longer (at most the schedule's longest gap)."""
    gap = float(RETRY_SCHEDULE[min(attempts, len(RETRY_SCHEDULE)) - 1] if attempts else 0)
    gap *= random.uniform(0.8, 1.2)
    if retry_after is not None:
        gap = max(gap, min(retry_after, RETRY_SCHEDULE[-1]))
    return gap


def retry_after(value: str | None) -> float | None:
    """A Retry-After header in seconds (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(when.tzinfo)).total_seconds())


def wanted(filters: Filters, instance: str, from_me: bool | None, chat_type: str | None) -> bool:
    """Whether a message event passes an endpoint's filters."""
    if filters.instances is not None and instance not in filters.instances:
        return False
    if filters.from_me is not None and from_me is not None and from_me != filters.from_me:
        return False
    return not (filters.groups is False and chat_type == "group")
