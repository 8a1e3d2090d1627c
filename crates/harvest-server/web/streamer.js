// The streamer page: products and rooms, going live, the product bag and the pin,
// flash sales, the live dashboard with its chart, moderation, orders (refund, CSV
// export) and the end-of-stream summary.

import {
  api, listAll, product, rememberProduct, session, RoomSocket, newKey, money, parseMoney,
  clock, time, num, el, fill, toast, productTile, every, download, drawChart,
} from "./api.js";

export function mount(main, [roomId]) {
  if (!session.has("streamer")) {
    main.append(el("section.card.signin",
      el("h1", "Streamer"),
      el("p", "Sign in with a streamer token to create products and rooms, go live and run flash sales."),
      el("pre", "harvest token --sub coop-huayuan --role streamer --name \"Huayuan co-op\""),
      el("button", { type: "button", onclick: () => window.harvestOpenLogin?.() }, "Sign in")));
    return null;
  }
  const side = el("aside.streamer-side");
  const body = el("section.streamer-main");
  main.append(el("div.streamer-layout", side, body));
  const stops = [mountSide(side, roomId)];
  if (roomId) stops.push(mountRoom(body, roomId));
  else body.append(el("div.card.empty-state", el("h2", "Pick a room"), el("p.muted", "Create a room on the left (or pick one), add products to its bag and go live.")));
  return () => stops.forEach((f) => f && f());
}

function field(label, input) {
  return el("label.field", el("span", label), input);
}

// ------------------------------------------------------------ rooms, products ---

function mountSide(side, currentRoom) {
  const rooms = el("ul.nav-list#my-rooms");
  const products = el("ul.nav-list#my-products");
  const me = session.userId;

  const roomTitle = el("input", { name: "title", required: true, maxLength: 200, placeholder: "Shibadong kiwi harvest live" });
  const roomDesc = el("input", { name: "description", maxLength: 2000, placeholder: "optional" });
  const roomForm = el("form.stack#new-room", {
    onsubmit: async (e) => {
      e.preventDefault();
      try {
        const room = await api("POST", "/api/v1/rooms", { title: roomTitle.value, ...(roomDesc.value.trim() ? { description: roomDesc.value } : {}) });
        toast(`Room “${room.title}” created`, "good");
        location.hash = `#/streamer/${room.id}`;
      } catch (err) {
        toast(err.message, "bad");
      }
    },
  }, field("Title", roomTitle), field("Description", roomDesc), el("button", { type: "submit" }, "Create room"));

  const p = {
    sku: el("input", { name: "sku", required: true, maxLength: 64, placeholder: "kiwi-5kg" }),
    title: el("input", { name: "title", required: true, maxLength: 200, placeholder: "十八洞猕猴桃 Shibadong kiwis" }),
    origin: el("input", { name: "origin", maxLength: 200, placeholder: "Huayuan, Hunan" }),
    unit: el("input", { name: "unit", maxLength: 50, placeholder: "5 kg box" }),
    price: el("input", { name: "list_price", required: true, inputMode: "decimal", placeholder: "69.90" }),
  };
  const productForm = el("form.stack#new-product", {
    onsubmit: async (e) => {
      e.preventDefault();
      const listPrice = parseMoney(p.price.value);
      if (listPrice === null) {
        toast("List price: a number of yuan, e.g. 69.90", "bad");
        return;
      }
      const body = { sku: p.sku.value.trim(), title: p.title.value, list_price: listPrice };
      if (p.origin.value.trim()) body.origin = p.origin.value;
      if (p.unit.value.trim()) body.unit = p.unit.value;
      try {
        const made = await api("POST", "/api/v1/products", body);
        rememberProduct(made);
        toast(`Product “${made.title}” created`, "good");
        Object.values(p).forEach((i) => (i.value = ""));
        load();
        window.dispatchEvent(new CustomEvent("harvest:products"));
      } catch (err) {
        toast(err.code === "duplicate_sku" ? "You already have a product with that SKU." : err.message, "bad");
      }
    },
  }, field("SKU", p.sku), field("Title", p.title), el("div.row", field("Origin", p.origin), field("Unit", p.unit)), field("List price (¥)", p.price),
  el("button", { type: "submit" }, "Create product"));

  side.append(
    el("div.card", el("h3", "My rooms"), rooms, el("details", el("summary", "New room"), roomForm)),
    el("div.card", el("h3", "My products"), products, el("details", el("summary", "New product"), productForm)),
  );

  async function load() {
    try {
      const [rs, ps] = await Promise.all([
        listAll(`/api/v1/rooms?streamer=${encodeURIComponent(me)}`),
        listAll(`/api/v1/products?owner=${encodeURIComponent(me)}`),
      ]);
      fill(rooms, rs.length ? rs.slice().reverse().map((r) => el(`li${r.id === currentRoom ? ".current" : ""}`,
        el("a", { href: `#/streamer/${r.id}`, dataset: { roomId: r.id } }, r.title), el(`span.badge.${r.status}`, r.status))) : el("li.muted", "No rooms yet."));
      ps.forEach(rememberProduct);
      fill(products, ps.length ? ps.map((x) => el("li", { dataset: { productId: x.id } }, productTile(x, ".small"),
        el("span", x.title), el("span.muted", money(x.list_price, x.currency)))) : el("li.muted", "No products yet."));
    } catch (err) {
      fill(rooms, el("li.error", err.message));
    }
  }
  load();
  const onChange = () => load();
  window.addEventListener("harvest:rooms", onChange);
  return () => window.removeEventListener("harvest:rooms", onChange);
}

