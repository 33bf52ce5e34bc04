/* The pipeline run page: statuses, durations, logs and the reason follow the worker.
   Config: data-status-url (the pipeline run's API read, with its steps). */
(function () {
  "use strict";
  const fmtDuration = (s) => s == null ? "—" : (s < 60 ? s.toFixed(1) + " s" : Math.floor(s / 60) + " min " + Math.round(s % 60) + " s");

  MLPortal.register("pipeline-run", (root) => {
    MLPortal.poll(root.dataset.statusUrl, (prun) => {
      document.querySelectorAll("#prun-status .badge").forEach((el) => MLPortal.badge(el, prun.status));
      const box = document.getElementById("prun-reason-box");
      if (prun.reason) {
        box.hidden = false;
        document.getElementById("prun-reason").textContent = prun.reason;
      }
      (prun.steps || []).forEach((step) => {
        const row = root.querySelector(`tr[data-step="${step.name}"]`);
        if (!row) return;
        const badge = row.querySelector(".step-status .badge");
        if (badge) MLPortal.badge(badge, step.status);
        row.querySelector(".step-duration").textContent = fmtDuration(step.duration_s);
        const log = root.querySelector(`tr[data-step-log="${step.name}"] .step-log`);
        if (log && log.textContent !== step.log) log.textContent = step.log;
      });
      return ["succeeded", "failed", "skipped", "canceled"].includes(prun.status);
    });
  });
})();
