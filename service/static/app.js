// sense dashboard: plain JS, no build step. Talks to the read API and WS /api/v1/stream
// (frames documented in service/live/__init__.py and the README's "Live stream" section).
"use strict";

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "sense.token";
const RECENT_CURSORS = 64; // resume from the smallest of these (frames may arrive a bit out of order)
const ROLLING = 50; // the chats API averages the last 50 analysed messages of a chat
const SILENCE_MS = 60000; // the server sends a heartbeat every 25 s: this much silence is a dead link
const MAX_SHOWN = 500; // messages kept on screen per view

const state = {
  token: null,
  instances: new Map(), // name -> instance resource
  chats: new Map(), // "instance|chat_jid" -> chat
  messages: new Map(), // "instance/message_id" -> message resource
  arrival: new Map(), // "instance/message_id" -> order first seen (ties of equal timestamps)
  pendingAnalysis: new Map(), // analysed before its "created" frame arrived
  view: null, // null = all conversations, else {instance, chat}
  ws: null,
  wsAttempt: 0,
  retryTimer: null,
  watchdog: null,
  readyCursor: null,
  cursors: [],
  connectedOnce: false,
  searchSeq: 0,
  loadSeq: 0,
  frame: null, // pending requestAnimationFrame for the side panels
};

function resetState() {
  for (const k of ["instances", "chats", "messages", "arrival", "pendingAnalysis"]) state[k] = new Map();
  Object.assign(state, { view: null, wsAttempt: 0, readyCursor: null, cursors: [], connectedOnce: false });
  state.searchSeq++;
  state.loadSeq++;
}

// --- DOM helpers (data only ever goes in as text, never as HTML) -------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const keyOf = (m) => `${m.instance}/${m.message_id}`;
const chatKey = (instance, jid) => `${instance}|${jid}`;

function fmtTime(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  const today = new Date();
  const time = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  return d.toDateString() === today.toDateString()
    ? time
    : `${d.toLocaleDateString([], { day: "2-digit", month: "short" })} ${time}`;
}

function phoneOf(jid) {
  if (!jid) return "";
  const user = jid.split("@")[0];
  return /^\d+$/.test(user) ? `+${user}` : user;
}

const TYPE_LABEL = {
  image: "📷 Photo", video: "🎬 Video", audio: "🎤 Audio", document: "📄 Document",
  sticker: "Sticker", location: "📍 Location", contact: "👤 Contact", poll: "📊 Poll",
  reaction: "Reaction", other: "Message",
};

// --- API ------------------------------------------------------------------------------------------

async function api(path, params) {
  const url = new URL(path, location.origin);
  for (const [k, v] of Object.entries(params || {})) if (v !== null && v !== undefined) url.searchParams.set(k, v);
  const r = await fetch(url, { headers: { Authorization: `Bearer ${state.token}` } });
  if (r.status === 401) {
    logout("That token was not accepted.");
    throw new Error("unauthorized");
  }
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw Object.assign(new Error(body.detail || `HTTP ${r.status}`), { status: r.status });
  return body;
}

// --- login -------------------------------------------------------------------------------------

async function login(token, remember) {
  const r = await fetch("/api/v1/instances", { headers: { Authorization: `Bearer ${token}` } });
  if (r.status === 401) throw new Error("That token was not accepted.");
  if (!r.ok) throw new Error(`The server answered ${r.status}.`);
  resetState();
  state.token = token;
  // remembered: until sign-out on this device; otherwise only for this tab
  (remember ? localStorage : sessionStorage).setItem(TOKEN_KEY, token);
  (remember ? sessionStorage : localStorage).removeItem(TOKEN_KEY);
  $("login").hidden = true;
  $("app").hidden = false;
  setInstances((await r.json()).items);
  // subscribe first, then read: whatever commits in between arrives live and is merged
  connect();
  await Promise.all([loadChats(), openView(null)]);
  renderMessages(); // again, now that chat names are known
  loadEndpoints().catch(() => {});
  state.endpointsTimer = setInterval(() => loadEndpoints().catch(() => {}), ENDPOINTS_EVERY_MS);
}

