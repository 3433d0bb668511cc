"""The delivery rules of service/outbound.py: retry gaps, Retry-After, addresses, signatures."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

from standardwebhooks.webhooks import Webhook

from service import outbound


def test_retries_start_within_seconds_and_grow_with_jitter() -> None:
    first = [outbound.retry_delay(1) for _ in range(200)]
    assert 4.0 <= min(first) and max(first) <= 6.0 and len(set(first)) > 1
    gaps = [outbound.RETRY_SCHEDULE[n] for n in range(len(outbound.RETRY_SCHEDULE))]
    assert gaps == sorted(gaps) and sum(gaps) >= 86_400 * 0.8  # about a day in all
    assert outbound.retry_delay(50) <= outbound.RETRY_SCHEDULE[-1] * 1.2


def test_retry_after_is_honoured_in_seconds_or_as_a_date() -> None:
    assert outbound.retry_after("120") == 120
    later = datetime.now(UTC) + timedelta(minutes=10)
    assert 590 <= (outbound.retry_after(format_datetime(later, usegmt=True)) or 0) <= 600
    assert outbound.retry_after("soon") is None and outbound.retry_after(None) is None
    assert outbound.retry_delay(1, 120) >= 120  # asks for longer than the schedule: granted
    assert outbound.retry_delay(1, 10 * 86_400) <= outbound.RETRY_SCHEDULE[-1]  # within reason


def test_forbidden_addresses() -> None:
    for address, why in (
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("::ffff:10.1.2.3", "private"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("192.168.0.10", "private"),
        ("fd00::1", "private"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("100.100.100.200", "non-public"),  # CGNAT range: a cloud's metadata service
        ("2002:a9fe:a9fe::1", "link-local"),  # 6to4 around 169.254.169.254
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "private"),  # Teredo: checked as its IPv4
    ):
        assert outbound.refusal(address) == why, address
    assert outbound.refusal("8.8.8.8") is None and outbound.refusal("2606:4700::1111") is None


def test_a_delivery_is_pinned_to_the_checked_address() -> None:
    url, host, ext = outbound.pinned("https://hooks.example.com:8443/in?x=1", "203.0.113.9")
    assert url == "https://203.0.113.9:8443/in?x=1"
    assert host == {"host": "hooks.example.com:8443"}
    assert ext == {"sni_hostname": "hooks.example.com"}
    url, host, ext = outbound.pinned("http://hooks.example.com/in", "2001:db8::7")
    assert (url, host, ext) == ("http://[2001:db8::7]/in", {"host": "hooks.example.com"}, {})


def test_both_secrets_sign_while_the_old_one_is_honoured() -> None:
    old, new = outbound.new_secret(), outbound.new_secret()
    at = datetime.now(UTC)
    header = outbound.signature([new, old], "msg_1_2", at, b'{"a":1}')
    headers = {
        "webhook-id": "msg_1_2",
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": header,
    }
    assert len(header.split(" ")) == 2
    for secret in (old, new):  # a receiver still on the old secret, or already on the new
        assert Webhook(secret).verify(b'{"a":1}', headers) == {"a": 1}
