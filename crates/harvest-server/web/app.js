// The console shell: the hash router, the identity bar and the sign-in dialog.

import { session, demoConfig, el, fill, toast } from "./api.js";
import * as viewer from "./viewer.js";
import * as streamer from "./streamer.js";
import * as organizer from "./organizer.js";

const pages = { viewer, streamer, organizer };
const main = document.getElementById("page");
let unmount = null;

function route() {
  const [name = "viewer", ...rest] = location.hash.replace(/^#\/?/, "").split("/");
  const page = pages[name] ? name : "viewer";
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.page === page);
  if (unmount) {
    try {
      unmount();
    } catch (e) {
      console.error(e);
    }
  }
  fill(main);
  document.body.dataset.page = page;
  unmount = pages[page].mount(main, rest.map(decodeURIComponent).filter(Boolean)) || null;
}

function renderIdentity() {
  const who = document.getElementById("who");
  if (!session.token) {
    fill(who, "anonymous");
  } else {
    const roles = session.roles.filter((r) => r !== "viewer");
    fill(who, el("strong", session.name), roles.length ? el("span.roles", roles.join(" · ")) : null,
      session.expired() ? el("span.badge.bad", "expired") : null);
  }
  document.getElementById("login-open").textContent = session.token ? "Switch" : "Sign in";
}

async function openLogin() {
  const dialog = document.getElementById("login");
  document.getElementById("token-input").value = "";
  document.getElementById("login-error").hidden = true;
  const demo = await demoConfig();
  const box = document.getElementById("demo-identities");
  if (demo?.identities?.length) {
    box.hidden = false;
    fill(box.querySelector(".id-buttons"), demo.identities.map((id) =>
      el("button.demo-id", {
        type: "button",
        dataset: { sub: id.sub },
        onclick: () => {
          session.set(id.token);
          dialog.close();
          toast(`Signed in as ${id.name}`);
          if (id.page) location.hash = id.page;
          route();
        },
      }, el("strong", id.label), el("span", `${id.name} · ${id.roles.join(", ")}`))));
  } else {
    box.hidden = true;
  }
  dialog.showModal();
}

function setupLogin() {
  const dialog = document.getElementById("login");
  document.getElementById("login-open").addEventListener("click", openLogin);
  document.getElementById("login-cancel").addEventListener("click", () => dialog.close());
  document.getElementById("login-anon").addEventListener("click", () => {
    session.clear();
    dialog.close();
    route();
  });
  document.getElementById("login-form").addEventListener("submit", (e) => {
    const token = document.getElementById("token-input").value;
    if (!session.set(token)) {
      e.preventDefault();
      const err = document.getElementById("login-error");
      err.textContent = "That is not a token (a JWT has three dot-separated parts).";
      err.hidden = false;
      return;
    }
    route();
  });
}

session.load();
session.listeners.add(renderIdentity);
renderIdentity();
setupLogin();
window.addEventListener("hashchange", route);
route();
// Export for pages that ask to sign in.
window.harvestOpenLogin = openLogin;
