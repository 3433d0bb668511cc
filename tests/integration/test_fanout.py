"""Fan-out against real local HTTP receivers: the app in-process (webhooks in, endpoints API),
the workers' dispatcher in the test's event loop, each receiver a real HTTP server in a thread.
Signatures are checked with the reference `standardwebhooks` package."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import asyncpg
import httpx
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from starlette.applications import Starlette

from service import db, outbound
from service.settings import load_settings
from tests.integration import polling
from tests.integration.conftest import Deployment, running_app, status_update, upsert
from workers.fanout import Dispatcher


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes

    @property
    def doc(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """A receiver: answers each request with the next of ``answers`` (then 200), after
    ``delay`` seconds; keeps what it was sent."""

    answers: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    delay: float = 0.0
    hold_first: threading.Event | None = None  # the first request waits for it
    got: list[Received] = field(default_factory=list)  # every request, answered or not
    accepted: list[Received] = field(default_factory=list)  # those answered 2xx

    def __post_init__(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                got = Received({k.lower(): v for k, v in self.headers.items()}, body)
                receiver.got.append(got)
                if receiver.hold_first is not None and len(receiver.got) == 1:
                    receiver.hold_first.wait(60)
                if receiver.delay:
                    time.sleep(receiver.delay)
                status, headers = receiver.answers.pop(0) if receiver.answers else (200, {})
                if 200 <= status < 300:
                    receiver.accepted.append(got)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receivers() -> Iterator[list[Receiver]]:
    made: list[Receiver] = []
    yield made
    for r in made:
        r.close()


def receiver(receivers: list[Receiver], **kwargs: Any) -> Receiver:
    r = Receiver(**kwargs)
    receivers.append(r)
    return r


@pytest.fixture
async def app(conn: asyncpg.Connection, database_url: str) -> AsyncIterator[Starlette]:
    """Local receivers are allowed (as under `sense run`)."""
    async with running_app(database_url, fanout_allow_private=True) as application:
        yield application


@pytest.fixture
async def dispatcher(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Dispatcher]:
    """The workers' dispatcher, quick: polls every 50 ms, retries after 0.2 s, 0.4 s..."""
    monkeypatch.setattr(outbound, "RETRY_SCHEDULE", (0.2, 0.4, 0.8, 1.6))
    settings = load_settings(
        {},
        database_url=database_url,
        fanout_allow_private=True,
        fanout_poll_seconds=0.05,
        fanout_timeout_seconds=5,
    )
    d = Dispatcher(settings)
    stop = threading.Event()
    task = asyncio.create_task(d.run(stop))
    yield d
    stop.set()
    await asyncio.wait_for(task, 30)


async def endpoint(deployment: Deployment, tenant: str, url: str, **fields: Any) -> dict[str, Any]:
    r = await deployment.client.post(
        "/api/v1/endpoints",
        json={"url": url, **fields},
        headers={"Authorization": f"Bearer {deployment.tokens[tenant]}"},
    )
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def verified(secret: str, got: Received) -> Any:
    """The body, once the reference verifier accepts its signature."""
    return Webhook(secret).verify(got.body, got.headers)


async def until(probe: Any, seconds: float = 20.0) -> None:
    async def check() -> bool:
        return bool(probe())

    await polling.eventually(check, bool, seconds)


async def test_signed_deliveries_in_order_for_one_tenant_only(
    deployment: Deployment, dispatcher: Dispatcher, receivers: list[Receiver]
) -> None:
    mine, theirs = receiver(receivers), receiver(receivers)
    ep = await endpoint(deployment, "acme", mine.url, events=["message.created", "message.updated"])
    other = await endpoint(deployment, "globex", theirs.url)
    assert ep["secret"].startswith("whsec_") and ep["mode"] == "sense"
    for n in range(3):
        assert (
            await deployment.post(upsert("acme-main", f"FO{n}", f"pedido {n}"))
        ).status_code == 200
    assert (await deployment.post(status_update("acme-main", "FO0", "READ"))).status_code == 200
    assert (await deployment.post(upsert("globex-main", "GX1", "outro"))).status_code == 200
    await until(lambda: len(mine.accepted) == 4 and len(theirs.accepted) >= 1)
    docs = [verified(ep["secret"], got) for got in mine.accepted]
    assert [(d["type"], d["data"]["message_id"]) for d in docs] == [
        ("message.created", "FO0"),
        ("message.created", "FO1"),
        ("message.created", "FO2"),
        ("message.updated", "FO0"),
    ]
    assert docs[3]["data"]["status"] == "read" and docs[0]["data"]["instance"] == "acme-main"
    assert len({got.headers["webhook-id"] for got in mine.accepted}) == 4
    # tenant B's endpoint has tenant B's events only, signed with its own secret
    theirs_docs = [verified(other["secret"], got) for got in theirs.accepted]
    assert {d["data"]["message_id"] for d in theirs_docs if d["type"].startswith("message.")} == {
        "GX1"
    }
    with pytest.raises(WebhookVerificationError):
        verified(other["secret"], mine.accepted[0])