function logout(message) {
  localStorage.removeItem(TOKEN_KEY);
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = null;
  disconnect();
  clearInterval(state.endpointsTimer);
  resetState();
  for (const id of ["instances", "endpoints", "chats", "messages", "results-list"]) $(id).replaceChildren();
  $("endpoints-panel").hidden = true;
  $("results").hidden = true;
  $("messages").hidden = false;
  $("trend").hidden = true;
  $("app").classList.remove("show-chat");
  $("tenant-name").textContent = "sense";
  $("q").value = "";
  $("app").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message || "";
  $("token").value = "";
  $("token").focus();
}

// --- instances -----------------------------------------------------------------------------------

const STATE_LABEL = { open: "connected", connecting: "pairing", close: "disconnected", refused: "refused" };

function setInstances(items) {
  state.instances = new Map(items.map((i) => [i.name, i]));
  renderInstances();
}

function renderInstances() {
  const list = $("instances");
  list.replaceChildren();
  if (!state.instances.size) list.append(h("li", { class: "muted" }, "No instances yet."));
  for (const inst of [...state.instances.values()].sort((a, b) => a.name.localeCompare(b.name))) {
    const qr = inst.qrcode && inst.state !== "open" ? inst.qrcode : null;
    // a QR on screen means it is waiting to be scanned, whatever the last state event said
    const shown = qr ? "connecting" : inst.state || "unknown";
    list.append(
      h("li", { class: "instance", "data-instance": inst.name },
        h("div", { class: "row" },
          h("span", { class: "name", title: inst.name }, inst.name),
          h("span", { class: "state", "data-state": shown }, STATE_LABEL[shown] || shown)),
        inst.profile_name || inst.owner_jid
          ? h("div", { class: "owner muted" }, inst.profile_name || "", " ", phoneOf(inst.owner_jid))
          : null,
        recoveredLine(inst.backfill),
        qr
          ? h("div", { class: "qr" },
              qr.base64 ? h("img", { src: qr.base64, alt: `QR code to pair ${inst.name}` }) : null,
              qr.pairing_code ? h("div", { class: "pairing" }, qr.pairing_code) : null,
              h("div", { class: "muted" }, "Scan with WhatsApp › Linked devices"))
          : null));
  }
}

// what the gap checks recovered for an instance (service/backfill.py): messages Evolution had
// and whose webhooks never arrived
function recoveredLine(b) {
  if (!b || !b.messages_recovered) return null;
  const n = b.messages_recovered;
  const when = b.last_gap_at ? `last gap filled ${new Date(b.last_gap_at).toLocaleString()}` : "";
  return h("div", { class: "recovered muted", title: when },
    `${n} message${n === 1 ? "" : "s"} recovered`);
}

// a recovered message arrived live: count it on its instance
function countRecovered(m) {
  const inst = state.instances.get(m.instance);
  if (!inst) return;
  inst.backfill = inst.backfill || { messages_recovered: 0 };
  inst.backfill.messages_recovered += 1;
  renderInstances();
}

// --- endpoints (fan-out) ------------------------------------------------------------------------

const ENDPOINTS_EVERY_MS = 15000;

// the tenant's endpoints and their last attempts: where its events go, and whether they arrive
async function loadEndpoints() {
  const body = await api("/api/v1/endpoints");
  const attempts = await Promise.all(
    body.items.map((e) => api(`/api/v1/endpoints/${e.id}/attempts`, { limit: 5 }).catch(() => ({ items: [] }))));
  renderEndpoints(body.items, attempts.map((a) => a.items));
}

function renderEndpoints(items, attempts) {
  $("endpoints-panel").hidden = items.length === 0;
  const list = $("endpoints");
  list.replaceChildren();
  items.forEach((e, n) => {
    const shown = !e.enabled ? "disabled" : e.failing_since ? "failing" : "ok";
    list.append(
      h("li", { class: "endpoint", "data-endpoint": e.id },
        h("div", { class: "row" },
          h("span", { class: "name", title: e.url }, e.description || e.url),
          h("span", { class: "state", "data-state": shown }, shown)),
        e.disabled_reason ? h("div", { class: "muted" }, e.disabled_reason) : null,
        h("ul", { class: "attempts" },
          ...attempts[n].map((a) =>
            h("li", { class: "attempt", "data-ok": String(a.status >= 200 && a.status < 300), title: a.error || a.response || "" },
              `${a.status ?? "—"} · ${a.ms} ms · ${new Date(a.at).toLocaleTimeString()} · ${a.event}`)))));
  });
}

