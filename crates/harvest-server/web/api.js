// The console's client of the public Harvest API: HTTP calls, the room WebSocket with
// resume, the signed-in identity, and small DOM and formatting helpers.

const TOKEN_KEY = "harvest.console.token";

/** An error answer of the API: `{error: {code, message, details}}` plus the status. */
export class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details || {};
  }
}

// ---------------------------------------------------------------- identity ---

function decodeClaims(token) {
  try {
    const part = token.split(".")[1];
    const json = atob(part.replace(/-/g, "+").replace(/_/g, "/"));
    const bytes = Uint8Array.from(json, (c) => c.charCodeAt(0));
    return JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    return null;
  }
}

/** The signed-in identity (a bearer token pasted or picked), kept in localStorage. */
export const session = {
  token: null,
  claims: null,
  listeners: new Set(),
  load() {
    const token = localStorage.getItem(TOKEN_KEY);
    if (token) this.set(token, false);
  },
  /** Sets the token; returns false when it is not a JWT. */
  set(token, notify = true) {
    token = (token || "").trim();
    const claims = token ? decodeClaims(token) : null;
    if (token && !claims) return false;
    this.token = token || null;
    this.claims = claims;
    if (token) localStorage.setItem(TOKEN_KEY, token);
    else localStorage.removeItem(TOKEN_KEY);
    if (notify) this.listeners.forEach((f) => f());
    return true;
  },
  clear() {
    this.set(null);
  },
  get userId() {
    return this.claims?.sub ?? null;
  },
  get name() {
    return this.claims?.name ?? this.claims?.sub ?? "anonymous";
  },
  get roles() {
    return Array.isArray(this.claims?.roles) ? this.claims.roles : [];
  },
  has(role) {
    return !!this.token && (role === "viewer" || this.roles.includes(role) || this.roles.includes("admin"));
  },
  expired() {
    return !!this.claims?.exp && this.claims.exp * 1000 < Date.now();
  },
};

// -------------------------------------------------------------------- HTTP ---

/** A fresh idempotency key. */
export function newKey() {
  if (globalThis.crypto?.randomUUID) return crypto.randomUUID();
  return `k-${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}`;
}

/**
 * Calls the API. `body` is sent as JSON; `opts.key` adds an Idempotency-Key; `opts.raw`
 * returns the text instead of parsed JSON. Throws ApiError on an error answer.
 */
