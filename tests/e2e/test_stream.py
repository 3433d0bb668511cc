"""WS /api/v1/stream against the real server (two Granian workers, so every event crosses
processes through Redis pub/sub), driven with the ``websockets`` client.

message.analyzed comes from a real `sense worker` (the ``worker`` fixture)."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from service.embedded import EmbeddedRedis
from service.live import frames
from tests.conftest import DATA_TABLES, database_down
from tests.e2e.conftest import ADMIN, Server, start_server, start_worker, stop
from tests.integration.conftest import status_update, upsert

pytestmark = pytest.mark.e2e

Frame = dict[str, Any]
WAIT = 10.0  # seconds any expected frame may take on a loaded 2-core box


class Live:
    """A running server with tenants acme and globex (one instance each) on source evo."""

    def __init__(self, server: Server, database_url: str, redis_url: str) -> None:
        self.server = server
        self.database_url = database_url
        self.redis_url = redis_url
        self.worker: subprocess.Popen[bytes] | None = None  # a real `sense worker`, if started
        self.http = httpx.Client(base_url=server.url, timeout=10)
        self.tokens: dict[str, str] = {}
        admin = {"Authorization": f"Bearer {ADMIN}"}
        for name in ("acme", "globex"):
            r = self.http.post("/api/admin/tenants", json={"name": name}, headers=admin)
            assert r.status_code == 201, r.text
            self.tokens[name] = r.json()["token"]
        r = self.http.post("/api/admin/sources", json={"name": "evo"}, headers=admin)
        self.hook = r.json()["webhook_path"]
        for tenant in ("acme", "globex"):
            body = {"tenant": tenant, "source": "evo", "name": f"{tenant}-main"}
            r = self.http.post("/api/admin/instances", json=body, headers=admin)
            assert r.status_code == 201, r.text

    @property
    def ws_url(self) -> str:
        return self.server.url.replace("http://", "ws://") + "/api/v1/stream"

    def endpoint(self, tenant: str, url: str, **fields: Any) -> dict[str, Any]:
        """A fan-out endpoint of ``tenant`` (service/endpoints.py), as created."""
        r = self.http.post(
            "/api/v1/endpoints",
            json={"url": url, **fields},
            headers={"Authorization": f"Bearer {self.tokens[tenant]}"},
        )
        assert r.status_code == 201, r.text
        return r.json()  # type: ignore[no-any-return]

    def post(self, body: dict[str, Any]) -> None:
        # a fresh connection each time, so that the posts spread over both worker processes
        r = httpx.post(self.server.url + self.hook, json=body, timeout=10)
        assert r.status_code == 200, r.text

    def get(self, tenant: str, path: str, **params: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.tokens[tenant]}"}
        r = self.http.get(path, params=params, headers=headers)
        assert r.status_code == 200, r.text
        return r.json()

    async def open(
        self, tenant: str, *, by_message: bool = False
    ) -> tuple[ClientConnection, Frame]:
        """A fresh WebSocket (fresh TCP connection: either worker may take it), after "ready"."""
        token = self.tokens[tenant]
        url = self.ws_url if by_message else f"{self.ws_url}?token={token}"
        ws = await connect(url, open_timeout=WAIT)
        if by_message:
            await ws.send(json.dumps({"token": token}))
        ready = await next_frame(ws)
        assert ready["type"] == "ready", ready
        return ws, ready


def _truncate(database_url: str) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(database_url)
        await conn.execute(f"TRUNCATE {', '.join(DATA_TABLES)} CASCADE")
        await conn.close()

    asyncio.run(run())


@pytest.fixture(scope="module")
def live(
    database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Live]:
    _truncate(database_url)
    server = start_server(
        database_url, tmp_path_factory.mktemp("stream"), workers=2, SENSE_REDIS_URL=redis_url
    )
    try:
        yield Live(server, database_url, redis_url)
    finally:
        server.stop()


async def next_frame(ws: ClientConnection, seconds: float = WAIT) -> Frame:
    """The next frame that is not a heartbeat."""
    while True:
        frame: Frame = json.loads(await asyncio.wait_for(ws.recv(), seconds))
        if frame["type"] != "heartbeat":
            return frame


async def frames_until(
    ws: ClientConnection, done: Callable[[Frame], bool], seconds: float = WAIT
) -> list[Frame]:
    """Every frame up to and including the first one for which ``done`` is true."""
    got: list[Frame] = []
    async with asyncio.timeout(seconds):
        while True:
            got.append(await next_frame(ws, seconds))
            if done(got[-1]):
                return got


def is_message(message_id: str, kind: str = "message.created") -> Callable[[Frame], bool]:
    return lambda f: f["type"] == kind and message_id_of(f) == message_id


def message_id_of(frame: Frame) -> str | None:
    if "message" in frame:
        return str(frame["message"]["message_id"])
    return frame.get("message_id")


def uid(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:12].upper()}"


# authentication ---------------------------------------------------------------------------------


async def test_token_in_query_or_first_message_and_bad_tokens_are_closed_4401(
    live: Live,
) -> None:
    for by_message in (False, True):
        ws, ready = await live.open("acme", by_message=by_message)
        assert ready["tenant"] == "acme" and ready["cursor"].startswith("c")
        await ws.send(json.dumps({"type": "ping"}))
        assert await next_frame(ws) == {"type": "pong"}
        await ws.close()
    for url, first in (
        (live.ws_url + "?token=st_not-a-token", None),
        (live.ws_url, json.dumps({"token": "st_not-a-token"})),
        (live.ws_url, "not json"),
    ):
        async with connect(url, open_timeout=WAIT) as ws:
            if first is not None:
                await ws.send(first)
            with pytest.raises(ConnectionClosed) as closed:
                await next_frame(ws)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401


async def test_while_the_database_is_down_new_streams_close_1013_and_open_again_after(
    live: Live,
) -> None:
    headers = {"Authorization": f"Bearer {live.tokens['acme']}"}
    async with database_down(live.database_url):
        for _ in range(4):  # fresh connections: both server processes answer
            async with connect(f"{live.ws_url}?token={live.tokens['acme']}") as ws:
                with pytest.raises(ConnectionClosed) as closed:
                    await next_frame(ws)
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.code == 1013, closed.value.rcvd
            assert "database unavailable" in closed.value.rcvd.reason
            async with httpx.AsyncClient(base_url=live.server.url, timeout=10) as http:
                r = await http.get("/api/v1/chats", headers=headers)
            assert r.status_code == 503 and r.headers["retry-after"], r.text
    for _ in range(50):
        try:
            ws, ready = await live.open("acme")
            break
        except ConnectionClosed:
            await asyncio.sleep(0.1)
    assert ready["type"] == "ready"
    message_id = uid("DB")
    live.post(upsert("acme-main", message_id, "de volta"))
    await frames_until(ws, is_message(message_id))
    await ws.close()


async def test_rotating_a_tenants_token_closes_its_open_streams_4401(live: Live) -> None:
    admin = {"Authorization": f"Bearer {ADMIN}"}
    name = uid("rot-").lower()
    r = live.http.post("/api/admin/tenants", json={"name": name}, headers=admin)
    live.tokens[name] = r.json()["token"]

    async def open_when_known() -> ClientConnection:
        """A stream of the tenant, once every server process has the token (NOTIFY)."""
        for _ in range(100):
            try:
                return (await live.open(name))[0]
            except ConnectionClosed:
                await asyncio.sleep(0.05)
        raise AssertionError("the token never opened a stream")

    sockets = [await open_when_known() for _ in range(4)]  # over both server processes
    other, _ = await live.open("acme")
    r = live.http.post(f"/api/admin/tenants/{name}/rotate-token", headers=admin)
    assert r.status_code == 200, r.text
    for ws in sockets:
        with pytest.raises(ConnectionClosed) as closed:
            await next_frame(ws)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
    # another tenant's stream is untouched, and the new token opens a stream
    message_id = uid("ROT")
    live.post(upsert("acme-main", message_id, "ainda aqui"))
    await frames_until(other, is_message(message_id))
    await other.close()
    live.tokens[name] = r.json()["token"]
    await (await open_when_known()).close()


async def test_sockets_waiting_for_their_token_are_capped_per_process(
    database_url: str, tmp_path: Path
) -> None:
    server = start_server(database_url, tmp_path, workers=1, SENSE_STREAM_MAX_UNAUTHENTICATED="2")
    url = server.url.replace("http://", "ws://") + "/api/v1/stream"
    try:
        waiting = [await connect(url, open_timeout=WAIT) for _ in range(2)]  # no token sent
        await asyncio.sleep(0.3)  # both are held by the server now
        async with connect(url, open_timeout=WAIT) as third:
            with pytest.raises(ConnectionClosed) as closed:
                await next_frame(third)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
        for ws in waiting:  # and the held ones are closed at the token deadline
            with pytest.raises(ConnectionClosed) as closed:
                await next_frame(ws, seconds=3 * frames.AUTH_TIMEOUT)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
    finally:
        server.stop()


# fan-out and isolation ----------------------------------------------------------------------------


async def test_each_tenant_sees_its_own_events_and_never_another_tenants(live: Live) -> None:
    # several sockets per tenant: with two workers, both processes end up with clients
    sockets = {t: [(await live.open(t))[0] for _ in range(4)] for t in ("acme", "globex")}
    acme_ids = [uid("A") for _ in range(6)]
    for n, message_id in enumerate(acme_ids):
        live.post(upsert("acme-main", message_id, f"acme {n}"))
    for ws in sockets["acme"]:
        frames = await frames_until(ws, is_message(acme_ids[-1]))
        created = [f["message"]["message_id"] for f in frames if f["type"] == "message.created"]
        # posted one after the other (each acknowledged first): they arrive in that order
        assert created == acme_ids, frames
        assert {f["message"]["instance"] for f in frames if "message" in f} == {"acme-main"}
    # a globex message posted after all of acme's were delivered: when a globex socket sees it,
    # any acme frame leaking to globex would already have shown up before it
    marker = uid("G")
    live.post(upsert("globex-main", marker, "globex only"))
    for ws in sockets["globex"]:
        frames = await frames_until(ws, is_message(marker))
        assert [message_id_of(f) for f in frames if "message" in f] == [marker], frames
        assert not any(message_id_of(f) in acme_ids for f in frames)
    # and acme never sees globex's
    closing = uid("A")
    live.post(upsert("acme-main", closing, "acme closing"))
    for ws in sockets["acme"]:
        frames = await frames_until(ws, is_message(closing))
        assert marker not in {message_id_of(f) for f in frames}, frames
    for ws in sockets["acme"] + sockets["globex"]:
        await ws.close()


async def test_created_then_updated_frames_carry_the_whole_resource(live: Live) -> None:
    ws, _ = await live.open("acme")
    message_id = uid("U")
    chat = "5511999999999@s.whatsapp.net"
    live.post(upsert("acme-main", message_id, "texto original", key={"fromMe": True}))
    [created] = await frames_until(ws, is_message(message_id))
    m = created["message"]
    assert created["cursor"].startswith("c")
    assert m["text"] == "texto original" and m["from_me"] is True and m["chat_jid"] == chat
    assert m["status"] == "delivered" and m["analysis"]["state"] == "pending"
    assert set(m) >= {"sender_jid", "push_name", "type", "reactions", "timestamp", "edited"}
    assert m["origin"] == "webhook"  # design.md: the same field as the resource's

    async def updated_after(body: dict[str, Any]) -> dict[str, Any]:
        live.post(body)
        frames = await frames_until(ws, is_message(message_id, "message.updated"))
        return frames[-1]["message"]  # type: ignore[no-any-return]

    m = await updated_after(status_update("acme-main", message_id, "READ"))
    assert m["status"] == "read" and m["text"] == "texto original"
    edit = {
        "event": "messages.edited",
        "instance": "acme-main",
        "data": {
            "key": {"remoteJid": chat, "fromMe": True, "id": message_id},
            "type": "MESSAGE_EDIT",
            "editedMessage": {"conversation": "texto corrigido"},
            "timestampMs": "1700000100000",
        },
    }
    m = await updated_after(edit)
    assert m["edited"] is True and m["text"] == "texto corrigido" and m["status"] == "read"
    reaction = upsert("acme-main", uid("R"), key={"remoteJid": "5511988887777@s.whatsapp.net"})
    reaction["data"]["message"] = {
        "reactionMessage": {
            "key": {"remoteJid": chat, "fromMe": True, "id": message_id},
            "text": "👍",
            "senderTimestampMs": {"low": 1700000200, "high": 0, "unsigned": False},
        }
    }
    reaction["data"]["messageType"] = "reactionMessage"
    m = await updated_after(reaction)
    assert m["reactions"] == [{"by": "5511988887777@s.whatsapp.net", "emoji": "👍"}]
    delete = {
        "event": "messages.delete",
        "instance": "acme-main",
        "data": {"remoteJid": chat, "fromMe": True, "id": message_id},
    }
    m = await updated_after(delete)
    assert m["deleted"] is True and m["edited"] is True and m["reactions"]
    await ws.close()


async def test_instance_qrcode_and_state_frames(live: Live) -> None:
    ws, _ = await live.open("acme")
    png = "data:image/png;base64,iVBORw0KGgo="
    qr = {
        "event": "qrcode.updated",
        "instance": "acme-main",
        "data": {
            "qrcode": {
                "instance": "acme-main",
                "pairingCode": "WZYEH1YY",
                "code": "2@abc",
                "base64": png,
            }
        },
    }
    live.post(qr)
    [frame] = await frames_until(ws, lambda f: f["type"] == "instance.qrcode")
    inst = frame["instance"]
    assert inst["name"] == "acme-main"
    assert inst["qrcode"]["base64"] == png and inst["qrcode"]["pairing_code"] == "WZYEH1YY"
    state = {
        "event": "connection.update",
        "instance": "acme-main",
        "data": {
            "instance": "acme-main",
            "state": "open",
            "statusReason": 200,
            "wuid": "5511900000001:3@s.whatsapp.net",
            "profileName": "Acme",
        },
    }
    live.post(state)
    [frame] = await frames_until(ws, lambda f: f["type"] == "instance.state")
    inst = frame["instance"]
    assert inst["state"] == "open" and inst["qrcode"] is None
    assert inst["owner_jid"] == "5511900000001@s.whatsapp.net"
    assert inst["profile_name"] == "Acme"
    await ws.close()


@pytest.fixture
def worker(live: Live, tmp_path: Path) -> Iterator[Path]:
    """A real `sense worker` on the live server's database and Redis; yields its log."""
    log = tmp_path / "worker.log"
    process = start_worker(live.server.env, log)
    try:
        yield log
    finally:
        stop(process)


