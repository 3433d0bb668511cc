"""Fuzzing the webhook with mutated real envelopes: no 5xx, and nothing stored that is garbage.

Every envelope of tests/fixtures/evolution is a seed. Each example takes one, points it at the
registered instance (most of the time) or at one nobody registered (the quarantine path), and
applies a few mutations: a value of another type at a random path, a key deleted, the event
swapped, invalid UTF-8 inside a string, NUL, escaped surrogate pairs, nesting hundreds deep,
numbers of thousands of digits or out of every range, strings of 300 to 10,000 characters (or
either side of the 255-character limits), the instance name changed; one example in five is
then broken for good: a lone surrogate, a raw NUL, nesting thousands deep, the body cut at a
random byte, a byte replaced, or the instance given twice (another tenant's first).

The contract: a 4xx whose JSON body names the problem, having written nothing, or one of the
webhook's 2xx answers; never a 5xx. After every example, what it wrote is no garbage: every
message reads back through the API, message ids and quarantined instance names are within the
limits, nothing reached tenant globex, statuses are ranks, JIDs are JIDs, and nothing was
quarantined because its rows could not be written (a NUL in a text column, an index row past
Postgres' limit: the write fails and the event lands in quarantine under a registered
instance, where no replay can ever file it). The second test registers the unknown instance
afterwards: everything that was quarantined must be filed by the replay.

Derandomized (the same examples on every run); about 15 seconds.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import random
from pathlib import Path
from typing import Any
from urllib.parse import quote

import asyncpg
import httpx
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

from service.events import MAX_ID_CHARS, MAX_NAME_CHARS
from service.rows import STATUS_NAME
from tests.integration.conftest import Deployment

FOLDER = Path(__file__).parent.parent / "fixtures" / "evolution"
SEEDS: list[dict[str, Any]] = [
    request["body"]
    for path in sorted(FOLDER.glob("*.json"))
    for request in json.loads(path.read_text())["requests"]
    if isinstance(request.get("body"), dict)
]
EVENTS = sorted(
    {str(seed.get("event")) for seed in SEEDS}
    | {"future.event", "MESSAGES_UPSERT", "messages.upsert\x00", "call\x00", "\x00", ""}
)

REGISTERED = "acme-main"
UNKNOWN = "fuzz-unknown"

# keys whose values reach an id, a name, a JID or a text column
INTERESTING = {
    "instance",
    "event",
    "data",
    "key",
    "id",
    "keyId",
    "messageId",
    "remoteJid",
    "remoteJidAlt",
    "participant",
    "participantAlt",
    "participantPn",
    "senderPn",
    "senderLid",
    "previousRemoteJid",
    "fromMe",
    "pushName",
    "name",
    "subject",
    "message",
    "conversation",
    "text",
    "caption",
    "status",
    "messageTimestamp",
    "timestampMs",
    "senderTimestampMs",
    "stanzaId",
    "contextInfo",
    "editedMessage",
    "protocolMessage",
    "type",
    "state",
    "statusReason",
    "wuid",
    "jid",
    "lid",
    "phoneNumber",
    "participants",
    "qrcode",
    "unreadMessages",
    "messages",
    "apikey",
    "sender",
}

CONTRACT_2XX = {
    (200, "stored"),
    (202, "quarantined"),
    (202, "ignored"),
    (202, "kept"),
}
REFUSALS = {400, 413, 422}  # acme-main has no apikey, so a 401 would be a bug too


class Raw:
    """Bytes spliced into the body as they are (invalid JSON, invalid UTF-8, huge numbers)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


def encode(value: Any, ascii_only: bool) -> bytes:
    out: list[bytes] = []
    _encode(value, ascii_only, out)
    return b"".join(out)


