/* MLPortal page helpers: local times, live log tails and live status without page reloads. */
(function () {
  "use strict";
  const pollMs = () => parseInt(document.body.dataset.pollMs || "1000", 10);

  function localTimes(root) {
    (root || document).querySelectorAll("time[datetime]").forEach((el) => {
      const d = new Date(el.getAttribute("datetime"));
      if (!isNaN(d)) el.textContent = d.toLocaleString();
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

  function badge(el, status) {
    if (!el) return;
    el.className = "badge badge-" + String(status).replace(/ /g, "_");
    el.dataset.status = status;
    el.textContent = status;
  }

  /* Tabs: <div class="tabs"><button data-tab="logs">…</button></div> + <section data-panel="logs">. */
  function tabs() {
    document.querySelectorAll(".tabs[data-tabs]").forEach((bar) => {
      const buttons = bar.querySelectorAll("[data-tab]");
      const show = (name) => {
        buttons.forEach((b) => b.classList.toggle("active", b.dataset.tab === name));
        document.querySelectorAll("[data-panel]").forEach((p) => { p.hidden = p.dataset.panel !== name; });
      };
      buttons.forEach((b) => b.addEventListener("click", (ev) => { ev.preventDefault(); show(b.dataset.tab); history.replaceState(null, "", "#" + b.dataset.tab); }));
      const initial = location.hash.slice(1);
      show([...buttons].some((b) => b.dataset.tab === initial) ? initial : buttons[0] && buttons[0].dataset.tab);
    });
  }

  function csrf() {
    const m = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
    return m ? decodeURIComponent(m[1]) : "";
  }

  window.MLPortal = { tailLog, poll, badge, getJSON, localTimes, setTime, csrf };
  document.addEventListener("DOMContentLoaded", () => { localTimes(); tabs(); });
})();
