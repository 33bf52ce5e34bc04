/* The run page: live status, log tail, metrics table and outputs while the run goes.
   <div data-module="run-detail" data-run-url="/api/v1/runs/<id>/" data-run-page="/runs/<id>/"
        data-active="true|false" data-can-write="true|false"> */
(function () {
  "use strict";

  function cell(tr, text, cls) { const td = document.createElement("td"); td.textContent = text; if (cls) td.className = cls; tr.appendChild(td); return td; }
  function fmt(v) { return typeof v === "number" ? String(Number(v.toPrecision(6))) : String(v); }

  function start(root) {
    const runUrl = root.dataset.runUrl, page = root.dataset.runPage;
    const active = root.dataset.active === "true", canWrite = root.dataset.canWrite === "true";
    const runId = root.dataset.runId;
    const log = document.getElementById("run-log");

    function render(data) {
      MLPortal.badge(document.querySelector("#run-status .badge"), data.status);
      MLPortal.badge(document.querySelector("#run-status-2 .badge"), data.status);
      document.getElementById("run-reason").textContent = data.status_reason || "";
      if (data.exit_code !== null && data.exit_code !== undefined) document.getElementById("run-exit").textContent = data.exit_code;
      if (data.duration_s !== null && data.duration_s !== undefined) document.getElementById("run-duration").textContent = data.duration_s.toFixed(1) + " s";
      if ("started_at" in data) MLPortal.setTime(document.getElementById("run-started"), data.started_at);
      if ("ended_at" in data) MLPortal.setTime(document.getElementById("run-ended"), data.ended_at);
      if (data.image) document.getElementById("run-image").textContent = data.image;
      if (typeof data.outputs_count === "number") document.getElementById("run-outputs-count").textContent = data.outputs_count;
    }

    function renderMetrics(metrics) {
      const names = Object.keys(metrics || {});
      if (!names.length) return;
      const body = document.querySelector("[data-testid=metrics-table] tbody");
      body.textContent = "";
      names.sort().forEach((n) => { const tr = document.createElement("tr"); cell(tr, n); cell(tr, fmt(metrics[n]), "num"); cell(tr, ""); cell(tr, ""); cell(tr, ""); body.appendChild(tr); });
    }

    function renderOutputs() {
      MLPortal.getJSON(runUrl + "outputs/?page_size=200").then((data) => {
        if (!data.results.length) return;
        const body = document.querySelector("[data-testid=outputs-table] tbody");
        body.textContent = "";
        data.results.forEach((o) => {
          const tr = document.createElement("tr");
          cell(tr, "outputs/" + o.path); cell(tr, o.size + " B", "num"); cell(tr, o.sha256.slice(0, 12));
          const td = cell(tr, ""), a = document.createElement("a");
          a.href = page + "outputs/" + o.path.split("/").map(encodeURIComponent).join("/"); a.textContent = "Download";
          td.appendChild(a);
          if (canWrite) {
            td.appendChild(document.createTextNode(" · "));
            const reg = document.createElement("a"); reg.dataset.testid = "register-model"; reg.textContent = "Register model";
            reg.href = "/models/register/?run=" + encodeURIComponent(runId) + "&path=" + encodeURIComponent(o.path); td.appendChild(reg);
          }
          body.appendChild(tr);
        });
      });
    }

    MLPortal.tailLog(log, runUrl + "log/", (data) => {
      render(data);
      const cancel = document.getElementById("cancel-form");
      if (cancel) cancel.remove();
      if (active) {
        MLPortal.getJSON(runUrl).then((d) => { render(d); renderMetrics(d.metrics); });
        renderOutputs();
        document.querySelectorAll("[data-module=metric-chart]").forEach((c) => { if (c.chart) c.chart.load(); });
      }
    });
    if (active) MLPortal.poll(runUrl, (data) => { render(data); renderMetrics(data.metrics); return ["queued", "preparing", "running"].indexOf(data.status) < 0; });
  }

  MLPortal.register("run-detail", start);
})();
