"""JIDs (webhook doc §7): the Rust crate and its pure-Python reference, on the same inputs."""

from __future__ import annotations

from types import ModuleType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from service import _native
from tests import jid_reference

IMPLEMENTATIONS = [pytest.param(_native, id="rust"), pytest.param(jid_reference, id="python")]


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize(
    ("raw", "canonical", "kind", "phone"),
    [
        ("5511999999999@s.whatsapp.net", "5511999999999@s.whatsapp.net", "user", "5511999999999"),
        (
            "5511999999999:12@s.whatsapp.net",
            "5511999999999@s.whatsapp.net",
            "user",
            "5511999999999",
        ),
        (
            "5511999999999.0:3@s.whatsapp.net",
            "5511999999999@s.whatsapp.net",
            "user",
            "5511999999999",
        ),
        ("5511999999999@c.us", "5511999999999@s.whatsapp.net", "user", "5511999999999"),
        (
            " 5511999999999@S.WHATSAPP.NET\n",
            "5511999999999@s.whatsapp.net",
            "user",
            "5511999999999",
        ),
        ("123456789012345@lid", "123456789012345@lid", "lid", None),
        ("123456789012345:20@lid", "123456789012345@lid", "lid", None),
        ("120363025246125486@g.us", "120363025246125486@g.us", "group", None),
        ("5511999999999-1600000000@g.us", "5511999999999-1600000000@g.us", "group", None),
        ("status@broadcast", "status@broadcast", "status", None),
        ("1600000000@broadcast", "1600000000@broadcast", "broadcast", None),
        ("120363000000000000@newsletter", "120363000000000000@newsletter", "newsletter", None),
        ("+55 (11) 99999-9999", "5511999999999@s.whatsapp.net", "user", "5511999999999"),
        ("João Silva", None, "unknown", None),
        ("", None, "unknown", None),
        ("@s.whatsapp.net", None, "unknown", None),
        (None, None, "unknown", None),
    ],
)
def test_examples(
    impl: ModuleType, raw: str | None, canonical: str | None, kind: str, phone: str | None
) -> None:
    assert impl.normalize_jid(raw) == canonical
    assert impl.jid_kind(raw) == kind
    assert impl.phone_digits(raw) == phone


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_phone_keys_match_one_person(impl: ModuleType) -> None:
    key = impl.phone_key
    assert key("5511998765432") == key("551198765432")  # BR with / without the 9th digit
    assert key("5531998765432") == key("553198765432")
    assert key("5215512345678") == key("525512345678")  # MX 1
    assert key("5491123456789") == key("541123456789")  # AR 9
    assert key("5511998765432") != key("5511998765433")
    assert key("+1 (415) 555-0100") == "14155550100"


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_resolve_versions(impl: ModuleType) -> None:
    phone, lid = "5511987654321@s.whatsapp.net", "123456789012345@lid"
    owner = "5511900000001:4@s.whatsapp.net"
    # 2.3.5-2.3.6: remoteJid is the LID, remoteJidAlt the phone
    assert impl.resolve_addresses(lid, phone) == (
        phone,
        "user",
        phone,
        "5511987654321",
        [(lid, phone)],
    )
    # 2.3.1-2.3.2: senderPn carries the phone (not for fromMe: then it is the owner)
    assert impl.resolve_addresses(lid, sender_pn=phone)[0] == phone
    assert impl.resolve_addresses(lid, sender_pn=owner, from_me=True, owner_jid=owner) == (
        lid,
        "lid",
        "5511900000001@s.whatsapp.net",
        "5511900000001",
        [],
    )
    # previousRemoteJid keeps the LID after the swap
    assert impl.resolve_addresses(phone, previous_remote_jid=lid)[4] == [(lid, phone)]
    # <=2.3.0: only a LID
    assert impl.resolve_addresses(lid + "")[:2] == (lid, "lid")
    # groups: the author is the participant, phone preferred
    group = "120363025246125486@g.us"
    assert impl.resolve_addresses(
        group, participant="999@lid", participant_alt="5511911112222:1@s.whatsapp.net"
    ) == (
        group,
        "group",
        "5511911112222@s.whatsapp.net",
        "5511911112222",
        [("999@lid", "5511911112222@s.whatsapp.net")],
    )


# --- differential: Rust == reference -----------------------------------------------------

servers = st.sampled_from(
    [
        "s.whatsapp.net",
        "c.us",
        "lid",
        "g.us",
        "broadcast",
        "newsletter",
        "hosted",
        "hosted.lid",
        "S.WhatsApp.Net",
        "LID",
        "weird.server",
        "",
        "@",
    ]
)
users = st.one_of(
    st.from_regex(r"\A\+?[0-9]{1,18}\Z"),
    st.from_regex(r"\A[0-9]{10,13}-[0-9]{10}\Z"),
    st.just("status"),
    st.text(max_size=6),
)
suffixes = st.sampled_from(["", ":12", ":0", ".0:3", ".1", ":", ":x", ".", "..1"])
spaces = st.sampled_from(["", " ", "\t", "\n ", "\u00a0", "\x0b"])
jids = st.one_of(
    st.builds(lambda a, u, x, s, b: f"{a}{u}{x}@{s}{b}", spaces, users, suffixes, servers, spaces),
    st.builds(lambda a, u, b: f"{a}{u}{b}", spaces, users, spaces),
    st.text(max_size=30),
    st.none(),
)


@given(jids)
def test_rust_matches_reference(jid: str | None) -> None:
    assert _native.normalize_jid(jid) == jid_reference.normalize_jid(jid)
    assert _native.jid_kind(jid) == jid_reference.jid_kind(jid)
    assert _native.phone_digits(jid) == jid_reference.phone_digits(jid)
    if jid is not None:
        assert _native.phone_key(jid) == jid_reference.phone_key(jid)


