// The viewer page: pick a live room; chat and likes; the product bag and the pinned
// product; flash sales with Buy → hold → Pay; the PK score bar; contest standings.
// Everything comes from the room's WebSocket (snapshot, then events, resumed with
// `since`/`epoch` after a drop) and the public HTTP API.

import {
  api, listAll, product, rememberProduct, contest, session, RoomSocket, newKey,
  money, clock, time, num, reason, el, fill, toast, productTile, every, METRIC_LABEL,
} from "./api.js";

export function mount(main, [roomId]) {
  return roomId ? mountRoom(main, roomId) : mountPicker(main);
}

// ------------------------------------------------------------------ picker ---

function mountPicker(main) {
  const list = el("div.room-grid#room-list", el("p.muted", "Loading live rooms…"));
  const idInput = el("input", { placeholder: "room id", "aria-label": "room id" });
  main.append(
    el("section.page-head", el("h1", "Live rooms"), el("p.muted", "Pick a room to watch, chat, like and buy in its flash sales.")),
    list,
    el("form.row.open-by-id", {
      onsubmit: (e) => {
        e.preventDefault();
        if (idInput.value.trim()) location.hash = `#/viewer/${encodeURIComponent(idInput.value.trim())}`;
      },
    }, idInput, el("button", { type: "submit" }, "Open room")),
  );
  const load = async () => {
    try {
      const rooms = await listAll("/api/v1/rooms?status=live");
      if (!rooms.length) {
        fill(list, el("p.muted", "No room is live right now. A streamer goes live from the Streamer page (or run harvest demo)."));
        return;
      }
      const details = await Promise.all(rooms.map((r) => api("GET", `/api/v1/rooms/${r.id}`).catch(() => ({ ...r, live: null }))));
      const cards = await Promise.all(details.map(async (d) => {
        const pinned = d.live?.pinned_product_id ? await product(d.live.pinned_product_id).catch(() => null) : null;
        return el("a.room-card", { href: `#/viewer/${encodeURIComponent(d.id)}`, dataset: { roomId: d.id } },
          el("div.room-card-stage", pinned ? productTile(pinned, ".big") : el("div.tile.big", "直"), el("span.badge.live", "LIVE")),
          el("div.room-card-body",
            el("strong", d.title),
            el("span.muted", d.streamer_id),
            el("span.stats", `${num(d.live?.viewers)} watching · ♥ ${num(d.live?.likes)} · ${d.live?.product_ids?.length ?? 0} products`),
            d.live?.active_sale_ids?.length ? el("span.badge.sale", "Flash sale on") : null));
      }));
      fill(list, cards);
    } catch (e) {
      fill(list, el("p.error", `Cannot list rooms: ${e.message}`));
    }
  };
  return every(5000, load);
}

// -------------------------------------------------------------------- room ---

