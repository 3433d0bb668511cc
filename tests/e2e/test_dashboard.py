"""The dashboard at / in a real headless browser (Debian's Chromium driven by Playwright)
against the real server: log in, see a webhook's message appear live and its badge fill in,
search for it. Screenshots (desktop and phone width) go to tests/artifacts/.

The analyses come from a real `sense worker`; what its default analyzer says of a text is
read from the analyzer itself, so the page is held to the worker's own answer."""

from __future__ import annotations

import base64
import functools
import hashlib
import math
import shutil
import struct
import zlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from playwright.async_api import (
    Browser,
    ConsoleMessage,
    Page,
    Response,
    WebSocketRoute,
    async_playwright,
    expect,
)

from tests.e2e.conftest import Server, launch, start_server, start_worker, stop
from tests.e2e.test_stream import Live, uid
from tests.integration.conftest import status_update, upsert
from tests.integration.polling import eventually_sync
from tests.integration.test_fanout import Receiver
from workers.provider import LocalProvider

pytestmark = pytest.mark.e2e

ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"
TIMEOUT = 15_000  # ms, for every wait: a loaded 2-core box is slow, never a fixed sleep
expect.set_options(timeout=TIMEOUT)


@pytest.fixture
def live(clean_db: str, redis_url: str, tmp_path: Path) -> Iterator[Live]:
    server: Server = start_server(
        clean_db, tmp_path, workers=2, SENSE_REDIS_URL=redis_url, SENSE_FANOUT_ALLOW_PRIVATE="true"
    )
    running = Live(server, clean_db, redis_url)
    running.worker = start_worker(server.env, tmp_path / "worker.log")  # the real analyses
    try:
        yield running
    finally:
        if running.worker is not None:
            stop(running.worker)
        server.stop()
        running.server.stop()  # the one restart() put in its place, if any


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is needed (the Makefile's setup installs it)"
    async with async_playwright() as p:
        launched = await p.chromium.launch(executable_path=chromium, headless=True)
        try:
            yield launched
        finally:
            await launched.close()


def restart(old: Server) -> Server:
    """The same server again, on the same port (the page reconnects to its own origin)."""
    return launch(old.url, old.env, old.log, append=True)


@functools.cache
def default_analyzer() -> LocalProvider:
    """The worker's default analyzer."""
    return LocalProvider()


def qr_like_png(modules: int = 25, scale: int = 6) -> str:
    """A data: URL of a QR-looking PNG (finder squares, seeded noise): what Evolution sends is
    a real QR; the page only has to show it."""
    bits = hashlib.blake2b(b"pairing", digest_size=64).digest() * 10

    def dark(x: int, y: int) -> bool:
        for fx, fy in ((0, 0), (modules - 7, 0), (0, modules - 7)):
            if fx <= x < fx + 7 and fy <= y < fy + 7:
                dx, dy = x - fx, y - fy
                ring = max(abs(dx - 3), abs(dy - 3))
                return ring != 2
        n = y * modules + x
        return bool(bits[n // 8] >> (n % 8) & 1)

    side = (modules + 8) * scale  # a quiet zone of 4 modules
    rows = []
    for py in range(side):
        y = py // scale - 4
        row = bytes(
            0
            if 0 <= y < modules and 0 <= px // scale - 4 < modules and dark(px // scale - 4, y)
            else 255
            for px in range(side)
        )
        rows.append(b"\x00" + row)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit greyscale
    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"".join(rows)))
        + chunk(b"IEND", b"")
    )
    return "data:image/png;base64," + base64.b64encode(png).decode()


def pairing(instance: str) -> dict[str, object]:
    qrcode = {
        "instance": instance,
        "pairingCode": "WZYEH1YY",
        "code": "2@x",
        "base64": qr_like_png(),
    }
    return {"event": "qrcode.updated", "instance": instance, "data": {"qrcode": qrcode}}


