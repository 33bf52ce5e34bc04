/* The service page's Traffic tab (module "service-traffic"): revisions and their weights, the last
   hour per revision as a chart, and the history of weight changes. Configured by the panel's
   data-traffic-url; reads GET <traffic-url> (the API's services/<id>/traffic/) every 5 s. */
(function () {
  "use strict";
  const EVERY_MS = 5000;
  const COLORS = ["#0078d4", "#d83b01", "#107c10", "#5c2d91", "#b4009e", "#008272"];

  function cell(text, cls) {
    const td = document.createElement("td");
    td.textContent = text === null || text === undefined ? "—" : String(text);
    if (cls) td.className = cls;
    return td;
  }
  const fixed = (value, digits) => (value === null || value === undefined ? null : Number(value).toFixed(digits));

  function renderRows(body, revisions) {
    if (!revisions.length) {
      const tr = document.createElement("tr"); const td = cell("No traffic yet.", "muted"); td.colSpan = 11; tr.append(td);
      body.replaceChildren(tr); return;
    }
    body.replaceChildren(...revisions.map((r) => {
      const tr = document.createElement("tr"); tr.dataset.revision = r.number;
      const h = r.last_hour;
      tr.append(cell(r.number, "num"), cell(r.image), cell(r.role), cell(r.weight, "num"), cell(r.replicas, "num"),
        cell(h.requests, "num"), cell(h.errors, "num"), cell(h.p50_ms, "num"), cell(h.p95_ms, "num"),
        cell(fixed(h.agreement, 1), "num"), cell(fixed(h.mean_ms, 1), "num"));
      return tr;
    }));
  }

  function renderHistory(body, history) {
    if (!history.length) {
      const tr = document.createElement("tr"); const td = cell("No canary or shadow yet.", "muted"); td.colSpan = 7; tr.append(td);
      body.replaceChildren(tr); return;
    }
    body.replaceChildren(...history.map((h) => {
      const tr = document.createElement("tr");
      const when = cell(new Date(h.at).toLocaleString()); when.title = h.at;
      tr.append(when, cell(h.revision, "num"), cell(h.mode), cell(h.action), cell(h.weight, "num"), cell(h.by), cell(h.detail));
      return tr;
    }));
  }

  function renderRollout(el, rollout) {
    if (!rollout || !rollout.mode) { el.textContent = "All traffic goes to the live revision."; return; }
    const share = rollout.revision ? ` (revision ${rollout.revision}, ${rollout.weight}%)` : "";
    el.textContent = `A ${rollout.mode} of image ${rollout.image_ref} is ${rollout.status}${share}.`;
  }

  function chartData(revisions) {
    const minutes = Array.from(new Set(revisions.flatMap((r) => r.series.map((p) => p.minute)))).sort();
    const labels = minutes.map((m) => new Date(m).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }));
    const datasets = [];
    revisions.forEach((r, i) => {
      const color = COLORS[i % COLORS.length];
      const at = Object.fromEntries(r.series.map((p) => [p.minute, p]));
      datasets.push({ label: `r${r.number} requests`, data: minutes.map((m) => (at[m] ? at[m].requests : 0)),
        borderColor: color, backgroundColor: color, yAxisID: "requests", type: "bar" });
      datasets.push({ label: `r${r.number} errors`, data: minutes.map((m) => (at[m] ? at[m].errors : 0)),
        borderColor: "#a4262c", backgroundColor: "#a4262c", yAxisID: "requests", type: "bar" });
      datasets.push({ label: `r${r.number} p95 ms`, data: minutes.map((m) => (at[m] ? at[m].p95_ms : null)),
        borderColor: color, borderDash: [4, 3], yAxisID: "latency", type: "line", spanGaps: true });
      datasets.push({ label: `r${r.number} p50 ms`, data: minutes.map((m) => (at[m] ? at[m].p50_ms : null)),
        borderColor: color, yAxisID: "latency", type: "line", spanGaps: true });
    });
    return { labels, datasets };
  }

  function start(panel) {
    const url = panel.dataset.trafficUrl;
    const rows = document.getElementById("traffic-rows");
    const history = document.getElementById("traffic-history-rows");
    const rollout = document.getElementById("traffic-rollout");
    const canvas = document.getElementById("traffic-chart");
    let chart = null;
    async function tick() {
      try {
        const data = await window.MLPortal.getJSON(url);
        renderRows(rows, data.revisions);
        renderHistory(history, data.history);
        renderRollout(rollout, data.rollout);
        if (canvas && window.Chart) {
          const next = chartData(data.revisions);
          if (!chart) {
            chart = new window.Chart(canvas, { type: "bar", data: next, options: { animation: false, responsive: true,
              maintainAspectRatio: false, scales: { requests: { position: "left", beginAtZero: true, title: { display: true, text: "requests / min" } },
                latency: { position: "right", beginAtZero: true, grid: { drawOnChartArea: false }, title: { display: true, text: "ms" } } } } });
          } else { chart.data = next; chart.update(); }
        }
        panel.dataset.loaded = "true";
      } catch (e) { /* transient: next tick */ }
      setTimeout(tick, EVERY_MS);
    }
    tick();
  }

  window.MLPortal.register("service-traffic", start);
})();