function mountRoom(main, roomId) {
  const state = {
    room: null,
    viewers: 0,
    likes: 0,
    pinned: null,
    productIds: [],
    products: new Map(),
    sales: new Map(),
    match: null,
    scores: null,
    standings: new Map(),
    chat: [],
    holds: new Map(), // sale id → {hold, state, order, payKey}
    notes: new Map(), // sale id → {kind, text}
    busy: new Set(),
    orders: [],
    lastOrder: null,
  };

  const ui = {
    head: el("div.card.room-head"),
    conn: el("div.conn#conn", { dataset: { state: "connecting" } }, "connecting…"),
    stage: el("div.stage"),
    ticker: el("div.ticker"),
    sales: el("div.sales#sales"),
    bag: el("div.bag#bag"),
    pk: el("div.card.pk#pk", { hidden: true }),
    standings: el("div.card.standings#standings", { hidden: true }),
    chatList: el("ul.chat-list#chat-list"),
    chatInput: el("input#chat-input", { maxLength: 200, placeholder: session.token ? "Say something…" : "Sign in to chat", autocomplete: "off" }),
    likeBtn: null,
    orders: el("div.card.orders#my-orders"),
  };
  ui.likeBtn = el("button.like#like", { type: "button", title: "Like", onclick: like }, "♥ Like");

  main.append(
    el("div.room-layout",
      el("section.stage-col",
        ui.head,
        ui.stage,
        ui.sales,
        el("div.card", el("h3", "Product bag"), ui.bag)),
      el("aside.side-col",
        ui.pk,
        ui.standings,
        el("div.card.chat",
          el("div.card-title", el("h3", "Chat"), ui.likeBtn),
          ui.chatList,
          el("form.row.chat-form", { onsubmit: sendChat }, ui.chatInput, el("button", { type: "submit" }, "Send"))),
        ui.orders)),
  );

  // ---------------------------------------------------------------- render ---

  function renderHead() {
    const r = state.room;
    if (!r) return;
    fill(ui.head,
      el("div.room-title",
        el("h1", r.title),
        el(`span.badge.${r.status}`, r.status === "live" ? "LIVE" : r.status)),
      el("div.room-meta",
        el("span.muted", `by ${r.streamer_id}`),
        el("span#viewers", { title: "viewers now" }, `${num(state.viewers)} watching`),
        el("span#likes", { title: "likes" }, `♥ ${num(state.likes)}`)),
      ui.conn);
  }

  function renderStage() {
    const p = state.pinned;
    fill(ui.stage,
      el("div.stage-bg", state.room?.playback_url ? el("span.muted", `video: ${state.room.playback_url}`) : null),
      p ? el("div.pinned#pinned", { dataset: { productId: p.id } },
        productTile(p, ".big"),
        el("div",
          el("span.badge.pin", "Pinned"),
          el("strong", p.title),
          el("span.muted", [p.origin, p.unit].filter(Boolean).join(" · ")),
          el("span.price", money(p.list_price, p.currency))))
        : el("div.pinned.empty", el("span.muted", "No product pinned")),
      ui.ticker);
  }

  function renderBag() {
    if (!state.productIds.length) {
      fill(ui.bag, el("p.muted", "The streamer has not added products yet."));
      return;
    }
    fill(ui.bag, state.productIds.map((id) => {
      const p = state.products.get(id);
      if (!p) return el("div.bag-item", el("span.muted", "…"));
      return el("div.bag-item", { dataset: { productId: id }, class: state.pinned?.id === id ? "bag-item pinned-item" : "bag-item" },
        productTile(p),
        el("div", el("strong", p.title), el("span.muted", [p.origin, p.unit].filter(Boolean).join(" · ")), el("span.price", money(p.list_price, p.currency))));
    }));
  }

  function saleCountdown(s) {
    const now = Date.now();
    if (s.status === "scheduled") return `starts in ${clock(Date.parse(s.starts_at) - now)}`;
    if (s.status === "ended") return `ended · ${s.sold} sold`;
    return `ends in ${clock(Date.parse(s.ends_at) - now)}`;
  }

  function renderSales() {
    const sales = [...state.sales.values()];
    // Live sales first, then scheduled ones, then the three latest that ended.
    const order = { live: 0, sold_out: 1, scheduled: 2 };
    const open = sales.filter((s) => s.status !== "ended")
      .sort((a, b) => order[a.status] - order[b.status] || a.starts_at.localeCompare(b.starts_at));
    const ended = sales.filter((s) => s.status === "ended")
      .sort((a, b) => b.starts_at.localeCompare(a.starts_at)).slice(0, 3);
    const shown = [...open, ...ended];
    fill(ui.sales, shown.map(saleCard));
  }

  function saleCard(s) {
    const p = state.products.get(s.product_id);
    const h = state.holds.get(s.id);
    const note = state.notes.get(s.id);
    const pct = (n) => `${(100 * n) / Math.max(1, s.stock)}%`;
    const statusText = { live: "Flash sale", scheduled: "Coming up", sold_out: "Sold out", ended: "Ended" }[s.status];
    const canBuy = s.status === "live" && (!h || ["released", "expired", "paid"].includes(h.state)) && !state.busy.has(s.id);
    let action;
    if (h && (h.state === "held" || h.state === "paying")) {
      action = el("div.hold#hold", { dataset: { state: h.state, holdId: h.hold.id } },
        el("div", el("strong", `Held for you: ${h.hold.quantity} × ${money(h.hold.unit_price, h.hold.currency)}`),
          el("span.countdown.hold-countdown", { dataset: { until: h.hold.expires_at, prefix: "pay within " } }, `pay within ${clock(Date.parse(h.hold.expires_at) - Date.now())}`)),
        el("div.row",
          el("button.pay#pay", { type: "button", disabled: h.state === "paying", onclick: () => pay(s.id) },
            h.state === "paying" ? "Paying…" : `Pay ${money(h.hold.amount, h.hold.currency)} (simulated)`),
          el("button.ghost", { type: "button", disabled: h.state === "paying", onclick: () => release(s.id) }, "Release")));
    } else {
      action = el("button.buy", { type: "button", disabled: !canBuy, onclick: () => buy(s), dataset: { saleId: s.id } },
        s.status === "sold_out" ? "Sold out" : s.status === "ended" ? "Ended" : s.status === "scheduled" ? "Not yet" : state.busy.has(s.id) ? "Reserving…" : "Buy now");
    }
    const done = h?.state === "paid"
      ? el("div.note.good#order-confirmed", { dataset: { orderId: h.order.id } }, `✓ Order confirmed: ${h.order.quantity} × ${p?.title ?? "item"}, ${money(h.order.amount, h.order.currency)} paid`)
      : null;
    return el(`div.card.sale.${s.status}`, { dataset: { saleId: s.id, status: s.status } },
      el("div.sale-top",
        productTile(p, ".big"),
        el("div.sale-info",
          el("div.row", el(`span.badge.${s.status}`, statusText), el("span.countdown.sale-countdown", { dataset: { sale: s.id } }, saleCountdown(s))),
          el("strong.sale-title", p?.title ?? s.product_id),
          el("div.prices", el("span.sale-price", money(s.price, s.currency)), p && p.list_price > s.price ? el("s.muted", money(p.list_price, p.currency)) : null,
            el("span.muted", `limit ${s.per_user_limit} per buyer`)))),
      el("div.stock", { title: `${s.remaining} left, ${s.held} held, ${s.sold} sold of ${s.stock}` },
        el("div.stock-sold", { style: { width: pct(s.sold) } }),
        el("div.stock-held", { style: { width: pct(s.held) } })),
      el("div.stock-text", el("span.remaining", { dataset: { remaining: s.remaining } }, `${s.remaining} of ${s.stock} left`), el("span.muted", `${s.held} held · ${s.sold} sold`)),
      el("div.sale-action", action),
      done,
      note ? el(`div.note.${note.kind}.sale-note`, note.text) : null);
  }

  async function renderPk() {
    const m = state.match;
    if (!m) {
      ui.pk.hidden = true;
      return;
    }
    let c = null;
    try {
      c = await contest(m.contest_id);
    } catch {
      /* names fall back to ids */
    }
    const byId = new Map((c?.participants ?? []).map((p) => [p.id, p]));
    const scores = state.scores?.match_id === m.id ? state.scores.scores : m.scores;
    const endsAt = state.scores?.match_id === m.id ? state.scores.ends_at : m.ends_at;
    const values = m.participant_ids.map((id) => scores.find((s) => s.participant_id === id)?.value ?? 0);
    const total = values.reduce((a, b) => a + b, 0);
    const fmt = (v) => (m.metric === "paid_gmv" ? money(v) : num(v));
    const colors = ["#ef4444", "#3b82f6", "#f59e0b", "#10b981", "#8b5cf6", "#ec4899", "#14b8a6", "#f97316", "#6366f1"];
    const leaders = state.scores?.match_id === m.id ? state.scores.leader_ids : [];
    let banner;
    if (m.status === "ended") {
      const names = m.winner_ids.map((id) => byId.get(id)?.name ?? id);
      banner = el("div.pk-result#pk-result", m.winner_ids.length === 0 ? "No winner: nobody scored" : m.winner_ids.length > 1 ? `Draw: ${names.join(" = ")}` : `Winner: ${names[0]}`);
    } else if (m.status === "scheduled") {
      banner = el("div.pk-result", `starts ${time(m.starts_at)}`);
    }
    ui.pk.hidden = false;
    ui.pk.dataset.matchId = m.id;
    ui.pk.dataset.status = m.status;
    fill(ui.pk,
      el("div.card-title", el("h3", `PK match · ${METRIC_LABEL[m.metric] ?? m.metric}`),
        m.status === "live" ? el("span.countdown.pk-countdown", { dataset: { until: endsAt } }, clock(Date.parse(endsAt) - Date.now())) : el(`span.badge.${m.status}`, m.status)),
      el("div.pk-bar", m.participant_ids.map((id, i) => el("div.pk-seg", {
        style: { flexGrow: String(total ? Math.max(values[i], total * 0.04) : 1), background: colors[i % colors.length] },
      }))),
      el("div.pk-names", m.participant_ids.map((id, i) => {
        const p = byId.get(id);
        const mine = p?.room_ids?.includes(roomId);
        return el(`div.pk-name${mine ? ".mine" : ""}`, { dataset: { participantId: id } },
          el("span.dot", { style: { background: colors[i % colors.length] } }),
          el("span", p?.name ?? id, mine ? " (this room)" : "", leaders.includes(id) ? " ▲" : ""),
          el("strong.pk-value", fmt(values[i])));
      })),
      banner);
  }

  async function renderStandings() {
    const all = [...state.standings.values()];
    if (!all.length) {
      ui.standings.hidden = true;
      return;
    }
    ui.standings.hidden = false;
    const blocks = await Promise.all(all.map(async (st) => {
      const c = await contest(st.contest_id).catch(() => null);
      return el("div.standing-block", { dataset: { contestId: st.contest_id } },
        el("div.card-title", el("h3", c?.title ?? "Contest standings"), el(`span.badge.${st.provisional ? "live" : "ended"}`, st.provisional ? "provisional" : "final")),
        el("table.table",
          el("thead", el("tr", el("th", "#"), el("th", "Participant"), el("th.num", "Total"), el("th.num", "GMV"), el("th.num", "Buyers"), el("th.num", "Likes"))),
          el("tbody", st.rows.map((r) => {
            const mine = c?.participants?.find((p) => p.id === r.participant_id)?.room_ids?.includes(roomId);
            return el(`tr${mine ? ".mine" : ""}`, el("td", r.rank), el("td", r.name, r.qualified ? "" : " (not qualified)"), el("td.num", num(r.total, 2)),
              el("td.num", money(r.metrics.paid_gmv)), el("td.num", num(r.metrics.distinct_buyers)), el("td.num", num(r.metrics.likes)));
          }))));
    }));
    fill(ui.standings, blocks);
  }

  function chatItem(m) {
    return el("li", { dataset: { messageId: m.id } }, el("strong", m.name), " ", m.text);
  }

  function renderChat() {
    fill(ui.chatList, state.chat.map(chatItem));
    ui.chatList.scrollTop = ui.chatList.scrollHeight;
  }

  async function loadOrders() {
    if (!session.token) {
      fill(ui.orders, el("h3", "My orders"), el("p.muted", "Sign in to buy and see your orders."),
        el("button", { type: "button", onclick: () => window.harvestOpenLogin?.() }, "Sign in"));
      return;
    }
    try {
      const page = await api("GET", "/api/v1/orders?mine=true&limit=20");
      state.orders = page.items.slice().reverse();
      const rows = await Promise.all(state.orders.map(async (o) => {
        const p = await product(o.product_id).catch(() => null);
        return el("li", { dataset: { orderId: o.id, status: o.status } },
          el("span", `${o.quantity} × ${p?.title ?? o.product_id}`),
          el("strong", money(o.amount, o.currency)),
          el(`span.badge.${o.status === "paid" ? "good" : "bad"}`, o.status));
      }));
      fill(ui.orders, el("h3", "My orders"), rows.length ? el("ul.order-list", rows) : el("p.muted", "No orders yet."));
    } catch (e) {
      fill(ui.orders, el("h3", "My orders"), el("p.error", e.message));
    }
  }

  function tick() {
    for (const node of main.querySelectorAll(".sale-countdown")) {
      const s = state.sales.get(node.dataset.sale);
      if (s) node.textContent = saleCountdown(s);
    }
    for (const node of main.querySelectorAll("[data-until]")) {
      node.textContent = (node.dataset.prefix ?? "") + clock(Date.parse(node.dataset.until) - Date.now());
    }
  }

  // ---------------------------------------------------------------- events ---

  async function ensureProducts(ids) {
    const missing = ids.filter((id) => !state.products.has(id));
    const got = await Promise.all(missing.map((id) => product(id).catch(() => null)));
    got.forEach((p) => p && state.products.set(p.id, p));
  }

  function applySnapshot(d) {
    state.room = d.room;
    state.viewers = d.viewers;
    state.likes = d.likes;
    state.pinned = d.pinned_product;
    state.productIds = d.products.map((p) => p.id);
    d.products.forEach((p) => {
      state.products.set(p.id, p);
      rememberProduct(p);
    });
    if (d.pinned_product) state.products.set(d.pinned_product.id, d.pinned_product);
    // Keep ended sales this page already showed; replace the others.
    for (const [id, s] of state.sales) if (s.status !== "ended") state.sales.delete(id);
    d.sales.forEach((s) => state.sales.set(s.id, s));
    state.match = d.match;
    state.scores = null;
    state.standings = new Map(d.standings.map((s) => [s.contest_id, s]));
    state.chat = d.recent_chat.slice(-100);
    ensureProducts(d.sales.map((s) => s.product_id)).then(renderAll);
    renderAll();
  }

  function renderAll() {
    renderHead();
    renderStage();
    renderBag();
    renderSales();
    renderPk();
    renderStandings();
    renderChat();
  }

  function flash(text) {
    const item = el("div.ticker-item", text);
    ui.ticker.append(item);
    setTimeout(() => item.remove(), 5000);
    while (ui.ticker.children.length > 3) ui.ticker.firstChild.remove();
  }

  async function onEvent(ev) {
    const d = ev.data;
    switch (ev.type) {
      case "room.status":
        if (state.room) state.room.status = d.status;
        renderHead();
        break;
      case "room.products":
        state.productIds = d.product_ids;
        await ensureProducts(d.product_ids);
        renderBag();
        break;
      case "product.pinned":
        state.pinned = d.product;
        if (d.product) state.products.set(d.product.id, d.product);
        renderStage();
        renderBag();
        break;
      case "sale.scheduled":
      case "sale.started":
        await ensureProducts([d.sale.product_id]);
        state.sales.set(d.sale.id, d.sale);
        state.notes.delete(d.sale.id);
        renderSales();
        if (ev.type === "sale.started") flash(`Flash sale: ${state.products.get(d.sale.product_id)?.title ?? "a product"} at ${money(d.sale.price, d.sale.currency)}`);
        break;
      case "sale.stock": {
        const s = state.sales.get(d.sale_id);
        if (s) {
          Object.assign(s, { remaining: d.remaining, held: d.held, sold: d.sold });
          if (s.status === "sold_out" && d.remaining > 0) s.status = "live";
          renderSales();
        }
        break;
      }
      case "sale.sold_out": {
        const s = state.sales.get(d.sale_id);
        if (s) {
          s.status = "sold_out";
          renderSales();
        }
        break;
      }
      case "sale.ended": {
        const s = state.sales.get(d.sale_id);
        if (s) {
          s.status = "ended";
          s.sold = d.sold;
          renderSales();
        }
        break;
      }
      case "order.placed":
        flash(`${d.buyer} bought ${d.quantity} × ${state.products.get(d.product_id)?.title ?? "an item"}`);
        break;
      case "chat.deleted":
        state.chat = state.chat.filter((m) => m.id !== d.message_id);
        renderChat();
        break;
      case "pk.started":
      case "pk.ended":
        state.match = d.match;
        if (ev.type === "pk.started") state.scores = null;
        renderPk();
        break;
      case "pk.score":
        state.scores = d;
        if (state.match?.id === d.match_id) renderPk();
        break;
      case "contest.standings":
        state.standings.set(d.standings.contest_id, d.standings);
        renderStandings();
        break;
      case "chat.message":
        state.chat.push(d);
        if (state.chat.length > 100) state.chat.shift();
        ui.chatList.append(chatItem(d));
        while (ui.chatList.children.length > 100) ui.chatList.firstChild.remove();
        ui.chatList.scrollTop = ui.chatList.scrollHeight;
        break;
      case "likes":
        state.likes = d.total;
        renderHead();
        break;
      case "room.viewers":
        state.viewers = d.count;
        renderHead();
        break;
      case "hold.expired":
        for (const [saleId, h] of state.holds) {
          if (h.hold.id === d.hold_id && h.state === "held") {
            h.state = "expired";
            state.notes.set(saleId, { kind: "bad", text: reason({ code: "hold_expired" }) });
          }
        }
        renderSales();
        break;
      case "order.paid":
        for (const h of state.holds.values()) {
          if (h.hold.id === d.order.hold_id) {
            h.state = "paid";
            h.order = d.order;
          }
        }
        renderSales();
        loadOrders();
        break;
      case "error":
        toast(`${d.message} (${d.code})`, "bad");
        break;
      default:
        break;
    }
  }

  // --------------------------------------------------------------- actions ---

  async function buy(sale) {
    if (!session.token) {
      state.notes.set(sale.id, { kind: "bad", text: "Sign in to buy." });
      renderSales();
      window.harvestOpenLogin?.();
      return;
    }
    state.busy.add(sale.id);
    state.notes.delete(sale.id);
    renderSales();
    try {
      const hold = await api("POST", `/api/v1/flash-sales/${sale.id}/reservations`, { quantity: 1 }, { key: newKey() });
      state.holds.set(sale.id, { hold, state: "held", payKey: newKey() });
    } catch (e) {
      state.notes.set(sale.id, { kind: "bad", text: reason(e, sale) });
    } finally {
      state.busy.delete(sale.id);
      renderSales();
    }
  }

  async function pay(saleId) {
    const h = state.holds.get(saleId);
    if (!h) return;
    h.state = "paying";
    renderSales();
    try {
      h.order = await api("POST", `/api/v1/holds/${h.hold.id}/checkout`, { method: "simulated" }, { key: h.payKey });
      h.state = "paid";
      state.notes.delete(saleId);
      loadOrders();
    } catch (e) {
      h.state = ["hold_expired", "hold_released"].includes(e.code) ? "expired" : "held";
      state.notes.set(saleId, { kind: "bad", text: reason(e, state.sales.get(saleId)) });
    }
    renderSales();
  }

  async function release(saleId) {
    const h = state.holds.get(saleId);
    if (!h) return;
    try {
      await api("DELETE", `/api/v1/holds/${h.hold.id}`);
      h.state = "released";
      state.notes.set(saleId, { kind: "info", text: "Released: the units went back to the sale." });
    } catch (e) {
      state.notes.set(saleId, { kind: "bad", text: reason(e) });
    }
    renderSales();
  }

  function sendChat(e) {
    e.preventDefault();
    const text = ui.chatInput.value.trim();
    if (!text) return;
    if (!session.token) {
      toast("Sign in to chat.", "bad");
      return;
    }
    if (socket.send({ type: "chat.send", text, ref: newKey() })) ui.chatInput.value = "";
    else toast("Not connected yet.", "bad");
  }

  function like() {
    if (!session.token) {
      toast("Sign in to like.", "bad");
      return;
    }
    if (socket.send({ type: "like", count: 1 })) {
      const heart = el("span.heart", "♥");
      ui.likeBtn.append(heart);
      setTimeout(() => heart.remove(), 900);
    }
  }

  // ------------------------------------------------------------ connection ---

  const socket = new RoomSocket(roomId, {
    onSnapshot: applySnapshot,
    onEvent,
    onStatus: (s) => {
      ui.conn.dataset.state = s.state;
      ui.conn.dataset.reconnects = s.reconnects;
      fill(ui.conn, el("span.dot"), `${s.state}${s.lastSeq !== null ? ` · seq ${s.lastSeq}` : ""}${s.detail ? ` · ${s.detail}` : ""}${s.reconnects ? ` · ${s.reconnects} reconnect${s.reconnects > 1 ? "s" : ""}` : ""}`);
    },
  });
  // Handle for the browser tests and curious readers: `harvestRoom.socket.drop()`.
  window.harvestRoom = { socket, state };

  loadOrders();
  const stopTick = every(250, tick);
  return () => {
    stopTick();
    socket.close();
    delete window.harvestRoom;
  };
}
