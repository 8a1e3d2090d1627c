// Browser tests of the web console: headless Chromium against the real `harvest`.
//
// On `harvest serve`: a streamer builds a room and starts a flash sale in the
// console, a viewer buys and sees the order (and the reason for the next refusal),
// the dashboard moves, a dropped connection resumes without a gap, an organizer runs
// a contest and two rooms show the same PK match. On `harvest demo`: the one-click
// identities and a living room; the screenshots in README.md come from there.

import { test, describe, before, after } from "node:test";
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { Harvest, browser, pageAs, shot, sleep } from "./harness.mjs";

const T = { timeout: 20000 };

async function textOf(page, selector) {
  return (await page.locator(selector).first().textContent())?.trim();
}

async function waitText(page, selector, pattern, timeout = 20000) {
  await page.waitForFunction(
    ([sel, src]) => {
      const node = document.querySelector(sel);
      return node && new RegExp(src).test(node.textContent);
    },
    [selector, pattern.source],
    { timeout },
  );
}

function collectErrors(page) {
  const errors = [];
  page.on("pageerror", (e) => errors.push(e.message));
  return errors;
}

describe("console on harvest serve", () => {
  let h;
  let b;
  const s = {};

  before(async () => {
    h = await Harvest.start("serve");
    b = await browser();
    s.streamer = h.token("coop-huayuan", ["streamer"], "Huayuan co-op");
    s.streamer2 = h.token("coop-mayang", ["streamer"], "Mayang growers");
    s.viewer = h.token("xiaomei", ["viewer"], "小美");
    s.viewer2 = h.token("laowang", ["viewer"], "老王");
    s.organizer = h.token("festival-office", ["organizer"], "Festival office");
  });

  after(async () => {
    await b?.close();
    const exit = await h?.stop();
    assert.equal(exit?.code, 0, "harvest serve stops cleanly on SIGINT");
  });

  test("a streamer creates products and a room, goes live and starts a flash sale", async () => {
    const page = await pageAs(b, s.streamer);
    s.streamerErrors = collectErrors(page);
    s.streamerPage = page;
    await page.goto(`${h.base}/#/streamer`);
    await page.getByText("New product").click();
    const products = [
      ["kiwi-5kg", "十八洞猕猴桃 Shibadong kiwis", "Huayuan, Hunan", "5 kg box", "69.90"],
      ["peach-3kg", "炎陵黄桃 Yanling yellow peaches", "Yanling, Hunan", "3 kg box", "59.90"],
    ];
    for (const [i, [sku, title, origin, unit, price]] of products.entries()) {
      await page.fill("#new-product input[name=sku]", sku);
      await page.fill("#new-product input[name=title]", title);
      await page.fill("#new-product input[name=origin]", origin);
      await page.fill("#new-product input[name=unit]", unit);
      await page.fill("#new-product input[name=list_price]", price);
      await page.click("#new-product button[type=submit]");
      await page.waitForFunction((n) => document.querySelectorAll("#my-products li[data-product-id]").length === n, i + 1, T);
    }
    await page.getByText("New room").click();
    await page.fill("#new-room input[name=title]", "十八洞猕猴桃丰收直播 Shibadong kiwi harvest");
    await page.click("#new-room button[type=submit]");
    await page.waitForURL(/#\/streamer\/.+/, T);
    s.room = decodeURIComponent(page.url().split("#/streamer/")[1]);
    await waitText(page, "#room-status", /scheduled/i);

    for (const [i, [, title]] of products.entries()) {
      await page.selectOption("#bag-add", { label: title });
      await page.click("#bag-editor form button[type=submit]");
      await page.waitForFunction((n) => document.querySelectorAll("#bag-editor li[data-product-id]").length === n, i + 1, T);
    }
    s.products = await page.$$eval("#bag-editor li[data-product-id]", (lis) => lis.map((li) => li.dataset.productId));
    await page.locator("#bag-editor li").first().getByText("Pin").click();
    await page.waitForSelector("#bag-editor li.pinned-item", T);
    await page.click("#go-live");
    await waitText(page, "#room-status", /LIVE/);

    await page.getByText("Start a flash sale").click();
    await page.selectOption("#new-sale select[name=product_id]", { label: products[0][1] });
    await page.fill("#new-sale input[name=price]", "39.90");
    await page.fill("#new-sale input[name=stock]", "2");
    await page.fill("#new-sale input[name=per_user_limit]", "1");
    await page.fill("#new-sale input[name=hold_ttl_s]", "120");
    await page.click("#start-sale");
    await page.waitForSelector("#sales-table tr[data-sale-id][data-status=live]", T);
    s.sale = await page.getAttribute("#sales-table tr[data-sale-id]", "data-sale-id");
    await waitText(page, "[data-stat=orders_paid] .value", /^0$/);
  });

  test("a viewer signs in, buys in the flash sale, pays and sees the order", async () => {
    const page = await pageAs(b, null);
    const errors = collectErrors(page);
    s.viewerPage = page;
    await page.goto(`${h.base}/#/viewer`);
    // Sign in through the token paste box.
    await page.click("#login-open");
    assert.equal(await page.isHidden("#demo-identities"), true, "serve offers no demo identities");
    await page.fill("#token-input", s.viewer);
    await page.click("#login-submit");
    await waitText(page, "#who", /小美/);

    await page.click(`.room-card[data-room-id="${s.room}"]`);
    await page.waitForSelector(`.sale[data-sale-id="${s.sale}"][data-status=live] button.buy:not([disabled])`, T);
    await waitText(page, "#pinned", /Shibadong kiwis/);
    await waitText(page, `.sale[data-sale-id="${s.sale}"] .remaining`, /2 of 2 left/);
    await page.click(`.sale[data-sale-id="${s.sale}"] button.buy`);
    await page.waitForSelector("#hold[data-state=held]", T);
    await waitText(page, "#hold .hold-countdown", /pay within [12]:\d\d/);
    await page.click("#pay");
    await page.waitForSelector("#order-confirmed", T);
    assert.match(await textOf(page, "#order-confirmed"), /Order confirmed.*¥39\.90/);
    await page.waitForSelector("#my-orders li[data-status=paid]", T);
    assert.match(await textOf(page, "#my-orders li"), /Shibadong kiwis.*¥39\.90/);

    // The per-buyer limit is 1: the next tap says why not.
    await page.click(`.sale[data-sale-id="${s.sale}"] button.buy`);
    await waitText(page, ".sale-note", /Limit reached: at most 1 per buyer/);
    await shot(page, "viewer-order");

    // Another buyer takes the last unit: the card shows the sale sold out.
    const hold = await h.api("POST", `/api/v1/flash-sales/${s.sale}/reservations`, s.viewer2, { quantity: 1 }, randomUUID());
    await h.api("POST", `/api/v1/holds/${hold.id}/checkout`, s.viewer2, { method: "simulated" }, randomUUID());
    await page.waitForSelector(`.sale[data-sale-id="${s.sale}"][data-status=sold_out]`, T);
    assert.equal(await textOf(page, `.sale[data-sale-id="${s.sale}"] button.buy`), "Sold out");
    await waitText(page, `.sale[data-sale-id="${s.sale}"] .remaining`, /0 of 2 left/);
    assert.deepEqual(errors, []);
  });

  test("the streamer's dashboard moves with the orders", async () => {
    const page = s.streamerPage;
    await waitText(page, "[data-stat=orders_paid] .value", /^2$/);
    await waitText(page, "[data-stat=gmv_paid] .value", /^¥79\.80$/);
    await waitText(page, "[data-stat=buyers_distinct] .value", /^2$/);
    await waitText(page, `#sales-table tr[data-sale-id="${s.sale}"] .stock-numbers`, /0 left · 0 held · 2 sold/);
    await page.waitForSelector("#orders-table tbody tr:nth-child(2)", T);
    await shot(page, "streamer-dashboard");
    assert.deepEqual(s.streamerErrors, []);
  });

  test("a dropped connection resumes with since/epoch and misses nothing", async () => {
    const page = s.viewerPage;
    const before = await page.evaluate(() => window.harvestRoom.socket.lastSeq);
    await page.evaluate(() => window.harvestRoom.socket.drop("test drop"));
    // While it is away, the streamer pins the other product.
    await h.api("POST", `/api/v1/rooms/${s.room}/pin`, s.streamer, { product_id: s.products[1] });
    await page.waitForSelector(`#pinned[data-product-id="${s.products[1]}"]`, T);
    await waitText(page, "#conn", /live .*resumed after seq \d+, nothing missed/);
    const after = await page.evaluate(() => ({ seq: window.harvestRoom.socket.lastSeq, recovered: window.harvestRoom.socket.recovered }));
    assert.equal(after.recovered, true);
    assert.ok(after.seq > before, `seq moved on from ${before} to ${after.seq}`);
    assert.equal(await page.getAttribute("#conn", "data-reconnects"), "1");
  });

  test("an organizer runs a contest and two rooms show the same PK match", async () => {
    // The second streamer's room, through the API.
    const orange = await h.api("POST", "/api/v1/products", s.streamer2, { sku: "orange-5kg", title: "麻阳冰糖橙 Mayang oranges", origin: "Mayang, Hunan", unit: "5 kg box", list_price: 3990 });
    const room2 = await h.api("POST", "/api/v1/rooms", s.streamer2, { title: "麻阳冰糖橙果园直播 Mayang orange orchard" });
    await h.api("POST", `/api/v1/rooms/${room2.id}/products`, s.streamer2, { product_id: orange.id });
    await h.api("POST", `/api/v1/rooms/${room2.id}/pin`, s.streamer2, { product_id: orange.id });
    await h.api("POST", `/api/v1/rooms/${room2.id}/start`, s.streamer2);

    const org = await pageAs(b, s.organizer);
    const errors = collectErrors(org);
    await org.goto(`${h.base}/#/organizer`);
    await org.waitForSelector(`#participants input[data-room-id="${s.room}"]`, T);
    await org.check(`#participants input[data-room-id="${s.room}"]`);
    await org.check(`#participants input[data-room-id="${room2.id}"]`);
    await org.click("#create-contest");
    await org.waitForURL(/#\/organizer\/.+/, T);
    const contestId = decodeURIComponent(org.url().split("#/organizer/")[1]);
    await waitText(org, "#contest-status", /live/i);
    await org.waitForFunction(() => document.querySelectorAll("#standings tbody tr").length === 2, null, T);

    await org.fill("#new-match input[name=duration_s]", "120");
    await org.click("#schedule-match");
    await org.waitForSelector("#matches li[data-status=live]", T);
    const matchId = await org.getAttribute("#matches li[data-match-id]", "data-match-id");

    const contest = await h.api("GET", `/api/v1/contests/${contestId}`);
    const [pa, pb] = contest.participants;
    await org.fill("#judges input[name=judge]", "Judge Li");
    await org.fill(`#judges input[name="score_${pa.id}"]`, "90");
    await org.fill(`#judges input[name="score_${pb.id}"]`, "80");
    await org.click("#save-judges");
    await waitText(org, `#standings tr[data-participant-id="${pa.id}"]`, /90\.0/);

    // Both rooms show the same live match.
    const roomA = await pageAs(b, null);
    const roomB = await pageAs(b, null);
    await roomA.goto(`${h.base}/#/viewer/${s.room}`);
    await roomB.goto(`${h.base}/#/viewer/${room2.id}`);
    for (const p of [roomA, roomB]) {
      await p.waitForSelector(`#pk[data-match-id="${matchId}"][data-status=live]`, T);
      await p.waitForSelector("#standings .standing-block", T);
    }
    // A sale paid in room A moves the score bar in both rooms.
    const sale = await h.api("POST", `/api/v1/rooms/${s.room}/flash-sales`, s.streamer, { product_id: s.products[1], price: 2990, stock: 5, per_user_limit: 2 });
    const hold = await h.api("POST", `/api/v1/flash-sales/${sale.id}/reservations`, s.viewer2, { quantity: 2 }, randomUUID());
    await h.api("POST", `/api/v1/holds/${hold.id}/checkout`, s.viewer2, { method: "simulated" }, randomUUID());
    const score = `.pk-name[data-participant-id="${pa.id}"] .pk-value`;
    for (const p of [roomA, roomB]) await waitText(p, score, /^¥59\.80$/);
    assert.equal(await textOf(roomA, score), await textOf(roomB, score));
    assert.match(await textOf(roomA, ".pk-name.mine"), /this room/);
    await shot(roomA, "viewer-pk-room-a");
    await shot(roomB, "viewer-pk-room-b");

    await waitText(org, `#matches li[data-match-id="${matchId}"]`, /¥59\.80/);
    await org.click("#load-audit");
    await org.waitForSelector(`#audit details[data-participant-id="${pa.id}"]`, T);
    await org.click("#settle");
    await waitText(org, "#toasts", /Too early to settle/);
    await shot(org, "organizer-contest");
    assert.deepEqual(errors, []);
  });

  test("serve hands out no demo identities", async () => {
    const res = await fetch(`${h.base}/console/demo.json`);
    assert.equal(res.status, 404);
    const page = await pageAs(b, null);
    await page.goto(`${h.base}/`);
    await page.click("#login-open");
    await page.waitForSelector("#login[open]", T);
    assert.equal(await page.isHidden("#demo-identities"), true);
  });
});

describe("harvest demo", () => {
  let h;
  let b;
  let demo;

  before(async () => {
    h = await Harvest.start("demo");
    b = await browser();
    demo = await (await fetch(`${h.base}/console/demo.json`)).json();
  });

  after(async () => {
    await b?.close();
    const exit = await h?.stop();
    assert.equal(exit?.code, 0, "harvest demo stops cleanly on SIGINT");
  });

  test("prints the console URLs and tokens", () => {
    assert.match(h.stdout, new RegExp(`open ${h.base}/ in a browser`));
    for (const id of demo.identities) {
      assert.ok(h.stdout.includes(id.token), `${id.label}'s token is printed`);
      assert.ok(h.stdout.includes(`${h.base}/${id.page}`), `${id.label}'s page is printed`);
    }
  });

  test("one click signs in the demo viewer into a living room", async () => {
    const page = await pageAs(b, null);
    const errors = collectErrors(page);
    await page.goto(`${h.base}/`);
    await page.waitForSelector(".room-card", T);
    assert.equal(await page.locator(".room-card").count(), 2);
    await page.click("#login-open");
    await page.waitForFunction(() => document.querySelectorAll("#demo-identities .demo-id").length === 4, null, T);
    await page.click('#demo-identities .demo-id[data-sub="demo-viewer"]');
    await page.waitForURL(/#\/viewer\/.+/, T);
    await waitText(page, "#who", /Xiaomei/);
    // Chat, likes and viewers arrive; a flash sale and a PK match are on.
    await page.waitForFunction(() => document.querySelectorAll("#chat-list li").length >= 3, null, { timeout: 40000 });
    await waitText(page, "#viewers", /[1-9]/);
    await page.waitForSelector("#pk[data-status=live]", { timeout: 30000 });
    await page.waitForSelector(".sale", { timeout: 30000 });
    await page.waitForSelector("#standings .standing-block", T);
    await waitText(page, "#conn", /live/);
    // Let the room fill up a little for the picture.
    await sleep(6000);
    await shot(page, "viewer");
    assert.deepEqual(errors, []);
  });

  test("the demo streamer and organizer pages show the room and the contest", async () => {
    const streamer = demo.identities.find((i) => i.sub === "coop-huayuan");
    const page = await pageAs(b, streamer.token);
    const errors = collectErrors(page);
    await page.goto(`${h.base}/${streamer.page}`);
    await waitText(page, "#room-status", /LIVE/);
    await page.waitForFunction(() => Number(document.querySelector("[data-stat=orders_paid] .value")?.textContent) > 0, null, { timeout: 40000 });
    await page.waitForSelector("#moderation li", { timeout: 30000 });
    await sleep(8000); // a few points on the chart
    await shot(page, "streamer", true);

    const organizer = demo.identities.find((i) => i.sub === "festival-office");
    const org = await pageAs(b, organizer.token);
    errors.push(...collectErrors(org));
    await org.goto(`${h.base}/${organizer.page}`);
    await org.waitForFunction(() => document.querySelectorAll("#standings tbody tr").length === 2, null, T);
    await org.waitForSelector("#matches li[data-status=live]", T);
    await org.click("#load-audit");
    await org.waitForSelector("#audit details", T);
    await shot(org, "organizer", true);
    assert.deepEqual(errors, []);
  });
});