def _encode(value: Any, ascii_only: bool, out: list[bytes]) -> None:
    if isinstance(value, Raw):
        out.append(value.data)
    elif isinstance(value, dict):
        out.append(b"{")
        for n, (k, v) in enumerate(value.items()):
            if n:
                out.append(b",")
            out.append(json.dumps(str(k), ensure_ascii=ascii_only).encode())
            out.append(b":")
            _encode(v, ascii_only, out)
        out.append(b"}")
    elif isinstance(value, list):
        out.append(b"[")
        for n, v in enumerate(value):
            if n:
                out.append(b",")
            _encode(v, ascii_only, out)
        out.append(b"]")
    else:
        out.append(json.dumps(value, ensure_ascii=ascii_only).encode())


Path_ = tuple[str | int, ...]


def paths(tree: Any, here: Path_ = ()) -> list[Path_]:
    """Every path below the root (a dict key or a list index at each step)."""
    found: list[Path_] = []
    if isinstance(tree, dict):
        for k, v in tree.items():
            found.append((*here, k))
            found.extend(paths(v, (*here, k)))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            found.append((*here, i))
            found.extend(paths(v, (*here, i)))
    return found


def get_at(tree: Any, path: Path_) -> Any:
    for step in path:
        tree = tree[step]
    return tree


def set_at(tree: Any, path: Path_, value: Any) -> Any:
    if not path:
        return value
    get_at(tree, path[:-1])[path[-1]] = value
    return tree


def delete_at(tree: Any, path: Path_) -> Any:
    if not path:
        return tree
    del get_at(tree, path[:-1])[path[-1]]
    return tree


def pick_path(draw: st.DrawFn, tree: Any) -> Path_:
    """Mostly a path inside ``data`` (where the event's rows come from), mostly at a key that
    reaches a column; sometimes any path, the envelope's own keys included."""
    every = paths(tree)
    if not every:
        return ()
    inside = [p for p in every if p[0] == "data" and len(p) > 1] or every
    pool = draw(st.sampled_from([inside, inside, inside, every]))
    liked = [p for p in pool if isinstance(p[-1], str) and p[-1] in INTERESTING]
    if liked and draw(st.integers(0, 2)):
        return draw(st.sampled_from(liked))
    return draw(st.sampled_from(pool))


# --- values ----------------------------------------------------------------------------------

small = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)

NUMBER_TOKENS = [
    b"1e400",
    b"-1e400",
    b"1e-400",
    b"-0",
    b"-0.0",
    b"0e0",
    b"2147483648",
    b"-2147483649",
    b"9223372036854775808",
    b"-9223372036854775809",
    b"18446744073709551616",
    b"1.7976931348623157e308",
    b"4.9e-324",
]
NAN_LIKE = ["NaN", "Infinity", "-Infinity", "1e400", "-0", "0x10", " 12 ", "1_000", "١٢٣"]
BAD_UTF8 = [
    b"\xff",
    b"\xfe\xff",
    b"\x80",
    b"\xc3",  # a two-byte sequence cut short
    b"\xc3(",
    b"\xe2\x82",
    b"\xed\xa0\x80",  # a UTF-16 surrogate encoded as UTF-8
    b"\xc0\xaf",  # overlong
    b"\xf4\x90\x80\x80",  # past U+10FFFF
    b"Jo\xe3o",  # Latin-1
]
LONE_SURROGATES = [
    b'"\\ud800"',
    b'"\\udfff"',
    b'"abc\\udc00"',
    b'"\\ud800\\u0041"',
    b'"\\ud800\\ud800"',
    b'"x\\ud83d"',
]
# characters for long strings: ASCII, Latin-1, CJK, astral, combining, RTL, controls
ALPHABET = (
    "abcdefghijklmnopqrstuvwxyz0123456789@.:-_ /"
    "çãéñü€中文字😀🇧🇷\u0301\u200b\u202e\ufeff\t\n\x01\x7f"
)