async def test_a_receiver_down_then_back_gets_every_event_once_in_order(
    deployment: Deployment, dispatcher: Dispatcher, receivers: list[Receiver]
) -> None:
    flaky = receiver(receivers, answers=[(503, {}), (500, {}), (502, {})])
    ep = await endpoint(deployment, "acme", flaky.url, events=["message.created"])
    for n in range(4):
        assert (await deployment.post(upsert("acme-main", f"DN{n}", "x"))).status_code == 200
    await until(lambda: len(flaky.accepted) == 4)
    ids = [verified(ep["secret"], got)["data"]["message_id"] for got in flaky.accepted]
    assert ids == ["DN0", "DN1", "DN2", "DN3"]
    first = flaky.got[0].headers["webhook-id"]
    # the three failures were the first event, tried again with the same id
    assert [got.headers["webhook-id"] for got in flaky.got[:4]] == [first] * 4
    attempts = (
        await deployment.get(f"/api/v1/endpoints/{ep['id']}/attempts", "acme", limit=10)
    ).json()["items"]
    assert [a["status"] for a in attempts][-4:] == [200, 502, 500, 503]  # newest first
    assert all(a["webhook_id"] and a["ms"] >= 0 for a in attempts)


async def test_a_slow_receiver_does_not_hold_another_tenants_deliveries(
    deployment: Deployment, dispatcher: Dispatcher, receivers: list[Receiver]
) -> None:
    slow = receiver(receivers, delay=3.0)
    quick = receiver(receivers)
    await endpoint(deployment, "acme", slow.url, events=["message.created"])
    await endpoint(deployment, "globex", quick.url, events=["message.created"])
    for n in range(3):
        await deployment.post(upsert("acme-main", f"SL{n}", "x"))
        await deployment.post(upsert("globex-main", f"QK{n}", "x"))
    await until(lambda: len(quick.accepted) == 3)
    assert len(slow.accepted) <= 1  # still on its first (or second) while the other is done


async def test_replay_sends_exactly_the_asked_range_again(
    deployment: Deployment, dispatcher: Dispatcher, receivers: list[Receiver]
) -> None:
    r = receiver(receivers)
    ep = await endpoint(deployment, "acme", r.url, events=["message.created"])
    for n in range(5):
        await deployment.post(upsert("acme-main", f"RP{n}", "x"))
    await until(lambda: len(r.accepted) == 5)
    second = r.accepted[1].headers["webhook-id"]  # msg_<xid>_<seq>: the position after it
    _, xid, seq = second.split("_")
    answer = await deployment.client.post(
        f"/api/v1/endpoints/{ep['id']}/replay",
        json={"after": f"f{xid}.{seq}"},
        headers={"Authorization": f"Bearer {deployment.tokens['acme']}"},
    )
    assert answer.status_code == 202, answer.text
    await until(lambda: len(r.accepted) == 8)
    again = [verified(ep["secret"], got)["data"]["message_id"] for got in r.accepted[5:]]
    assert again == ["RP2", "RP3", "RP4"]
    assert [g.headers["webhook-id"] for g in r.accepted[5:]] == [
        g.headers["webhook-id"] for g in r.accepted[2:5]
    ]