// --- chats ---------------------------------------------------------------------------------------

async function loadChats() {
  const body = await api("/api/v1/chats", { limit: 200 });
  const chats = new Map(body.items.map((c) => [chatKey(c.instance, c.chat_jid), c]));
  for (const [key, c] of state.chats) {
    const fresh = chats.get(key);
    if (!fresh) chats.set(key, c); // seen live, newer than the list
    else if (c.last_message_at && (!fresh.last_message_at || c.last_message_at > fresh.last_message_at)) {
      Object.assign(fresh, { last_message_at: c.last_message_at, last_message: c.last_message });
    }
  }
  state.chats = chats;
  renderChats();
}

function scheduleSide() {
  // live frames can come in bursts: redraw the chat list and the trend once per frame
  if (state.frame !== null) return;
  state.frame = requestAnimationFrame(() => {
    state.frame = null;
    renderChats();
    renderTrend();
  });
}

function chatTitle(c) {
  const last = c.last_message;
  return c.name || (last && !last.from_me && last.push_name) || phoneOf(c.chat_jid);
}

function renderChats() {
  const list = $("chats");
  list.replaceChildren();
  const all = h("li", { class: "chat", "aria-current": String(state.view === null), onclick: () => openView(null) },
    h("span", { class: "title" }, "All conversations"), h("span"),
    h("span", { class: "preview" }, `${state.chats.size} chats`));
  list.append(all);
  const sorted = [...state.chats.values()].sort((a, b) =>
    (b.last_message_at || "").localeCompare(a.last_message_at || ""));
  for (const c of sorted) {
    const last = c.last_message;
    const current = state.view && state.view.instance === c.instance && state.view.chat === c.chat_jid;
    const sat = c.satisfaction;
    list.append(
      h("li", { class: "chat", "aria-current": String(Boolean(current)), "data-chat": c.chat_jid,
                "data-instance": c.instance, tabindex: "0",
                onclick: () => openView({ instance: c.instance, chat: c.chat_jid }),
                onkeydown: (ev) => { if (ev.key === "Enter") openView({ instance: c.instance, chat: c.chat_jid }); } },
        h("span", { class: "title" }, chatTitle(c)),
        h("span", { class: "when" }, fmtTime(c.last_message_at)),
        h("span", { class: "preview" }, last ? (last.deleted ? "message deleted" : last.text || TYPE_LABEL[last.type] || "") : ""),
        sat !== null && sat !== undefined
          ? h("span", { class: "score badge", "data-tone": tone(c.sentiment, sat),
                        title: `satisfaction, last ${c.analyzed_messages} analysed` }, `${Math.round(sat)}`)
          : h("span")));
  }
}

function touchChat(m) {
  if (!m.chat_jid) return;
  const key = chatKey(m.instance, m.chat_jid);
  const c = state.chats.get(key) || {
    instance: m.instance, chat_jid: m.chat_jid, chat_type: m.chat_type, name: null, unread: null,
    last_message_at: null, last_message: null, sentiment: null, satisfaction: null, analyzed_messages: 0,
  };
  const last = c.last_message;
  if (last && keyOf(last) === keyOf(m)) c.last_message = m;
  else if (!c.last_message_at || (m.timestamp || "") >= c.last_message_at) {
    c.last_message_at = m.timestamp;
    c.last_message = m;
  }
  state.chats.set(key, c);
}

function rollChat(m, analysis) {
  // the chat's rolling averages, moved by one newly analysed message
  const c = m.chat_jid && state.chats.get(chatKey(m.instance, m.chat_jid));
  if (!c || analysis.state !== "done" || analysis.analyzable === false) return;
  const n = Math.min(ROLLING, (c.analyzed_messages || 0) + 1);
  if (analysis.satisfaction !== null && analysis.satisfaction !== undefined) {
    c.satisfaction = c.satisfaction === null || c.satisfaction === undefined
      ? analysis.satisfaction : c.satisfaction + (analysis.satisfaction - c.satisfaction) / n;
  }
  if (analysis.sentiment !== null && analysis.sentiment !== undefined) {
    c.sentiment = c.sentiment === null || c.sentiment === undefined
      ? analysis.sentiment : c.sentiment + (analysis.sentiment - c.sentiment) / n;
  }
  c.analyzed_messages = n;
}

