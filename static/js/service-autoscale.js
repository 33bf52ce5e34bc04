/* The service page's Autoscale tab (module "service-autoscale"): replicas and utilisation over
   the last hour as a chart, and the autoscaler's decisions with their figures. Configured by the
   panel's data-autoscale-url; reads GET <autoscale-url> (the API's services/<id>/autoscale/) every 2 s. */
(function () {
  "use strict";
  const EVERY_MS = 2000;

  function item(text, title) {
    const li = document.createElement("li");
    li.textContent = text;
    if (title) li.title = title;
    return li;
  }

  MLPortal.register("service-autoscale", (root) => {
    const url = root.dataset.autoscaleUrl;
    const canvas = root.querySelector("#autoscale-chart");
    const decisions = root.querySelector("#autoscale-decisions");
    const note = root.querySelector("#autoscale-note");
    const summary = root.querySelector("#autoscale-summary");
    const chart = window.Chart ? new Chart(canvas, {
      type: "line",
      data: { labels: [], datasets: [
        { label: "replicas", data: [], yAxisID: "y", stepped: true, borderColor: "#0078d4", backgroundColor: "#0078d4", pointRadius: 0 },
        { label: "utilisation %", data: [], yAxisID: "y1", borderColor: "#d83b01", backgroundColor: "#d83b01", pointRadius: 0 },
        { label: "target %", data: [], yAxisID: "y1", borderColor: "#8a8886", borderDash: [4, 4], pointRadius: 0 },
      ] },
      options: { animation: false, maintainAspectRatio: false,
        scales: { y: { beginAtZero: true, position: "left", ticks: { precision: 0 }, title: { display: true, text: "replicas" } },
                  y1: { beginAtZero: true, suggestedMax: 100, position: "right", grid: { drawOnChartArea: false },
                        title: { display: true, text: "% of workers busy" } } } },
    }) : null;
    root.dataset.samples = "0";

    function render(data) {
      const samples = data.samples || [];
      root.dataset.samples = String(samples.length);
      const s = data.settings || {};
      summary.textContent = s.enabled
        ? `On: ${s.min_replicas} to ${s.max_replicas} replicas, target ${s.target_utilization}% of scoring workers busy; ${data.replicas} now.`
        : `Off: ${data.replicas} replica(s) until scaled.`;
      if (chart) {
        chart.data.labels = samples.map((x) => new Date(x.at).toLocaleTimeString());
        chart.data.datasets[0].data = samples.map((x) => x.replicas);
        chart.data.datasets[1].data = samples.map((x) => x.utilization);
        chart.data.datasets[2].data = samples.map(() => s.target_utilization);
        chart.update();
      }
      const made = (data.decisions || []).slice(-20).reverse();
      decisions.replaceChildren(...(made.length
        ? made.map((d) => item(`${new Date(d.at).toLocaleTimeString()}: ${d.message}`, d.at))
        : [item(s.enabled ? "No scaling decision yet." : "Autoscaling is off.")]));
    }

    async function refresh() {
      try {
        render(await MLPortal.getJSON(url));
      } catch (e) {
        note.textContent = "Autoscaling figures unavailable: " + e.message;
      }
      setTimeout(refresh, EVERY_MS);
    }
    refresh();
  });
})();