async def open_dashboard(
    browser: Browser, live: Live, width: int, height: int, login_shot: str | None = None
) -> tuple[Page, list[str]]:
    page = await browser.new_page(viewport={"width": width, "height": height})
    page.set_default_timeout(TIMEOUT)
    problems: list[str] = []

    def on_console(msg: ConsoleMessage) -> None:
        # failed requests are checked by URL below (one 503 is expected)
        if msg.type == "error" and not msg.text.startswith("Failed to load resource"):
            problems.append(msg.text)

    def on_response(response: Response) -> None:
        expected = "mode=semantic" in response.url and response.status == 503
        if response.status >= 400 and not expected:
            problems.append(f"{response.status} {response.url}")

    page.on("console", on_console)
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    await page.goto(live.server.url + "/")
    await expect(page.locator("#token")).to_be_focused()
    if login_shot:
        await page.screenshot(path=str(ARTIFACTS / login_shot))
    # a wrong token is refused on the spot, with a message
    await page.fill("#token", "st_wrong")
    await page.click("#login-form button[type=submit]")
    await expect(page.locator("#login-error")).to_have_text("That token was not accepted.")
    await page.fill("#token", live.tokens["acme"])
    await page.click("#login-form button[type=submit]")
    await expect(page.locator("#live")).to_have_attribute("data-state", "live", timeout=TIMEOUT)
    page.on("response", on_response)  # from here on (the wrong token was a 401 on purpose)
    return page, problems


async def test_login_live_message_badge_and_search(browser: Browser, live: Live) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    live.post(pairing("acme-main"))
    # the tenant's endpoint (fan-out): the worker delivers to it, the page shows the attempts
    hook = Receiver()
    made = live.endpoint("acme", hook.url, events=["message.created"], description="crm")
    earlier = uid("E")
    earlier_text = "Bom dia, preciso da segunda via do boleto"
    live.post(upsert("acme-main", earlier, earlier_text))
    eventually_sync(lambda: len(hook.accepted), lambda n: n >= 1, 30)
    hook.close()
    # a gap the checks filled earlier (service/backfill.py) is shown on the instance's panel
    conn = await asyncpg.connect(live.database_url)
    try:
        await conn.execute(
            "INSERT INTO backfill_state (instance_id, gaps_found, recovered, last_gap_at)"
            " SELECT instance_id, 1, 2, now() FROM instances WHERE name = 'acme-main'"
        )
    finally:
        await conn.close()
    page, problems = await open_dashboard(browser, live, 1280, 800)
    await expect(page.locator("#tenant-name")).to_have_text("acme", timeout=TIMEOUT)
    instance = page.locator('#instances [data-instance="acme-main"]')
    await expect(instance.locator(".state")).to_have_text("pairing")
    await expect(instance.locator(".recovered")).to_have_text("2 messages recovered")
    endpoint = page.locator(f'#endpoints [data-endpoint="{made["id"]}"]')
    await expect(endpoint.locator(".name")).to_have_text("crm")
    await expect(endpoint.locator(".state")).to_have_text("ok")
    await expect(endpoint.locator(".attempt").first).to_contain_text("200 · ")
    await expect(instance.locator(".qr img")).to_be_visible()
    await expect(page.locator(f'#messages [data-id="acme-main/{earlier}"]')).to_be_visible()

    # live: a message posted now appears, then the worker's analysis fills its badge in
    message_id = uid("L")
    html = "<img src=x onerror=alert(1)> Adorei o atendimento, muito obrigado!"
    live.post(upsert("acme-main", message_id, html))
    item = page.locator(f'#messages [data-id="acme-main/{message_id}"]')
    await expect(item.locator(".body")).to_have_text(html)  # as text, never as HTML
    # what the worker's default analyzer says of both texts
    liked, neutral = default_analyzer().analyze([html, earlier_text])
    badge = item.locator('.badge[data-state="done"]')
    await expect(badge).to_have_text(liked.emotion)
    await expect(badge).to_have_attribute("data-tone", "pos")
    await expect(page.locator("#trend")).to_be_visible()
    # the trend and the chat's rolling satisfaction take both in
    # as the page rounds (Math.round: a half goes up; Python's round() goes to even)
    average = str(math.floor((liked.satisfaction + neutral.satisfaction) / 2 + 0.5))
    await expect(page.locator("#trend-value")).to_have_text(average)
    chat = page.locator('#chats [data-chat="5511999999999@s.whatsapp.net"]')
    await expect(chat.locator(".preview")).to_contain_text("Adorei o atendimento")
    await expect(chat.locator(".score")).to_have_text(average)
    first = page.locator(f'#messages [data-id="acme-main/{earlier}"] .badge[data-state="done"]')
    await expect(first).to_have_text(neutral.emotion)
    # updates land in place: a reaction on it
    reaction = upsert("acme-main", uid("R"), key={"remoteJid": "5511988887777@s.whatsapp.net"})
    reaction["data"]["message"] = {
        "reactionMessage": {
            "key": {"remoteJid": "5511999999999@s.whatsapp.net", "fromMe": False, "id": message_id},
            "text": "❤️",
        }
    }
    reaction["data"]["messageType"] = "reactionMessage"
    live.post(reaction)
    await expect(item.locator(".reactions")).to_have_text("❤️")
    await expect(page.locator("#messages .message")).to_have_count(2)
    await page.screenshot(path=str(ARTIFACTS / "dashboard-desktop.png"))

    # search (words): the message, with the match marked
    await page.fill("#q", "atendimentos")
    await page.press("#q", "Enter")
    hit = page.locator(f'#results-list [data-id="acme-main/{message_id}"]')
    await expect(hit).to_be_visible()
    await expect(hit.locator("mark")).to_have_text("atendimento")
    await expect(page.locator("#results-title")).to_contain_text("1 result")
    await page.screenshot(path=str(ARTIFACTS / "dashboard-search-desktop.png"))
    # search by meaning: the worker embeds the query
    await page.select_option("#mode", "semantic")
    await page.fill("#q", "obrigado pelo atendimento")
    await page.press("#q", "Enter")
    await expect(page.locator(f'#results-list [data-id="acme-main/{message_id}"]')).to_be_visible()
    # with no worker to embed a new query: said plainly, nothing breaks
    assert live.worker is not None
    stop(live.worker)
    await page.fill("#q", "segunda via")
    await page.press("#q", "Enter")
    await expect(page.locator("#results-title")).to_contain_text("unavailable")
    await page.click("#results-close")
    await expect(page.locator("#messages")).to_be_visible()
    assert not problems, problems
    await page.close()