// --- messages ------------------------------------------------------------------------------------

function inView(m) {
  return state.view === null || (state.view.instance === m.instance && state.view.chat === m.chat_jid);
}

async function loadMessages() {
  const seq = ++state.loadSeq;
  const params = { limit: 100 };
  if (state.view) Object.assign(params, { instance: state.view.instance, chat: state.view.chat });
  const body = await api("/api/v1/messages", params);
  if (seq !== state.loadSeq) return; // another view was opened meanwhile
  for (const m of body.items.slice().reverse()) remember(m, true);
  renderMessages();
}

function remember(m, fromList) {
  const key = keyOf(m);
  const pending = state.pendingAnalysis.get(key);
  if (pending && m.analysis.state === "pending") m.analysis = pending;
  state.pendingAnalysis.delete(key);
  const known = state.messages.get(key);
  // a list read can be older than a frame that already arrived: keep the analysis we have
  if (fromList && known && known.analysis.state !== "pending" && m.analysis.state === "pending") {
    m.analysis = known.analysis;
  }
  if (!state.arrival.has(key)) state.arrival.set(key, state.arrival.size);
  state.messages.set(key, m);
  return m;
}

function byTime(a, b) {
  return (a.timestamp || "").localeCompare(b.timestamp || "")
    || state.arrival.get(keyOf(a)) - state.arrival.get(keyOf(b));
}

function renderMessages() {
  // everything known for this view (the last list read merged with live frames), oldest first
  const items = [...state.messages.values()].filter(inView).sort(byTime).slice(-MAX_SHOWN);
  const list = $("messages");
  list.replaceChildren(...items.map((m) => messageItem(m)));
  if (!items.length) list.append(h("li", { class: "empty" }, "No messages yet. They appear here as they arrive."));
  list.scrollTop = list.scrollHeight;
  renderTrend();
}

function tone(sentiment, satisfaction) {
  const s = sentiment !== null && sentiment !== undefined ? sentiment : satisfaction !== null && satisfaction !== undefined ? (satisfaction - 50) / 50 : 0;
  return s > 0.2 ? "pos" : s < -0.2 ? "neg" : "neu";
}

function analysisBadges(a) {
  if (!a || a.analyzable === false) return [];
  if (a.state === "pending") return [h("span", { class: "badge", "data-state": "pending" }, "analysing…")];
  if (a.state === "failed") return [h("span", { class: "badge", "data-state": "failed", title: a.error || "" }, "no analysis")];
  const label = a.emotion || (a.sentiment > 0.2 ? "positive" : a.sentiment < -0.2 ? "negative" : "neutral");
  const out = [h("span", { class: "badge", "data-state": "done", "data-tone": tone(a.sentiment, a.satisfaction),
                           title: `sentiment ${a.sentiment ?? "–"}` }, label)];
  if (a.satisfaction !== null && a.satisfaction !== undefined) {
    out.push(h("span", { class: "badge sat", "data-tone": tone(null, a.satisfaction), title: "satisfaction" }, `☺ ${a.satisfaction}`));
  }
  return out;
}

const STATUS_MARK = { pending: "🕓", server_ack: "✓", delivered: "✓✓", read: "✓✓ read", played: "✓✓ played", error: "⚠" };

function bodyOf(m, highlight) {
  if (m.deleted) return h("div", { class: "body deleted" }, "This message was deleted");
  if (highlight) {
    // matches come between U+0002 and U+0003 (search.py); everything stays text
    const parts = [];
    highlight.split("\u0002").forEach((chunk, i) => {
      if (i === 0) { parts.push(chunk); return; }
      const [hit, rest] = chunk.split("\u0003");
      parts.push(h("mark", {}, hit), rest || "");
    });
    return h("div", { class: "body" }, parts);
  }
  return h("div", { class: "body" }, m.text ?? TYPE_LABEL[m.type] ?? "Message");
}