export async function api(method, path, body, opts = {}) {
  const headers = {};
  if (session.token) headers.Authorization = `Bearer ${session.token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (opts.key) headers["Idempotency-Key"] = opts.key;
  let res;
  try {
    res = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw new ApiError(0, "network", `the server did not answer (${e.message})`);
  }
  const text = await res.text();
  if (!res.ok) {
    let err = null;
    try {
      err = JSON.parse(text).error;
    } catch {
      /* not JSON */
    }
    throw new ApiError(res.status, err?.code ?? "http_" + res.status, err?.message ?? res.statusText, err?.details);
  }
  if (opts.raw) return text;
  return text ? JSON.parse(text) : null;
}

/** Every item of a list endpoint, following `next_cursor` (at most `max` items). */
export async function listAll(path, max = 500) {
  const items = [];
  let cursor = null;
  do {
    const sep = path.includes("?") ? "&" : "?";
    const page = await api("GET", `${path}${sep}limit=200${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`);
    items.push(...page.items);
    cursor = page.next_cursor;
  } while (cursor && items.length < max);
  return items;
}

const productCache = new Map();

/** A product by id, cached for the page's life (products do not change). */
export async function product(id) {
  if (!productCache.has(id)) {
    productCache.set(
      id,
      api("GET", `/api/v1/products/${encodeURIComponent(id)}`).catch((e) => {
        productCache.delete(id);
        throw e;
      }),
    );
  }
  return productCache.get(id);
}

export function rememberProduct(p) {
  productCache.set(p.id, Promise.resolve(p));
}

const contestCache = new Map();

/** A contest by id, cached briefly (participants and rules do not change). */
export async function contest(id) {
  if (!contestCache.has(id)) {
    contestCache.set(
      id,
      api("GET", `/api/v1/contests/${encodeURIComponent(id)}`).catch((e) => {
        contestCache.delete(id);
        throw e;
      }),
    );
  }
  return contestCache.get(id);
}

// --------------------------------------------------------------- WebSocket ---

/**
 * A room's WebSocket that never shows a gap: it keeps `epoch` and the last room `seq`,
 * resumes with `?since=&epoch=` after any drop (and on a seq gap), and hands a fresh
 * `room.snapshot` to `onSnapshot` when the server could not replay the history.
 *
 * handlers: onSnapshot(data), onEvent(event), onStatus({state, detail}), onWelcome(data)
 */
export class RoomSocket {
  constructor(roomId, handlers) {
    this.roomId = roomId;
    this.h = handlers;
    this.epoch = null;
    this.lastSeq = null;
    this.ws = null;
    this.closed = false;
    this.attempt = 0;
    this.reconnects = 0;
    this.recovered = null;
    this.timer = null;
    this.connect();
  }

  url() {
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const q = new URLSearchParams();
    if (session.token) q.set("token", session.token);
    if (this.epoch !== null && this.lastSeq !== null) {
      q.set("since", String(this.lastSeq));
      q.set("epoch", this.epoch);
    }
    const qs = q.toString();
    return `${proto}//${location.host}/ws/rooms/${encodeURIComponent(this.roomId)}${qs ? "?" + qs : ""}`;
  }

  status(state, detail = "") {
    this.h.onStatus?.({ state, detail, reconnects: this.reconnects, lastSeq: this.lastSeq, epoch: this.epoch });
  }

  connect() {
    if (this.closed) return;
    const ws = new WebSocket(this.url());
    this.ws = ws;
    this.status("connecting");
    ws.onmessage = (m) => {
      if (ws !== this.ws) return;
      let parsed;
      try {
        parsed = JSON.parse(m.data);
      } catch {
        return;
      }
      for (const ev of Array.isArray(parsed) ? parsed : [parsed]) {
        if (!this.handle(ev)) break;
      }
    };
    ws.onclose = (e) => {
      if (ws !== this.ws) return;
      this.ws = null;
      if (this.closed) return;
      if ([4001, 4003, 4004, 1008].includes(e.code)) {
        const why = { 4001: "invalid token", 4003: "banned from this room", 4004: "room not found", 1008: "policy violation" }[e.code];
        this.status("closed", `${why} (${e.code})`);
        return;
      }
      this.scheduleReconnect(`closed ${e.code || ""}`.trim());
    };
  }

  scheduleReconnect(detail) {
    if (this.closed || this.timer) return;
    const delay = Math.min(10000, 300 * 2 ** this.attempt) * (0.7 + Math.random() * 0.6);
    this.attempt += 1;
    this.status("reconnecting", detail);
    this.timer = setTimeout(() => {
      this.timer = null;
      this.reconnects += 1;
      this.connect();
    }, delay);
  }

  /** Handles one event; false when the connection was dropped to resume. */
  handle(ev) {
    if (ev.type === "session.welcome") {
      const d = ev.data;
      this.recovered = d.recovered;
      this.attempt = 0;
      this.epoch = d.epoch;
      if (!d.recovered) this.lastSeq = d.last_seq;
      this.h.onWelcome?.(d);
      this.status("live", d.recovered ? `resumed after seq ${this.lastSeq}, nothing missed` : "fresh snapshot");
      return true;
    }
    if (ev.type === "room.snapshot") {
      this.h.onSnapshot?.(ev.data);
      return true;
    }
    if (typeof ev.seq === "number") {
      if (this.lastSeq !== null && ev.seq <= this.lastSeq) return true; // already seen
      if (this.lastSeq !== null && ev.seq !== this.lastSeq + 1) {
        // A gap: resume from the last event processed.
        this.drop("gap");
        return false;
      }
      this.lastSeq = ev.seq;
    }
    this.h.onEvent?.(ev);
    return true;
  }

  /** Closes the current connection and resumes with `since`. */
  drop(detail = "dropped") {
    const ws = this.ws;
    this.ws = null;
    if (ws) ws.close(4000, detail);
    this.scheduleReconnect(detail);
  }

  send(frame) {
    if (this.ws?.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify(frame));
      return true;
    }
    return false;
  }

  close() {
    this.closed = true;
    clearTimeout(this.timer);
    if (this.ws) this.ws.close(1000, "bye");
    this.ws = null;
  }
}