def long_text(draw: st.DrawFn) -> str:
    """300 to 10,000 characters, or just either side of the 255-character limits."""
    size = draw(st.sampled_from([255, 256, 300]) | st.integers(300, 10_000))
    rnd = random.Random(draw(st.integers(0, 2**32)))
    style = draw(st.sampled_from(["mixed", "jid", "digits", "repeat"]))
    if style == "digits":
        return "".join(rnd.choice("0123456789") for _ in range(size))
    if style == "repeat":
        return rnd.choice(ALPHABET) * size
    text = "".join(rnd.choice(ALPHABET) for _ in range(size))
    if style == "jid":
        text = text.replace("@", "") + draw(
            st.sampled_from(["@s.whatsapp.net", "@lid", "@g.us", "@c.us", ":3@s.whatsapp.net"])
        )
    return text


# --- mutations: (draw, tree) -> tree ------------------------------------------------------------


def swap_type(draw: st.DrawFn, tree: Any) -> Any:
    path = pick_path(draw, tree)
    old = get_at(tree, path)
    new = draw(
        st.sampled_from(
            [
                None,
                True,
                False,
                0,
                -1,
                1.5,
                "",
                str(old)[:50],
                [old],
                {"value": old},
                [],
                {},
            ]
        )
        | small
    )
    return set_at(tree, path, new)


def delete_key(draw: st.DrawFn, tree: Any) -> Any:
    return delete_at(tree, pick_path(draw, tree))


def huge_number(draw: st.DrawFn, tree: Any) -> Any:
    path = pick_path(draw, tree)
    choice = draw(st.integers(0, 3))
    if choice == 0:
        digits = draw(st.integers(20, 6000))
        sign = draw(st.sampled_from([b"", b"-"]))
        value: Any = Raw(sign + b"9" * digits)
    elif choice == 1:
        value = Raw(draw(st.sampled_from(NUMBER_TOKENS)))
    elif choice == 2:
        value = draw(st.sampled_from(NAN_LIKE)) if draw(st.booleans()) else "9" * 5000
    else:
        value = {"low": Raw(b"9" * 400), "high": Raw(b"-1e400"), "unsigned": "yes"}
    return set_at(tree, path, value)


def huge_string(draw: st.DrawFn, tree: Any) -> Any:
    return set_at(tree, pick_path(draw, tree), long_text(draw))


def invalid_utf8(draw: st.DrawFn, tree: Any) -> Any:
    path = pick_path(draw, tree)
    old = get_at(tree, path)
    text = old if isinstance(old, str) else "x"
    cut = draw(st.integers(0, len(text)))
    bad = draw(st.sampled_from(BAD_UTF8))
    inner = json.dumps(text[:cut])[1:-1].encode() + bad + json.dumps(text[cut:])[1:-1].encode()
    return set_at(tree, path, Raw(b'"' + inner + b'"'))


def surrogate_pair(draw: st.DrawFn, tree: Any) -> Any:
    """An astral character escaped as its UTF-16 pair, the way JavaScript's JSON writes it."""
    return set_at(tree, pick_path(draw, tree), Raw(b'"Jo\\u00e3o \\ud83d\\ude00 \\ud83c\\udde7"'))


def lone_surrogate(draw: st.DrawFn, tree: Any) -> Any:
    return set_at(tree, pick_path(draw, tree), Raw(draw(st.sampled_from(LONE_SURROGATES))))


def nul(draw: st.DrawFn, tree: Any) -> Any:
    """NUL (escaped as \\u0000) in a string, or a string of NUL only."""
    path = pick_path(draw, tree)
    old = get_at(tree, path)
    text = old if isinstance(old, str) else ""
    cut = draw(st.integers(0, len(text)))
    return set_at(tree, path, text[:cut] + "\x00" * draw(st.integers(1, 3)) + text[cut:])


def raw_nul(draw: st.DrawFn, tree: Any) -> Any:
    """A raw NUL byte inside a string: a control character JSON does not allow."""
    path = pick_path(draw, tree)
    old = get_at(tree, path)
    text = json.dumps(old if isinstance(old, str) else "")[1:-1]
    cut = draw(st.integers(0, len(text)))
    return set_at(tree, path, Raw(b'"' + (text[:cut] + "\x00" + text[cut:]).encode() + b'"'))


