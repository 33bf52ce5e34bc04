/* The image page: the build log streams in and the status and properties follow the build.
   Config: data-log-url (a {text, offset, done} log), data-status-url (the image's API read). */
(function () {
  "use strict";
  const fmtSize = (n) => n == null ? "—" : (n / 1048576).toFixed(1) + " MB";

  MLPortal.register("image-detail", (root) => {
    const $ = (id) => document.getElementById(id);
    MLPortal.tailLog($("build-log"), root.dataset.logUrl);
    MLPortal.poll(root.dataset.statusUrl, (img) => {
      document.querySelectorAll("#image-status .badge, #overview-status .badge").forEach((el) => MLPortal.badge(el, img.status));
      $("image-id").textContent = img.image_id || "—";
      $("image-size").textContent = fmtSize(img.size);
      if (img.build_seconds != null) $("image-build-time").textContent = img.build_seconds.toFixed(1) + " s";
      if ("finished_at" in img) MLPortal.setTime($("image-finished"), img.finished_at);
      if (img.status === "failed") {
        $("build-error").hidden = false;
        $("error-step").textContent = img.error_step || "";
        $("error-message").textContent = img.error || "";
        $("error-tail").textContent = img.error_log_tail || "";
      }
      return img.status === "succeeded" || img.status === "failed";
    });
  });
})();
