// The organizer page: create a contest with its scoring rules, schedule PK matches,
// enter judges' scores, watch live standings, settle, read the audit, export.

import {
  api, listAll, session, demoConfig, RoomSocket, money, parseMoney,
  clock, time, num, el, fill, toast, every, download, METRIC_LABEL,
} from "./api.js";

const KNOWN_KEY = "harvest.console.contests";
const METRICS = ["paid_gmv", "paid_orders", "distinct_buyers", "likes", "match_wins", "judges"];

function known() {
  try {
    return JSON.parse(localStorage.getItem(KNOWN_KEY) || "[]");
  } catch {
    return [];
  }
}

function remember(c) {
  const list = known().filter((k) => k.id !== c.id);
  list.unshift({ id: c.id, title: c.title });
  localStorage.setItem(KNOWN_KEY, JSON.stringify(list.slice(0, 20)));
}

function field(label, input) {
  return el("label.field", el("span", label), input);
}

export function mount(main, [contestId]) {
  if (!session.has("organizer")) {
    main.append(el("section.card.signin",
      el("h1", "Organizer"),
      el("p", "Sign in with an organizer token to run a PK contest between streamers' rooms."),
      el("pre", "harvest token --sub festival-office --role organizer --name \"Festival office\""),
      el("button", { type: "button", onclick: () => window.harvestOpenLogin?.() }, "Sign in")));
    return null;
  }
  const side = el("aside.streamer-side");
  const body = el("section.streamer-main");
  main.append(el("div.streamer-layout", side, body));
  mountSide(side, contestId);
  if (contestId) return mountContest(body, contestId);
  mountCreate(body);
  return null;
}

// ------------------------------------------------------------------- side ---

async function mountSide(side, current) {
  const list = el("ul.nav-list#contests");
  const idInput = el("input", { placeholder: "contest id", "aria-label": "contest id" });
  side.append(el("div.card", el("h3", "Contests"), list,
    el("a.button", { href: "#/organizer" }, "＋ New contest"),
    el("form.row.open-by-id", {
      onsubmit: (e) => {
        e.preventDefault();
        if (idInput.value.trim()) location.hash = `#/organizer/${encodeURIComponent(idInput.value.trim())}`;
      },
    }, idInput, el("button", { type: "submit" }, "Open"))));
  const demo = await demoConfig();
  const items = known();
  if (demo?.contest_id && !items.some((k) => k.id === demo.contest_id)) items.unshift({ id: demo.contest_id, title: demo.contest_title ?? "Demo contest" });
  fill(list, items.length ? items.map((k) => el(`li${k.id === current ? ".current" : ""}`, el("a", { href: `#/organizer/${k.id}`, dataset: { contestId: k.id } }, k.title)))
    : el("li.muted", "No contest yet."));
}

// ----------------------------------------------------------------- create ---