async def test_analyzed_follows_created_for_the_same_message(live: Live, worker: Path) -> None:
    """The real enrichment worker: created first, then analyzed, on every socket."""
    sockets = [(await live.open("acme"))[0] for _ in range(2)]
    message_id = uid("S")
    live.post(upsert("acme-main", message_id, "Adorei o atendimento, muito obrigado!"))
    for ws in sockets:
        frames = await frames_until(ws, is_message(message_id, "message.analyzed"))
        kinds = [f["type"] for f in frames if message_id_of(f) == message_id]
        assert kinds == ["message.created", "message.analyzed"], kinds
        analysis = frames[-1]["analysis"]
        assert frames[-1]["instance"] == "acme-main"
        assert analysis["state"] == "done" and analysis["analyzable"] is True
        assert analysis["sentiment"] > 0.3 and analysis["satisfaction"] >= 65, analysis
        await ws.close()
    got = live.get("acme", f"/api/v1/messages/acme-main/{message_id}")
    assert got["analysis"] == analysis  # the frame and the resource say the same


# slow consumers --------------------------------------------------------------------------------


async def test_a_client_that_stops_reading_is_dropped_and_never_stalls_the_others(
    live: Live,
) -> None:
    # The slow socket reads nothing and keeps its kernel receive buffer tiny; big messages fill
    # its server-side buffer (BUFFER_BYTES) after a few dozen frames.
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", int(live.server.url.rsplit(":", 1)[1])))
    slow = await connect(
        f"{live.ws_url}?token={live.tokens['acme']}", sock=sock, max_queue=1, open_timeout=WAIT
    )
    assert (await next_frame(slow))["type"] == "ready"
    fast, _ = await live.open("acme")
    text = "muito obrigado " * 4000  # 60 kB
    posted = [uid("F") for _ in range(200)]
    received: list[str] = []

    async def read_fast() -> None:
        while len(received) < len(posted):
            frame = await next_frame(fast)
            if frame["type"] == "message.created":
                received.append(frame["message"]["message_id"])

    reader = asyncio.create_task(read_fast())
    async with httpx.AsyncClient(timeout=10) as http:
        for message_id in posted:
            r = await http.post(
                live.server.url + live.hook, json=upsert("acme-main", message_id, text)
            )
            assert r.status_code == 200
    await asyncio.wait_for(reader, 30)
    assert received == posted  # the fast one got everything, in order, while the slow one sat
    # the slow one now reads: what its socket held, then the end (1013 if the close frame
    # made it through the backlog, else just the end of the connection)
    got = 0
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            if (await next_frame(slow))["type"] == "message.created":
                got += 1
    assert got < len(posted)
    assert closed.value.rcvd is None or closed.value.rcvd.code == frames.CLOSE_SLOW
    assert "dropped: too slow" in live.server.log.read_text()
    await fast.close()


