// The reference till page: talks to the till's HTTP API only (see /openapi.json).
"use strict";
const $ = (s) => document.querySelector(s);
const state = { token: localStorage.getItem("tillsync-token") || "", products: {}, cursor: null,
                cart: [], shift: null, shown: null };

function money(minor) {
  const sign = minor < 0 ? "-" : "";
  minor = Math.abs(minor);
  return `${sign}${Math.floor(minor / 100)}.${String(minor % 100).padStart(2, "0")}`;
}

function uuid() {
  if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40; b[8] = (b[8] & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

async function api(method, path, body) {
  const response = await fetch(path, {
    method, headers: { Authorization: `Bearer ${state.token}`, "Content-Type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body) });
  const json = (response.headers.get("content-type") || "").includes("json");
  const data = json ? await response.json() : await response.text();
  if (!response.ok) {
    const error = new Error(data.error ? data.error.message : `HTTP ${response.status}`);
    error.status = response.status;
    throw error;
  }
  return data;
}

function say(text, bad) {
  const p = $("#message");
  p.textContent = text;
  p.className = bad ? "error" : "muted";
}

// -- products, with live prices (delta reads on master events) --------------------------
async function loadProducts() {
  const query = state.cursor ? `?since=${encodeURIComponent(state.cursor)}` : "";
  let data;
  try {
    data = await api("GET", `/api/master/products${query}`);
  } catch (e) {
    if (e.status !== 410) throw e;
    state.cursor = null;
    return loadProducts();
  }
  if (data.full) state.products = {};
  Object.assign(state.products, data.records);
  for (const id of data.deleted_ids) delete state.products[id];
  state.cursor = data.sync_cursor;
  renderGrid();
}

function renderGrid() {
  const grid = $("#grid");
  grid.replaceChildren();
  const rows = Object.entries(state.products).filter(([, p]) => p.active !== false)
    .sort((a, b) => String(a[1].name).localeCompare(String(b[1].name)));
  for (const [id, p] of rows) {
    const button = document.createElement("button");
    button.dataset.product = id;
    button.append(String(p.name));
    const price = document.createElement("span");
    price.textContent = money(p.price);
    button.append(price);
    button.addEventListener("click", () => addToCart(id));
    grid.append(button);
  }
}

// -- the cart and payment --------------------------------------------------------------
function addToCart(id) {
  const line = state.cart.find((l) => l.product_id === id);
  if (line) line.qty += 1;
  else state.cart.push({ product_id: id, qty: 1, unit_price: state.products[id].price });
  renderCart();
}

function cartTotal() {
  return state.cart.reduce((sum, l) => sum + l.qty * l.unit_price, 0);
}

function renderCart() {
  const body = $("#lines");
  body.replaceChildren();
  for (const line of state.cart) {
    const row = body.insertRow();
    row.insertCell().textContent = state.products[line.product_id]?.name || line.product_id;
    row.insertCell().textContent = `${line.qty} x ${money(line.unit_price)}`;
    row.insertCell().textContent = money(line.qty * line.unit_price);
  }
  $("#total").textContent = money(cartTotal());
  const ready = state.cart.length > 0 && state.shift !== null;
  $("#pay-cash").disabled = !ready;
  $("#pay-card").disabled = !ready;
}

async function pay(method) {
  const body = { lines: state.cart.map((l) => ({ ...l })), shift_client_id: state.shift,
                 payments: [{ method, amount: cartTotal() }] };
  const request = { kind: "sale", body, client_id: uuid() };
  let answer;
  for (let attempt = 0; ; attempt++) {  // the same client_id: a retry is never a duplicate
    try {
      answer = await api("POST", "/api/entries", request);
      break;
    } catch (e) {
      if (e.status || attempt >= 2) { say(e.message, true); return; }
    }
  }
  state.cart = [];
  renderCart();
  say(`recorded ticket ${answer.ticket}`);
  await showTicket(answer.ticket);
  refreshHistory();
  refreshSync();  // one more pending, even with no relay round to say so
}

async function showTicket(ticket) {
  state.shown = ticket;
  const invoice = await api("GET", `/api/invoices/${encodeURIComponent(ticket)}`);
  $("#pending-note").hidden = invoice.official;
  $("#receipt").textContent = await api("GET", `/api/invoices/${encodeURIComponent(ticket)}/text`);
}

async function ensureShift() {
  // Its LAN peers' shifts are here too: a till sells only in a shift it opened.
  const open = (await api("GET", "/api/shifts?open=true")).shifts.filter((s) => s.mine);
  state.shift = open.length ? open[0].shift_client_id : null;
  const span = $("#shift");
  span.replaceChildren();
  if (state.shift) {
    span.textContent = `shift open, expected cash ${money(open[0].expected_cash)}`;
  } else {
    const button = document.createElement("button");
    button.textContent = "Open shift";
    button.addEventListener("click", openShift);
    span.append(button);
  }
  renderCart();
}

async function openShift() {
  const cashiers = Object.keys((await api("GET", "/api/master/cashiers")).records);
  if (!cashiers.length) { say("no cashier in master data", true); return; }
  await api("POST", "/api/entries", { kind: "shift_open", client_id: uuid(),
                                      body: { cashier_id: cashiers[0], opening_cash: 0 } });
  await ensureShift();
}

// -- sync status and controls ----------------------------------------------------------
async function refreshSync() {
  const s = await api("GET", "/api/sync");
  const rows = [["pending", s.pending], ["relay", s.relay || "none"],
                ["last contact", s.last_contact || "never"], ["last error", s.last_error || "none"],
                ["rejected", s.rejected.length], ["waiting", s.waiting.length]];
  const dl = $("#sync-state");
  dl.replaceChildren();
  for (const [k, v] of rows) {
    const dt = document.createElement("dt"); dt.textContent = k;
    const dd = document.createElement("dd"); dd.textContent = String(v);
    dl.append(dt, dd);
  }
  const peers = $("#peers");
  peers.replaceChildren();
  for (const p of s.peers) {
    const li = document.createElement("li");
    li.textContent = `${p.name}: ${p.connected ? "connected" : "not connected"}, behind by ` +
      `${p.behind_entries} entries, ${p.behind_receipts} receipts`;
    peers.append(li);
  }
}

async function round(kind) {
  say(`${kind}...`);
  try {
    const r = await api("POST", `/api/sync/${kind}`);
    say(`${kind}: pushed ${r.pushed}, ${r.receipts} receipts, ${r.pending} pending` +
        (r.full ? (r.verified ? ", verified" : ", NOT verified") : ""));
  } catch (e) { say(e.message, true); }
  refreshSync();
}

// -- ticket -> invoice history ---------------------------------------------------------
async function refreshHistory() {
  const body = $("#tickets");
  body.replaceChildren();
  for (const t of (await api("GET", "/api/tickets?limit=50")).tickets) {
    const row = body.insertRow();
    row.insertCell().textContent = t.ticket;
    row.insertCell().textContent = t.invoice || t.status;
    row.insertCell().textContent = money(t.total);
    const button = document.createElement("button");
    button.textContent = "Reprint";
    button.dataset.reprint = t.ticket;
    button.addEventListener("click", () => showTicket(t.ticket));
    row.insertCell().append(button);
  }
}

// -- live events (fetch, so the token goes in a header) ---------------------------------
async function listen() {
  for (;;) {
    try {
      const response = await fetch("/api/events", { headers: { Authorization: `Bearer ${state.token}` } });
      if (!response.ok) throw new Error(`events: HTTP ${response.status}`);
      $("#live").textContent = "live";
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          const kind = /^event: (.*)$/m.exec(block);
          const data = /^data: (.*)$/m.exec(block);
          if (kind && data) onEvent(kind[1], JSON.parse(data[1]));
        }
      }
    } catch (e) { /* reconnect below */ }
    $("#live").textContent = "offline";
    await new Promise((r) => setTimeout(r, 2000));
  }
}

function onEvent(kind, data) {
  if (kind === "master" && data.collection === "products") loadProducts();
  if (kind === "receipt") {
    if (data.ticket && data.ticket === state.shown) showTicket(state.shown);
    refreshHistory();
  }
  if (kind === "entry") ensureShift();
  if (kind === "sync" || kind === "peer" || kind === "receipt") refreshSync();
}

async function start() {
  try {
    await Promise.all([loadProducts(), ensureShift(), refreshSync(), refreshHistory()]);
    $("#login").hidden = true;
    listen();
  } catch (e) {
    say(e.status === 401 ? "enter the till's API token" : e.message, true);
  }
}

// A link may carry the token in its fragment (never sent to the server): /#token=...
const fromLink = /(?:^#|&)token=([^&]+)/.exec(location.hash);
if (fromLink) {
  state.token = decodeURIComponent(fromLink[1]);
  localStorage.setItem("tillsync-token", state.token);
  history.replaceState(null, "", location.pathname);
}
$("#login").addEventListener("submit", (event) => {
  event.preventDefault();
  state.token = $("#token").value.trim();
  localStorage.setItem("tillsync-token", state.token);
  start();
});
$("#pay-cash").addEventListener("click", () => pay("cash"));
$("#pay-card").addEventListener("click", () => pay("card"));
$("#clear").addEventListener("click", () => { state.cart = []; renderCart(); });
for (const b of document.querySelectorAll("[data-round]")) {
  b.addEventListener("click", () => round(b.dataset.round));
}
start();
