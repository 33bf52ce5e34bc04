/* MLPortal page helpers: local times, live log tails and live status without page reloads, ARIA
   tabs, confirmations, and the page modules.

   Templates hold markup only (the Content-Security-Policy forbids inline scripts and handlers).
   A page's behaviour lives in static/js/<page>.js, which calls
   MLPortal.register("<page>", (root) => {...}); portal.js starts it for every element carrying
   data-module="<page>", and the module reads its URLs and settings from root's data-* attributes. */
(function () {
  "use strict";
  const pollMs = () => parseInt(document.body.dataset.pollMs || "1000", 10);

  let localFormat = null;  // one formatter for every time of the page (each toLocaleString() is a lookup)
  function localTimes(root) {
    (root || document).querySelectorAll("time[datetime]").forEach((el) => {
      const d = new Date(el.getAttribute("datetime"));
      if (isNaN(d)) return;
      localFormat = localFormat || new Intl.DateTimeFormat(undefined, {
        year: "numeric", month: "numeric", day: "numeric", hour: "numeric", minute: "numeric", second: "numeric" });
      el.textContent = localFormat.format(d);
    });
  }

  /* Shows an ISO time (from the API) in `el` as the server-rendered <time> would, or "—". */
  function setTime(el, iso) {
    if (!el) return;
    el.textContent = "";
    if (!iso) { el.textContent = "—"; return; }
    const t = document.createElement("time");
    t.setAttribute("datetime", iso);
    t.title = iso;
    el.appendChild(t);
    localTimes(el);
  }

  async function getJSON(url) {
    const res = await fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" });
    if (!res.ok) throw new Error(res.status + " " + res.statusText);
    return res.json();
  }

  /* Appends `url`'s log text to `el` from its offset until the server says done; then sets
     el.dataset.done, so a reader (or a test) knows the last line is in. */
  function tailLog(el, url, onDone) {
    let offset = parseInt(el.dataset.offset || "0", 10);
    let stopped = false;
    async function tick() {
      if (stopped) return;
      try {
        const sep = url.includes("?") ? "&" : "?";
        const data = await getJSON(url + sep + "offset=" + offset);
        if (data.text) {
          const atBottom = el.scrollHeight - el.scrollTop - el.clientHeight < 40;
          el.appendChild(document.createTextNode(data.text)); // text node: never parsed as HTML
          if (atBottom) el.scrollTop = el.scrollHeight;
        }
        offset = data.offset;
        if (data.done) { stopped = true; el.dataset.done = "true"; if (onDone) onDone(data); return; }
      } catch (e) { /* transient: try again next tick */ }
      setTimeout(tick, pollMs());
    }
    tick();
    return { stop: () => { stopped = true; } };
  }

  /* Polls `url` (JSON) and calls render(data) until render returns true (finished). */
  function poll(url, render) {
    let stopped = false;
    async function tick() {
      if (stopped) return;
      try { if (render(await getJSON(url)) === true) { stopped = true; return; } } catch (e) { /* retry */ }
      setTimeout(tick, pollMs());
    }
    tick();
    return { stop: () => { stopped = true; } };
  }

  /* Sets a status badge (a span made by the `badge` template filter) to `status`. */
  function badge(el, status) {
    if (!el) return;
    const cls = "badge badge-" + String(status).replace(/ /g, "_");
    // Only touch what changed, so a live region around the badge announces changes, not every poll.
    if (el.className !== cls) el.className = cls;
    if (el.dataset.status !== status) el.dataset.status = status;
    if (el.textContent !== status) el.textContent = status;
  }

  /* ARIA tabs (WAI-ARIA Authoring Practices, automatic activation):
       <div class="tabs" data-tabs><button data-tab="logs">Logs</button>…</div>
       <section data-panel="logs">…</section>
     gets role=tablist/tab/tabpanel, aria-selected, aria-controls/aria-labelledby, a roving
     tabindex and the Left/Right/Home/End keys. The chosen tab is kept in the URL's #fragment.
     Panels are not `hidden` in the markup: without JavaScript every panel shows (see portal.css). */
  function tabs(bar) {
    const buttons = [...bar.querySelectorAll("[data-tab]")];
    if (!buttons.length) return;
    bar.setAttribute("role", "tablist");
    const panels = new Map();
    buttons.forEach((b) => {
      const name = b.dataset.tab;
      const panel = document.querySelector(`[data-panel="${CSS.escape(name)}"]`);
      b.setAttribute("role", "tab");
      if (b.tagName === "BUTTON") b.type = "button";
      if (!b.id) b.id = "tab-" + name;
      if (panel) {
        if (!panel.id) panel.id = "panel-" + name;
        b.setAttribute("aria-controls", panel.id);
        panel.setAttribute("role", "tabpanel");
        panel.setAttribute("aria-labelledby", b.id);
        panel.tabIndex = 0;
        panels.set(name, panel);
      }
    });
    const names = buttons.map((b) => b.dataset.tab);
    function select(name, { focus = false, remember = true } = {}) {
      if (!names.includes(name)) return false;
      buttons.forEach((b) => {
        const on = b.dataset.tab === name;
        b.classList.toggle("active", on);
        b.setAttribute("aria-selected", on ? "true" : "false");
        b.tabIndex = on ? 0 : -1;
        if (on && focus) b.focus();
      });
      panels.forEach((panel, key) => { panel.hidden = key !== name; });
      if (remember) history.replaceState(null, "", "#" + name);
      bar.dispatchEvent(new CustomEvent("mlportal:tab", { detail: { tab: name }, bubbles: true }));
      return true;
    }
    bar.addEventListener("click", (ev) => {
      const b = ev.target.closest("[data-tab]");
      if (!b || !bar.contains(b)) return;
      ev.preventDefault();
      select(b.dataset.tab);
    });
    bar.addEventListener("keydown", (ev) => {
      const current = names.indexOf(ev.target.closest("[data-tab]")?.dataset.tab);
      if (current < 0) return;
      const last = names.length - 1;
      const next = { ArrowRight: current === last ? 0 : current + 1, ArrowLeft: current === 0 ? last : current - 1,
                     Home: 0, End: last }[ev.key];
      if (next === undefined) return;
      ev.preventDefault();
      select(names[next], { focus: true });
    });
    window.addEventListener("hashchange", () => select(location.hash.slice(1), { remember: false }));
    if (!select(location.hash.slice(1), { remember: false })) select(names[0], { remember: false });
  }

  function csrf() {
    const m = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
    return m ? decodeURIComponent(m[1]) : "";
  }

  /* <form data-confirm="Delete this?">: asks before it submits (without JavaScript it just submits). */
  function confirmations() {
    document.addEventListener("submit", (ev) => {
      const form = ev.target;
      if (form instanceof HTMLFormElement && form.dataset.confirm && !window.confirm(form.dataset.confirm)) ev.preventDefault();
    });
  }

  const modules = {};
  /* Registers a page module: init(root) runs once for each element with data-module="name". */
  function register(name, init) { modules[name] = init; }

  function startModules(root) {
    (root || document).querySelectorAll("[data-module]").forEach((el) => {
      el.dataset.module.split(/\s+/).filter(Boolean).forEach((name) => {
        const started = (el.dataset.moduleStarted || "").split(" ");
        if (started.includes(name)) return;
        const init = modules[name];
        if (!init) { console.warn(`MLPortal: no module "${name}" (is static/js/${name}.js loaded?)`); return; }
        el.dataset.moduleStarted = [...started.filter(Boolean), name].join(" ");
        init(el);
      });
    });
  }

  /* Reads a JSON data block written by Django's json_script filter (data, never executed). */
  function jsonData(id) {
    const el = id && document.getElementById(id);
    return el ? JSON.parse(el.textContent) : null;
  }

  window.MLPortal = { tailLog, poll, badge, getJSON, localTimes, setTime, csrf, register, jsonData, startModules };
  confirmations();
  // Deferred page scripts (loaded after this one) register their modules before DOMContentLoaded.
  document.addEventListener("DOMContentLoaded", () => {
    document.querySelectorAll(".tabs[data-tabs]").forEach(tabs);
    document.documentElement.classList.add("tabs-ready");
    startModules();
    // The page's times (shown in UTC until then) turn local after the first frame: the first use
    // of the locale's calendar costs 60-100 ms in a fresh browser context on a busy machine,
    // which the page's first paint (a run's chart, say) should not wait for.
    requestAnimationFrame(() => setTimeout(() => localTimes(), 0));
  });
})();
