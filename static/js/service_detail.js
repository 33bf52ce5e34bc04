/* The service page: live status (steps, replicas, events), keys on demand, the Test tab that
   scores through the portal's proxy, live container logs and a metrics chart.
   Config (data-* on the data-module element): status-url, logs-url, metrics-url, keys-url, score-url. */
(function () {
  "use strict";

  MLPortal.register("service-detail", (root) => {
    const cfg = root.dataset;
    const $ = (id) => document.getElementById(id);
    const cell = (text, cls) => { const td = document.createElement("td"); td.textContent = text; if (cls) td.className = cls; return td; };
    const badge = (status) => { const s = document.createElement("span"); MLPortal.badge(s, status); return s; };

    function renderSteps(steps) {
      $("steps").replaceChildren(...steps.map((step, i) => {
        const li = document.createElement("li");
        li.dataset.step = step.step;
        const a = document.createElement("a");
        a.href = step.url;
        a.textContent = step.ref;
        li.append(`${i + 1}. ${step.label}: `, a, " ", badge(step.status));
        return li;
      }));
    }
    function renderReplicas(rows) {
      const body = $("replica-rows");
      if (!rows.length) {
        const tr = document.createElement("tr");
        const td = cell("No replica runs.", "muted");
        td.colSpan = 9;
        tr.append(td);
        body.replaceChildren(tr);
        return;
      }
      body.replaceChildren(...rows.map((r) => {
        const tr = document.createElement("tr");
        const state = document.createElement("td");
        state.append(badge(r.state === "running" ? (r.ready ? "healthy" : "starting") : (r.state || "not checked")));
        // What the worker side saw at checked_at: this page never asks the engine or the replica.
        const checked = r.checked_seconds_ago === null ? "not yet" : `${r.checked_seconds_ago} s ago`;
        tr.append(cell(String(r.number)), cell(r.container_id.slice(0, 12), "mono"), cell(`${r.host}:${r.port}`, "mono"), state,
                  cell(r.ready ? "yes" : "no"), cell(r.node || "this engine"), cell(String(r.restarts), "num"),
                  cell(new Date(r.started_at).toLocaleString()), cell(r.state_error ? `${checked} (${r.state_error})` : checked, "small muted"));
        return tr;
      }));
    }
    function renderEvents(events) {
      if (!events.length) return;
      $("event-rows").replaceChildren(...events.map((e) => {
        const tr = document.createElement("tr");
        const level = document.createElement("td");
        level.append(badge(e.level));
        const msg = document.createElement("td");
        const pre = document.createElement("pre");
        pre.className = "small pre-wrap";
        pre.textContent = e.message;
        msg.append(pre);
        tr.append(cell(new Date(e.created_at).toLocaleString()), level, msg);
        return tr;
      }));
    }
    const setText = (el, text) => { if (el.textContent !== text) el.textContent = text; };
    MLPortal.poll(cfg.statusUrl, (s) => {
      document.querySelectorAll("#service-status .badge, #overview-status .badge").forEach((el) => MLPortal.badge(el, s.status));
      $("service-error").hidden = !s.error;
      setText($("service-error-text"), s.error || "");
      $("update-error").hidden = !s.last_update_error;
      setText($("update-error-text"), s.last_update_error || "");
      setText($("replica-count"), String(s.replicas));
      if (s.containers.length) setText($("container-url"), `http://${s.containers[0].host}:${s.containers[0].port}/score`);
      renderSteps(s.steps);
      renderReplicas(s.containers);
      renderEvents(s.events);
      return false;
    });

    let keys = null;
    async function getKeys() { if (!keys) keys = await MLPortal.getJSON(cfg.keysUrl); return keys; }
    $("reveal-keys").addEventListener("click", async () => {
      try {
        const k = await getKeys();
        $("key-primary").textContent = k.primary;
        $("key-secondary").textContent = k.secondary;
        $("keys").hidden = false;
      } catch (e) {
        $("keys-error").textContent = "Could not load the keys: " + e.message;
        $("keys-error").hidden = false;
      }
    });

    $("test-send").addEventListener("click", async () => {
      $("test-status").textContent = "sending…";
      $("test-latency").textContent = "";
      $("test-response").textContent = "";
      try {
        const k = await getKeys();
        const started = performance.now();
        const res = await fetch(cfg.scoreUrl, { method: "POST", headers: { "Content-Type": "application/json", Authorization: "Bearer " + k.primary }, body: $("test-body").value, credentials: "omit" });
        const text = await res.text();
        $("test-latency").textContent = `${Math.round(performance.now() - started)} ms`;
        $("test-status").replaceChildren(badge(res.ok ? "succeeded" : "failed"), ` ${res.status} ${res.statusText}`);
        let shown = text;
        try { shown = JSON.stringify(JSON.parse(text), null, 2); } catch (e) { /* not JSON: as it came */ }
        $("test-response").textContent = shown;
        keys = null; // a regenerated key is picked up on the next send
      } catch (e) { $("test-status").textContent = "Could not send: " + e.message; }
    });

    // Container logs are the one thing this page asks of the engine (on demand, within the
    // server's short timeout): only while the Logs tab shows and the window is visible, so a page
    // left open on another tab asks the engine nothing.
    const logs = $("service-logs");
    const logsPanel = logs.closest("[data-panel]");
    const logsPollMs = () => parseInt(document.body.dataset.pollMs || "1000", 10);
    async function logsTick() {
      if (!(logsPanel && logsPanel.hidden) && !document.hidden) {
        try {
          const data = await MLPortal.getJSON(cfg.logsUrl + "?tail=200");
          const atBottom = logs.scrollHeight - logs.scrollTop - logs.clientHeight < 40;
          // Replaced only when it changed, so the live region announces new lines, not every poll.
          setText(logs, data.text || "(no output yet)");
          if (atBottom) logs.scrollTop = logs.scrollHeight;
        } catch (e) { /* transient: try again next tick */ }
      }
      setTimeout(logsTick, logsPollMs());
    }
    logsTick();

    const fmt = (v) => v == null ? "—" : (Math.round(v * 10) / 10).toString();
    const chart = window.Chart ? new Chart($("metrics-chart"), {
      type: "line",
      data: { labels: [], datasets: [{ label: "requests", data: [], yAxisID: "y" }, { label: "mean latency (ms)", data: [], yAxisID: "y1" }] },
      options: { animation: false, maintainAspectRatio: false, scales: { y: { beginAtZero: true, position: "left" }, y1: { beginAtZero: true, position: "right", grid: { drawOnChartArea: false } } } },
    }) : null;
    function showMetrics(m) {
      $("m-requests").textContent = m.requests;
      $("m-errors").textContent = m.errors;
      $("m-mean").textContent = fmt(m.mean_latency_ms);
      $("m-p95").textContent = fmt(m.p95_latency_ms);
      setText($("metrics-note"), m.note); // how old the worker side's snapshot is, or who has not answered
      if (chart) {
        chart.data.labels.push(new Date().toLocaleTimeString());
        chart.data.datasets[0].data.push(m.requests);
        chart.data.datasets[1].data.push(m.mean_latency_ms);
        if (chart.data.labels.length > 120) { chart.data.labels.shift(); chart.data.datasets.forEach((d) => d.data.shift()); }
        chart.update();
      }
    }
    // The tab reads the snapshot the worker side took (and says how old it is) every 5 s.
    async function metrics() {
      try { showMetrics(await MLPortal.getJSON(cfg.metricsUrl)); }
      catch (e) { $("metrics-note").textContent = "Metrics unavailable: " + e.message; }
      setTimeout(metrics, 5000);
    }
    metrics();
    // Asking the replicas now is an explicit refresh: ?live=1, answered within the server's short
    // timeout (never sent to an engine known to be down; the note says which did not answer).
    const refresh = $("metrics-refresh");
    refresh.hidden = false;
    refresh.addEventListener("click", async () => {
      refresh.disabled = true;
      try { showMetrics(await MLPortal.getJSON(cfg.metricsUrl + "?live=1")); }
      catch (e) { $("metrics-note").textContent = "Metrics unavailable: " + e.message; }
      refresh.disabled = false;
    });
  });
})();