@given(jids)
def test_normalize_is_idempotent(jid: str | None) -> None:
    once = _native.normalize_jid(jid)
    assert _native.normalize_jid(once) == once


@given(st.lists(jids, max_size=20))
def test_batch_matches_single(items: list[str | None]) -> None:
    assert _native.normalize_jids(items) == [_native.normalize_jid(j) for j in items]
    assert jid_reference.normalize_jids(items) == _native.normalize_jids(items)


@given(st.lists(jids, min_size=9, max_size=9), st.booleans(), jids)
def test_resolve_matches_reference(
    parts: list[str | None], from_me: bool, owner: str | None
) -> None:
    args = (*parts, from_me, owner)
    assert _native.resolve_addresses(*args) == jid_reference.resolve_addresses(*args)


@given(st.from_regex(r"\A(55|52|54|1)[0-9]{8,12}\Z"))
def test_phone_key_br_variants(digits: str) -> None:
    if len(digits) == 12 and digits.startswith("55"):
        with_nine = digits[:4] + "9" + digits[4:]
        assert _native.phone_key(with_nine) == _native.phone_key(digits)
    assert _native.phone_key(digits) == jid_reference.phone_key(digits)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_from_me_swapped_to_the_owner_keeps_the_contact(impl: ModuleType) -> None:
    """2.3.1-2.3.2 swap remoteJid to senderPn, and for fromMe senderPn is the owner (§7)."""
    owner, contact_lid = "5511900000001@s.whatsapp.net", "987654321098765@lid"
    swapped = impl.resolve_addresses(
        owner,
        sender_pn=owner,
        previous_remote_jid=contact_lid,
        from_me=True,
        owner_jid="5511900000001:17@s.whatsapp.net",
    )
    assert swapped == (contact_lid, "lid", owner, "5511900000001", [])
    # no envelope sender before the first connection: senderPn is the owner
    assert impl.resolve_addresses(contact_lid, sender_pn=owner, from_me=True)[:3] == (
        contact_lid,
        "lid",
        owner,
    )
    group = "120363025246125486@g.us"
    assert impl.resolve_addresses(group, participant=owner, from_me=True)[2] == owner
    # a note to oneself is no swap; an incoming message is never one
    assert impl.resolve_addresses(owner, from_me=True, owner_jid=owner)[0] == owner
    phone = "5511987654321@s.whatsapp.net"
    incoming = impl.resolve_addresses(phone, previous_remote_jid=contact_lid, owner_jid=phone)
    assert incoming[0] == phone and incoming[4] == [(contact_lid, phone)]


# --- the other form of one person's number (§7 "match both variants") ---------------------


def _jid(digits: str) -> str:
    return digits + "@s.whatsapp.net"


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize(
    ("raw", "variant"),
    [
        # BR: a mobile with and without the 9th digit, either way, in any input form
        (_jid("5531998765432"), _jid("553198765432")),
        (_jid("553198765432"), _jid("5531998765432")),
        ("553198765432:7@c.us", _jid("5531998765432")),
        (" 5511987654321@S.WHATSAPP.NET", _jid("551187654321")),
        (_jid("551161234567"), _jid("5511961234567")),
        # BR landlines (2-5 after the DDD) never got the 9, and 9 + landline is no old mobile
        (_jid("551132345678"), None),
        (_jid("5511932345678"), None),
        (_jid("550198765432"), None),  # no DDD has a 0
        (_jid("5531898765432"), None),  # 13 digits without the 9 after the DDD
        # MX 1, AR 9
        (_jid("5215512345678"), _jid("525512345678")),
        (_jid("525512345678"), _jid("5215512345678")),
        (_jid("5491123456789"), _jid("541123456789")),
        (_jid("541123456789"), _jid("5491123456789")),
        (_jid("5251234567890"), None),
        (_jid("521123456789"), None),
        (_jid("549123456789"), None),
        # other countries and lengths, not a user JID, nothing
        (_jid("14155550100"), None),
        (_jid("55319987654321"), None),
        ("5531998765432@lid", None),
        ("5531998765432-1600000000@g.us", None),
        ("5531998765432@hosted", None),
        ("5531998765432", _jid("553198765432")),
        ("", None),
        (None, None),
    ],
)
def test_phone_variant_examples(impl: ModuleType, raw: str | None, variant: str | None) -> None:
    assert impl.phone_variant(raw) == variant


variant_numbers = st.one_of(
    st.from_regex(r"\A55[0-9]{2}9?[0-9]{8}\Z"),
    st.from_regex(r"\A5[24][19]?[0-9]{10}\Z"),
    st.from_regex(r"\A[0-9]{11,14}\Z"),
)


@given(variant_numbers, suffixes, st.sampled_from(["s.whatsapp.net", "c.us", "lid", "g.us"]))
def test_phone_variant_matches_reference(digits: str, suffix: str, server: str) -> None:
    for jid in (f"{digits}{suffix}@{server}", digits):
        assert _native.phone_variant(jid) == jid_reference.phone_variant(jid)


@given(variant_numbers)
def test_phone_variant_is_one_person_both_ways(digits: str) -> None:
    variant = _native.phone_variant(_jid(digits))
    if variant is None:
        return
    other = variant.removesuffix("@s.whatsapp.net")
    assert other != digits and {len(other), len(digits)} == {12, 13}
    assert _native.phone_variant(variant) == _jid(digits)
    assert _native.phone_key(other) == _native.phone_key(digits)


@given(jids)
def test_phone_variant_of_anything_matches_reference(jid: str | None) -> None:
    assert _native.phone_variant(jid) == jid_reference.phone_variant(jid)