function messageItem(m, extra) {
  const who = m.from_me ? "You" : m.push_name || phoneOf(m.sender_jid);
  const chat = state.chats.get(chatKey(m.instance, m.chat_jid));
  // across chats, say which one (unless the sender already says it: a 1:1 chat)
  const where = chat ? chatTitle(chat) : phoneOf(m.chat_jid);
  const showWhere = (state.view === null || extra) && where !== who;
  const reactions = (m.reactions || []).map((r) => r.emoji).join("");
  return h("li", { class: `message${m.from_me ? " mine" : ""}`, "data-id": keyOf(m), onclick: extra && extra.onclick },
    h("div", { class: "meta" },
      h("span", { class: "who" }, who),
      showWhere ? h("span", { class: "chatname" }, m.from_me ? `→ ${where}` : where) : null,
      h("span", {}, fmtTime(m.timestamp)),
      m.edited ? h("span", {}, "edited") : null),
    bodyOf(m, extra && extra.highlight),
    h("div", { class: "foot" },
      analysisBadges(m.analysis),
      reactions ? h("span", { class: "reactions" }, reactions) : null,
      m.from_me && m.status ? h("span", { class: "status" }, STATUS_MARK[m.status] || m.status) : null,
      extra && extra.score !== undefined ? h("span", { class: "score" }, extra.score) : null));
}

function upsertMessageView(m, isNew) {
  const selector = `[data-id="${CSS.escape(keyOf(m))}"]`;
  const hit = $("results-list").querySelector(selector);
  if (hit) hit.querySelector(".foot").replaceWith(messageItem(m).querySelector(".foot"));
  const list = $("messages");
  const old = list.querySelector(selector);
  if (old) { old.replaceWith(messageItem(m)); return; }
  if (!isNew || !inView(m)) return;
  const nearBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 120;
  list.querySelector(".empty")?.remove();
  // usually the newest; an older one (history, late delivery) goes where its time says
  const next = [...list.children].find((el) => {
    const other = state.messages.get(el.dataset.id);
    return other && byTime(m, other) < 0;
  });
  const item = messageItem(m);
  item.classList.add("arrived");
  list.insertBefore(item, next || null);
  while (list.children.length > MAX_SHOWN) list.firstElementChild.remove();
  if (nearBottom) list.scrollTop = list.scrollHeight;
}

async function openView(view) {
  state.view = view;
  closeResults();
  if (view) {
    const c = state.chats.get(chatKey(view.instance, view.chat));
    $("chat-title").textContent = c ? chatTitle(c) : phoneOf(view.chat);
    $("chat-sub").textContent = `${phoneOf(view.chat)} · ${view.instance}`;
  } else {
    $("chat-title").textContent = "All conversations";
    $("chat-sub").textContent = "Live, newest at the bottom";
  }
  $("app").classList.toggle("show-chat", view !== null);
  renderChats();
  renderMessages(); // what is known already, at once; the read below fills in the rest
  await loadMessages();
}

// --- satisfaction trend ------------------------------------------------------------------------

function renderTrend() {
  const points = [...state.messages.values()]
    .filter((m) => inView(m) && m.analysis && m.analysis.state === "done" && m.analysis.satisfaction !== null && m.analysis.satisfaction !== undefined)
    .sort((a, b) => (a.timestamp || "").localeCompare(b.timestamp || ""))
    .slice(-30)
    .map((m) => m.analysis.satisfaction);
  const fig = $("trend");
  fig.hidden = points.length === 0;
  if (!points.length) return;
  const avg = Math.round(points.reduce((a, b) => a + b, 0) / points.length);
  $("trend-value").textContent = `${avg}`;
  const n = points.length;
  const xy = points.map((v, i) => [n === 1 ? 60 : (i * 120) / (n - 1), 30 - (v / 100) * 28]);
  const svg = $("trend-svg");
  const ns = "http://www.w3.org/2000/svg";
  const base = document.createElementNS(ns, "line");
  Object.entries({ x1: 0, x2: 120, y1: 16, y2: 16, class: "baseline" }).forEach(([k, v]) => base.setAttribute(k, v));
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", xy.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join(" "));
  const dot = document.createElementNS(ns, "circle");
  const [lx, ly] = xy[n - 1];
  Object.entries({ cx: lx, cy: ly, r: 2.5 }).forEach(([k, v]) => dot.setAttribute(k, v));
  svg.replaceChildren(base, line, dot);
  fig.title = `average satisfaction of the last ${n} analysed messages`;
}

