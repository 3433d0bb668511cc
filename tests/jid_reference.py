"""Pure-Python reference of the native JID functions (service._native): same inputs, same
outputs, in plain string code; the tests hold the Rust crate to it.
"""

from __future__ import annotations

_SERVER_KIND = {
    "s.whatsapp.net": "user",
    "hosted": "user",
    "g.us": "group",
    "broadcast": "broadcast",
    "newsletter": "newsletter",
    "lid": "lid",
    "hosted.lid": "lid",
}
_PHONE_SERVERS = {"s.whatsapp.net", "lid", "hosted", "hosted.lid"}
_CHAT_KINDS = {"group", "broadcast", "status", "newsletter"}


def _is_digits(s: str) -> bool:
    return s != "" and all("0" <= c <= "9" for c in s)


def _strip_suffix(user: str, sep: str) -> str:
    i = user.rfind(sep)
    if i >= 0 and _is_digits(user[i + 1 :]):
        return user[:i]
    return user


def normalize_jid(jid: str | None) -> str | None:
    if jid is None:
        return None
    # ASCII only: JIDs are ASCII, and this keeps the result independent of Unicode tables.
    text = jid.strip(_WHITESPACE).translate(_ASCII_LOWER)
    if not text:
        return None
    at = text.find("@")
    if at < 0:
        digits = "".join(c for c in text if c not in "+()-. ")
        if _is_digits(digits) and 5 <= len(digits) <= 20:
            return digits + "@s.whatsapp.net"
        return None
    user, server = text[:at], text[at + 1 :]
    if not user:
        return None
    if server == "c.us":
        server = "s.whatsapp.net"
    user = _strip_suffix(user, ":")
    if server in _PHONE_SERVERS:
        user = _strip_suffix(user, ".")
    if not user:
        return None
    return f"{user}@{server}"


_WHITESPACE = " \t\n\r\x0c"
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def normalize_jids(jids: list[str | None]) -> list[str | None]:
    return [normalize_jid(j) for j in jids]


def _kind_of_canonical(jid: str | None) -> str:
    if jid is None:
        return "unknown"
    if jid == "status@broadcast":
        return "status"
    at = jid.find("@")
    if at < 0:
        return "unknown"
    return _SERVER_KIND.get(jid[at + 1 :], "unknown")


def jid_kind(jid: str | None) -> str:
    return _kind_of_canonical(normalize_jid(jid))


def _digits_of_canonical(jid: str | None) -> str | None:
    if jid is None or _kind_of_canonical(jid) != "user":
        return None
    user = jid[: jid.find("@")]
    return user if _is_digits(user) else None


def phone_digits(jid: str | None) -> str | None:
    return _digits_of_canonical(normalize_jid(jid))


def phone_key(digits: str) -> str:
    d = "".join(c for c in digits if "0" <= c <= "9")
    if len(d) == 13:
        if d.startswith("55") and d[4] == "9":
            return d[:4] + d[5:]
        if d.startswith(("521", "549")):
            return d[:2] + d[3:]
    return d


def _in(c: str, lo: str, hi: str) -> bool:
    return lo <= c <= hi


def _digits_variant(d: str) -> str | None:
    if not _is_digits(d) or len(d) not in (12, 13):
        return None
    long = len(d) == 13
    if d.startswith("55"):
        if not (_in(d[2], "1", "9") and _in(d[3], "1", "9")):
            return None  # no DDD has a 0
        if long and d[4] == "9" and _in(d[5], "6", "9"):
            return d[:4] + d[5:]
        if not long and _in(d[4], "6", "9"):  # a mobile (landlines, 2-5, never got the 9)
            return d[:4] + "9" + d[4:]
        return None
    for country, prefix, lo, hi in (("52", "1", "2", "9"), ("54", "9", "1", "3")):
        if d.startswith(country):
            if long and d[2] == prefix and _in(d[3], lo, hi):
                return d[:2] + d[3:]
            if not long and _in(d[2], lo, hi):
                return d[:2] + prefix + d[2:]
    return None


def phone_variant(jid: str | None) -> str | None:
    """The other form of one person's number (BR 9th digit, MX 1, AR 9), as a JID."""
    canonical = normalize_jid(jid)
    if canonical is None or not canonical.endswith("@s.whatsapp.net"):
        return None
    variant = _digits_variant(canonical[: -len("@s.whatsapp.net")])
    return None if variant is None else variant + "@s.whatsapp.net"


def _first(kind: str, candidates: list[str | None]) -> str | None:
    for candidate in candidates:
        jid = normalize_jid(candidate)
        if jid is not None and _kind_of_canonical(jid) == kind:
            return jid
    return None


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
) -> tuple[str | None, str, str | None, str | None, list[tuple[str, str]]]:
    remote = normalize_jid(remote_jid)
    head = remote if remote is not None else normalize_jid(remote_jid_alt)
    pairs: list[tuple[str, str]] = []
    owner = normalize_jid(owner_jid)
    if _kind_of_canonical(head) in _CHAT_KINDS:
        chat = head
        if from_me:
            # the envelope has no sender before the first connection; the participant of
            # one's own group message is oneself
            sender = owner or _first("user", [participant, participant_alt, participant_pn])
        else:
            phone = _first("user", [participant, participant_alt, participant_pn])
            lid = _first("lid", [participant, participant_alt, participant_lid])
            if lid is not None and phone is not None:
                pairs.append((lid, phone))
            sender = phone or lid or normalize_jid(participant)
    else:
        pn, slid = (None, None) if from_me else (sender_pn, sender_lid)
        if from_me and owner is None:
            owner = _first("user", [sender_pn])  # 2.3.1-2.3.2: for fromMe, senderPn is the owner
        # 2.3.1-2.3.2 swap remoteJid to senderPn, which for fromMe is the owner: the contact is
        # then only in previousRemoteJid, and remoteJid names nobody but ourselves.
        swapped = (
            from_me
            and remote is not None
            and remote == owner
            and normalize_jid(previous_remote_jid) is not None
        )
        first = None if swapped else remote_jid
        phone = _first("user", [first, remote_jid_alt, pn, previous_remote_jid])
        lid = _first("lid", [first, remote_jid_alt, slid, previous_remote_jid])
        if lid is not None and phone is not None:
            pairs.append((lid, phone))
        chat = phone or lid or (normalize_jid(previous_remote_jid) if swapped else remote)
        sender = owner if from_me else chat
    return chat, _kind_of_canonical(chat), sender, _digits_of_canonical(sender), pairs
