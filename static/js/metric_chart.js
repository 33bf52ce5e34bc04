/* Metric charts on a canvas: every series of one run (or of several runs, overlaid), downsampled
   by the server; drag across the plot to zoom into a step range (fetched again at full
   resolution), log scale, smoothing, a legend that hides and shows series.

   <div data-module="metric-chart" data-sources='[{"url": "/api/v1/runs/<id>/series/", "label": ""}]'>
   After each draw the element carries data-state="drawn", data-series="<count>",
   data-max-step="<largest step drawn>", data-load-at (performance.now() when the last load began)
   and data-draw-ms (the last draw's time), for people reading the DOM, tests and benchmarks/charts.py.
   The data is fetched exactly as the page's <link rel=preload as=fetch> asked for it, so the
   request starts as soon as the HTML arrives; a finished run's page carries its first answer in a
   data block instead (data-first="<id of a <script type=application/json>>", read once, then
   zoom and reset fetch), and data-from says which: "page" or "fetch". */
(function () {
  "use strict";
  const COLORS = ["#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#f0e442", "#000000",
                  "#999999", "#882255", "#44aa99", "#117733"];
  const PAD = { left: 56, right: 12, top: 10, bottom: 28 };

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    Object.entries(attrs || {}).forEach(([k, v]) => node.setAttribute(k, v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function smooth(values, weight) {
    if (!weight) return values;
    const out = new Array(values.length);
    let last = values.length ? values[0] : 0;
    for (let i = 0; i < values.length; i++) { last = last * weight + (1 - weight) * values[i]; out[i] = last; }
    return out;
  }

  function fmt(v) {
    if (!isFinite(v)) return String(v);
    const a = Math.abs(v);
    return a !== 0 && (a >= 1e5 || a < 1e-3) ? v.toExponential(2) : String(Number(v.toPrecision(4)));
  }

  function ticks(lo, hi, n) {
    if (hi <= lo) return [lo];
    const raw = (hi - lo) / n, mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) || raw;
    const out = [];
    for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) out.push(t);
    return out;
  }

  class MetricChart {
    constructor(root) {
      this.root = root;
      this.sources = JSON.parse(root.dataset.sources || "[]");
      this.series = [];  // {label, steps, values, color, hidden, points, sampled}
      this.range = null;  // [min_step, max_step] when zoomed
      this.build();
      this.load();
    }

    build() {
      const bar = el("div", { class: "chart-controls toolbar" });
      const logLabel = el("label");
      this.logBox = el("input", { type: "checkbox", "data-testid": "chart-log" });
      logLabel.append(this.logBox, " log scale");
      const smoothLabel = el("label");
      this.smoothBox = el("input", { type: "range", min: "0", max: "0.99", step: "0.01", value: "0", "aria-label": "Smoothing", "data-testid": "chart-smoothing" });
      smoothLabel.append("smoothing ", this.smoothBox);
      this.resetBtn = el("button", { type: "button", class: "btn btn-small", "data-testid": "chart-reset", hidden: "" }, "Reset zoom");
      this.status = el("span", { class: "muted small", "aria-live": "polite" });
      bar.append(logLabel, smoothLabel, this.resetBtn, this.status);
      this.canvas = el("canvas", { "aria-label": "Metric series; drag across to zoom into steps", role: "img", "data-testid": "chart-canvas" });
      this.canvas.style.width = "100%";
      this.canvas.style.height = (this.root.dataset.height || "320") + "px";
      this.legend = el("div", { class: "chart-legend", "data-testid": "chart-legend" });
      this.root.append(bar, this.canvas, this.legend);
      this.logBox.addEventListener("change", () => this.draw());
      this.smoothBox.addEventListener("input", () => this.draw());
      this.resetBtn.addEventListener("click", () => { this.range = null; this.load(); });
      let dragFrom = null;
      this.canvas.addEventListener("mousedown", (e) => { dragFrom = this.offsetX(e); });
      this.canvas.addEventListener("mousemove", (e) => { if (dragFrom !== null) this.draw([dragFrom, this.offsetX(e)]); });
      window.addEventListener("mouseup", (e) => {
        if (dragFrom === null) return;
        const to = this.offsetX(e), from = dragFrom;
        dragFrom = null;
        if (Math.abs(to - from) < 5 || !this.scale) { this.draw(); return; }
        const a = this.scale.stepAt(Math.min(from, to)), b = this.scale.stepAt(Math.max(from, to));
        this.range = [Math.floor(a), Math.ceil(b)];
        this.load();
      });
      window.addEventListener("resize", () => this.draw());
    }

    offsetX(e) { return e.clientX - this.canvas.getBoundingClientRect().left; }

    async load() {
      this.root.dataset.loadAt = performance.now().toFixed(1);
      this.status.textContent = "loading…";
      const hidden = new Set(this.series.filter((s) => s.hidden).map((s) => s.label));
      const first = !this.range && this.root.dataset.first && document.getElementById(this.root.dataset.first);
      delete this.root.dataset.first;
      this.root.dataset.from = first ? "page" : "fetch";
      const results = first ? [{ src: this.sources[0], data: JSON.parse(first.textContent) }] : await Promise.all(this.sources.map(async (src) => {
        const url = new URL(src.url, location.href);
        if (this.range) { url.searchParams.set("min_step", this.range[0]); url.searchParams.set("max_step", this.range[1]); }
        if (src.names) url.searchParams.set("names", src.names.join(","));
        try {
          // fetch() as the page's preload (<link rel=preload as=fetch>) asked for it, so that one answer serves
          const res = await fetch(url.toString(), { credentials: "same-origin" });
          if (!res.ok) throw new Error(res.status + " " + res.statusText);
          return { src, data: await res.json() };
        } catch (err) { return { src, error: err }; }
      }));
      const series = [];
      let failed = 0;
      results.forEach(({ src, data, error }) => {
        if (error) { failed++; return; }
        Object.keys(data.series).sort().forEach((name) => {
          const s = data.series[name];
          const label = src.label ? src.label + " · " + name : name;
          series.push({ label, steps: s.steps, values: s.values, points: s.points, sampled: s.sampled, hidden: hidden.has(label) });
        });
      });
      series.forEach((s, i) => { s.color = COLORS[i % COLORS.length]; });
      this.series = series;
      this.resetBtn.hidden = !this.range;
      const sampled = series.filter((s) => s.sampled).length;
      this.status.textContent = (failed ? "some series could not be loaded; " : "") +
        (this.range ? `steps ${this.range[0]}–${this.range[1]}` : "all steps") +
        (sampled ? ` · ${sampled} series downsampled (drag to zoom in for every point)` : " · every point shown");
      this.renderLegend();
      this.draw();
    }

    renderLegend() {
      this.legend.textContent = "";
      this.series.forEach((s) => {
        const label = el("label", { class: "chart-legend-item" });
        const box = el("input", { type: "checkbox" });
        box.checked = !s.hidden;
        box.addEventListener("change", () => { s.hidden = !box.checked; this.draw(); });
        const swatch = el("span", { class: "chart-swatch", "aria-hidden": "true" });
        swatch.style.background = s.color;
        label.append(box, swatch, ` ${s.label} (${s.points} points)`);
        this.legend.append(label);
      });
    }

    draw(selection) {
      const began = performance.now();
      this.paint(selection);
      this.root.dataset.drawMs = (performance.now() - began).toFixed(1);
      this.root.dataset.state = "drawn";
    }

    paint(selection) {
      const c = this.canvas, ratio = window.devicePixelRatio || 1;
      const w = c.clientWidth || 600, h = c.clientHeight || 320;
      c.width = Math.round(w * ratio); c.height = Math.round(h * ratio);
      const g = c.getContext("2d");
      g.setTransform(ratio, 0, 0, ratio, 0, 0);
      g.clearRect(0, 0, w, h);
      const log = this.logBox.checked, weight = parseFloat(this.smoothBox.value) || 0;
      const visible = this.series.filter((s) => !s.hidden && s.steps.length);
      let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity, maxStep = -Infinity;
      const lines = visible.map((s) => {
        const ys = smooth(s.values, weight).map((v) => (log ? (v > 0 ? Math.log10(v) : NaN) : v));
        s.steps.forEach((x, i) => {
          if (x < x0) x0 = x;
          if (x > x1) x1 = x;
          const y = ys[i];
          if (isFinite(y)) { if (y < y0) y0 = y; if (y > y1) y1 = y; }
        });
        maxStep = Math.max(maxStep, s.steps[s.steps.length - 1]);
        return { s, ys };
      });
      this.root.dataset.series = String(this.series.length);
      this.root.dataset.maxStep = isFinite(maxStep) ? String(maxStep) : "";
      if (!lines.length || !isFinite(y0)) {
        g.fillStyle = "#666"; g.font = "13px sans-serif";
        g.fillText(this.series.length ? "No positive values to show on a log scale." : "No series logged with steps.", PAD.left, h / 2);
        return;
      }
      if (x1 === x0) { x0 -= 1; x1 += 1; }
      if (y1 === y0) { y0 -= Math.abs(y0) * 0.05 || 1; y1 += Math.abs(y1) * 0.05 || 1; }
      const pw = w - PAD.left - PAD.right, ph = h - PAD.top - PAD.bottom;
      const sx = (x) => PAD.left + ((x - x0) / (x1 - x0)) * pw;
      const sy = (y) => PAD.top + (1 - (y - y0) / (y1 - y0)) * ph;
      this.scale = { stepAt: (px) => x0 + ((Math.max(PAD.left, Math.min(w - PAD.right, px)) - PAD.left) / pw) * (x1 - x0) };
      g.strokeStyle = "#ddd"; g.fillStyle = "#555"; g.font = "11px sans-serif"; g.lineWidth = 1;
      ticks(y0, y1, 5).forEach((t) => {
        const y = sy(t);
        g.beginPath(); g.moveTo(PAD.left, y); g.lineTo(w - PAD.right, y); g.stroke();
        g.fillText(log ? fmt(Math.pow(10, t)) : fmt(t), 4, y + 4);
      });
      ticks(x0, x1, 6).forEach((t) => {
        const x = sx(t);
        g.beginPath(); g.moveTo(x, PAD.top); g.lineTo(x, h - PAD.bottom); g.stroke();
        g.fillText(fmt(t), x - 10, h - PAD.bottom + 14);
      });
      g.fillText("step", w - PAD.right - 24, h - 4);
      lines.forEach(({ s, ys }) => {
        g.strokeStyle = s.color; g.lineWidth = 1.25; g.beginPath();
        let pen = false;
        for (let i = 0; i < s.steps.length; i++) {
          const y = ys[i];
          if (!isFinite(y)) { pen = false; continue; }
          const px = sx(s.steps[i]), py = sy(y);
          if (pen) g.lineTo(px, py); else { g.moveTo(px, py); pen = true; }
        }
        g.stroke();
      });
      if (selection) {
        g.fillStyle = "rgba(0, 114, 178, 0.15)";
        g.fillRect(Math.min(selection[0], selection[1]), PAD.top, Math.abs(selection[1] - selection[0]), ph);
      }
    }
  }

  function startOne(root) {
    if (root.chart) return;
    root.chart = new MetricChart(root);
    // A chart on a hidden tab has no width yet: draw again when its panel shows.
    const panel = root.closest("[data-panel]");
    if (panel) new MutationObserver(() => { if (!panel.hidden) root.chart.draw(); }).observe(panel, { attributes: true, attributeFilter: ["hidden"] });
  }
  function start() { document.querySelectorAll("[data-module=metric-chart]").forEach(startOne); }
  window.MLPortalCharts = { MetricChart, start };
  MLPortal.register("metric-chart", startOne);
})();