async def test_410_disables_the_endpoint(
    deployment: Deployment, dispatcher: Dispatcher, receivers: list[Receiver]
) -> None:
    gone = receiver(receivers, answers=[(410, {})])
    ep = await endpoint(deployment, "acme", gone.url, events=["message.created"])
    await deployment.post(upsert("acme-main", "GN1", "x"))

    async def disabled() -> Any:
        got = (await deployment.get(f"/api/v1/endpoints/{ep['id']}", "acme")).json()
        return not got["enabled"] and got

    state = await polling.eventually(disabled, bool, 20)
    assert "410" in state["disabled_reason"]
    assert len(gone.got) == 1 and not gone.accepted


async def test_private_addresses_are_refused_unless_allowed(
    deployment: Deployment, receivers: list[Receiver], database_url: str
) -> None:
    r = receiver(receivers)
    async with running_app(database_url) as strict:  # SENSE_FANOUT_ALLOW_PRIVATE unset
        transport = httpx.ASGITransport(app=strict)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            for url in (
                r.url,
                "http://169.254.169.254/latest/meta-data",
                "http://10.0.0.7/hook",
                "http://[::1]:8080/",
                "ftp://example.com/",
                "http://user:pw@example.com/",
            ):
                answer = await client.post(
                    "/api/v1/endpoints",
                    json={"url": url},
                    headers={"Authorization": f"Bearer {deployment.tokens['acme']}"},
                )
                assert answer.status_code == 422, (url, answer.text)
                assert answer.json()["error"] == "url_refused"
    assert outbound.refusal("8.8.8.8") is None
    assert outbound.refusal("::ffff:127.0.0.1") == "loopback"


async def test_an_allowed_url_is_checked_again_at_delivery(
    deployment: Deployment, receivers: list[Receiver], database_url: str
) -> None:
    """A name re-pointed at a private address after the endpoint was saved (DNS rebinding) is
    not called: the dispatcher checks the address it is about to connect to."""
    r = receiver(receivers)
    ep = await endpoint(deployment, "acme", r.url, events=["message.created"])
    await deployment.post(upsert("acme-main", "RB1", "x"))
    strict = Dispatcher(load_settings({}, database_url=database_url, fanout_poll_seconds=0.05))
    stop = threading.Event()
    task = asyncio.create_task(strict.run(stop))
    try:

        async def refused() -> Any:
            items = (await deployment.get(f"/api/v1/endpoints/{ep['id']}/attempts", "acme")).json()[
                "items"
            ]
            return items and items[0]

        attempt = await polling.eventually(refused, bool, 20)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    assert attempt["status"] is None and "loopback" in attempt["error"]
    assert r.got == []


async def test_evolution_mode_sends_the_envelope_as_received(
    deployment: Deployment, dispatcher: Dispatcher, receivers: list[Receiver]
) -> None:
    r = receiver(receivers)
    ep = await endpoint(
        deployment,
        "acme",
        r.url,
        mode="evolution",
        events=["message.created"],
        filters={"from_me": False},
    )
    body = upsert("acme-main", "EV1", "como veio")
    body["data"]["message"]["base64"] = "QUJD" * 1000  # inline media: not forwarded
    mine = upsert("acme-main", "EV2", "eu mesmo", key={"fromMe": True})
    for b in (body, mine, status_update("acme-main", "EV1", "READ")):
        assert (await deployment.post(b)).status_code == 200
    await until(lambda: len(r.accepted) >= 1)
    await asyncio.sleep(0.5)  # nothing else is coming: EV2 is from_me, the receipt an update
    assert len(r.accepted) == 1
    sent = verified(ep["secret"], r.accepted[0])
    del body["data"]["message"]["base64"]
    # as received, but `destination` names the endpoint, never this service's webhook URL
    # (it holds the source's secret, shared by every tenant of that Evolution server)
    assert sent == {**body, "destination": r.url}