function mountCreate(body) {
  const title = el("input", { name: "title", required: true, value: "919 Hunan rural e-commerce festival PK" });
  const startsIn = el("input", { type: "number", min: 0, value: "0", name: "starts_in_min" });
  const hours = el("input", { type: "number", min: 0.1, step: 0.1, value: "24", name: "duration_h" });
  const grace = el("input", { type: "number", min: 0, value: "0", name: "settle_grace_s" });
  const mode = el("select", { name: "mode" }, el("option", { value: "weighted" }, "weighted"), el("option", { value: "rank_points" }, "rank points"));
  const step = el("input", { type: "number", min: 0, step: 0.1, value: "0.5", name: "rank_points_step" });
  const selfPurchase = el("input", { type: "checkbox", checked: true, name: "exclude_self_purchase" });
  const cap = el("input", { name: "per_buyer_gmv_cap", placeholder: "none", inputMode: "decimal" });
  const minBuyers = el("input", { type: "number", min: 0, value: "0", name: "min_distinct_buyers" });
  const defaults = { paid_gmv: 50, distinct_buyers: 20, likes: 10, match_wins: 10, judges: 10 };
  const metricRows = METRICS.map((m) => {
    const on = el("input", { type: "checkbox", checked: m in defaults, name: `metric_${m}` });
    const weight = el("input", { type: "number", min: 0.1, step: 0.1, value: String(defaults[m] ?? 10), name: `weight_${m}` });
    return { m, on, weight, row: el("label.metric-row", on, el("span", METRIC_LABEL[m], el("code", ` ${m}`)), weight) };
  });
  const rooms = el("div.participants#participants", el("p.muted", "Loading rooms…"));
  const picked = new Map(); // room id → {room, name}

  body.append(el("div.card",
    el("h1", "New contest"),
    el("p.muted", "Each streamer whose rooms you tick becomes one participant. Orders paid in those rooms, likes, PK wins and judges' scores count by the rules below."),
    el("form.stack#new-contest", { onsubmit: create },
      field("Title", title),
      el("div.row", field("Starts in (min)", startsIn), field("Lasts (hours)", hours), field("Settlement grace (s)", grace)),
      el("h3", "Participants"), rooms,
      el("h3", "Scoring"),
      el("div.row", field("Mode", mode), field("Rank-points step", step), field("Per-buyer GMV cap (¥)", cap), field("Min distinct buyers", minBuyers)),
      el("label.check", selfPurchase, " Exclude self-purchases (owner and members)"),
      el("div.metrics", metricRows.map((r) => r.row)),
      el("button#create-contest", { type: "submit" }, "Create contest"))));

  (async () => {
    try {
      const [live, scheduled] = await Promise.all([listAll("/api/v1/rooms?status=live"), listAll("/api/v1/rooms?status=scheduled")]);
      const all = [...live, ...scheduled];
      if (!all.length) {
        fill(rooms, el("p.muted", "No live or scheduled room yet: streamers create them on the Streamer page."));
        return;
      }
      fill(rooms, all.map((r) => {
        const box = el("input", { type: "checkbox", dataset: { roomId: r.id } });
        const name = el("input", { value: r.streamer_id, placeholder: "participant name", "aria-label": "participant name" });
        box.addEventListener("change", () => (box.checked ? picked.set(r.id, { room: r, name }) : picked.delete(r.id)));
        return el("div.participant-row", el("label.check", box, " ", el("strong", r.title), el("span.muted", ` ${r.streamer_id} · ${r.status}`)), name);
      }));
    } catch (e) {
      fill(rooms, el("p.error", e.message));
    }
  })();

  async function create(e) {
    e.preventDefault();
    // One participant per streamer, with every ticked room of theirs.
    const byOwner = new Map();
    for (const { room, name } of picked.values()) {
      const p = byOwner.get(room.streamer_id) ?? { name: name.value.trim() || room.streamer_id, owner_id: room.streamer_id, room_ids: [] };
      p.room_ids.push(room.id);
      byOwner.set(room.streamer_id, p);
    }
    const metrics = metricRows.filter((r) => r.on.checked).map((r) => ({ metric: r.m, weight: Number(r.weight.value) }));
    const scoring = {
      mode: mode.value,
      metrics,
      rank_points_step: Number(step.value),
      exclude_self_purchase: selfPurchase.checked,
      min_distinct_buyers: Number(minBuyers.value || 0),
    };
    if (cap.value.trim()) {
      const fen = parseMoney(cap.value);
      if (fen === null) return toast("Cap: a number of yuan", "bad");
      scoring.per_buyer_gmv_cap = fen;
    }
    const start = Date.now() + Number(startsIn.value || 0) * 60000 - 1000;
    const bodyJson = {
      title: title.value,
      starts_at: new Date(start).toISOString(),
      ends_at: new Date(start + Number(hours.value) * 3600000).toISOString(),
      settle_grace_s: Number(grace.value || 0),
      participants: [...byOwner.values()],
      scoring,
    };
    try {
      const c = await api("POST", "/api/v1/contests", bodyJson);
      remember(c);
      toast("Contest created", "good");
      location.hash = `#/organizer/${c.id}`;
    } catch (err) {
      const problems = err.details?.errors ? `: ${err.details.errors.map((x) => x.message ?? JSON.stringify(x)).join("; ")}` : "";
      toast(`${err.message}${problems}`, "bad");
    }
  }
}

// ---------------------------------------------------------------- contest ---

