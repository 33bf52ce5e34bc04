/* The compare page: one chart with every metric series of the runs compared.
   Config: data-series = id of the json_script block {labels: [run…], series: [{name: [[step, value]…]}…]}. */
(function () {
  "use strict";
  MLPortal.register("run-compare", (root) => {
    const data = MLPortal.jsonData(root.dataset.series) || { labels: [], series: [] };
    const datasets = [];
    data.series.forEach((series, i) => {
      Object.keys(series).forEach((name) => {
        datasets.push({ label: data.labels[i] + " · " + name, data: series[name].map((p) => ({ x: p[0], y: p[1] })), showLine: true, pointRadius: 1 });
      });
    });
    if (!datasets.length || !window.Chart) return;
    document.getElementById("compare-chart-box").hidden = false;
    new Chart(document.getElementById("compare-chart"), { type: "scatter", data: { datasets }, options: { maintainAspectRatio: false, scales: { x: { title: { display: true, text: "step" } } } } });
  });
})();