def deep(draw: st.DrawFn, tree: Any, lo: int = 50, hi: int = 900) -> Any:
    """A value wrapped in hundreds of arrays or objects (``data`` itself half of the time)."""
    path = ("data",) if "data" in tree and draw(st.booleans()) else pick_path(draw, tree)
    # msgspec refuses past about a thousand levels: below that the typed decoders and jsonb
    # get it, past it the envelope is refused
    depth = draw(st.integers(lo, hi))
    inner = encode(get_at(tree, path), True) if path else b"1"
    if draw(st.booleans()):
        value = Raw(b"[" * depth + inner + b"]" * depth)
    else:
        value = Raw(b'{"message":' * depth + inner + b"}" * depth)
    return set_at(tree, path, value)


def deeper(draw: st.DrawFn, tree: Any) -> Any:
    return deep(draw, tree, 900, 5000)


def swap_event(draw: st.DrawFn, tree: Any) -> Any:
    if isinstance(tree, dict):
        tree["event"] = draw(st.sampled_from(EVENTS))
    return tree


def odd_instance(draw: st.DrawFn, tree: Any) -> Any:
    if isinstance(tree, dict):
        tree["instance"] = draw(
            st.sampled_from(
                [
                    "",
                    " acme-main",
                    "ACME-MAIN",
                    "acme-main\x00",
                    "\x00",
                    "globex-main\x00",
                    "x" * MAX_NAME_CHARS,
                    "x" * (MAX_NAME_CHARS + 1),
                    "ç" * MAX_NAME_CHARS,
                    "😀" * MAX_NAME_CHARS,
                ]
            )
            | st.text(max_size=20)
        )
    return tree


# the body stays JSON (mostly), so what follows it (typed decoding, rows) is reached
SHAPE = [
    swap_type,
    swap_type,
    delete_key,
    huge_number,
    huge_string,
    huge_string,
    invalid_utf8,
    nul,
    surrogate_pair,
    deep,
    swap_event,
    odd_instance,
]
# the body is no longer JSON, or no longer decodable (applied last, to one example in five)
BREAKING = {
    "lone surrogate": lone_surrogate,
    "raw NUL": raw_nul,
    "nesting past the limit": deeper,
    "cut short": None,
    "a byte replaced": None,
    "duplicate key": None,
}


@st.composite
def bodies(draw: st.DrawFn, instances: st.SearchStrategy[str]) -> bytes:
    tree = copy.deepcopy(draw(st.sampled_from(SEEDS)))
    tree["instance"] = draw(instances)
    for _ in range(draw(st.integers(1, 3))):
        tree = draw(st.sampled_from(SHAPE))(draw, tree)
    last = draw(st.sampled_from([None] * 4 * len(BREAKING) + list(BREAKING)))
    mutate = BREAKING.get(last) if last else None
    if mutate is not None:
        tree = mutate(draw, tree)
    body = encode(tree, draw(st.booleans()))
    if last == "cut short":
        body = body[: draw(st.integers(0, len(body) - 1))]
    elif last == "a byte replaced":
        at = draw(st.integers(0, len(body) - 1))
        body = body[:at] + bytes([draw(st.integers(0, 255))]) + body[at + 1 :]
    elif last == "duplicate key" and isinstance(tree, dict) and "instance" in tree:
        # the first of two: the last one counts, for every JSON reader on the way
        body = b'{"instance":"globex-main",' + body[1:]
    return body


# --- what the tables may hold ------------------------------------------------------------------

COUNTS = """
SELECT (SELECT count(*) FROM messages), (SELECT count(*) FROM events),
       (SELECT count(*) FROM quarantine), (SELECT count(*) FROM chats),
       (SELECT count(*) FROM contacts), (SELECT count(*) FROM groups),
       (SELECT count(*) FROM lid_map),
       (SELECT count(*) FROM instances WHERE state IS NOT NULL OR qr_code IS NOT NULL)
"""