// --- search ----------------------------------------------------------------------------------------

async function search(q, mode) {
  const seq = ++state.searchSeq;
  $("results").hidden = false;
  $("messages").hidden = true;
  $("app").classList.add("show-chat");
  $("results-title").textContent = `Searching for “${q}”…`;
  $("results-list").replaceChildren();
  let body;
  try {
    body = await api("/api/v1/search", { q, mode, limit: 30 });
  } catch (err) {
    if (seq === state.searchSeq) $("results-title").textContent = err.status === 503
      ? "Search by meaning is unavailable right now (no worker answered). Try Words."
      : `Search failed: ${err.message}`;
    return;
  }
  if (seq !== state.searchSeq) return;
  const n = body.items.length;
  $("results-title").textContent = `${n} result${n === 1 ? "" : "s"} for “${q}” (${mode === "text" ? "words" : "meaning"})`;
  $("results-list").replaceChildren(...body.items.map((hit) =>
    messageItem(hit.message, {
      highlight: hit.highlight,
      score: mode === "semantic" ? `${Math.round(hit.score * 100)}% similar` : undefined,
      onclick: () => openView({ instance: hit.message.instance, chat: hit.message.chat_jid }),
    })));
  if (!n) $("results-list").append(h("li", { class: "empty" }, "Nothing found."));
}

function closeResults() {
  $("results").hidden = true;
  $("messages").hidden = false;
  if (state.view === null) $("app").classList.remove("show-chat");
}

// --- live stream -----------------------------------------------------------------------------------

function setLive(s, label) {
  const el = $("live");
  el.dataset.state = s;
  el.textContent = label;
}

function connect() {
  clearTimeout(state.retryTimer);
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  // the token goes in the first message, not the URL (URLs end up in logs)
  const ws = new WebSocket(`${proto}//${location.host}/api/v1/stream`);
  state.ws = ws;
  setLive("connecting", state.connectedOnce ? "reconnecting" : "connecting");
  ws.onopen = () => ws.send(JSON.stringify({ token: state.token }));
  ws.onmessage = (ev) => {
    if (state.ws !== ws) return;
    watch(ws);
    let frame;
    try { frame = JSON.parse(ev.data); } catch { return; }
    onFrame(frame);
  };
  ws.onclose = (ev) => {
    if (state.ws !== ws) return;
    state.ws = null;
    clearTimeout(state.watchdog);
    if (ev.code === 4401) { logout("That token was not accepted."); return; }
    setLive("offline", ev.code === 1013 ? "catching up" : "offline");
    // 1013: this tab fell behind; come back at once and catch up. Otherwise back off.
    const base = ev.code === 1013 ? 200 : Math.min(10000, 500 * 2 ** state.wsAttempt++);
    const delay = base * (0.75 + Math.random() / 2);
    state.retryTimer = setTimeout(() => { if (state.token && !state.ws) connect(); }, delay);
  };
  watch(ws);
}

function watch(ws) {
  // heartbeats every 25 s: a link that stays silent much longer is dead (sleep, proxy, Wi-Fi)
  clearTimeout(state.watchdog);
  state.watchdog = setTimeout(() => { if (state.ws === ws) ws.close(); }, SILENCE_MS);
}

function disconnect() {
  clearTimeout(state.retryTimer);
  clearTimeout(state.watchdog);
  const ws = state.ws;
  state.ws = null;
  if (ws) ws.close(1000);
}

function resumeCursor() {
  // The smallest recent cursor: at-least-once catch-up, duplicates are merged by message key.
  const candidates = state.cursors.length >= RECENT_CURSORS ? state.cursors : [state.readyCursor, ...state.cursors];
  let best = null;
  for (const c of candidates) if (c && (best === null || cmpCursor(c, best) < 0)) best = c;
  return best;
}

