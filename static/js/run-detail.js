/* The run page: the live log, the status and properties while the run goes, the metrics and
   outputs it catches up on, and the chart of each metric's series.
   Config (data-* on the data-module element): run-url, log-url, outputs-url, output-base (the
   page URL of an output, ends with /), register-url (only for contributors), active ("true" while
   queued/preparing/running), series (id of the json_script block with {name: [[step, value]…]}). */
(function () {
  "use strict";
  const ACTIVE = ["queued", "preparing", "running"];

  MLPortal.register("run-detail", (root) => {
    const cfg = root.dataset;
    const $ = (id) => document.getElementById(id);
    const log = $("run-log");

    function render(data) {
      MLPortal.badge(document.querySelector("#run-status .badge"), data.status);
      MLPortal.badge(document.querySelector("#run-status-2 .badge"), data.status);
      $("run-reason").textContent = data.status_reason || "";
      if (data.exit_code !== null && data.exit_code !== undefined) $("run-exit").textContent = data.exit_code;
      if (data.duration_s !== null && data.duration_s !== undefined) $("run-duration").textContent = data.duration_s.toFixed(1) + " s";
      if ("started_at" in data) MLPortal.setTime($("run-started"), data.started_at);
      if ("ended_at" in data) MLPortal.setTime($("run-ended"), data.ended_at);
      if (data.image) $("run-image").textContent = data.image;
      if (typeof data.outputs_count === "number") $("run-outputs-count").textContent = data.outputs_count;
    }
    function cell(tr, text, cls) {
      const td = document.createElement("td");
      td.textContent = text;
      if (cls) td.className = cls;
      tr.appendChild(td);
      return td;
    }
    const fmt = (v) => typeof v === "number" ? String(Number(v.toPrecision(6))) : String(v);
    function renderMetrics(metrics) {
      const names = Object.keys(metrics || {});
      if (!names.length) return;
      const body = document.querySelector("[data-testid=metrics-table] tbody");
      body.textContent = "";
      names.sort().forEach((n) => {
        const tr = document.createElement("tr");
        cell(tr, n); cell(tr, fmt(metrics[n]), "num"); cell(tr, ""); cell(tr, ""); cell(tr, "");
        body.appendChild(tr);
      });
    }
    function renderOutputs() {
      MLPortal.getJSON(cfg.outputsUrl + "?page_size=200").then((data) => {
        if (!data.results.length) return;
        const body = document.querySelector("[data-testid=outputs-table] tbody");
        body.textContent = "";
        data.results.forEach((o) => {
          const tr = document.createElement("tr");
          cell(tr, "outputs/" + o.path); cell(tr, o.size + " B", "num"); cell(tr, o.sha256.slice(0, 12));
          const td = cell(tr, "");
          const a = document.createElement("a");
          a.href = cfg.outputBase + o.path.split("/").map(encodeURIComponent).join("/");
          a.textContent = "Download";
          td.appendChild(a);
          if (cfg.registerUrl) {
            td.appendChild(document.createTextNode(" · "));
            const reg = document.createElement("a");
            reg.dataset.testid = "register-model";
            reg.textContent = "Register model";
            reg.href = cfg.registerUrl + "&path=" + encodeURIComponent(o.path);
            td.appendChild(reg);
          }
          body.appendChild(tr);
        });
      });
    }

    const active = cfg.active === "true";
    MLPortal.tailLog(log, cfg.logUrl, (data) => {
      render(data);
      const cancel = $("cancel-form");
      if (cancel) cancel.remove();
      if (active) {
        MLPortal.getJSON(cfg.runUrl).then((d) => { render(d); renderMetrics(d.metrics); });
        renderOutputs();
      }
    });
    if (active) MLPortal.poll(cfg.runUrl, (data) => { render(data); renderMetrics(data.metrics); return !ACTIVE.includes(data.status); });

    const series = MLPortal.jsonData(cfg.series) || {};
    const canvas = $("series-chart");
    if (canvas && window.Chart) {
      const datasets = Object.keys(series).map((name) => ({
        label: name, data: series[name].map((p) => ({ x: p[0], y: p[1] })), showLine: true, pointRadius: 1,
      }));
      new Chart(canvas, { type: "scatter", data: { datasets }, options: { maintainAspectRatio: false, scales: { x: { title: { display: true, text: "step" } } } } });
    }
  });
})();