function mountContest(body, contestId) {
  const state = { contest: null, standings: null, matches: new Map(), audit: null, scores: new Map() };
  const ui = {
    head: el("div.card.room-head"),
    standings: el("div#standings-table"),
    matches: el("div#matches"),
    matchForm: el("form.stack#new-match"),
    judges: el("form.stack#judges"),
    audit: el("div#audit"),
  };
  body.append(
    ui.head,
    el("div.card", el("div.card-title", el("h3", "Live standings"),
      el("div.row", el("button.ghost#export-standings", { type: "button", onclick: exportStandings }, "Export CSV"),
        el("button#settle", { type: "button", onclick: settle }, "Settle"))), ui.standings),
    el("div.grid2",
      el("div.card", el("h3", "PK matches"), ui.matches, el("details", { open: true }, el("summary", "Schedule a PK match"), ui.matchForm)),
      el("div.card", el("h3", "Judges' scores"), ui.judges)),
    el("div.card", el("div.card-title", el("h3", "Audit"),
      el("div.row", el("button.ghost#load-audit", { type: "button", onclick: loadAudit }, "Load audit"),
        el("button.ghost", { type: "button", onclick: exportAudit }, "Export JSON"))), ui.audit),
  );

  const names = () => new Map((state.contest?.participants ?? []).map((p) => [p.id, p.name]));

  function renderHead() {
    const c = state.contest;
    fill(ui.head,
      el("div.room-title", el("h1", c.title), el(`span.badge.${c.status}#contest-status`, c.status)),
      el("div.room-meta",
        el("span.muted", `${time(c.starts_at)} → ${time(c.ends_at)}`),
        el("span.muted", `grace ${c.settle_grace_s} s`),
        el("span.muted", `${c.scoring.mode}: ${c.scoring.metrics.map((m) => `${METRIC_LABEL[m.metric]} ${m.weight}`).join(", ")}`)),
      el("div.chips", c.participants.map((p) => el("span.chip", el("strong", p.name), ` ${p.owner_id} · ${p.room_ids.length} room${p.room_ids.length > 1 ? "s" : ""}`,
        ...p.room_ids.map((r) => el("a", { href: `#/viewer/${r}`, title: "watch" }, " ↗"))))));
  }

  function renderStandings() {
    const st = state.standings;
    if (!st) return;
    const scored = state.contest.scoring.metrics.map((m) => m.metric);
    fill(ui.standings,
      el("p.muted", el(`span.badge.${st.provisional ? "live" : "ended"}`, st.provisional ? "provisional" : "final"), ` computed ${time(st.computed_at)} · rules ${st.rules_hash.slice(0, 12)}…`),
      el("table.table#standings",
        el("thead", el("tr", el("th", "#"), el("th", "Participant"), el("th.num", "Total"),
          METRICS.map((m) => el("th.num", METRIC_LABEL[m], scored.includes(m) ? el("small", " pts") : null)))),
        el("tbody", st.rows.map((r) => el("tr", { dataset: { participantId: r.participant_id } },
          el("td", r.rank), el("td", r.name, r.qualified ? "" : el("span.badge.bad", "not qualified")), el("td.num.total", num(r.total, 2)),
          METRICS.map((m) => el("td.num", m === "paid_gmv" ? money(r.metrics[m]) : num(r.metrics[m], m === "judges" ? 1 : 0),
            m in r.points ? el("small.muted", ` ${num(r.points[m], 2)}`) : null)))))));
  }

  function renderMatches() {
    const ms = [...state.matches.values()].sort((a, b) => b.starts_at.localeCompare(a.starts_at));
    const n = names();
    fill(ui.matches, ms.length ? el("ul.match-list", ms.map((m) => {
      const live = state.scores.get(m.id);
      const scores = live?.scores ?? m.scores;
      return el("li", { dataset: { matchId: m.id, status: m.status } },
        el("div.row", el(`span.badge.${m.status}`, m.status), el("span", `PK on ${METRIC_LABEL[m.metric] ?? m.metric}`),
          m.status === "live" ? el("span.countdown", { dataset: { until: live?.ends_at ?? m.ends_at } }, `ends in ${clock(Date.parse(live?.ends_at ?? m.ends_at) - Date.now())}`) : el("span.muted", `ended ${time(m.ends_at)}`)),
        el("div", m.participant_ids.map((id) => {
          const v = scores.find((s) => s.participant_id === id)?.value ?? 0;
          return el("span.chip", `${n.get(id) ?? id}: ${m.metric === "paid_gmv" ? money(v) : num(v)}${m.winner_ids.includes(id) ? " · winner" : ""}`);
        })),
        m.status === "ended" && !m.winner_ids.length ? el("span.muted", "no winner") : null);
    })) : el("p.muted", "No match seen yet (matches appear here when they start)."));
  }

  function renderForms() {
    const c = state.contest;
    const boxes = c.participants.map((p, i) => el("label.check", el("input", { type: "checkbox", checked: i < 2, value: p.id, name: "pk_participant" }), ` ${p.name}`));
    const duration = el("input", { type: "number", min: 10, max: 3600, value: "300", name: "duration_s" });
    const metric = el("select", { name: "metric" }, ["paid_gmv", "paid_orders", "distinct_buyers", "likes"].map((m) => el("option", { value: m }, METRIC_LABEL[m])));
    fill(ui.matchForm, el("div.chips", boxes), el("div.row", field("Duration (s)", duration), field("Metric", metric)),
      el("button#schedule-match", { type: "submit" }, "Start PK match"));
    ui.matchForm.onsubmit = async (e) => {
      e.preventDefault();
      const ids = [...ui.matchForm.querySelectorAll("input[name=pk_participant]:checked")].map((i) => i.value);
      try {
        const m = await api("POST", `/api/v1/contests/${contestId}/matches`, { participant_ids: ids, duration_s: Number(duration.value), metric: metric.value });
        state.matches.set(m.id, m);
        renderMatches();
        toast("PK match scheduled", "good");
      } catch (err) {
        toast(err.code === "participant_busy" ? "A participant is already in a match that has not ended." : err.message, "bad");
      }
    };
    const judge = el("input", { name: "judge", required: true, value: "Judge 1" });
    const inputs = c.participants.map((p) => ({ p, input: el("input", { type: "number", min: 0, max: 100, placeholder: "0–100", name: `score_${p.id}` }) }));
    fill(ui.judges, field("Judge", judge), inputs.map(({ p, input }) => field(p.name, input)), el("button#save-judges", { type: "submit" }, "Save scores"),
      el("p.muted", "A judge's new entry replaces that judge's earlier one."));
    ui.judges.onsubmit = async (e) => {
      e.preventDefault();
      const scores = {};
      for (const { p, input } of inputs) if (input.value !== "") scores[p.id] = Number(input.value);
      try {
        await api("PUT", `/api/v1/contests/${contestId}/judge-scores`, { judge: judge.value, scores });
        toast(`Scores of ${judge.value} saved`, "good");
        loadStandings();
      } catch (err) {
        toast(err.message, "bad");
      }
    };
  }

  function renderAudit() {
    const a = state.audit;
    if (!a) return;
    const n = names();
    fill(ui.audit,
      el("p.mono", `rules_hash ${a.rules_hash}`), el("p.mono", `events_hash ${a.events_hash}`),
      a.rows.map((r) => el("details.audit-row", { dataset: { participantId: r.participant_id } },
        el("summary", el("strong", n.get(r.participant_id) ?? r.participant_id), ` — ${r.counted.length} counted, ${r.excluded.length} excluded, `,
          money(r.counted.reduce((s, c) => s + c.counted_amount, 0))),
        el("table.table",
          el("thead", el("tr", el("th", "Order"), el("th.num", "Amount"), el("th.num", "Counted"), el("th", "Excluded because"))),
          el("tbody",
            r.counted.map((c) => el("tr", el("td.mono", c.order_id), el("td.num", money(c.amount)), el("td.num", money(c.counted_amount)), el("td", ""))),
            r.excluded.map((x) => el("tr.excluded", el("td.mono", x.order_id), el("td.num", ""), el("td.num", ""), el("td", x.reason))))))));
  }

  async function load() {
    try {
      state.contest = await api("GET", `/api/v1/contests/${contestId}`);
      remember(state.contest);
      renderHead();
      renderForms();
      return true;
    } catch (err) {
      fill(ui.head, el("p.error", `Cannot load contest ${contestId}: ${err.message}`));
      return false;
    }
  }

  async function loadStandings() {
    try {
      state.standings = await api("GET", `/api/v1/contests/${contestId}/standings`);
      renderStandings();
    } catch (err) {
      fill(ui.standings, el("p.error", err.message));
    }
  }

  async function loadAudit() {
    try {
      state.audit = await api("GET", `/api/v1/contests/${contestId}/audit`);
      renderAudit();
    } catch (err) {
      fill(ui.audit, el("p.error", err.message));
    }
  }

  async function settle() {
    try {
      state.standings = await api("POST", `/api/v1/contests/${contestId}/settle`);
      toast("Contest settled: results are final", "good");
      await load();
      renderStandings();
      loadAudit();
    } catch (err) {
      if (err.code === "too_early") {
        const at = err.details?.settles_at_ms;
        toast(`Too early to settle${at ? `: settles from ${time(new Date(at).toISOString())}` : ""}`, "bad");
      } else toast(err.message, "bad");
    }
  }

  function exportStandings() {
    const st = state.standings;
    if (!st) return;
    const q = (s) => `"${String(s).replace(/"/g, '""')}"`;
    const lines = [["rank", "participant_id", "name", "qualified", "total", ...METRICS, ...METRICS.map((m) => `points_${m}`)].join(",")];
    for (const r of st.rows) {
      lines.push([r.rank, r.participant_id, q(r.name), r.qualified, r.total, ...METRICS.map((m) => r.metrics[m]), ...METRICS.map((m) => r.points[m] ?? "")].join(","));
    }
    download(`harvest-standings-${contestId}.csv`, lines.join("\r\n") + "\r\n", "text/csv");
  }

  async function exportAudit() {
    if (!state.audit) await loadAudit();
    if (state.audit) download(`harvest-audit-${contestId}.json`, JSON.stringify(state.audit, null, 2), "application/json");
  }

  // Matches have no list endpoint: the page follows a participant room's events and
  // its event log, where every match of the contest appears (pk.started, pk.ended).
  const sockets = [];
  async function follow() {
    const rooms = [...new Set(state.contest.participants.flatMap((p) => p.room_ids))];
    for (const roomId of rooms) {
      try {
        let after = 0;
        for (let i = 0; i < 20; i++) {
          const page = await api("GET", `/api/v1/rooms/${roomId}/events?after_seq=${after}&limit=500`);
          for (const ev of page.items) if (ev.type.startsWith("pk.") && ev.data.match?.contest_id === contestId) state.matches.set(ev.data.match.id, ev.data.match);
          if (!page.items.length || page.items[page.items.length - 1].seq >= page.last_seq) break;
          after = page.items[page.items.length - 1].seq;
        }
      } catch {
        /* the log is a convenience here */
      }
    }
    renderMatches();
    const first = rooms[0];
    if (!first) return;
    sockets.push(new RoomSocket(first, {
      onSnapshot: (d) => {
        if (d.match?.contest_id === contestId) state.matches.set(d.match.id, d.match);
        renderMatches();
      },
      onEvent: (ev) => {
        if ((ev.type === "pk.started" || ev.type === "pk.ended") && ev.data.match.contest_id === contestId) {
          state.matches.set(ev.data.match.id, ev.data.match);
          renderMatches();
          if (ev.type === "pk.ended") loadStandings();
        } else if (ev.type === "pk.score" && state.matches.has(ev.data.match_id)) {
          state.scores.set(ev.data.match_id, ev.data);
          renderMatches();
        } else if (ev.type === "contest.standings" && ev.data.standings.contest_id === contestId) {
          state.standings = ev.data.standings;
          renderStandings();
        }
      },
    }));
  }

  const stops = [];
  load().then((ok) => {
    if (!ok) return;
    follow();
    stops.push(every(3000, loadStandings));
  });
  stops.push(every(500, () => {
    for (const node of ui.matches.querySelectorAll("[data-until]")) node.textContent = `ends in ${clock(Date.parse(node.dataset.until) - Date.now())}`;
  }));
  return () => {
    stops.forEach((f) => f());
    sockets.forEach((s) => s.close());
  };
}