function cmpCursor(a, b) {
  const [ax, as] = a.slice(1).split(".").map(BigInt);
  const [bx, bs] = b.slice(1).split(".").map(BigInt);
  return ax === bx ? (as < bs ? -1 : as > bs ? 1 : 0) : ax < bx ? -1 : 1;
}

async function catchUp(from) {
  let after = from;
  for (let page = 0; page < 20 && after; page++) {
    const body = await api("/api/v1/messages", { after, limit: 500 });
    for (const m of body.items) onCreated(m, null);
    if (body.items.length < 500) break;
    after = body.next;
  }
  // updates and analyses are not in that list: refresh what is on screen
  const [inst] = await Promise.all([api("/api/v1/instances"), loadChats()]);
  setInstances(inst.items);
  await loadMessages();
}

function onCreated(m, cursor) {
  const isNew = !state.messages.has(keyOf(m));
  remember(m);
  if (cursor) {
    state.cursors.push(cursor);
    if (state.cursors.length > RECENT_CURSORS) state.cursors.shift();
  }
  touchChat(m);
  upsertMessageView(m, isNew);
  scheduleSide();
}

function onFrame(f) {
  switch (f.type) {
    case "ready": {
      // after a reconnect: page through what arrived while away, from where we were
      const from = state.connectedOnce ? resumeCursor() : null;
      state.connectedOnce = true;
      state.wsAttempt = 0;
      state.readyCursor = f.cursor;
      state.cursors = [];
      setLive("live", "live");
      if (f.tenant) $("tenant-name").textContent = f.tenant;
      if (from) catchUp(from).catch(() => {});
      break;
    }
    case "message.created":
      if (f.message.origin === "backfill" && !state.messages.has(keyOf(f.message))) {
        countRecovered(f.message);
      }
      onCreated(f.message, f.cursor);
      break;
    case "message.updated": {
      const isNew = !state.messages.has(keyOf(f.message));
      remember(f.message);
      touchChat(f.message);
      upsertMessageView(f.message, isNew);
      scheduleSide();
      break;
    }
    case "message.analyzed": {
      const key = `${f.instance}/${f.message_id}`;
      const m = state.messages.get(key);
      if (!m) { state.pendingAnalysis.set(key, f.analysis); break; }
      const first = m.analysis.state === "pending";
      m.analysis = f.analysis;
      if (first) rollChat(m, f.analysis);
      upsertMessageView(m, false);
      scheduleSide();
      break;
    }
    case "instance.state":
    case "instance.qrcode":
      // frames carry no `backfill` figures: keep the ones listed
      state.instances.set(f.instance.name, { ...state.instances.get(f.instance.name), ...f.instance });
      renderInstances();
      break;
    case "resync": {
      // the server may have missed events for us: same as a reconnect, minus the reconnect
      const from = resumeCursor();
      if (from) catchUp(from).catch(() => {});
      break;
    }
    default:
      break; // heartbeat, pong, and types added later
  }
}

// --- wiring --------------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    $("login-error").textContent = "";
    const button = $("login-form").querySelector("button");
    button.disabled = true;
    try {
      await login($("token").value.trim(), $("remember").checked);
    } catch (err) {
      $("login-error").textContent = err.message;
    } finally {
      button.disabled = false;
    }
  });
  $("logout").addEventListener("click", () => logout(""));
  $("back").addEventListener("click", () => { closeResults(); openView(null); });
  $("search-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const q = $("q").value.trim();
    if (q) search(q, $("mode").value); else closeResults();
  });
  $("mode").addEventListener("change", () => {
    const q = $("q").value.trim();
    if (q && !$("results").hidden) search(q, $("mode").value);
  });
  $("q").addEventListener("search", () => { if (!$("q").value) closeResults(); });
  $("results-close").addEventListener("click", () => { $("q").value = ""; closeResults(); });
  $("chat-sub").textContent = "Live, newest at the bottom";
  const saved = sessionStorage.getItem(TOKEN_KEY) || localStorage.getItem(TOKEN_KEY);
  if (saved) {
    login(saved, localStorage.getItem(TOKEN_KEY) === saved).catch((err) => logout(err.message));
  } else {
    $("login").hidden = false;
    $("token").focus();
  }
});