async def test_the_cli_creates_lists_and_replays(
    deployment: Deployment, receivers: list[Receiver], database_url: str
) -> None:
    r = receiver(receivers)
    env = {**os.environ, "SENSE_DATABASE_URL": database_url, "SENSE_FANOUT_ALLOW_PRIVATE": "true"}

    def sense(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "service.cli", "endpoint", *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)

    made = await asyncio.to_thread(
        sense, "create", "--tenant", "acme", r.url, "--events", "message.created", "--no-groups"
    )
    assert made.returncode == 0, made.stderr
    created = json.loads(made.stdout)
    assert created["secret"].startswith("whsec_") and created["filters"] == {"groups": False}
    listed = json.loads((await asyncio.to_thread(sense, "list", "--tenant", "acme")).stdout)
    assert [e["id"] for e in listed["items"]] == [created["id"]]
    assert "secret" not in listed["items"][0]  # shown once
    replayed = await asyncio.to_thread(
        sense, "replay", "--tenant", "acme", created["id"], "--since", "1h"
    )
    assert replayed.returncode == 0, replayed.stderr
    assert json.loads(replayed.stdout)["position"].startswith("f")
    refused = await asyncio.to_thread(
        sense, "create", "--tenant", "acme", "http://10.0.0.1/x", "--events", "nope"
    )
    assert refused.returncode == 1 and "events must be among" in refused.stderr


async def test_the_analysis_is_delivered_as_message_analyzed(
    deployment: Deployment,
    dispatcher: Dispatcher,
    receivers: list[Receiver],
    conn: asyncpg.Connection,
) -> None:
    r = receiver(receivers)
    ep = await endpoint(deployment, "acme", r.url, events=["message.analyzed"])
    await deployment.post(upsert("acme-main", "AN1", "adorei"))
    row = await conn.fetchrow("SELECT tenant_id, instance_id FROM messages")
    # what the worker writes (workers/store.py), in the same statement as the feed row
    await conn.fetch(
        db.q("enrich_save"),
        [row["tenant_id"]],
        [row["instance_id"]],
        ["AN1"],
        ["done"],
        [0.8],
        ["joy"],
        [90],
        [],  # no embedding: its slot is NULL
        "test/1",
        [None],
        512,
    )
    await until(lambda: len(r.accepted) == 1)
    doc = verified(ep["secret"], r.accepted[0])
    assert doc["type"] == "message.analyzed" and doc["data"]["message_id"] == "AN1"
    assert doc["data"]["analysis"]["state"] == "done"
    assert doc["data"]["analysis"]["emotion"] == "joy"


async def test_redirects_are_not_followed_and_days_of_failure_disable_with_the_backlog_kept(
    deployment: Deployment,
    receivers: list[Receiver],
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    elsewhere = receiver(receivers)
    moved = receiver(receivers, answers=[(302, {"Location": elsewhere.url})] * 50)
    ep = await endpoint(deployment, "acme", moved.url, events=["message.created"])
    for n in range(2):
        await deployment.post(upsert("acme-main", f"FD{n}", "x"))
    monkeypatch.setattr(outbound, "RETRY_SCHEDULE", (0.2, 0.2, 0.2))
    settings = load_settings(
        {},
        database_url=database_url,
        fanout_allow_private=True,
        fanout_poll_seconds=0.05,
        fanout_disable_after_seconds=0.5,  # "days", shortened
    )
    stop = threading.Event()
    task = asyncio.create_task(Dispatcher(settings).run(stop))
    try:

        async def disabled() -> Any:
            got = (await deployment.get(f"/api/v1/endpoints/{ep['id']}", "acme")).json()
            return not got["enabled"] and got

        state = await polling.eventually(disabled, bool, 20)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    assert state["disabled_reason"].startswith("failing since")
    assert len(moved.got) >= 3 and elsewhere.got == []  # the redirect was never followed
    attempts = (await deployment.get(f"/api/v1/endpoints/{ep['id']}/attempts", "acme")).json()[
        "items"
    ]
    assert {a["status"] for a in attempts} == {302}
    # re-enabled once the receiver is fixed: the kept backlog arrives, in order
    moved.answers.clear()
    patched = await deployment.client.patch(
        f"/api/v1/endpoints/{ep['id']}",
        json={"enabled": True},
        headers={"Authorization": f"Bearer {deployment.tokens['acme']}"},
    )
    assert patched.status_code == 200 and patched.json()["enabled"]
    stop = threading.Event()
    task = asyncio.create_task(Dispatcher(settings).run(stop))
    try:
        await until(lambda: len(moved.accepted) == 2)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    assert [verified(ep["secret"], g)["data"]["message_id"] for g in moved.accepted] == [
        "FD0",
        "FD1",
    ]