# Each a count of rows this example wrote ($3: when it started) that must not exist.
GARBAGE = {
    # $1: tenant acme, $2: its instances (learning an @lid's phone moves the chats of every
    # instance of the tenant: rows of other instances of acme may change, never globex's)
    "row outside tenant acme": """
        SELECT (SELECT count(*) FROM messages
                WHERE updated_at >= $3 AND (tenant_id <> $1 OR instance_id <> ALL($2::uuid[])))
             + (SELECT count(*) FROM events
                WHERE received_at >= $3 AND (tenant_id <> $1 OR instance_id <> ALL($2::uuid[])))
             + (SELECT count(*) FROM chats
                WHERE updated_at >= $3 AND (tenant_id <> $1 OR instance_id <> ALL($2::uuid[])))
             + (SELECT count(*) FROM contacts
                WHERE updated_at >= $3 AND (tenant_id <> $1 OR instance_id <> ALL($2::uuid[])))
             + (SELECT count(*) FROM groups
                WHERE updated_at >= $3 AND (tenant_id <> $1 OR instance_id <> ALL($2::uuid[])))
             + (SELECT count(*) FROM lid_map WHERE learned_at >= $3 AND tenant_id <> $1)
             + (SELECT count(*) FROM instances
                WHERE instance_id <> ALL($2::uuid[]) AND (state_at >= $3 OR qr_at >= $3))""",
    "message id empty or past the limit": f"""
        SELECT count(*) FROM messages
        WHERE updated_at >= $3 AND (message_id = '' OR length(message_id) > {MAX_ID_CHARS})""",
    "message status not a rank": f"""
        SELECT count(*) FROM messages
        WHERE updated_at >= $3 AND status IS NOT NULL
          AND status <> ALL('{{{",".join(map(str, STATUS_NAME))}}}')""",
    "quarantined but not for an unknown instance": """
        SELECT count(*) FROM quarantine
        WHERE received_at >= $3
          AND (reason <> 'unknown instance' OR instance_name IN ('acme-main', 'globex-main'))""",
    "quarantined instance name past the limit": f"""
        SELECT count(*) FROM quarantine
        WHERE received_at >= $3 AND length(instance_name) > {MAX_NAME_CHARS}""",
    "lid pair that is not @lid -> phone": """
        SELECT count(*) FROM lid_map
        WHERE learned_at >= $3
          AND (lid_jid NOT LIKE '%@lid' AND lid_jid NOT LIKE '%@hosted.lid'
               OR phone_jid NOT LIKE '%@s.whatsapp.net' AND phone_jid NOT LIKE '%@hosted')""",
    "chat, contact or group without a JID": """
        SELECT (SELECT count(*) FROM chats
                WHERE updated_at >= $3 AND position('@' IN chat_jid) < 2)
             + (SELECT count(*) FROM contacts
                WHERE updated_at >= $3 AND position('@' IN jid) < 2)
             + (SELECT count(*) FROM groups
                WHERE updated_at >= $3 AND position('@' IN group_jid) < 2)""",
}


def _path_segment(text: str) -> str:
    return quote(text, safe="").replace(".", "%2E")