// -------------------------------------------------------------------- room ---

function mountRoom(body, roomId) {
  const state = {
    room: null,
    bag: [],
    pinned: null,
    sales: new Map(),
    chat: [],
    feed: [],
    history: [], // {t, gmv, viewers, orders}
    stats: null,
    orders: [],
  };
  const ui = {
    head: el("div.card.room-head"),
    tiles: el("div.tiles#dashboard"),
    chart: el("canvas.chart#chart"),
    sales: el("div#sales-table"),
    saleForm: el("form.stack#new-sale"),
    bag: el("div#bag-editor"),
    chat: el("ul.chat-list.moderation#moderation"),
    feed: el("ul.feed#feed"),
    orders: el("div#orders"),
    summary: el("div.card.summary#summary", { hidden: true }),
  };
  body.append(
    ui.head,
    ui.summary,
    el("div.card", el("div.card-title", el("h3", "Live dashboard"), el("span.muted", "refreshes every 2 s")), ui.tiles, ui.chart),
    el("div.grid2",
      el("div.card", el("h3", "Flash sales"), ui.sales, el("details#sale-details", el("summary", "Start a flash sale"), ui.saleForm)),
      el("div.card", el("h3", "Product bag"), ui.bag)),
    el("div.grid2",
      el("div.card", el("h3", "Chat moderation"), ui.chat),
      el("div.card", el("h3", "Room events"), ui.feed)),
    el("div.card", el("div.card-title", el("h3", "Orders"),
      el("button.ghost#export-csv", { type: "button", onclick: exportCsv }, "Export CSV")), ui.orders),
  );

  // ---------------------------------------------------------------- render ---

  function renderHead() {
    const r = state.room;
    if (!r) return;
    const actions = [];
    if (r.status === "scheduled") actions.push(el("button#go-live", { type: "button", onclick: () => lifecycle("start") }, "Go live"));
    if (r.status !== "ended") actions.push(el("button.danger#end-stream", { type: "button", onclick: () => { if (confirm("End the stream? Running sales end too.")) lifecycle("end"); } }, "End stream"));
    fill(ui.head,
      el("div.room-title", el("h1", r.title), el(`span.badge.${r.status}#room-status`, r.status === "live" ? "LIVE" : r.status)),
      el("div.room-meta",
        el("span.muted", `room ${r.id}`),
        r.started_at ? el("span.muted", `live since ${time(r.started_at)}`) : null,
        el("a", { href: `#/viewer/${r.id}` }, "Open the viewer page ↗")),
      el("div.row", actions));
  }

  function tile(label, value, id) {
    return el("div.tile-stat", { dataset: { stat: id } }, el("span.label", label), el("strong.value", value));
  }

  function renderStats() {
    const s = state.stats;
    if (!s) return;
    fill(ui.tiles,
      tile("Viewers now", num(s.viewers_now), "viewers_now"),
      tile("Peak", num(s.viewers_peak), "viewers_peak"),
      tile("Unique", num(s.viewers_unique), "viewers_unique"),
      tile("Likes", num(s.likes), "likes"),
      tile("Chat", num(s.chat_messages), "chat_messages"),
      tile("Paid orders", num(s.orders_paid), "orders_paid"),
      tile("GMV", money(s.gmv_paid), "gmv_paid"),
      tile("Buyers", num(s.buyers_distinct), "buyers_distinct"),
      tile("Conversion", `${num(100 * s.conversion, 1)}%`, "conversion"),
      tile("Refunds", num(s.refunds), "refunds"));
    drawChart(ui.chart, [
      { label: "GMV", color: "#ea580c", values: state.history.map((h) => h.gmv), format: (v) => money(v) },
      { label: "Viewers", color: "#2563eb", values: state.history.map((h) => h.viewers) },
      { label: "Orders", color: "#16a34a", values: state.history.map((h) => h.orders) },
    ]);
  }

  function renderSales() {
    const sales = [...state.sales.values()].sort((a, b) => b.starts_at.localeCompare(a.starts_at));
    if (!sales.length) {
      fill(ui.sales, el("p.muted", "No flash sale yet."));
      return;
    }
    fill(ui.sales, el("table.table.sales",
      el("thead", el("tr", el("th", "Product"), el("th.num", "Price"), el("th", "Stock"), el("th", "Status"), el("th", ""))),
      el("tbody", sales.map((s) => {
        const p = state.products?.get(s.product_id);
        return el("tr", { dataset: { saleId: s.id, status: s.status } },
          el("td", p?.title ?? s.product_id),
          el("td.num", money(s.price, s.currency)),
          el("td", el("div.stock.small", el("div.stock-sold", { style: { width: `${(100 * s.sold) / s.stock}%` } }), el("div.stock-held", { style: { width: `${(100 * s.held) / s.stock}%` } })),
            el("span.stock-numbers", `${s.remaining} left · ${s.held} held · ${s.sold} sold / ${s.stock}`)),
          el("td", el(`span.badge.${s.status}`, s.status), " ", el("span.countdown.muted", { dataset: { sale: s.id } }, countdown(s))),
          el("td", s.status !== "ended" ? el("button.ghost.small", { type: "button", onclick: () => endSale(s.id) }, "End") : null));
      }))));
  }

  function countdown(s) {
    if (s.status === "scheduled") return `starts in ${clock(Date.parse(s.starts_at) - Date.now())}`;
    if (s.status === "ended") return "";
    return `ends in ${clock(Date.parse(s.ends_at) - Date.now())}`;
  }

  function renderBag() {
    const inBag = state.bag;
    const add = el("select#bag-add", el("option", { value: "" }, "Add a product…"),
      [...(state.myProducts ?? [])].filter((p) => !inBag.includes(p.id)).map((p) => el("option", { value: p.id }, p.title)));
    fill(ui.bag,
      inBag.length ? el("ul.bag-list", inBag.map((id) => {
        const p = state.products?.get(id);
        const pinned = state.pinned?.id === id;
        return el(`li${pinned ? ".pinned-item" : ""}`, { dataset: { productId: id } },
          productTile(p, ".small"), el("span", p?.title ?? id), el("span.muted", p ? money(p.list_price, p.currency) : ""),
          el("button.ghost.small", { type: "button", onclick: () => pin(pinned ? null : id) }, pinned ? "Unpin" : "Pin"),
          el("button.ghost.small", { type: "button", onclick: () => removeFromBag(id) }, "Remove"));
      })) : el("p.muted", "The bag is empty."),
      el("form.row", { onsubmit: (e) => { e.preventDefault(); if (add.value) addToBag(add.value); } }, add, el("button", { type: "submit" }, "Add")));
    renderSaleForm();
  }

  function renderSaleForm() {
    const keep = Object.fromEntries([...ui.saleForm.querySelectorAll("[name]")].map((i) => [i.name, i.value]));
    const f = {
      product_id: el("select", { name: "product_id", required: true }, state.bag.map((id) => el("option", { value: id }, state.products?.get(id)?.title ?? id))),
      price: el("input", { name: "price", required: true, inputMode: "decimal", placeholder: "29.90" }),
      stock: el("input", { name: "stock", type: "number", min: 1, required: true, value: "20" }),
      per_user_limit: el("input", { name: "per_user_limit", type: "number", min: 1, value: "1" }),
      duration_s: el("input", { name: "duration_s", type: "number", min: 1, value: "300" }),
      hold_ttl_s: el("input", { name: "hold_ttl_s", type: "number", min: 1, max: 3600, value: "120" }),
      starts_in_s: el("input", { name: "starts_in_s", type: "number", min: 0, value: "0" }),
    };
    for (const [k, v] of Object.entries(keep)) if (f[k] && v) f[k].value = v;
    fill(ui.saleForm,
      state.bag.length ? null : el("p.muted", "Add a product to the bag first."),
      field("Product", f.product_id),
      el("div.row", field("Sale price (¥)", f.price), field("Stock", f.stock), field("Per buyer", f.per_user_limit)),
      el("div.row", field("Duration (s)", f.duration_s), field("Hold (s)", f.hold_ttl_s), field("Starts in (s)", f.starts_in_s)),
      el("button#start-sale", { type: "submit", disabled: !state.bag.length }, "Start flash sale"));
    ui.saleForm.onsubmit = async (e) => {
      e.preventDefault();
      const price = parseMoney(f.price.value);
      if (price === null) {
        toast("Sale price: a number of yuan, e.g. 29.90", "bad");
        return;
      }
      const bodyJson = {
        product_id: f.product_id.value,
        price,
        stock: Number(f.stock.value),
        per_user_limit: Number(f.per_user_limit.value || 1),
        duration_s: Number(f.duration_s.value || 300),
        hold_ttl_s: Number(f.hold_ttl_s.value || 300),
      };
      const delay = Number(f.starts_in_s.value || 0);
      if (delay > 0) bodyJson.starts_at = new Date(Date.now() + delay * 1000).toISOString();
      try {
        const sale = await api("POST", `/api/v1/rooms/${roomId}/flash-sales`, bodyJson);
        state.sales.set(sale.id, sale);
        renderSales();
        toast("Flash sale created", "good");
      } catch (err) {
        toast(`${err.message}${err.details?.field ? ` (${err.details.field})` : ""}`, "bad");
      }
    };
  }

  function chatLine(m) {
    return el("li", { dataset: { messageId: m.id, userId: m.user_id } },
      el("div", el("strong", m.name), el("span.muted", ` ${m.user_id}`), " ", m.text),
      el("div.mod-actions",
        el("button.ghost.small", { type: "button", title: "Delete this message", onclick: () => moderate("delete", m) }, "Delete"),
        el("button.ghost.small", { type: "button", title: "Mute for 5 minutes", onclick: () => moderate("mute", m) }, "Mute 5m"),
        el("button.ghost.small.danger", { type: "button", title: "Ban from the room", onclick: () => moderate("ban", m) }, "Ban")));
  }

  function renderChat() {
    fill(ui.chat, state.chat.slice(-60).map(chatLine));
    ui.chat.scrollTop = ui.chat.scrollHeight;
  }

  function pushFeed(text) {
    state.feed.push({ t: new Date(), text });
    if (state.feed.length > 40) state.feed.shift();
    fill(ui.feed, state.feed.slice().reverse().map((f) => el("li", el("span.muted", f.t.toLocaleTimeString([], { hour12: false })), " ", f.text)));
  }

  async function renderOrders() {
    const rows = state.orders.slice(-50).reverse();
    fill(ui.orders, rows.length ? el("table.table#orders-table",
      el("thead", el("tr", el("th", "Paid"), el("th", "Buyer"), el("th", "Product"), el("th.num", "Qty"), el("th.num", "Amount"), el("th", "Status"), el("th", ""))),
      el("tbody", rows.map((o) => el("tr", { dataset: { orderId: o.id } },
        el("td", time(o.paid_at)), el("td", o.buyer_id), el("td", state.products?.get(o.product_id)?.title ?? o.product_id),
        el("td.num", o.quantity), el("td.num", money(o.amount, o.currency)), el(`td`, el(`span.badge.${o.status === "paid" ? "good" : "bad"}`, o.status)),
        el("td", o.status === "paid" ? el("button.ghost.small", { type: "button", onclick: () => refund(o) }, "Refund") : null))))) : el("p.muted", "No orders yet."));
  }

  function renderSummary() {
    const r = state.room;
    if (!r || r.status !== "ended" || !state.stats) {
      ui.summary.hidden = true;
      return;
    }
    const s = state.stats;
    const mins = r.started_at && r.ended_at ? Math.round((Date.parse(r.ended_at) - Date.parse(r.started_at)) / 60000) : null;
    ui.summary.hidden = false;
    fill(ui.summary,
      el("h2", "End-of-stream summary"),
      el("p.muted", r.started_at ? `Live ${time(r.started_at)} → ${time(r.ended_at)}${mins !== null ? ` (${mins} min)` : ""}` : "Ended before going live."),
      el("div.tiles",
        tile("GMV", money(s.gmv_paid), "sum_gmv"), tile("Paid orders", num(s.orders_paid), "sum_orders"), tile("Buyers", num(s.buyers_distinct), "sum_buyers"),
        tile("Peak viewers", num(s.viewers_peak), "sum_peak"), tile("Unique viewers", num(s.viewers_unique), "sum_unique"), tile("Likes", num(s.likes), "sum_likes"),
        tile("Conversion", `${num(100 * s.conversion, 1)}%`, "sum_conv"), tile("Refunds", num(s.refunds), "sum_refunds")),
      el("h3", "Flash sales"),
      el("ul", [...state.sales.values()].map((x) => el("li", `${state.products?.get(x.product_id)?.title ?? x.product_id}: ${x.sold} of ${x.stock} sold at ${money(x.price, x.currency)}`))));
  }

  // ----------------------------------------------------------------- data ---

  async function loadRoom() {
    const d = await api("GET", `/api/v1/rooms/${roomId}`);
    state.room = d;
    state.bag = d.live.product_ids;
    state.myProducts = await listAll(`/api/v1/products?owner=${encodeURIComponent(session.userId)}`).catch(() => []);
    state.products = new Map(state.myProducts.map((p) => [p.id, p]));
    for (const id of state.bag) if (!state.products.has(id)) state.products.set(id, await product(id));
    state.pinned = d.live.pinned_product_id ? state.products.get(d.live.pinned_product_id) ?? null : null;
    renderHead();
    renderBag();
  }

  /** Every sale of the room, found in its event log (the API's way to list them). */
  async function loadSales() {
    const ids = new Set();
    let after = 0;
    for (let i = 0; i < 50; i++) {
      const page = await api("GET", `/api/v1/rooms/${roomId}/events?after_seq=${after}&limit=500`);
      for (const ev of page.items) {
        if (ev.type === "sale.scheduled" || ev.type === "sale.started") ids.add(ev.data.sale.id);
      }
      if (!page.items.length || page.items[page.items.length - 1].seq >= page.last_seq) break;
      after = page.items[page.items.length - 1].seq;
    }
    const sales = await Promise.all([...ids].map((id) => api("GET", `/api/v1/flash-sales/${id}`).catch(() => null)));
    sales.filter(Boolean).forEach((s) => state.sales.set(s.id, s));
    renderSales();
  }

  async function loadStats() {
    try {
      state.stats = await api("GET", `/api/v1/rooms/${roomId}/stats`);
      state.history.push({ t: Date.now(), gmv: state.stats.gmv_paid, viewers: state.stats.viewers_now, orders: state.stats.orders_paid });
      if (state.history.length > 180) state.history.shift();
      renderStats();
      renderSummary();
    } catch (err) {
      fill(ui.tiles, el("p.error", err.message));
    }
  }

  async function loadOrders() {
    try {
      const page = await api("GET", `/api/v1/rooms/${roomId}/orders?format=json`);
      state.orders = page.items ?? page;
      renderOrders();
    } catch (err) {
      fill(ui.orders, el("p.error", err.message));
    }
  }

  // -------------------------------------------------------------- actions ---

  async function lifecycle(what) {
    try {
      state.room = { ...state.room, ...(await api("POST", `/api/v1/rooms/${roomId}/${what}`)) };
      toast(what === "start" ? "You are live" : "Stream ended", "good");
      renderHead();
      window.dispatchEvent(new CustomEvent("harvest:rooms"));
      loadStats();
      if (what === "end") loadSales();
    } catch (err) {
      toast(err.message, "bad");
    }
  }

  async function addToBag(id) {
    try {
      state.bag = (await api("POST", `/api/v1/rooms/${roomId}/products`, { product_id: id })).product_ids;
      renderBag();
    } catch (err) {
      toast(err.message, "bad");
    }
  }

  async function removeFromBag(id) {
    try {
      state.bag = (await api("DELETE", `/api/v1/rooms/${roomId}/products/${id}`)).product_ids;
      if (state.pinned?.id === id) state.pinned = null;
      renderBag();
    } catch (err) {
      toast(err.message, "bad");
    }
  }

  async function pin(id) {
    try {
      const r = await api("POST", `/api/v1/rooms/${roomId}/pin`, { product_id: id });
      state.pinned = r.pinned_product_id ? state.products.get(r.pinned_product_id) : null;
      renderBag();
    } catch (err) {
      toast(err.message, "bad");
    }
  }

  async function endSale(id) {
    try {
      state.sales.set(id, await api("POST", `/api/v1/flash-sales/${id}/end`));
      renderSales();
    } catch (err) {
      toast(err.message, "bad");
    }
  }

  async function moderate(action, m) {
    try {
      if (action === "delete") await api("DELETE", `/api/v1/rooms/${roomId}/chat/${encodeURIComponent(m.id)}`);
      if (action === "mute") await api("POST", `/api/v1/rooms/${roomId}/moderation/mutes`, { user_id: m.user_id, duration_s: 300 });
      if (action === "ban") {
        if (!confirm(`Ban ${m.name} (${m.user_id}) from this room?`)) return;
        await api("POST", `/api/v1/rooms/${roomId}/moderation/bans`, { user_id: m.user_id });
      }
      toast({ delete: "Message deleted", mute: `${m.name} muted for 5 minutes`, ban: `${m.name} banned` }[action], "good");
    } catch (err) {
      toast(err.message, "bad");
    }
  }

  async function refund(o) {
    if (!confirm(`Refund ${money(o.amount, o.currency)} to ${o.buyer_id}?`)) return;
    try {
      await api("POST", `/api/v1/orders/${o.id}/refund`, { reason: "refunded from the console" });
      toast("Order refunded", "good");
      loadOrders();
      loadStats();
    } catch (err) {
      toast(err.message, "bad");
    }
  }

  async function exportCsv() {
    try {
      const csv = await api("GET", `/api/v1/rooms/${roomId}/orders?format=csv`, undefined, { raw: true });
      download(`harvest-orders-${roomId}.csv`, csv, "text/csv");
    } catch (err) {
      toast(err.message, "bad");
    }
  }

  // ---------------------------------------------------------- live events ---

  const socket = new RoomSocket(roomId, {
    onSnapshot: (d) => {
      state.room = { ...state.room, ...d.room };
      state.bag = d.products.map((p) => p.id);
      d.products.forEach((p) => state.products?.set(p.id, p));
      state.pinned = d.pinned_product;
      d.sales.forEach((s) => state.sales.set(s.id, s));
      state.chat = d.recent_chat.slice();
      renderHead();
      renderBag();
      renderSales();
      renderChat();
    },
    onEvent: async (ev) => {
      const d = ev.data;
      switch (ev.type) {
        case "room.status":
          state.room.status = d.status;
          renderHead();
          break;
        case "room.products":
          state.bag = d.product_ids;
          renderBag();
          break;
        case "product.pinned":
          state.pinned = d.product;
          renderBag();
          break;
        case "sale.scheduled":
        case "sale.started":
          state.sales.set(d.sale.id, d.sale);
          renderSales();
          pushFeed(`${ev.type === "sale.started" ? "sale started" : "sale scheduled"}: ${state.products?.get(d.sale.product_id)?.title ?? ""} ${money(d.sale.price)}`);
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
        case "sale.sold_out":
        case "sale.ended": {
          const s = state.sales.get(d.sale_id);
          if (s) {
            s.status = ev.type === "sale.ended" ? "ended" : "sold_out";
            if (ev.type === "sale.ended") s.sold = d.sold;
            renderSales();
          }
          pushFeed(ev.type === "sale.ended" ? `sale ended: ${d.sold} sold` : "sold out");
          break;
        }
        case "order.placed":
          pushFeed(`order: ${d.buyer} bought ${d.quantity} × ${state.products?.get(d.product_id)?.title ?? "an item"}`);
          // At most one reload of the orders a second, however busy the sale.
          if (!state.ordersTimer) {
            state.ordersTimer = setTimeout(() => {
              state.ordersTimer = null;
              loadOrders();
            }, 1000);
          }
          break;
        case "chat.message":
          state.chat.push(d);
          if (state.chat.length > 200) state.chat.shift();
          ui.chat.append(chatLine(d));
          while (ui.chat.children.length > 60) ui.chat.firstChild.remove();
          ui.chat.scrollTop = ui.chat.scrollHeight;
          break;
        case "chat.deleted":
          state.chat = state.chat.filter((m) => m.id !== d.message_id);
          renderChat();
          break;
        case "pk.started":
          pushFeed("PK match started");
          break;
        case "pk.ended":
          pushFeed(`PK match ended${d.match.winner_ids.length ? "" : ": no winner"}`);
          break;
        case "error":
          toast(`${d.message} (${d.code})`, "bad");
          break;
        default:
          break;
      }
    },
  });

  loadRoom().then(loadSales).catch((err) => fill(ui.head, el("p.error", `Cannot load the room: ${err.message}`)));
  loadOrders();
  const stops = [
    every(2000, loadStats),
    every(500, () => {
      for (const node of ui.sales.querySelectorAll("[data-sale]")) {
        const s = state.sales.get(node.dataset.sale);
        if (s) node.textContent = countdown(s);
      }
    }),
  ];
  const onProducts = () => loadRoom().catch(() => {});
  window.addEventListener("harvest:products", onProducts);
  window.harvestRoom = { socket, state };
  return () => {
    stops.forEach((f) => f());
    socket.close();
    window.removeEventListener("harvest:products", onProducts);
    delete window.harvestRoom;
  };
}
