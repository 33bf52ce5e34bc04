/* Parallel coordinates (SVG): one vertical axis per param and a last one for a chosen metric; each
   run is a line across them, coloured by that metric (blue low → orange high).
   <div data-module="parallel-coordinates" data-parallel='{"params": [...], "metrics": [...],
        "runs": [{"label", "params": {}, "metrics": {}}]}'>
   Numeric params get a linear axis, others one tick per distinct value. */
(function () {
  "use strict";
  const NS = "http://www.w3.org/2000/svg";

  function svg(tag, attrs, text) {
    const node = document.createElementNS(NS, tag);
    Object.entries(attrs || {}).forEach(([k, v]) => node.setAttribute(k, v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function axisFor(values) {
    const present = values.filter((v) => v !== undefined && v !== null && v !== "");
    const numeric = present.length && present.every((v) => v !== "" && isFinite(Number(v)));
    if (numeric) {
      const nums = present.map(Number), lo = Math.min(...nums), hi = Math.max(...nums);
      return { pos: (v) => (v === undefined || v === null ? null : hi === lo ? 0.5 : (Number(v) - lo) / (hi - lo)),
               labels: hi === lo ? [[0.5, String(lo)]] : [[0, String(lo)], [1, String(hi)]] };
    }
    const distinct = [...new Set(present.map(String))].sort();
    const at = (i) => (distinct.length === 1 ? 0.5 : i / (distinct.length - 1));
    return { pos: (v) => (v === undefined || v === null ? null : at(distinct.indexOf(String(v)))),
             labels: distinct.map((d, i) => [at(i), d]) };
  }

  function colour(t) {
    const a = [0, 114, 178], b = [230, 159, 0];
    return "rgb(" + a.map((x, i) => Math.round(x + (b[i] - x) * t)).join(",") + ")";
  }

  function start(root) {
    const data = JSON.parse(root.dataset.parallel || "{}");
    if (!data.params || !data.params.length || !data.metrics || !data.metrics.length) {
      root.textContent = "Log params and a metric in these runs to see them against each other.";
      root.dataset.state = "empty";
      return;
    }
    const label = document.createElement("label");
    const select = document.createElement("select");
    select.setAttribute("data-testid", "parallel-metric");
    data.metrics.forEach((m) => { const o = document.createElement("option"); o.value = m; o.textContent = m; select.append(o); });
    label.append("Metric ", select);
    const holder = document.createElement("div");
    root.append(label, holder);
    function draw() {
      const metric = select.value, axes = [...data.params, metric];
      const width = Math.max(480, holder.clientWidth || 800), height = 300, top = 24, bottom = 40, left = 60, right = 80;
      const x = (i) => left + (i * (width - left - right)) / Math.max(1, axes.length - 1);
      const y = (t) => top + (1 - t) * (height - top - bottom);
      const scales = axes.map((name, i) => axisFor(data.runs.map((r) => (i === axes.length - 1 ? r.metrics[metric] : r.params[name]))));
      const chart = svg("svg", { width, height, role: "img", "aria-label": "Parallel coordinates of params against " + metric });
      const metricScale = scales[scales.length - 1];
      data.runs.forEach((run) => {
        const points = axes.map((name, i) => {
          const v = i === axes.length - 1 ? run.metrics[metric] : run.params[name];
          const t = scales[i].pos(v);
          return t === null ? null : [x(i), y(t)];
        });
        const m = metricScale.pos(run.metrics[metric]);
        const path = points.map((p, i) => (p ? (i && points[i - 1] ? "L" : "M") + p[0].toFixed(1) + " " + p[1].toFixed(1) : "")).join(" ");
        const line = svg("path", { d: path, fill: "none", stroke: m === null ? "#bbb" : colour(m), "stroke-width": "2", "data-run": run.label });
        line.append(svg("title", {}, run.label + (run.metrics[metric] !== undefined ? ": " + metric + " = " + run.metrics[metric] : "")));
        chart.append(line);
      });
      axes.forEach((name, i) => {
        chart.append(svg("line", { x1: x(i), x2: x(i), y1: y(0), y2: y(1), stroke: "#333" }));
        chart.append(svg("text", { x: x(i), y: height - 12, "text-anchor": "middle", "font-size": "12", "font-weight": i === axes.length - 1 ? "bold" : "normal" }, name));
        scales[i].labels.forEach(([t, text]) => chart.append(svg("text", { x: x(i) + 4, y: y(t) + 4, "font-size": "11", fill: "#555" }, text.length > 14 ? text.slice(0, 13) + "…" : text)));
      });
      holder.textContent = "";
      holder.append(chart);
      root.dataset.state = "drawn";
      root.dataset.lines = String(data.runs.length);
    }
    select.addEventListener("change", draw);
    draw();
  }

  MLPortal.register("parallel-coordinates", start);
})();