// -------------------------------------------------------------- formatting ---

/** Integer fen as `¥12.34` (other currencies: `12.34 USD`). */
export function money(fen, currency = "CNY") {
  const n = Number(fen) || 0;
  const sign = n < 0 ? "-" : "";
  const abs = Math.abs(n);
  const text = `${Math.floor(abs / 100).toLocaleString("en-US")}.${String(abs % 100).padStart(2, "0")}`;
  return currency === "CNY" ? `${sign}¥${text}` : `${sign}${text} ${currency}`;
}

/** `¥12.34` or `12.34` typed by a person → integer fen (null when invalid). */
export function parseMoney(text) {
  const m = String(text).trim().replace(/^¥/, "").match(/^(\d+)(?:\.(\d{1,2}))?$/);
  if (!m) return null;
  return Number(m[1]) * 100 + Number((m[2] || "").padEnd(2, "0"));
}

/** Milliseconds as `m:ss` (or `h:mm:ss`). */
export function clock(ms) {
  const s = Math.max(0, Math.ceil(ms / 1000));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = String(s % 60).padStart(2, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${sec}` : `${m}:${sec}`;
}

export function time(iso) {
  if (!iso) return "—";
  return new Date(iso).toLocaleString([], { hour12: false });
}

export function num(n, digits = 0) {
  return Number(n || 0).toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits });
}

/** What a shopper should read for an error code of a reservation or checkout. */
export function reason(e, sale) {
  const limit = sale?.per_user_limit;
  const map = {
    sold_out: "Sold out: every unit is taken.",
    limit_exceeded: `Limit reached: at most ${limit ?? "the per-buyer limit of"} per buyer in this sale.`,
    insufficient_stock: "Not enough left for that quantity.",
    not_started: "The sale has not started yet.",
    sale_ended: "The sale has ended.",
    hold_expired: "Your hold expired: the units went back to the sale.",
    hold_released: "You released this hold.",
    unauthorized: "Log in to buy.",
    rate_limited: "Too many tries: wait a second.",
    unavailable: "The service is busy: try again.",
    network: "The server did not answer.",
  };
  return map[e.code] ?? `${e.message} (${e.code})`;
}

// --------------------------------------------------------------------- DOM ---

/** Creates an element: `el("div.card#x", {onclick}, child, "text", [children])`. */
export function el(spec, attrs, ...children) {
  const [, tag = "div", rest = ""] = spec.match(/^([a-z0-9]*)(.*)$/i);
  const node = document.createElement(tag || "div");
  for (const part of rest.match(/[.#][^.#]+/g) || []) {
    if (part[0] === ".") node.classList.add(part.slice(1));
    else node.id = part.slice(1);
  }
  if (attrs && (typeof attrs !== "object" || attrs instanceof Node || Array.isArray(attrs))) {
    children.unshift(attrs);
    attrs = null;
  }
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "style" && typeof v === "object") Object.assign(node.style, v);
    else if (k === "dataset") Object.assign(node.dataset, v);
    else if (k in node && typeof v !== "string") node[k] = v;
    else node.setAttribute(k, v === true ? "" : v);
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(node, c);
    else node.append(c instanceof Node ? c : String(c));
  }
}

/** Replaces a node's children. */
export function fill(node, ...children) {
  node.replaceChildren();
  append(node, children);
  return node;
}

export function toast(message, kind = "info") {
  const box = document.getElementById("toasts");
  if (!box) return;
  const t = el(`div.toast.${kind}`, message);
  box.append(t);
  setTimeout(() => t.classList.add("leaving"), 4000);
  setTimeout(() => t.remove(), 4600);
}

/** A product tile: its image, or a coloured square with its first character. */
export function productTile(p, size = "") {
  if (p?.image_url) return el(`img.tile${size}`, { src: p.image_url, alt: "" });
  const title = p?.title ?? "?";
  let hash = 0;
  for (const ch of title) hash = (hash * 31 + ch.codePointAt(0)) % 360;
  const chars = [...title];
  const cjk = /\p{Script=Han}/u.test(chars[0] ?? "");
  const label = cjk ? chars.slice(0, 2).join("") : (chars[0] ?? "?").toUpperCase();
  return el(`div.tile${size}${cjk ? ".cjk" : ""}`, { style: { background: `linear-gradient(135deg, hsl(${hash} 70% 55%), hsl(${(hash + 40) % 360} 75% 42%))` } }, label);
}

/** How a metric reads on screen. */
export const METRIC_LABEL = {
  paid_gmv: "GMV", paid_orders: "Orders", distinct_buyers: "Buyers", likes: "Likes", match_wins: "PK wins", judges: "Judges",
};

/** Downloads `text` as a file. */
export function download(name, text, type = "text/plain") {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const a = el("a", { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

/** Runs `fn` now and every `ms` until `stop()`; the page's timers are cleared on leave. */
export function every(ms, fn) {
  fn();
  const id = setInterval(fn, ms);
  return () => clearInterval(id);
}

/** A small live line chart on a canvas: series of {label, color, values, format}. */
export function drawChart(canvas, series) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || 400;
  const h = canvas.clientHeight || 140;
  canvas.width = w * dpr;
  canvas.height = h * dpr;
  const g = canvas.getContext("2d");
  g.scale(dpr, dpr);
  g.clearRect(0, 0, w, h);
  g.strokeStyle = "#e5e7eb";
  g.lineWidth = 1;
  for (let i = 1; i < 4; i++) {
    g.beginPath();
    g.moveTo(0, (h * i) / 4);
    g.lineTo(w, (h * i) / 4);
    g.stroke();
  }
  series.forEach((s, idx) => {
    const vals = s.values;
    if (vals.length < 1) return;
    const max = Math.max(1, ...vals);
    g.strokeStyle = s.color;
    g.lineWidth = 2;
    g.beginPath();
    vals.forEach((v, i) => {
      const x = vals.length === 1 ? w : (i / (vals.length - 1)) * w;
      const y = h - 6 - (v / max) * (h - 24);
      if (i === 0) g.moveTo(x, y);
      else g.lineTo(x, y);
    });
    g.stroke();
    if (idx === 0 && vals.length > 1) {
      g.lineTo(w, h);
      g.lineTo(0, h);
      g.closePath();
      g.globalAlpha = 0.12;
      g.fillStyle = s.color;
      g.fill();
      g.globalAlpha = 1;
    }
    g.fillStyle = s.color;
    g.font = "12px system-ui, sans-serif";
    const last = vals[vals.length - 1];
    g.fillText(`${s.label}: ${s.format ? s.format(last) : last}`, 8 + idx * 150, 14);
  });
}

let demoPromise = null;

/** The demo identities when the server runs as `harvest demo`, else null. */
export function demoConfig() {
  if (!demoPromise) {
    demoPromise = fetch("/console/demo.json")
      .then((r) => (r.ok ? r.json() : null))
      .catch(() => null);
  }
  return demoPromise;
}