async def test_phone_width_reconnect_and_logout(browser: Browser, live: Live) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    live.post(pairing("acme-main"))
    first = uid("P")
    live.post(
        upsert("acme-main", first, "Oi! Meu pedido chegou atrasado de novo.", key={"fromMe": False})
    )
    page, problems = await open_dashboard(browser, live, 375, 740, "dashboard-phone-login.png")
    # phone: the conversation list first, nothing wider than the screen
    chat = page.locator('#chats [data-chat="5511999999999@s.whatsapp.net"]')
    await expect(chat).to_be_visible()
    assert await page.evaluate("document.documentElement.scrollWidth") <= 375
    await page.screenshot(path=str(ARTIFACTS / "dashboard-phone-list.png"))
    await chat.click()
    item = page.locator(f'#messages [data-id="acme-main/{first}"]')
    await expect(item).to_be_visible()
    await expect(page.locator("#back")).to_be_visible()
    mine = uid("P")
    live.post(
        upsert("acme-main", mine, "Sinto muito! Já estamos verificando.", key={"fromMe": True})
    )
    mine_item = page.locator(f'#messages [data-id="acme-main/{mine}"]')
    await expect(mine_item).to_be_visible()
    live.post(status_update("acme-main", mine, "READ"))
    await expect(mine_item.locator(".status")).to_contain_text("read")
    expected = default_analyzer().analyze(["Oi! Meu pedido chegou atrasado de novo."])[0]
    await expect(item.locator('.badge[data-state="done"]')).to_have_text(expected.emotion)
    assert await page.evaluate("document.documentElement.scrollWidth") <= 375
    await page.screenshot(path=str(ARTIFACTS / "dashboard-phone-chat.png"))

    # the server goes away and comes back; the page reconnects (with backoff) and catches up
    # what was committed while it was away. Until `hold` is released its reconnects are
    # refused in the browser, so the message below lands while the page is surely offline.
    hold = True

    async def reconnects(ws: WebSocketRoute) -> None:
        if hold:
            await ws.close(code=1006, reason="held by the test")
        else:
            ws.connect_to_server()

    await page.route_web_socket("**/api/v1/stream", reconnects)
    live.server.stop()
    await expect(page.locator("#live")).not_to_have_attribute("data-state", "live")
    live.server = restart(live.server)
    missed = uid("P")
    live.post(upsert("acme-main", missed, "Enviado durante a queda"))
    hold = False
    await expect(page.locator("#live")).to_have_attribute("data-state", "live", timeout=30_000)
    await expect(page.locator(f'#messages [data-id="acme-main/{missed}"]')).to_be_visible()

    await page.click("#logout")
    await expect(page.locator("#login")).to_be_visible()
    await expect(page.locator("#messages .message")).to_have_count(0)
    assert await page.evaluate("sessionStorage.length + localStorage.length") == 0
    assert not [p for p in problems if "WebSocket" not in p and "ERR_CONNECTION_REFUSED" not in p]
    await page.close()
