"""Typed surface of the Rust extension (native/src), checked against the built module by
``make lint`` (mypy.stubtest). Same functions, same results, in tests/jid_reference.py (pure
Python, for differential tests)."""

__all__ = [
    "jid_kind",
    "normalize_jid",
    "normalize_jids",
    "phone_digits",
    "phone_key",
    "phone_variant",
    "resolve_addresses",
]

def normalize_jid(jid: str | None) -> str | None: ...
def normalize_jids(jids: list[str | None]) -> list[str | None]: ...
def jid_kind(jid: str | None) -> str: ...
def phone_digits(jid: str | None) -> str | None: ...
def phone_key(digits: str) -> str: ...
def phone_variant(jid: str | None) -> str | None: ...
def resolve_addresses(
    remote_jid: str | None,
    remote_jid_alt: str | None = None,
    sender_pn: str | None = None,
    sender_lid: str | None = None,
    previous_remote_jid: str | None = None,
    participant: str | None = None,
    participant_alt: str | None = None,
    participant_pn: str | None = None,
    participant_lid: str | None = None,
    from_me: bool = False,
    owner_jid: str | None = None,
) -> tuple[str | None, str, str | None, str | None, list[tuple[str, str]]]: ...