async def _check_stored(d: Deployment, conn: asyncpg.Connection, since: Any) -> None:
    """Nothing written since ``since`` is garbage, and every message written reads back."""
    acme = await conn.fetchrow(
        "SELECT t.tenant_id, array_agg(i.instance_id) AS instances FROM tenants AS t"
        " JOIN instances AS i USING (tenant_id) WHERE t.name = 'acme' GROUP BY t.tenant_id"
    )
    for what, query in GARBAGE.items():
        if "$2" in query:
            found = await conn.fetchval(query, acme["tenant_id"], acme["instances"], since)
        else:
            found = await conn.fetchval(query.replace("$3", "$1"), since)
        if found and what.startswith("quarantined"):
            reasons = await conn.fetch(
                "SELECT instance_name, reason FROM quarantine WHERE received_at >= $1", since
            )
            what = f"{what}: {[(r[0][:100], r[1]) for r in reasons]}"
        assert found == 0, what
    changed = await conn.fetch(
        "SELECT i.name, m.message_id FROM messages AS m JOIN instances AS i"
        " USING (tenant_id, instance_id) WHERE m.has_content AND m.updated_at >= $1 LIMIT 20",
        since,
    )
    for name, message_id in changed:
        r = await d.get(
            f"/api/v1/messages/{_path_segment(name)}/{_path_segment(message_id)}", "acme"
        )
        assert r.status_code == 200, (message_id[:100], r.status_code, r.text[:300])
        assert r.json()["message_id"] == message_id


async def _post(d: Deployment, conn: asyncpg.Connection, body: bytes) -> httpx.Response:
    """Post ``body``: a 4xx naming the problem that wrote nothing, or a 2xx of the contract."""
    before = await conn.fetchrow(COUNTS)
    note(f"body ({len(body)} bytes): {body[:3000]!r}")
    r = await d.post(None, raw=body)
    assert r.status_code < 500, (r.status_code, r.text[:500])
    answer = r.json()
    event(f"{r.status_code} {answer.get('status') or answer.get('error')}")
    if r.status_code >= 400:
        assert r.status_code in REFUSALS, (r.status_code, answer)
        assert isinstance(answer["error"], str) and answer["error"], answer
        assert isinstance(answer["detail"], str) and answer["detail"].strip(), answer
        assert tuple(await conn.fetchrow(COUNTS)) == tuple(before), "a refusal wrote rows"
    else:
        assert (r.status_code, answer.get("status")) in CONTRACT_2XX, (r.status_code, answer)
    return r


FUZZ = settings(
    deadline=None,
    derandomize=True,  # the same examples on every run: it cannot flake
    database=None,
    print_blob=True,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)


@settings(FUZZ, max_examples=1000)
@given(body=bodies(st.sampled_from([REGISTERED] * 4 + [UNKNOWN])))
async def test_mutated_envelopes_get_a_4xx_or_the_contracts_2xx_and_store_no_garbage(
    deployment: Deployment, conn: asyncpg.Connection, body: bytes
) -> None:
    since = await conn.fetchval("SELECT clock_timestamp()")
    await _post(deployment, conn, body)
    await _check_stored(deployment, conn, since)


_late = itertools.count()


@settings(FUZZ, max_examples=100)
@given(data=st.data())
async def test_mutated_envelopes_kept_in_quarantine_are_all_filed_once_registered(
    deployment: Deployment, conn: asyncpg.Connection, data: st.DataObject
) -> None:
    """What an unknown instance's post is answered 202 for was checked like a live post: once
    the instance is registered, the replay files every one of them, and no garbage."""
    name = f"late-{next(_late):06d}"  # one length: the draws cannot depend on the count
    since = await conn.fetchval("SELECT clock_timestamp()")
    for body in data.draw(st.lists(bodies(st.just(name)), min_size=1, max_size=6)):
        await _post(deployment, conn, body)
    assert (await deployment.instance("acme", "evo", name)).status_code == 201
    left = -1
    for _ in range(400):  # the registration replays in the background
        left = await conn.fetchval("SELECT count(*) FROM quarantine WHERE instance_name = $1", name)
        if left == 0:
            break
        await asyncio.sleep(0.025)
    assert left == 0, f"{left} quarantined events of {name} were not replayed"
    await _check_stored(deployment, conn, since)


def test_the_seeds_are_the_fixture_corpus_and_encode_as_json() -> None:
    assert len(SEEDS) >= 200
    for seed in SEEDS:
        for ascii_only in (True, False):
            assert json.loads(encode(seed, ascii_only)) == seed