# reconnect and catch up -------------------------------------------------------------------------


async def test_catch_up_after_a_disconnect_has_no_gaps(live: Live) -> None:
    ws, ready = await live.open("acme")
    before = uid("C")
    live.post(upsert("acme-main", before, "antes"))
    [created] = await frames_until(ws, is_message(before))
    await ws.close()
    # while disconnected
    missed = [uid("C") for _ in range(7)]
    for message_id in missed:
        live.post(upsert("acme-main", message_id, "durante"))
    live.post(upsert("globex-main", uid("G"), "outro tenant"))

    async def pages(after: str, limit: int) -> list[str]:
        seen: list[str] = []
        async with asyncio.timeout(WAIT):
            while len(seen) < len(missed):
                body = live.get("acme", "/api/v1/messages", after=after, limit=limit)
                seen += [m["message_id"] for m in body["items"]]
                assert body["next"], body
                if not body["items"]:
                    await asyncio.sleep(0.05)  # not final yet (a transaction still running)
                after = body["next"]
        return seen

    # from the last message.created cursor: exactly the missed ones, oldest first, by pages
    assert await pages(created["cursor"], 3) == missed
    # from the ready cursor: the one seen live, then the missed ones
    body = live.get("acme", "/api/v1/messages", after=ready["cursor"], limit=100)
    assert [m["message_id"] for m in body["items"]] == [before, *missed]
    # the resumed socket sees what comes next
    ws, _ = await live.open("acme", by_message=True)
    after = uid("C")
    live.post(upsert("acme-main", after, "depois"))
    frames = await frames_until(ws, is_message(after))
    assert not {message_id_of(f) for f in frames} & set(missed)
    await ws.close()
    r = live.http.get(
        "/api/v1/messages",
        params={"after": "nonsense"},
        headers={"Authorization": f"Bearer {live.tokens['acme']}"},
    )
    assert r.status_code == 400


# Redis restart ------------------------------------------------------------------------------------


async def test_redis_restart_mid_stream_sends_resync_and_the_stream_resumes(
    clean_db: str, tmp_path: Path
) -> None:
    own = EmbeddedRedis(tmp_path).start()
    server = start_server(clean_db, tmp_path, workers=2, SENSE_REDIS_URL=own.url)
    try:
        live = Live(server, clean_db, own.url)
        ws, _ = await live.open("acme")
        first = uid("B")
        live.post(upsert("acme-main", first, "antes do restart"))
        await frames_until(ws, is_message(first))
        own.stop()
        own.start()
        frames = await frames_until(ws, lambda f: f["type"] == "resync", seconds=20)
        assert frames[-1]["reason"]
        # re-subscribed: new events flow again, with no reconnect of the client
        later = uid("B")
        live.post(upsert("acme-main", later, "depois do restart"))
        await frames_until(ws, is_message(later))
        await ws.close()
    finally:
        server.stop()
        own.stop()
