// Starts the real `harvest` binary (serve or demo) on a free port with a temporary
// data folder, and drives Debian's Chromium through playwright-core.

import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, mkdirSync, existsSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
export const BIN = process.env.HARVEST_BIN ?? path.join(process.env.CARGO_TARGET_DIR ?? path.join(ROOT, "target"), "debug", "harvest");
export const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
// Screenshots go under target/ so a test run leaves the tree clean; point
// HARVEST_SCREENSHOT_DIR at docs/screenshots to refresh the ones README.md shows.
export const SHOTS = process.env.HARVEST_SCREENSHOT_DIR ?? path.join(ROOT, "target", "screenshots");
const SECRET = "browser-test-secret";

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A running `harvest` process: `serve` or `demo`. */
export class Harvest {
  static async start(mode = "serve") {
    if (!existsSync(BIN)) throw new Error(`${BIN} is missing: build it with cargo build --bin harvest`);
    const dir = mkdtempSync(path.join(tmpdir(), "harvest-browser-"));
    const port = await freePort();
    const env = {
      ...process.env,
      HARVEST_JWT_SECRET: SECRET,
      HARVEST_DATA_DIR: path.join(dir, "data"),
      HARVEST_DATABASE_URL: `sqlite://${path.join(dir, "data", "harvest.db")}`,
      RUST_LOG: process.env.RUST_LOG ?? "warn",
    };
    if (mode === "demo") delete env.HARVEST_DATABASE_URL; // the demo's own temporary database
    const child = spawn(BIN, [mode, "--listen", `127.0.0.1:${port}`], { cwd: dir, env, stdio: ["ignore", "pipe", "inherit"] });
    const h = new Harvest(child, dir, `http://127.0.0.1:${port}`, env);
    child.stdout.on("data", (b) => (h.stdout += b.toString()));
    const deadline = Date.now() + 60000;
    for (;;) {
      if (child.exitCode !== null) throw new Error(`harvest ${mode} exited with ${child.exitCode}`);
      try {
        const probe = mode === "demo" ? "/console/demo.json" : "/healthz";
        if ((await fetch(h.base + probe)).ok) break;
      } catch {
        /* not yet */
      }
      if (Date.now() > deadline) throw new Error(`harvest ${mode} did not come up`);
      await sleep(200);
    }
    return h;
  }

  constructor(child, dir, base, env) {
    this.child = child;
    this.dir = dir;
    this.base = base;
    this.env = env;
    this.stdout = "";
  }

  /** A token from `harvest token`, signed with the server's secret. */
  token(sub, roles, name) {
    const args = ["token", "--sub", sub, ...roles.flatMap((r) => ["--role", r])];
    if (name) args.push("--name", name);
    return execFileSync(BIN, args, { cwd: this.dir, env: this.env }).toString().trim();
  }

  /** Calls the API as `token`; returns the parsed body, throws on an error status. */
  async api(method, p, token, body, key) {
    const headers = {};
    if (token) headers.Authorization = `Bearer ${token}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (key) headers["Idempotency-Key"] = key;
    const res = await fetch(this.base + p, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    const text = await res.text();
    if (!res.ok) throw new Error(`${method} ${p} → ${res.status} ${text}`);
    return text ? JSON.parse(text) : null;
  }

  async stop() {
    if (this.child.exitCode === null) {
      const exited = new Promise((r) => this.child.once("exit", (code, signal) => r({ code, signal })));
      this.child.kill("SIGINT");
      const result = await Promise.race([exited, sleep(20000).then(() => null)]);
      if (!result) this.child.kill("SIGKILL");
      this.exit = result;
    }
    rmSync(this.dir, { recursive: true, force: true });
    return this.exit;
  }
}

/** Headless Chromium with an empty profile. */
export async function browser() {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
  });
}

/** A fresh browser context (its own storage) signed in with `token`, or anonymous. */
export async function pageAs(b, token) {
  const context = await b.newContext({ viewport: { width: 1440, height: 960 }, deviceScaleFactor: 1, locale: "en-US" });
  if (token) await context.addInitScript((t) => localStorage.setItem("harvest.console.token", t), token);
  const page = await context.newPage();
  page.on("pageerror", (e) => console.error("page error:", e.message));
  return page;
}

export async function shot(page, name, fullPage = false) {
  mkdirSync(SHOTS, { recursive: true });
  await page.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage });
}

export { sleep };
