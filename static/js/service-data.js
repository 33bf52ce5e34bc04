/* The service page's Data tab (module "service-data"): rows per hour as a chart, the dropped count,
   the latest rows, "add to project", ground truth (upload + accuracy/MAE per day and version) and
   drift (reference, check now, per-feature verdicts with overlaid histograms). Configured by the
   panel's data-summary-url, data-data-url, data-drift-url, data-truth-url and data-project-url
   (the API's services/<id>/data/summary/, data/, drift/, ground-truth/, data/to-project/).
   "Check drift now" starts a job on the portal's worker (POST drift/ answers 202 at once) and polls
   it (MLPortal.poll of the job's url), showing its step and progress until the report is drawn or
   its error shown; a job still open when the page opens is followed the same way.
   After each draw the panel carries data-loaded="true", data-drift-job="<status>" while a job is
   followed, and, once a report is shown, data-drift="drawn". */
(function () {
  "use strict";
  const EVERY_MS = 15000;
  const BASE_COLUMNS = ["request_id", "time", "revision", "model_version", "prediction"];
  const MAX_INPUT_COLUMNS = 6;
  const MAX_HISTOGRAMS = 6;

  function cell(text, cls) {
    const td = document.createElement("td");
    td.textContent = text === null || text === undefined ? "—" : String(text);
    if (cls) td.className = cls;
    return td;
  }
  function emptyRow(body, text, span) {
    const tr = document.createElement("tr"); const td = cell(text, "muted"); td.colSpan = span; tr.append(td);
    body.replaceChildren(tr);
  }
  const fixed = (v, digits) => (v === null || v === undefined ? null : Number(v).toFixed(digits));
  const pvalue = (v) => (v === null || v === undefined ? null : (v < 1e-4 ? Number(v).toExponential(1) : Number(v).toFixed(4)));

  async function send(method, url, body) {
    const options = { method, credentials: "same-origin", headers: { "X-CSRFToken": window.MLPortal.csrf(), Accept: "application/json" } };
    if (body instanceof FormData) options.body = body;
    else if (body !== undefined) { options.body = JSON.stringify(body); options.headers["Content-Type"] = "application/json"; }
    const response = await fetch(url, options);
    const data = await response.json().catch(() => ({}));
    if (!response.ok) throw new Error((data.error && data.error.message) || `the portal answered ${response.status}`);
    return data;
  }

  function start(panel) {
    const urls = { summary: panel.dataset.summaryUrl, drift: panel.dataset.driftUrl, truth: panel.dataset.truthUrl,
                   project: panel.dataset.projectUrl };
    const $ = (id) => document.getElementById(id);
    let chart = null;
    const histograms = [];

    function renderSummary(data) {
      $("data-total").textContent = String(data.total_rows);
      $("data-dropped").textContent = String(data.dropped);
      $("data-mode").textContent = data.mode === "off" ? "off" : `${data.mode} ${data.percent}%`;
      $("data-collected").textContent = data.last_collected_at ? new Date(data.last_collected_at).toLocaleString() : "never";
      if (data.last_collected_at) $("data-collected").title = data.last_collected_at;
      const inputs = data.columns.filter((c) => c.startsWith("in_")).slice(0, MAX_INPUT_COLUMNS);
      const shown = BASE_COLUMNS.filter((c) => data.columns.includes(c)).concat(inputs);
      const head = document.createElement("tr");
      shown.forEach((c) => { const th = document.createElement("th"); th.textContent = c.startsWith("in_") ? c.slice(3) : c; head.append(th); });
      $("data-latest-head").replaceChildren(head);
      if (!data.latest.length) emptyRow($("data-latest-rows"), "Nothing captured in the last 48 hours.", Math.max(shown.length, 1));
      else $("data-latest-rows").replaceChildren(...data.latest.map((row) => {
        const tr = document.createElement("tr"); tr.dataset.requestId = row.request_id;
        shown.forEach((c) => tr.append(cell(c === "time" ? new Date(row[c]).toLocaleString() : row[c])));
        return tr;
      }));
      const canvas = $("data-chart");
      if (canvas && window.Chart) {
        const next = { labels: data.hours.map((h) => new Date(h.hour).toLocaleString([], { day: "2-digit", hour: "2-digit", minute: "2-digit" })),
                       datasets: [{ label: "rows", data: data.hours.map((h) => h.rows), backgroundColor: "#0078d4" }] };
        if (!chart) chart = new window.Chart(canvas, { type: "bar", data: next, options: { animation: false, responsive: true,
          maintainAspectRatio: false, plugins: { legend: { display: false } }, scales: { y: { beginAtZero: true, title: { display: true, text: "rows / hour" } } } } });
        else { chart.data = next; chart.update(); }
      }
    }

    function renderTruth(data) {
      const metric = data.metric || "accuracy";
      $("truth-metric").textContent = metric === "mae" ? "MAE" : "Accuracy";
      if (!data.by_day.length) {
        emptyRow($("truth-rows"), data.labels ? `${data.labels} labels, none joined to a captured prediction yet.` : "No ground truth yet.", 4);
        return;
      }
      $("truth-rows").replaceChildren(...data.by_day.map((d) => {
        const tr = document.createElement("tr");
        tr.append(cell(d.day), cell(d.model_version), cell(d.n, "num"), cell(fixed(d[metric], 3), "num"));
        return tr;
      }));
    }

    function histogram(feature) {
      const box = document.createElement("div"); box.className = "chart-box small-chart"; box.dataset.feature = feature.name;
      const title = document.createElement("h3"); title.textContent = `${feature.name} ${feature.drifted ? "(drifted)" : ""}`;
      const canvas = document.createElement("canvas"); canvas.setAttribute("aria-label", `Reference and current distribution of ${feature.name}`);
      box.append(title, canvas);
      const h = feature.histogram;
      const labels = h.categories ? h.categories : h.reference.map((_, i) => Number(h.edges[i]).toPrecision(3));
      if (window.Chart) {
        histograms.push(new window.Chart(canvas, { type: "bar", data: { labels, datasets: [
          { label: "reference", data: h.reference, backgroundColor: "rgba(0,120,212,0.5)", grouped: false },
          { label: "current", data: h.current, backgroundColor: "rgba(216,59,1,0.5)", grouped: false }] },
          options: { animation: false, responsive: true, maintainAspectRatio: false, scales: { y: { beginAtZero: true, title: { display: true, text: "share" } } } } }));
      }
      return box;
    }

    let following = null;
    function followJob(job) {
      if (following && following.id === job.id) return;
      if (following) following.poller.stop();
      const bar = $("drift-progress");
      const show = (j) => {
        panel.dataset.driftJob = j.status;
        if (j.status === "failed") {
          if (bar) bar.hidden = true;
          $("drift-summary").className = "error";
          $("drift-summary").textContent = `The drift check failed: ${j.error}`;
          following = null;
          return true;
        }
        if (j.status === "succeeded") {
          if (bar) bar.hidden = true;
          $("drift-summary").className = "";
          following = null;
          refreshDrift();
          return true;
        }
        $("drift-summary").className = "";
        $("drift-summary").textContent = j.status === "queued" ? "Waiting for the portal's worker…" :
          `${j.step}… (${Math.round(j.progress * 100)} %)`;
        if (bar) { bar.hidden = false; bar.value = j.progress; }
        return false;
      };
      if (show(job) === true) return;
      following = { id: job.id, poller: window.MLPortal.poll(job.url, show) };
    }

    function renderDrift(data) {
      const s = data.settings;
      if ($("drift-project") && s.project && !$("drift-project").value) $("drift-project").value = s.project;
      if ($("drift-path") && s.path && !$("drift-path").value) $("drift-path").value = s.path;
      if ($("drift-share") && !$("drift-share").value) $("drift-share").placeholder = String(s.share_threshold);
      const report = data.latest;
      if (data.job && !data.job.done) followJob(data.job);  // its progress is what the summary says
      if (!report) return;
      const judged = report.features.filter((f) => f.score !== null).length;
      if (!following) $("drift-summary").textContent = `${report.drifted ? "Drifted" : "No drift"}: ${report.drifted_features.length} of ${judged} features drifted` +
        (report.drifted_features.length ? ` (${report.drifted_features.join(", ")})` : "") +
        ` — ${report.current_rows} rows against ${report.reference}, ${new Date(report.computed_at).toLocaleString()}.`;
      const features = report.features.slice().sort((a, b) => (b.drifted - a.drifted) || ((b.score || 0) - (a.score || 0)));
      $("drift-rows").replaceChildren(...features.map((f) => {
        const tr = document.createElement("tr"); tr.dataset.feature = f.name; tr.dataset.drifted = String(f.drifted);
        tr.append(cell(f.name), cell(f.kind), cell(fixed(f.score, 3), "num"), cell(pvalue(f.p_value), "num"), cell(f.drifted ? "drifted" : "ok"));
        return tr;
      }));
      histograms.splice(0).forEach((c) => c.destroy());
      $("drift-histograms").replaceChildren(...features.filter((f) => f.histogram && (f.histogram.reference || []).length)
        .slice(0, MAX_HISTOGRAMS).map(histogram));
      panel.dataset.drift = "drawn";
    }

    async function refresh() {
      try {
        const [summary, truth] = await Promise.all([window.MLPortal.getJSON(urls.summary), window.MLPortal.getJSON(urls.truth)]);
        renderSummary(summary); renderTruth(truth);
        panel.dataset.loaded = "true";
      } catch (e) { /* transient: next tick */ }
    }
    async function refreshDrift() {
      try { renderDrift(await window.MLPortal.getJSON(urls.drift)); } catch (e) { /* next time */ }
    }
    function tick() { refresh().finally(() => setTimeout(tick, EVERY_MS)); }
    tick();
    refreshDrift();

    const toProject = $("data-to-project");
    if (toProject) toProject.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const out = $("data-to-project-result");
      const body = { project: toProject.project.value, path: toProject.path.value };
      const since = $("data-since").value, until = $("data-until").value;
      if (since) body.since = since;
      if (until) body.until = until;
      try {
        const done = await send("POST", urls.project, body);
        out.className = ""; out.textContent = `Added ${done.rows} rows to ${done.project} as ${done.path}.`;
      } catch (e) { out.className = "error"; out.textContent = e.message; }
    });

    const upload = $("truth-upload");
    if (upload) upload.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const out = $("truth-result");
      try {
        const done = await send("POST", urls.truth, new FormData(upload));
        out.className = "";
        out.textContent = `${done.stored} labels stored; ${done.unknown} match no captured request yet` +
          (done.unknown_request_ids.length ? ` (${done.unknown_request_ids.slice(0, 5).join(", ")}…)` : "") + ".";
        refresh();
      } catch (e) { out.className = "error"; out.textContent = e.message; }
    });

    const settings = $("drift-settings");
    if (settings) {
      settings.addEventListener("submit", async (ev) => {
        ev.preventDefault();
        const body = { reference: "file", project: settings.project.value, path: settings.path.value };
        if (settings.share_threshold.value) body.share_threshold = Number(settings.share_threshold.value);
        try { renderDrift(await send("PATCH", urls.drift, body)); $("drift-summary").className = ""; $("drift-summary").textContent = "Reference saved."; }
        catch (e) { $("drift-summary").className = "error"; $("drift-summary").textContent = e.message; }
      });
      $("drift-compute").addEventListener("click", async () => {
        $("drift-summary").className = ""; $("drift-summary").textContent = "Starting the drift check…";
        try { followJob(await send("POST", urls.drift, {})); }
        catch (e) { $("drift-summary").className = "error"; $("drift-summary").textContent = e.message; }
      });
    }
  }

  window.MLPortal.register("service-data", start);
})();
